"""Faults of training runs, table-driven: damaged or crafted checkpoints and run files, out-of-range options, a
training that diverges, a resume on other data, a command pointed at a run of another kind.

Each case says what it sets up, the command (through the CLI where one exists, else the library call), the exit code
(a library call that raises a FusionSerError counts as 1, as the CLI would make it), the words its message must
contain, and what must be unchanged on disk afterwards. Models are tiny (fbank + TDNN, a 2-layer BERT) on a
24-clip sine corpus, so the whole module runs in well under a minute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir, RunInfo
from fusion_ser.training.trainer import Trainer
from tests.test_trainer import make_corpus
from tests.tiny_models import save_tiny_bert

FBANK = {"audio_encoder": {"type": "fbank", "finetune": "full", "hidden_dim": 16, "n_mels": 40},
         "pooling": {"type": "mean"}, "head": {"hidden_dim": 16, "dropout": 0.1},
         "optim": {"lr_encoder": 0.003, "lr_head": 0.003},
         "train": {"epochs": 2, "batch_size": 4, "cache_features": False, "report": False}}


class Stop(Exception):
    """Stands for a crash (or a kill) of a training."""


class StopAfterFirstEpoch(Trainer):
    def on_epoch_end(self, epoch, row):
        raise Stop()


class StopBeforeFirstEpochEnds(Trainer):
    def on_stage_end(self, stage, epoch, stats):
        raise Stop()


class NanLossAtStepTwo(Trainer):
    """The loss of the second train batch is NaN (a diverging model, seen from the trainer)."""

    steps = 0

    def compute_objectives(self, output, batch, stage):
        loss = super().compute_objectives(output, batch, stage)
        if stage == "train":
            self.steps += 1
            if self.steps == 2:
                return loss * float("nan")
        return loss


class NanTestOutputs(Trainer):
    """Finite training and dev figures, NaN outputs on the test split (inference of the finished model)."""

    def compute_forward(self, batch, stage):
        out = super().compute_forward(batch, stage)
        if stage == "test":
            out.logits = out.logits * float("nan")
        return out


class RunsCode:
    """Unpickling this runs a shell command (the attack a crafted checkpoint or .bin carries)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Env:
    root: Path
    manifest: Path
    config: Path
    interrupted: Path  # an fbank run stopped after its first epoch: last.pt, best.pt, rng_rank0.pt
    finished: Path  # a finished fbank run
    text_runs: dict[str, Path]  # finished text runs (finetune full / lora) of a tiny BERT
    wav: Path


def _train(cfg_path: Path, manifest: Path, out: Path, trainer_cls: type[Trainer] = Trainer, *extra: str) -> Path:
    from fusion_ser.training.job import train_run

    cfg = load_config(cfg_path, list(extra))
    try:
        train_run(cfg, manifest, out, trainer_cls=trainer_cls)
    except Stop:
        pass
    return out


def _tiny_bert(directory: Path) -> str:
    return save_tiny_bert(directory, hidden=16, layers=1, max_positions=32)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("faults_runs")
    manifest = make_corpus(root / "corpus", n_speakers=4, per_class=2)
    config = root / "fbank.yaml"
    config.write_text(yaml.safe_dump(FBANK))
    interrupted = _train(config, manifest, root / "interrupted", StopAfterFirstEpoch)
    finished = _train(config, manifest, root / "finished")
    bert = _tiny_bert(root / "bert")
    text_runs = {}
    for finetune in ("full", "lora"):
        text_runs[finetune] = _train(config, manifest, root / f"text_{finetune}", Trainer, "modality=text",
                                     f"text_encoder.name_or_path={bert}", f"text_encoder.finetune={finetune}",
                                     "text_encoder.lora.r=2", "text_encoder.max_length=16", "train.epochs=1")
    return Env(root, manifest, config, interrupted, finished, text_runs, next((root / "corpus").glob("*.wav")))


# setups: (env, case folder) -> the folder the command works on -------------------------------------------------------

def copy_of(which: str) -> Callable[[Env, Path], Path]:
    def setup(env: Env, tmp: Path) -> Path:
        src = getattr(env, which) if not which.startswith("text_") else env.text_runs[which[5:]]
        return Path(shutil.copytree(src, tmp / "run"))
    return setup


def damaged(which: str, rel: str, how: Callable[[Path, Path], None]) -> Callable[[Env, Path], Path]:
    def setup(env: Env, tmp: Path) -> Path:
        run = copy_of(which)(env, tmp)
        how(run / rel, tmp)
        return run
    return setup


def crafted_pickle(path: Path, tmp: Path) -> None:
    torch.save({"epoch": 1, "model": {}, "payload": RunsCode(tmp / "MARKER")}, path)


def truncated(path: Path, tmp: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def emptied(path: Path, tmp: Path) -> None:
    path.write_bytes(b"")


def not_a_checkpoint(path: Path, tmp: Path) -> None:
    torch.save(torch.zeros(3), path)


def pickle_weights(folder: Path, tmp: Path) -> None:
    """Replace a saved HF model's / adapter's safetensors with a pickle .bin whose loading would run code."""
    for f in folder.glob("*.safetensors"):
        name = "adapter_model.bin" if f.name.startswith("adapter") else "pytorch_model.bin"
        f.unlink()
        torch.save({"weight": RunsCode(tmp / "MARKER")}, folder / name)


def nan_weights(path: Path, tmp: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    save_file({k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}, str(path))


def new_folder(env: Env, tmp: Path) -> Path:
    return tmp / "new_run"


def unfinished_fusion(env: Env, tmp: Path) -> Path:
    run = tmp / "fusion"
    run.mkdir()
    shutil.copy(env.finished / "config.yaml", run / "config.yaml")
    RunDir(run).write_info(RunInfo(kind="fusion", task="categorical", labels=["anger", "happiness", "sadness"],
                                   members=[str(env.finished), str(env.finished)], complete=False))
    return run


def edited_manifest(env: Env, tmp: Path) -> Path:
    """A corpus copy, a run interrupted on it, then one train label of its manifest edited in place."""
    corpus = Path(shutil.copytree(env.manifest.parent, tmp / "corpus"))
    run = _train(env.config, corpus / "manifest.csv", tmp / "run", StopAfterFirstEpoch)
    df = pd.read_csv(corpus / "manifest.csv")
    df.loc[0, "label"] = "sadness" if df.loc[0, "label"] != "sadness" else "anger"
    df.to_csv(corpus / "manifest.csv", index=False)
    return run


def other_manifest(env: Env, tmp: Path) -> Path:
    """A copy of the interrupted run, and a byte-identical copy of its manifest (beside it: same audio paths)."""
    run = copy_of("interrupted")(env, tmp)
    shutil.copy(env.manifest, env.manifest.parent / "other.csv")
    return run


def stopped_before_first_epoch(env: Env, tmp: Path) -> Path:
    return _train(env.config, env.manifest, tmp / "run", StopBeforeFirstEpochEnds)


# commands: (env, run folder) -> CLI arguments, or a call ---------------------------------------------------------------

def cli_train(*extra: str) -> Callable[[Env, Path], list[str]]:
    def command(env: Env, run: Path) -> list[str]:
        return ["train", "-c", str(env.config), "--manifest", str(env.manifest), "-o", str(run), *extra]
    return command


def cli_predict(env: Env, run: Path) -> list[str]:
    return ["predict", str(run), str(env.wav), "-o", str(run.parent / "out.jsonl")]


def cli_evaluate(env: Env, run: Path) -> list[str]:
    return ["evaluate", str(run), "--n-boot", "10"]


def call_train(trainer_cls: type[Trainer]) -> Callable[[Env, Path], Callable[[], Any]]:
    def command(env: Env, run: Path) -> Callable[[], Any]:
        return lambda: _train(env.config, env.manifest, run, trainer_cls)
    return command


def resume_on_other_manifest(env: Env, run: Path) -> list[str]:
    return ["train", "-c", str(env.config), "--manifest", str(env.manifest.parent / "other.csv"), "-o", str(run)]


def resume_on_own_corpus(env: Env, run: Path) -> list[str]:
    return ["train", "-c", str(env.config), "--manifest", str(run.parent / "corpus" / "manifest.csv"), "-o", str(run)]


# extra checks ------------------------------------------------------------------------------------------------------

def unfinished_without_outputs(run: Path) -> None:
    assert not RunDir(run).is_complete()
    assert not (run / "predictions").exists() and not (run / "metrics.json").exists() and not (run / "model").exists()


def no_epoch_checkpoint(run: Path) -> None:
    unfinished_without_outputs(run)
    assert not (run / "checkpoints" / "last.pt").exists()


def no_output_file(run: Path) -> None:
    assert not (run.parent / "out.jsonl").exists()


def retrained_complete(run: Path) -> None:
    assert RunDir(run).read_info().complete and (run / "predictions" / "test.csv").is_file()


@dataclass
class Case:
    id: str
    description: str
    setup: Callable[[Env, Path], Path]
    command: Callable[[Env, Path], Union[list[str], Callable[[], Any]]]
    exit_code: int
    words: tuple[str, ...]
    unchanged: tuple[str, ...] = ("*",)  # files under the run folder that must keep their bytes ("*": all of it)
    check: Optional[Callable[[Path], None]] = None
    log_words: tuple[str, ...] = ()  # words a logged warning must contain
    before: str = ""  # what the code did before these checks (for the record)


CHECKPOINT_WORDS = ("Delete the run's checkpoints folder", "from scratch")
CASES = [
    Case("crafted-last-pt", "last.pt whose pickle would run a shell command",
         damaged("interrupted", "checkpoints/last.pt", crafted_pickle), cli_train(), 1,
         ("last.pt", "objects other than tensors", *CHECKPOINT_WORDS),
         before="code ran (marker written), then a KeyError traceback"),
    Case("truncated-last-pt", "last.pt cut in half", damaged("interrupted", "checkpoints/last.pt", truncated),
         cli_train(), 1, ("last.pt", "truncated", *CHECKPOINT_WORDS), before="OSError traceback"),
    Case("not-a-checkpoint", "last.pt holding a bare tensor", damaged("interrupted", "checkpoints/last.pt",
         not_a_checkpoint), cli_train(), 1, ("last.pt", "not a checkpoint of this trainer", "missing: epoch"),
         before="IndexError traceback"),
    Case("empty-rng", "rng_rank0.pt of zero bytes", damaged("interrupted", "checkpoints/rng_rank0.pt", emptied),
         cli_train(), 1, ("rng_rank0.pt", "empty", *CHECKPOINT_WORDS),
         before="click's bare 'Aborted!' (an EOFError), exit 1, nothing named"),
    Case("run-json-invalid", "run.json that is not JSON", damaged("finished", "run.json",
         lambda p, t: p.write_text("{not json")), cli_evaluate, 1, ("run.json", "not valid JSON", "restore"),
         before="JSONDecodeError traceback"),
    Case("run-json-fields", "run.json with unknown and missing fields", damaged("finished", "run.json",
         lambda p, t: p.write_text('{"sort": "model"}')), cli_predict, 1,
         ("run.json", "does not hold a run description", "restore"), check=no_output_file,
         before="TypeError traceback"),
    Case("run-json-train", "train into a run whose run.json is not JSON", damaged("interrupted", "run.json",
         lambda p, t: p.write_text("")), cli_train(), 1, ("run.json", "not valid JSON"),
         before="clear error, but 'holds a unreadable run' without naming run.json"),
    Case("pickle-bin-full", "fine-tuned text encoder in model/ saved as a pickle pytorch_model.bin",
         damaged("text_full", "model/encoders/encoder/model", pickle_weights), cli_predict, 1,
         ("encoders/encoder/model", "safetensors", "re-save"), check=no_output_file,
         before="raw UnpicklingError traceback (transformers refused it)"),
    Case("pickle-bin-lora", "LoRA adapter in model/ saved as a pickle adapter_model.bin",
         damaged("text_lora", "model/encoders/encoder/adapter", pickle_weights), cli_predict, 1,
         ("encoders/encoder/adapter", "safetensors", "re-save"), check=no_output_file,
         before="raw UnpicklingError traceback (peft refused it)"),
    Case("lr-nan", "optim.lr_head=.nan", new_folder, cli_train("optim.lr_head=.nan"), 1,
         ("optim.lr_head", "nan", "not a finite number", "(0, inf)"), before="silent: trained, run marked complete"),
    Case("lr-negative", "optim.lr_head=-5", new_folder, cli_train("optim.lr_head=-5"), 1,
         ("optim.lr_head", "-5.0", "outside the allowed range (0, inf)"),
         before="silent: trained a diverging model (loss 209, then 2666), run marked complete"),
    Case("dropout-1.5", "head.dropout=1.5", new_folder, cli_train("head.dropout=1.5"), 1,
         ("head.dropout", "1.5", "[0, 1)"), before="torch ValueError traceback"),
    Case("nan-loss", "the loss turns NaN at the second train step", new_folder, call_train(NanLossAtStepTwo), 1,
         ("not finite", "epoch 1, step 2", "optim.lr_head", "left unfinished"), unchanged=(), check=no_epoch_checkpoint,
         before="silent: NaN weights, NaN probabilities in predictions/*.csv, run marked complete"),
    Case("nan-test-outputs", "finite training, NaN outputs on the test split", new_folder,
         call_train(NanTestOutputs), 1, ("test outputs are not finite", "no predictions were written", "unfinished"),
         unchanged=(), check=unfinished_without_outputs,
         before="silent: NaN probabilities in predictions/test.csv, run marked complete"),
    Case("predict-nan", "a run whose weights are NaN, predicted with `fusion-ser predict`",
         damaged("finished", "model/weights.safetensors", nan_weights), cli_predict, 1,
         (".wav", "non-finite outputs", "train the run again"), check=no_output_file,
         before="silent: NaN probabilities written to the .jsonl"),
    Case("other-manifest", "resume with a copy of the manifest under another path", other_manifest,
         resume_on_other_manifest, 1, ("cannot be resumed on other data", "other.csv", "original manifest",
                                       "new output folder"),
         before="silent: resumed on the other manifest (data.manifest is a runtime key)"),
    Case("edited-manifest", "resume after the manifest was edited in place", edited_manifest,
         resume_on_own_corpus, 1, ("cannot be resumed on other data", "was edited since the run started", "sha256",
                                   "original manifest"),
         before="silent: resumed on the edited rows"),
    Case("unfinished-fusion", "train -o into an unfinished fusion run", unfinished_fusion, cli_train(), 1,
         ("holds a fusion run, not a model run", "choose another output folder"),
         before="clear error (rundir.resumable checks the kind)"),
    Case("no-checkpoint", "an unfinished model run killed before its first epoch ended", stopped_before_first_epoch,
         cli_train(), 0, (), unchanged=(), check=retrained_complete, log_words=("no checkpoint", "from scratch"),
         before="retrained from scratch without a word"),
]


def snapshot(folder: Path) -> Optional[dict[str, str]]:
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_command(command: Union[list[str], Callable[[], Any]]) -> tuple[int, str]:
    if callable(command):
        try:
            command()
        except FusionSerError as e:
            return 1, str(e)
        return 0, ""
    result = CliRunner().invoke(main, command)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of the case
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, env: Env, tmp_path: Path, caplog) -> None:
    run = case.setup(env, tmp_path)
    before = snapshot(run)
    command = case.command(env, run)
    with caplog.at_level(logging.WARNING):
        code, message = run_command(command)
    assert code == case.exit_code, message
    flat = " ".join(message.split())
    for word in case.words:
        assert word in flat, f"{word!r} not in: {flat}"
    if code:
        assert "Traceback" not in message
        if not callable(command):
            assert "Error: " in flat, flat
    after = snapshot(run)
    if "*" in case.unchanged:
        assert after == before
    for rel in case.unchanged:
        if rel != "*":
            assert (after or {}).get(rel) == (before or {}).get(rel), rel
    assert not (tmp_path / "MARKER").exists(), "unpickling ran code"
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    for word in case.log_words:
        assert word in logged, f"{word!r} not in the warnings: {logged}"
    if case.check is not None:
        case.check(run)


def test_resume_still_works_after_a_clean_interruption(env: Env, tmp_path: Path) -> None:
    """The control: the undamaged interrupted run resumes (weights-only checkpoints, same manifest) and finishes."""
    run = Path(shutil.copytree(env.interrupted, tmp_path / "run"))
    result = CliRunner().invoke(main, ["train", "-c", str(env.config), "--manifest", str(env.manifest), "-o", str(run)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and RunDir(run).read_info().complete


def test_a_full_disk_stops_training_with_a_clear_error_and_the_run_resumes(env: Env, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """ENOSPC while writing a checkpoint: exit 1 naming the file, nothing corrupted, and the run resumes later."""
    import errno

    run = Path(shutil.copytree(env.interrupted, tmp_path / "run"))
    last = (run / "checkpoints" / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    args = ["train", "-c", str(env.config), "--manifest", str(env.manifest), "-o", str(run)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert "no space left on the device while writing" in flat and "checkpoints" in flat and "resumes" in flat
    assert (run / "checkpoints" / "last.pt").read_bytes() == last and not RunDir(run).is_complete()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left
    monkeypatch.setattr(torch, "save", real_save)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert RunDir(run).read_info().complete


def test_checkpoints_load_weights_only_and_restore_rng_exactly(tmp_path: Path) -> None:
    import random

    import numpy as np

    from fusion_ser.training import checkpoint as ckpt

    random.seed(3)
    np.random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    ckpt.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(1).item())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.restore_rng(tmp_path / "rng.pt")
    assert (random.random(), np.random.standard_normal(), torch.rand(1).item()) == expected
    torch.load(tmp_path / "rng.pt", weights_only=True)
