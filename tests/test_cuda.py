"""The CUDA path: bf16 autocast training (audio, LoRA text with a bf16 base, attention fusion), predict, feature
caching and the trainer's `cpu:gloo,cuda:nccl` process group on a GPU; saved models reload on CPU and predict the
same labels. Marked `cuda` (`pytest -m cuda` runs them alone); skipped where torch sees no GPU, run by `make test`
where it does. Pieces that can also be checked on CPU have a CPU twin here (parametrised) or in test_ddp_data.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.training.trainer import Trainer
from tests.test_ddp_data import torchrun
from tests.test_trainer import make_corpus, save_tiny_ssl
from tests.tiny_models import save_tiny_bert

HAS_CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device visible to torch "
                                                   "(torch.cuda.is_available() is False)")]
cuda = pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
cpu_and_cuda = pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])


class DtypeTrainer(Trainer):
    """Records the output dtype of every Linear layer and the device of the parameters during the train stage."""

    seen: set = set()
    devices: set = set()

    def on_stage_start(self, stage: str, epoch: int) -> None:
        if stage != "train" or getattr(self, "_hooks", None):
            return
        record = lambda m, i, o: DtypeTrainer.seen.add(o.dtype) if isinstance(o, torch.Tensor) else None  # noqa: E731
        self._hooks = [m.register_forward_hook(record) for m in self.module.modules() if isinstance(m, torch.nn.Linear)]
        DtypeTrainer.devices |= {p.device.type for p in self.module.parameters()}


def common(device: str, cache_dir: Path, epochs: int = 3) -> list[str]:
    return ["seed=0", f"train.device={device}", f"train.epochs={epochs}", "train.batch_size=8", "train.report=false",
            f"train.cache_dir={cache_dir}", "pooling.attention_dim=16", "head.hidden_dim=32", "head.dropout=0.0",
            "optim.lr_encoder=0.001", "optim.lr_head=0.003"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("cuda_corpus"), n_speakers=4, per_class=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cuda_models")
    return {"wav2vec2": save_tiny_ssl("wav2vec2", root / "w2v"), "bert": save_tiny_bert(root / "bert")}


def train(overrides: list[str], corpus: Path, out: Path, trainer_cls: type[Trainer] = Trainer):
    from fusion_ser.config import load_config
    from fusion_ser.training.job import train_run

    DtypeTrainer.seen, DtypeTrainer.devices = set(), set()
    return train_run(load_config(None, overrides), corpus, out, trainer_cls=trainer_cls)


def audio_overrides(models: dict, device: str, cache_dir: Path, cached: bool = False) -> list[str]:
    """The tiny wav2vec2: fine-tuned end to end, or frozen with its outputs in the feature cache (`cached`)."""
    return common(device, cache_dir) + ["audio_encoder.type=hf", f"audio_encoder.name_or_path={models['wav2vec2']}",
                                        f"audio_encoder.finetune={'frozen' if cached else 'full'}",
                                        f"train.cache_features={str(cached).lower()}"]


@cuda
def test_audio_model_trains_in_bf16_autocast(device, corpus, models, tmp_path) -> None:
    run = train(audio_overrides(models, device, tmp_path / 'cache'), corpus, tmp_path / "run", DtypeTrainer)
    assert run.read_info().complete
    assert DtypeTrainer.devices == {"cuda"}
    assert torch.bfloat16 in DtypeTrainer.seen  # the encoder's and head's matmuls ran under bf16 autocast
    log = pd.read_csv(run.train_log_path)
    assert np.isfinite(log["train_loss"]).all()
    from safetensors.torch import load_file

    weights = load_file(str(run.model_dir / "weights.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())  # master weights stay fp32


@cuda
def test_text_model_with_lora_on_a_bf16_base(device, corpus, models, tmp_path) -> None:
    over = common(device, tmp_path / 'cache') + ["modality=text", f"text_encoder.name_or_path={models['bert']}",
                                       "text_encoder.finetune=lora", "text_encoder.base_dtype=bf16",
                                       "text_encoder.lora.r=4", "text_encoder.max_length=16"]
    run = train(over, corpus, tmp_path / "run", DtypeTrainer)
    assert run.read_info().complete and DtypeTrainer.devices == {"cuda"}
    assert torch.bfloat16 in DtypeTrainer.seen
    from fusion_ser.models.io import load_model

    model, _, _ = load_model(run.model_dir)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n and n.startswith("encoder."))
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert np.isfinite(pd.read_csv(run.train_log_path)["train_loss"]).all()


@cuda
def test_attention_fusion_trains_and_predicts(device, corpus, models, tmp_path) -> None:
    over = audio_overrides(models, device, tmp_path / 'cache') + [
        "modality=both", f"text_encoder.name_or_path={models['bert']}", "text_encoder.finetune=frozen",
        "text_encoder.max_length=16", "fusion.dim=32", "fusion.heads=2", "fusion.layers=1"]
    run = train(over, corpus, tmp_path / "run", DtypeTrainer)
    assert run.read_info().modality == "both" and DtypeTrainer.devices == {"cuda"}
    assert torch.bfloat16 in DtypeTrainer.seen
    dev = run.read_predictions("dev")
    assert len(dev) == 12 and np.isfinite(dev.filter(like="prob_").to_numpy()).all()


@pytest.fixture(scope="module")
def runs(corpus, models, tmp_path_factory) -> dict:
    """One audio run per available device (trained there), for the reload checks."""
    out = {}
    for device in ["cpu"] + (["cuda"] if HAS_CUDA else []):
        tmp = tmp_path_factory.mktemp(f"run_{device}")
        confident = ["train.epochs=8", "optim.lr_head=0.01", "optim.lr_encoder=0.003"]  # few near ties
        out[device] = train(audio_overrides(models, device, tmp / "cache") + confident, corpus, tmp / "run")
    return out


def _predict(run, device: str, corpus: Path) -> pd.DataFrame:
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.training.inference import predict_frame

    model, cfg, _ = load_model(run.model_dir)
    dev = read_manifest(corpus).query("split == 'dev'")
    return predict_frame(model, dev, cfg, torch.device(device)).set_index("utt_id").sort_index()


@cpu_and_cuda
def test_saved_model_reloads_on_cpu_and_predicts_the_same_labels(device, runs, corpus) -> None:
    """Trained on `device` (CUDA: bf16 autocast), reloaded on the CPU in fp32: the same labels wherever the CPU's
    top two classes are not a near tie, and probabilities within bf16 rounding; the run's own dev predictions too."""
    run = runs[device]
    there, cpu = _predict(run, device, corpus), _predict(run, "cpu", corpus)
    saved = run.read_predictions("dev").set_index("utt_id").sort_index()
    prob = [c for c in cpu.columns if c.startswith("prob_")]
    top2 = np.sort(cpu[prob].to_numpy(), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > (0.05 if device == "cuda" else 0.0)
    assert clear.mean() >= 0.5, "too many near ties for the check to mean anything"
    assert (there["pred"][clear] == cpu["pred"][clear]).all()
    assert (saved["pred"][clear] == cpu["pred"][clear]).all()
    tol = 0.03 if device == "cuda" else 1e-5
    np.testing.assert_allclose(there[prob].to_numpy(), cpu[prob].to_numpy(), atol=tol)
    np.testing.assert_allclose(saved[prob].to_numpy(), cpu[prob].to_numpy(), atol=tol)


@cuda
def test_predict_api_on_cuda(device, runs, corpus) -> None:
    import fusion_ser
    from fusion_ser.data.manifest import read_manifest

    dev = read_manifest(corpus).query("split == 'dev'")
    paths = [str(Path(corpus).parent / p) if not Path(p).is_absolute() else p for p in dev["path"]]
    on_gpu = fusion_ser.load(runs["cuda"].path, device="cuda").predict(paths[:4], batch_size=2)
    on_cpu = fusion_ser.load(runs["cuda"].path, device="cpu").predict(paths[:4], batch_size=2)
    assert len(on_gpu) == 4 and all(r["label"] in runs["cuda"].read_info().labels for r in on_gpu)
    saved = runs["cuda"].read_predictions("dev").set_index("utt_id")
    cpu = _predict(runs["cuda"], "cpu", corpus)
    for utt, g, c in zip(dev["utt_id"][:4], on_gpu, on_cpu):
        prob = cpu.loc[utt, [k for k in cpu.columns if k.startswith("prob_")]].to_numpy(float)
        if np.diff(np.sort(prob)[-2:])[0] > 0.05:
            assert g["label"] == c["label"] == saved.loc[utt, "pred"]


@cuda
def test_feature_caching_runs_on_the_gpu_and_matches_the_cpu_cache(device, corpus, models, tmp_path) -> None:
    from fusion_ser.config import load_config
    from fusion_ser.data.feature_cache import read_entry
    from fusion_ser.data.selection import load_run_data
    from fusion_ser.models.factory import build_model
    from fusion_ser.training.distributed import DistInfo
    from fusion_ser.training.job import feature_caches, fill_caches

    def fill(dev: str, root: Path) -> tuple[dict, str]:
        cfg = load_config(None, audio_overrides(models, dev, root, cached=True))
        data = load_run_data(cfg, corpus)
        model = build_model(cfg, data.labels, train_labels=data.train["label"].tolist())
        cached = feature_caches(model, cfg)
        fill_caches(cached, data, DistInfo(), device=torch.device(dev))
        where = next(cached[0].encoder.parameters()).device.type
        return {str(p.relative_to(root)): read_entry(p).astype(np.float32) for p in root.rglob("*.fsc")}, where

    gpu, where = fill(device, tmp_path / "gpu")
    cpu, _ = fill("cpu", tmp_path / "cpu")
    assert where == "cuda" and sorted(gpu) == sorted(cpu) and len(gpu) == len(pd.read_csv(corpus))
    for key, array in cpu.items():  # fp32 on both (TF32 convolutions on the GPU), stored as fp16
        scale = float(np.abs(array).max()) or 1.0
        np.testing.assert_allclose(gpu[key], array, atol=0.02 * scale)
    run = train(audio_overrides(models, device, tmp_path / "gpu", cached=True), corpus, tmp_path / "run")
    assert run.read_info().complete  # training reads the cache the GPU wrote


@cuda
def test_the_trainer_process_group_on_cuda_under_torchrun_with_one_process(device, tmp_path) -> None:
    """cpu:gloo,cuda:nccl in a world of one: a CUDA tensor through nccl, CPU scalars and objects through gloo, one
    DDP step on the GPU (the CPU twin is in test_ddp_data.py)."""
    (rec,) = torchrun(tmp_path, 1, "group", "cuda", gpus=True)
    assert "nccl" in rec["backend"] and "gloo" in rec["backend"] and rec["world"] == 1
    assert rec["all_reduce"] == [1.0, 1.0, 1.0] and rec["sums"] == [1.0, 0.0]
    assert rec["gathered"] == [{"rank": 0}] and rec["told"] == {"from": 0}
    assert rec["wrapped"] == "DistributedDataParallel" and np.isfinite(rec["loss"]) and rec["grad"] > 0
