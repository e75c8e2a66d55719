"""Training-step throughput against the MSP-Podcast challenge baseline, on the same random WavLM and the same clips.

Ours: the project's model (hf encoder fine-tuned, CNN front end frozen, masked vectorised attentive statistics
pooling, the baseline head) through `Trainer._train_epoch` (the loop `train` runs: bucketed batches from
`BucketBatchSampler`, zero-padded with masks by `collate`, bf16 autocast on CUDA from `device.py`).
Baseline: the loop of msplabresearch/MSP-Podcast_Challenge (`train_ft_cat_ser_weighted.py`): fp32, random batches
padded to the longest, WavLM `last_hidden_state` with an attention mask, `AttentiveStatisticsPooling` that pools
one utterance at a time in a Python loop, `EmotionRegression` head (2 x 1024, LayerNorm, dropout 0.5), weighted CE,
three AdamW optimizers; its CNN front end is frozen too (`freeze_feature_encoder`).

Both see the same N clips (noise; lengths drawn from an MSP-Podcast-like distribution: log-normal, median 4.5 s,
clipped to 2.75-11 s), the same batch size, one untimed warm-up pass, then one timed epoch. Each side runs in its own
process, so peak memory is its own: torch.cuda.max_memory_allocated on CUDA, peak RSS (ru_maxrss) on CPU.

    python bench/gpu_train.py                 # CUDA: WavLM-large size (1024 x 24 layers, 16 heads, 4096 FFN)
    python bench/gpu_train.py --tiny          # CPU default: a 2-layer, width-32 WavLM, so the bench is tested
    python bench/gpu_train.py --utterances 512 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SR = 16000
CLASSES = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]  # the challenge's 8


def lengths_s(n: int, seed: int = 0) -> np.ndarray:
    """MSP-Podcast-like turn lengths: log-normal (median 4.5 s, sigma 0.45), clipped to the corpus's 2.75-11 s."""
    rng = np.random.default_rng(seed)
    return np.clip(np.exp(rng.normal(np.log(4.5), 0.45, n)), 2.75, 11.0)


def save_wavlm(directory: Path, tiny: bool) -> str:
    """A randomly initialised WavLM (large-sized, or tiny) with its feature extractor, via save_pretrained."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    if tiny:
        cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32,
                          max_bucket_distance=64, feat_extract_norm="layer", do_stable_layer_norm=True,
                          mask_time_prob=0.0, layerdrop=0.0)
    else:  # microsoft/wavlm-large's shape
        cfg = WavLMConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                          mask_time_prob=0.0, layerdrop=0.0)
    torch.manual_seed(0)
    WavLMModel(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True,
                             return_attention_mask=True).save_pretrained(directory)
    return str(directory)


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return [(0.1 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in lengths_s(n, seed)]


def labels(n: int) -> list[int]:
    return [i % len(CLASSES) for i in range(n)]


def peak_memory(device: torch.device) -> float:
    """MB: peak CUDA memory allocated since the last reset, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ours --------------------------------------------------------------------------------------------------------------


def run_ours(model_dir: str, n: int, batch_size: int, device: torch.device, precision: str = "auto") -> dict:
    """One warm-up and one timed epoch of the project's Trainer on in-memory clips (bucketing on)."""
    from torch.utils.data import DataLoader

    from fusion_ser.config import load_config
    from fusion_ser.data.dataset import collate
    from fusion_ser.data.sampler import BucketBatchSampler
    from fusion_ser.device import resolve_precision
    from fusion_ser.models.factory import build_model
    from fusion_ser.rundir import RunInfo
    from fusion_ser.training.distributed import DistInfo
    from fusion_ser.training.trainer import Trainer

    cfg = load_config(None, ["audio_encoder.type=hf", f"audio_encoder.name_or_path={model_dir}",
                             "audio_encoder.finetune=full", "audio_encoder.layers=last", "train.cache_features=false",
                             f"train.batch_size={batch_size}", f"train.device={device}", "train.bucketing=true",
                             "head.hidden_dim=1024", "optim.ema_decay=0.0", f"train.precision={precision}"])
    waves, ys = clips(n), labels(n)
    items = [{"index": i, "utt_id": f"u{i}", "text": "", "wav": w, "label": y} for i, (w, y) in enumerate(zip(waves, ys))]
    model = build_model(cfg, CLASSES, train_labels=[CLASSES[y] for y in ys])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, CLASSES, device=device, dist=DistInfo(),
                          info=RunInfo(kind="model", task="categorical", labels=CLASSES),
                          checkpoint_dir=Path(tmp) / "ckpt", log_path=Path(tmp) / "log.csv")
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
        sampler = BucketBatchSampler([len(w) / SR for w in waves], batch_size, shuffle=True, seed=0)
        loader = DataLoader(items, batch_sampler=sampler, collate_fn=collate)
        sampler.set_epoch(0)
        trainer._train_epoch(loader, 1, len(sampler))  # warm-up: kernels, allocator, cudnn
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        sampler.set_epoch(1)
        stats = trainer._train_epoch(loader, 2, len(sampler))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    padded = sum(max(len(waves[i]) for i in b) * len(b) for b in sampler)
    return {"utt_per_s": stats["utt_per_s"], "seconds": stats["seconds"], "loss": stats["loss"],
            "peak_mb": peak_memory(device), "precision": str(resolve_precision(device, cfg.train.precision)),
            "padding": 1 - sum(len(w) for w in waves) / padded}


# the baseline ------------------------------------------------------------------------------------------------------


class AttentiveStatisticsPooling(nn.Module):
    """The challenge's pooling (net/pooling.py): attention and statistics computed one utterance at a time."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.sap_linear = nn.Linear(input_dim, input_dim)
        self.attention = nn.Parameter(torch.FloatTensor(input_dim, 1))
        torch.nn.init.normal_(self.attention, mean=0, std=1)

    @staticmethod
    def compute_length_from_mask(mask: torch.Tensor) -> list[int]:
        wav_lens = torch.sum(mask, dim=1)
        feat_lens = torch.div(wav_lens - 1, 16000 * 0.02, rounding_mode="floor") + 1
        return feat_lens.int().tolist()

    def forward(self, xs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled_list = []
        for x, feat_len in zip(xs, self.compute_length_from_mask(mask)):
            x = x[:feat_len].unsqueeze(0)
            h = torch.tanh(self.sap_linear(x))
            w = torch.matmul(h, self.attention).squeeze(dim=2)
            w = F.softmax(w, dim=1).view(x.size(0), x.size(1), 1)
            mu = torch.sum(x * w, dim=1)
            rh = torch.sqrt((torch.sum((x ** 2) * w, dim=1) - mu ** 2).clamp(min=1e-5))
            pooled_list.append(torch.cat((mu, rh), 1).squeeze(0))
        return torch.stack(pooled_list)


class EmotionRegression(nn.Module):
    """The challenge's head (net/ser.py): Linear-LayerNorm-ReLU-Dropout blocks, then a linear output."""

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, output_dim: int, p: float = 0.5):
        super().__init__()
        self.fc = nn.ModuleList([nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
                                               nn.Dropout(p))])
        for _ in range(num_layers - 1):
            self.fc.append(nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
                                         nn.Dropout(p)))
        self.out = nn.Sequential(nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fc in self.fc:
            x = fc(x)
        return self.out(x)


def baseline_batches(waves: list[np.ndarray], ys: list[int], batch_size: int, seed: int) -> list[tuple]:
    """Shuffled batches padded to their longest clip, with the 0/1 sample mask (the challenge's collate)."""
    order = np.random.default_rng(seed).permutation(len(waves))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        longest = max(len(waves[i]) for i in idx)
        x = torch.zeros(len(idx), longest)
        mask = torch.zeros(len(idx), longest)
        for j, i in enumerate(idx):
            x[j, :len(waves[i])] = torch.from_numpy(waves[i])
            mask[j, :len(waves[i])] = 1
        out.append((x, torch.tensor([ys[i] for i in idx]), mask))
    return out


def run_baseline(model_dir: str, n: int, batch_size: int, device: torch.device) -> dict:
    """One warm-up and one timed epoch of the challenge's training loop, fp32."""
    from transformers import WavLMModel

    ssl_model = WavLMModel.from_pretrained(model_dir).to(device)
    ssl_model.freeze_feature_encoder()
    ssl_model.train()
    dim = ssl_model.config.hidden_size
    pool_model = AttentiveStatisticsPooling(dim).to(device).train()
    ser_model = EmotionRegression(dim * 2, 1024, 2, len(CLASSES), p=0.5).to(device).train()
    opts = [torch.optim.AdamW(m.parameters(), 1e-5) for m in (ssl_model, pool_model, ser_model)]
    waves, ys = clips(n), labels(n)
    counts = np.bincount(ys, minlength=len(CLASSES))
    weights = torch.tensor(counts.sum() / (len(CLASSES) * counts), dtype=torch.float32, device=device)

    def epoch(seed: int) -> tuple[float, float, int]:
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for x, y, mask in baseline_batches(waves, ys, batch_size, seed):
            x, y, mask = x.to(device).float(), y.to(device), mask.to(device).float()
            ssl = ssl_model(x, attention_mask=mask).last_hidden_state
            ssl = pool_model(ssl, mask)
            loss = F.cross_entropy(ser_model(ssl), y, weight=weights)
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
            loss_sum += float(loss) * len(y)
            seen += len(y)
        return time.perf_counter() - start, loss_sum / seen, seen

    epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds, loss, seen = epoch(1)
    padded = sum(x.numel() for x, _, _ in baseline_batches(waves, ys, batch_size, 1))
    return {"utt_per_s": seen / seconds, "seconds": seconds, "loss": loss, "peak_mb": peak_memory(device),
            "precision": "torch.float32", "padding": 1 - sum(len(w) for w in waves) / padded}


# driver ------------------------------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.only == "ours":
        result = run_ours(args.model_dir, args.utterances, args.batch_size, device, args.precision)
    else:
        result = run_baseline(args.model_dir, args.utterances, args.batch_size, device)
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    ap.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=not cuda,
                    help="a tiny WavLM (default without CUDA) instead of the WavLM-large shape")
    ap.add_argument("--utterances", type=int, default=None, help="clips per epoch (default 512 large, 48 tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="clips per batch (default 16 large, 8 tiny)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the shared CPU machines: 1)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="our loop's train.precision (auto: bf16 on CUDA, fp32 on CPU); the baseline is always fp32")
    ap.add_argument("--only", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.utterances = args.utterances or (48 if args.tiny else 512)
    args.batch_size = args.batch_size or (8 if args.tiny else 16)
    if args.only:
        return child(args)
    device = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    secs = lengths_s(args.utterances)
    print(f"device {device}; {'tiny' if args.tiny else 'WavLM-large-sized'} random WavLM; {args.utterances} clips "
          f"(mean {secs.mean():.2f} s, {secs.min():.2f}-{secs.max():.2f} s, {secs.sum() / 60:.1f} min), "
          f"batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model_dir = save_wavlm(Path(tmp) / "wavlm", args.tiny)
        print(f"model saved in {time.perf_counter() - t0:.1f} s")
        results = {}
        for side in ("baseline", "ours"):
            cmd = [sys.executable, __file__, "--only", side, "--model-dir", model_dir, "--utterances",
                   str(args.utterances), "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--precision", args.precision,
                   "--tiny" if args.tiny else "--no-tiny"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    memory = "peak GPU MB (max_memory_allocated)" if cuda else "peak RSS MB"
    print(f"{'loop':<10}{'precision':>16}{'utt/s':>10}{'epoch s':>10}{'padding':>9}{memory:>36}{'loss':>9}")
    for side, r in results.items():
        print(f"{side:<10}{r['precision'].removeprefix('torch.'):>16}{r['utt_per_s']:>10.2f}{r['seconds']:>10.2f}"
              f"{r['padding']:>9.1%}{r['peak_mb']:>36.0f}{r['loss']:>9.3f}")
    speed = results["ours"]["utt_per_s"] / results["baseline"]["utt_per_s"]
    mem = results["ours"]["peak_mb"] / results["baseline"]["peak_mb"]
    goal = "goal >= 2x met" if speed >= 2 else "goal >= 2x NOT met"
    print(f"speed-up {speed:.2f}x ({goal}{'' if cuda else '; the goal is for CUDA'}); memory ours/baseline {mem:.2f}")


if __name__ == "__main__":
    main()
