"""Data-parallel data jobs under torchrun on CPU (gloo): feature caching and transcription split across 2 ranks.

Each rank must do a disjoint share, the union must be the whole job, the result must equal the single-process one,
and a clip that fails on one rank must be reported once and dropped (or left empty) on every rank.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from fusion_ser.data.feature_cache import read_entry
from fusion_ser.transcribe import TranscriptCache, transcribe_frame
from tests.ddp_probes import LengthTranscriber
from tests.test_ddp import _free_port, _run_torchrun
from tests.test_trainer import make_corpus, save_tiny_ssl

PROBES = str(Path(__file__).with_name("ddp_probes.py"))
# CPU ranks see no GPU, so a GPU machine runs them as here (with a GPU the ranks would each claim cuda:LOCAL_RANK)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(tmp_path: Path, nproc: int, *args: str, timeout: float = 240, gpus: bool = False) -> list[dict]:
    """Run a probe on `nproc` ranks (CPU only unless `gpus`); every rank's record, in rank order."""
    out = tmp_path / "probe_out"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={_free_port()}",
           PROBES, *args, str(out)]
    env = {k: v for k, v in ENV.items() if k != "CUDA_VISIBLE_DEVICES" or not gpus}
    proc = _run_torchrun(cmd, env, timeout=timeout, log_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc) if (out / f"rank{r}.json").exists()]


def broken_flac(path: Path) -> None:
    """A FLAC whose header checks out (it passes screening) but whose audio frames do not decode."""
    sf.write(path, np.sin(np.arange(16000) * 0.05).astype("float32") * 0.5, 16000)
    data = bytearray(path.read_bytes())
    data[200:] = bytes((b * 7 + 13) % 256 for b in data[200:])
    path.write_bytes(bytes(data))


def entries(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): read_entry(p) for p in root.rglob("*.fsc")}


def test_feature_cache_is_split_across_ranks_and_equals_the_single_process_cache(tmp_path) -> None:
    from fusion_ser.config import load_config
    from fusion_ser.data.selection import load_run_data
    from fusion_ser.models.factory import build_model
    from fusion_ser.training.distributed import DistInfo
    from fusion_ser.training.job import feature_caches, fill_caches

    torch.set_num_threads(1)
    manifest = make_corpus(tmp_path / "corpus", n_speakers=4, per_class=3)
    df = pd.read_csv(manifest)
    broken_row = df.index[df["split"] == "train"][3]
    broken_flac(tmp_path / "corpus" / "broken.flac")
    df.loc[broken_row, "path"] = "broken.flac"
    df.to_csv(manifest, index=False)
    broken = str(df.loc[broken_row, "utt_id"])
    model_dir = save_tiny_ssl("wavlm", tmp_path / "wavlm")
    overrides = ["audio_encoder.type=hf", f"audio_encoder.name_or_path={model_dir}", "audio_encoder.finetune=frozen",
                 "train.cache_features=true", "train.device=cpu", "pooling.attention_dim=16", "head.hidden_dim=16"]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"manifest": str(manifest), "overrides": overrides + [f"train.cache_dir={tmp_path / 'ddp'}"]}))

    ranks = torchrun(tmp_path, 2, "cache", str(spec))
    assert len(ranks) == 2
    shares = [set(r["attempts"]) for r in ranks]
    assert not shares[0] & shares[1]  # disjoint
    assert shares[0] | shares[1] == set(df["utt_id"].astype(str))  # together: every utterance, once
    assert all(abs(len(s) - len(df) / 2) <= 1 for s in shares)  # even halves
    assert sum(broken in s for s in shares) == 1  # the bad clip was tried by one rank only...
    for r in ranks:  # ...and is dropped on both, which then hold the same rows
        assert r["dropped"] == [broken] and broken not in r["rows"]["train"]
        assert r["rows"] == ranks[0]["rows"] and r["device"] == "cpu"

    cfg = load_config(None, overrides + [f"train.cache_dir={tmp_path / 'single'}"])
    data = load_run_data(cfg, manifest)
    model = build_model(cfg, data.labels, train_labels=data.train["label"].tolist())
    data = fill_caches(feature_caches(model, cfg), data, DistInfo())
    assert {s: sorted(getattr(data, s)["utt_id"].astype(str)) for s in ("train", "dev", "test")} == ranks[0]["rows"]
    ddp, single = entries(tmp_path / "ddp"), entries(tmp_path / "single")
    assert sorted(ddp) == sorted(single) and len(ddp) == len(df) - 1  # the same keys: one entry per readable clip
    for key, array in single.items():
        np.testing.assert_allclose(ddp[key].astype(np.float32), array.astype(np.float32), atol=2e-3)


def clips(root: Path) -> pd.DataFrame:
    """Seven clips of distinct lengths; u4 is loud (the LengthTranscriber fails on it), u5 is not audio."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        p = root / f"c{i}.wav"
        if i == 5:
            p.write_bytes(b"RIFF not really a wav file")
        else:
            sf.write(p, (rng.uniform(-1, 1, 4000 + 800 * i) * (0.9 if i == 4 else 0.1)).astype(np.float32), 16000)
        rows.append({"utt_id": f"u{i}", "path": str(p), "split": "train", "speaker": "s", "gender": "",
                     "label": "neutral", "arousal": "", "valence": "", "dominance": "",
                     "text": "a human transcript" if i == 2 else ""})
    return pd.DataFrame(rows)


def test_transcription_is_split_across_ranks_and_equals_the_single_process_result(tmp_path) -> None:
    df = clips(tmp_path / "clips")
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    ranks = torchrun(tmp_path, 2, "transcribe", str(manifest), str(tmp_path / "ddp_cache"))

    single_tr = LengthTranscriber()
    single, summary = transcribe_frame(df, single_tr, TranscriptCache(tmp_path / "single_cache"), batch_size=2)
    seen = [set(r["seen"]) for r in ranks]
    assert not seen[0] & seen[1] and sorted(seen[0] | seen[1]) == sorted(single_tr.seen)  # disjoint, whole
    assert all(r["seen"] for r in ranks)  # both ranks decoded clips
    for r in ranks:  # every rank ends with the whole frame and the summary of all ranks
        assert r["text"] == list(single["text"])
        s = r["summary"]
        assert (s["transcribed"], s["cached"], s["kept"], s["failed"]) == (4, 0, 1, 2)
        assert [u for u, _ in s["failures"]] == ["u4", "u5"]  # each failure once, in row order
        assert s["shares"] == [3, 3]  # six rows to transcribe, interleaved over two ranks
        assert s["audio_seconds"] == pytest.approx(summary.audio_seconds)
    assert (summary.transcribed, summary.failed, summary.shares) == (4, 2, [])
    assert len(TranscriptCache(tmp_path / "ddp_cache")) == 4  # one cache, written by both ranks

    again = torchrun(tmp_path, 2, "transcribe", str(manifest), str(tmp_path / "ddp_cache"))
    assert not any(r["seen"] for r in again)  # the second run reads the shared cache
    assert again[0]["summary"]["cached"] == 4 and again[0]["text"] == list(single["text"])


def _write_many(directory: str, worker: int, n: int, paths: list[str]) -> None:
    cache = TranscriptCache(directory)
    for i in range(n):
        cache.put(f"w{worker}", paths[i % len(paths)], f"text {worker} {i}", 1.0)
    cache.close()


def test_transcript_cache_takes_concurrent_writers(tmp_path) -> None:
    """Four processes committing clip by clip into one SQLite cache: no lock error, no lost row."""
    paths = []
    for i in range(50):
        p = tmp_path / f"a{i}.wav"
        p.write_bytes(b"x" * (i + 1))
        paths.append(str(p))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path / "c"), w, 50, paths)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = TranscriptCache(tmp_path / "c")
    assert len(cache) == 200
    assert cache.get("w3", paths[7]) == "text 3 7"


def test_the_trainer_process_group_under_torchrun_with_one_process_on_cpu(tmp_path) -> None:
    """The CPU twin of the CUDA test: gloo in a world of one, every distributed helper's collective, one DDP step."""
    (rec,) = torchrun(tmp_path, 1, "group", "cpu")
    assert rec["backend"] == "gloo" and rec["world"] == 1
    assert rec["all_reduce"] == [1.0, 1.0, 1.0] and rec["sums"] == [1.0, 0.0]
    assert rec["gathered"] == [{"rank": 0}] and rec["told"] == {"from": 0}
    assert rec["wrapped"] == "DistributedDataParallel" and np.isfinite(rec["loss"]) and rec["grad"] > 0


def test_transcribe_cli_under_torchrun_writes_one_manifest_like_a_single_process(tmp_path) -> None:
    """`fusion-ser transcribe` on 2 ranks with the packaged tiny.en: rank 0 alone writes and prints, the
    transcripts and counts are those of the single-process command."""
    df = clips(tmp_path / "clips").iloc[[0, 1, 2, 5]]  # two tones, a human transcript, a file that is not audio
    src = tmp_path / "m.csv"
    df.to_csv(src, index=False)
    args = ["--device", "cpu", "--beam-size", "1", "--batch-size", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "-m", "fusion_ser.cli.main", "transcribe", str(src), "-o", str(tmp_path / "ddp.csv"),
           "--cache-dir", str(tmp_path / "ddp_cache"), *args]
    proc = _run_torchrun(cmd, ENV, timeout=240, log_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Wrote ") == 1  # rank 0 only
    assert "transcribed 2, cached 0, kept 1, failed 1" in proc.stdout
    assert "2 ranks; clips per rank: 2, 1" in proc.stdout

    # the single process with the ranks' environment (one OpenMP thread): CTranslate2's int8 sums, and so what
    # Whisper hallucinates on a tone, can change with the thread count on CPUs without int8 dot-product instructions
    single_cmd = [sys.executable, "-m", "fusion_ser.cli.main", "transcribe", str(src), "-o", str(tmp_path / "single.csv"),
                  "--cache-dir", str(tmp_path / "single_cache"), *args]
    res = subprocess.run(single_cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "transcribed 2, cached 0, kept 1, failed 1" in res.stdout and "ranks" not in res.stdout
    ddp = pd.read_csv(tmp_path / "ddp.csv", keep_default_na=False)
    single = pd.read_csv(tmp_path / "single.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(ddp, single)
