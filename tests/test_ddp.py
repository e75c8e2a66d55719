"""DDP: a 2-process CPU run through torchrun (gloo) trains, rank 0 alone writes one run dir, and its metrics are
close to the single-process run with the same effective batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from fusion_ser.rundir import RunDir
from tests.test_trainer import make_corpus, save_tiny_ssl


def _run_torchrun(cmd: list[str], env: dict, timeout: float, log_dir: Path) -> subprocess.CompletedProcess:
    """Run torchrun; on a hang, SIGTERM it (its agent then stops the workers, which live in their own sessions) and
    fail, so that a hung test leaves no orphan processes. Output goes to files: a stuck worker cannot block a pipe."""
    out_path, err_path = log_dir / "torchrun.out", log_dir / "torchrun.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise AssertionError(f"torchrun did not finish in {timeout} s (hung?):\n"
                                 f"{out_path.read_text()[-2000:]}\n{err_path.read_text()[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out_path.read_text(), err_path.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path) -> None:
    from fusion_ser.training.job import train_run
    from fusion_ser.config import load_config

    torch.set_num_threads(1)
    manifest = make_corpus(tmp_path / "corpus")
    model = save_tiny_ssl("wavlm", tmp_path / "wavlm")
    common = ["seed=1", "audio_encoder.type=hf", f"audio_encoder.name_or_path={model}", "audio_encoder.finetune=full",
              "pooling.attention_dim=16", "head.hidden_dim=32", "head.dropout=0.1", "train.epochs=4",
              "optim.lr_encoder=0.001", "optim.lr_head=0.003", "train.cache_features=false",
              "train.report=false"]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 1\n")
    # CPU processes (gloo) even on a GPU machine: with CUDA visible every rank would claim cuda:LOCAL_RANK
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "-m", "fusion_ser.cli.main", "train", "-c", str(cfg), "--manifest", str(manifest), "-o", str(tmp_path / "ddp"),
           *common, "train.batch_size=4"]  # 2 ranks x 4 = the single run's batch of 8
    proc = _run_torchrun(cmd, env, timeout=300, log_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run written to") == 1  # only rank 0 reports

    ddp = RunDir(tmp_path / "ddp")
    info = ddp.require_complete()
    assert info.extra["world_size"] == 2
    assert sorted(p.name for p in ddp.path.iterdir()) == ["config.yaml", "metrics.json", "model", "predictions",
                                                           "run.json", "train_log.csv"]
    assert len(pd.read_csv(ddp.train_log_path)) == 4
    dev = ddp.read_predictions("dev")
    assert len(dev) == 12 and dev["utt_id"].is_unique  # the whole dev set, once

    single = train_run(load_config(None, common + ["train.batch_size=8"]), manifest, tmp_path / "single")
    f1_ddp = ddp.read_metrics()["dev"]["macro_f1"]
    f1_single = single.read_metrics()["dev"]["macro_f1"]
    assert f1_ddp >= 0.6 and f1_single >= 0.6
    assert abs(f1_ddp - f1_single) <= 0.25
    # both processes trained on disjoint halves: the logged train loss is the all-reduced mean over 48 utterances
    log = pd.read_csv(ddp.train_log_path)
    assert log["train_loss"].notna().all() and log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]


def test_a_rank_whose_whole_batch_is_unreadable_does_not_hang_the_others(tmp_path) -> None:
    """A clip passes the header check but fails to decode; with one clip per rank and step, that rank's batch is
    empty. Every rank must then sit the step out together instead of waiting on each other's gradients."""
    import numpy as np
    import soundfile as sf

    manifest = make_corpus(tmp_path / "corpus")
    df = pd.read_csv(manifest)
    row = df.index[df["split"] == "train"][0]
    flac = tmp_path / "corpus" / "broken.flac"
    sf.write(flac, np.sin(np.arange(16000) * 0.05).astype("float32") * 0.5, 16000)
    data = bytearray(flac.read_bytes())
    data[200:] = bytes((b * 7 + 13) % 256 for b in data[200:])  # STREAMINFO intact, audio frames garbage
    flac.write_bytes(bytes(data))
    df.loc[row, "path"] = "broken.flac"
    df.to_csv(manifest, index=False)
    model = save_tiny_ssl("wavlm", tmp_path / "wavlm")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 1\n")
    # CPU processes (gloo) even on a GPU machine: with CUDA visible every rank would claim cuda:LOCAL_RANK
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
           "-m", "fusion_ser.cli.main", "train", "-c", str(cfg), "--manifest", str(manifest), "-o", str(tmp_path / "ddp"),
           "audio_encoder.type=hf", f"audio_encoder.name_or_path={model}", "audio_encoder.finetune=full",
           "pooling.attention_dim=16", "head.hidden_dim=32", "train.epochs=1", "train.batch_size=1",
           "train.cache_features=false", "train.report=false", "train.bucketing=false"]
    proc = _run_torchrun(cmd, env, timeout=240, log_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "1 clip(s) could not be read" in out and "1 readable clip(s) sat out a step" in out
    RunDir(tmp_path / "ddp").require_complete()
