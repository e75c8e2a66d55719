"""MELD text benchmark: LoRA MiniLM through the project's trainer vs frozen MiniLM embeddings + logistic regression.

Trains on MELD train, selects on dev, prints dev weighted-F1 / macro-F1 and wall times of both systems.

    python bench/meld_text.py [--root ../shared/data/meld] [--config configs/text_minilm_lora.yaml] [key=value ...]

MELD is scored by weighted F1, so the figures in the project notes come from plain cross-entropy and selection on
accuracy (the config's default, class-weighted CE selected on macro-F1, trades weighted-F1 for macro-F1):

    python bench/meld_text.py --threads 1 loss.type=ce train.selection_metric=micro_f1 train.epochs=2 \
        text_encoder.max_length=64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from fusion_ser.config import TextEncoderConfig, load_config
from fusion_ser.data.corpora import prepare_corpus
from fusion_ser.data.manifest import write_manifest
from fusion_ser.device import seed_everything
from fusion_ser.encoders.text import build_text_encoder
from fusion_ser.rundir import RunDir
from fusion_ser.training.events import EpochEnded
from fusion_ser.training.job import train_run

ROOT = Path(__file__).resolve().parents[1]


def scores(y_true: pd.Series, y_pred: pd.Series) -> dict[str, float]:
    """MELD's usual figures: support-weighted F1 and macro F1."""
    return {"weighted_f1": f1_score(y_true, y_pred, average="weighted"),
            "macro_f1": f1_score(y_true, y_pred, average="macro")}


@torch.no_grad()
def embed(texts: list[str], batch: int = 128) -> np.ndarray:
    """Frozen MiniLM sentence embeddings: mean over tokens, L2-normalised (as sentence-transformers does)."""
    enc = build_text_encoder(TextEncoderConfig(finetune="frozen", pooling="mean")).eval()
    order = np.argsort([len(t) for t in texts])  # similar lengths together: little padding
    x = np.zeros((len(texts), enc.output_dim), dtype=np.float32)
    for i in range(0, len(texts), batch):
        idx = order[i:i + batch]
        x[idx] = enc.pool(enc({"text": [texts[j] for j in idx]})).numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(train: pd.DataFrame, dev: pd.DataFrame, seed: int) -> tuple[dict, float, float]:
    """Logistic regression on frozen embeddings; C picked on dev weighted-F1 (the same selection rule as LoRA)."""
    t0 = time.perf_counter()
    x_tr, x_dev = embed(train["text"].tolist()), embed(dev["text"].tolist())
    best, best_c = None, None
    for c in (0.3, 1.0, 3.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_tr, train["label"])
        s = scores(dev["label"], pd.Series(clf.predict(x_dev)))
        if best is None or s["weighted_f1"] > best["weighted_f1"]:
            best, best_c = s, c
    return best, time.perf_counter() - t0, best_c


def report_epoch(event: object) -> None:
    """Print one line per finished epoch of the trainer (the bench's only progress output)."""
    if isinstance(event, EpochEnded) and not event.refit:
        print(f"  epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.4f}, "
              f"{event.utt_per_s:.1f} utt/s, dev {event.metric} {event.dev:.4f}"
              f"{' (best)' if event.best else ''}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "meld"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "text_minilm_lora.yaml"))
    ap.add_argument("--out", default=None, help="run directory (default: a temp dir)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.out or tempfile.mkdtemp(prefix="meld_text_"))
    work.mkdir(parents=True, exist_ok=True)
    df = prepare_corpus("meld", args.root)
    manifest = work / "meld.csv"
    write_manifest(df, manifest)
    train, dev = df[df["split"] == "train"], df[df["split"] == "dev"]
    print(f"MELD: {len(train)} train, {len(dev)} dev utterances, {df['label'].nunique()} classes "
          f"({', '.join(sorted(df['label'].unique()))})")
    print(f"torch threads: {torch.get_num_threads()}")

    cfg = load_config(args.config, args.overrides)
    seed_everything(cfg.seed)
    if not args.skip_reference:
        ref, ref_s, c = reference(train, dev, cfg.seed)
        print(f"reference  frozen MiniLM mean-pooled + logistic regression (C={c}): "
              f"dev weighted-F1 {ref['weighted_f1']:.4f}  macro-F1 {ref['macro_f1']:.4f}  wall {ref_s:.0f} s")

    t0 = time.perf_counter()
    run = train_run(cfg, manifest, work / "run", progress=report_epoch)
    wall = time.perf_counter() - t0
    pred = RunDir(run.path).read_predictions("dev")
    truth = dev.set_index("utt_id").loc[pred["utt_id"].astype(str), "label"].to_numpy()
    lora = scores(pd.Series(truth), pred["pred"].astype(str))
    log = pd.read_csv(run.train_log_path)
    best = log[log["best"]]["epoch"].max()
    print(f"LoRA       {cfg.text_encoder.name_or_path or 'packaged all-MiniLM-L6-v2'} r={cfg.text_encoder.lora.r} "
          f"lr={cfg.optim.lr_encoder:g} epochs={cfg.train.epochs} (best {best}) loss={cfg.loss.type}: "
          f"dev weighted-F1 {lora['weighted_f1']:.4f}  macro-F1 {lora['macro_f1']:.4f}  training wall {wall:.0f} s")
    if not args.skip_reference:
        verdict = "beats" if lora["weighted_f1"] > ref["weighted_f1"] else "does NOT beat"
        print(f"LoRA {verdict} the reference on dev weighted-F1 ({lora['weighted_f1'] - ref['weighted_f1']:+.4f}); "
              f"macro-F1 {lora['macro_f1'] - ref['macro_f1']:+.4f}")
    print(f"run dir: {run.path}")


if __name__ == "__main__":
    main()
