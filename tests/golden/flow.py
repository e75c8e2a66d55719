"""The fixed small flow whose outputs the golden test holds the code to: audio, text, late fusion, ensemble, predict.

It drives the package only through its stable surfaces (the `fusion-ser` commands and `fusion_ser.load`), so it
runs unchanged on the code before and after a restructuring. `python -m tests.golden.record` writes the expected
outputs; `tests/test_golden.py` runs the flow again and compares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from tests.tiny_models import save_tiny_bert

GOLDEN = Path(__file__).parent


def cpu_kind() -> str:
    """The CPU family whose kernels the recording holds: oneDNN's and CTranslate2's float sums differ (by up to 1e-1
    after two epochs of training) between CPUs with AVX-512 and those with AVX2 only, and are fixed within each."""
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return "unknown"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "unknown"


def expected_dir(kind: str | None = None) -> Path:
    """expected/ holds the recording made on an AVX-512 CPU; expected_<kind>/ those of other CPU families."""
    kind = kind or cpu_kind()
    return GOLDEN / ("expected" if kind == "avx512" else f"expected_{kind}")


EXPECTED = expected_dir()
SPLITS = ("dev", "test")
RUNS = ("audio", "audio_attr", "text", "late", "ens")


def _tiny_bert(out: Path) -> str:
    """A random 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer, saved with save_pretrained."""
    return save_tiny_bert(out)


def _cli(args: list[str]) -> None:
    from click.testing import CliRunner

    from fusion_ser.cli.main import main

    res = CliRunner().invoke(main, args, catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"fusion-ser {' '.join(args)} exited {res.exit_code}:\n{res.output}")


def run_flow(root: Path) -> dict[str, pd.DataFrame]:
    """Run the flow under `root`; returns name -> frame (run predictions per split and predict-API results)."""
    import torch

    from fusion_ser import load
    from fusion_ser.demo.corpus import generate_corpus

    torch.set_num_threads(1)
    root = Path(root)
    manifest = generate_corpus(root / "corpus", n_speakers=3, per_emotion=2, seed=0)
    bert = _tiny_bert(root / "bert")
    cache = str(root / "cache")
    base = root / "base.yaml"
    base.write_text("seed: 0\n")
    common = ["train.epochs=2", "train.batch_size=8", "head.hidden_dim=32", "seed=0", "train.report=false"]
    _cli(["train", "-c", str(base), "--manifest", str(manifest), "-o", str(root / "audio"), "modality=audio",
          "audio_encoder.type=ct2_whisper", "audio_encoder.layer_weighting=false", "pooling.type=attentive_stats",
          "pooling.attention_dim=16", f"train.cache_dir={cache}", "optim.ema_decay=0.9", *common])
    _cli(["train", "-c", str(base), "--manifest", str(manifest), "-o", str(root / "audio_attr"), "task=attributes", "modality=audio",
          "audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=16",
          "audio_encoder.n_mels=40", "pooling.type=mean_std", "train.cache_features=false", *common])
    _cli(["train", "-c", str(base), "--manifest", str(manifest), "-o", str(root / "text"), "modality=text",
          f"text_encoder.name_or_path={bert}", "text_encoder.lora.r=4", "text_encoder.max_length=32",
          "pooling.type=mean", "train.cache_features=false", *common])
    _cli(["fuse", str(root / "audio"), str(root / "text"), "-o", str(root / "late"), "--method", "lr", "--folds", "2"])
    _cli(["ensemble", str(root / "late"), str(root / "audio"), str(root / "text"), "-o", str(root / "ens"),
          "--method", "mean"])
    out: dict[str, pd.DataFrame] = {}
    for run in RUNS:
        for split in SPLITS:
            p = root / run / "predictions" / f"{split}.csv"
            out[f"{run}.{split}"] = pd.read_csv(p, dtype={"utt_id": str})
    corpus = pd.read_csv(manifest, dtype={"utt_id": str})
    test = corpus[corpus["split"] == "test"].head(4)
    files = [str(Path(manifest).parent / p) for p in test["path"]]
    wav, sr = sf.read(files[0], dtype="float32")
    assert sr == 16000
    for run in ("ens", "audio_attr"):
        predictor = load(root / run, device="cpu")
        results = predictor.predict(files + [wav], batch_size=3)
        rows = []
        for i, r in enumerate(results):
            row = {"input": i, "label": r.get("label", "")}
            row.update({f"prob_{k}": v for k, v in (r.get("probs") or {}).items()})
            row.update({f"{k}_pred": v for k, v in (r.get("attributes") or {}).items()})
            rows.append(row)
        out[f"predict_{run}"] = pd.DataFrame(rows)
    return out


def numeric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("prob_") or c.endswith("_pred")]


def compare(expected: dict[str, pd.DataFrame], got: dict[str, pd.DataFrame], atol: float = 1e-4) -> list[str]:
    """Differences between two flows' outputs: same rows, same predicted labels, probabilities within atol."""
    problems = []
    for name, exp in expected.items():
        if name not in got:
            problems.append(f"{name}: missing")
            continue
        g = got[name]
        key = "utt_id" if "utt_id" in exp.columns else "input"
        if exp[key].astype(str).tolist() != g[key].astype(str).tolist():
            problems.append(f"{name}: rows differ")
            continue
        for col in ("pred", "label"):
            if col in exp.columns and exp[col].fillna("").astype(str).tolist() != g[col].fillna("").astype(str).tolist():
                problems.append(f"{name}: column {col} differs")
        for col in numeric_columns(exp):
            if col not in g.columns:
                problems.append(f"{name}: column {col} missing")
                continue
            diff = np.nanmax(np.abs(exp[col].to_numpy(float) - g[col].to_numpy(float))) if len(exp) else 0.0
            if not diff <= atol:
                problems.append(f"{name}: {col} differs by {diff:.2e}")
    return problems


def read_expected(directory: Path = EXPECTED) -> dict[str, pd.DataFrame]:
    names = json.loads((directory / "index.json").read_text())
    return {n: pd.read_csv(directory / f"{n}.csv", dtype={"utt_id": str}) for n in names}


def write_expected(frames: dict[str, pd.DataFrame]) -> None:
    EXPECTED.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_csv(EXPECTED / f"{name}.csv", index=False, float_format="%.8g")
    (EXPECTED / "index.json").write_text(json.dumps(sorted(frames), indent=1))
