"""MELD text benchmark: the default text recipe (configs/text_minilm_lora.yaml) vs a plain LoRA script, on dev.

Trains on MELD train and selects on dev (never test; ../shared/data/meld has train and dev only), then prints dev
weighted-F1 / macro-F1 (sklearn, MELD's figures) and wall times of:
  plain     an independent ~50-line transformers + peft script: r=16 LoRA on query/key/value/dense, mean pooling,
            a linear head, class-weighted CE, one-cycle schedule, 3 epochs, best dev epoch by weighted-F1
  default   the project's trainer with the config (and any key=value overrides)
  context   the same with text_encoder.context_turns = N for each N of --context (the default's own N is skipped)
  reference frozen MiniLM embeddings + logistic regression (with --systems ...,reference)

    python bench/meld_text.py [--root ../shared/data/meld] [--systems plain,default,context] [--context 0,1,2,4] \
        [--threads 1] [key=value ...]

On a shared 2-core CPU one training takes 20-45 minutes; run the systems one at a time with --systems to spread them.
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


def plain_lora(train: pd.DataFrame, dev: pd.DataFrame, seed: int, max_length: int = 64, epochs: int = 3,
               lr: float = 5e-4, batch: int = 32) -> tuple[dict, float, int]:
    """The plain script of issue 17, independent of our trainer: transformers + peft, r=16 LoRA on
    query/key/value/dense, mean pooling, a linear head, class-weighted CE, one-cycle schedule, best dev epoch
    (by weighted F1, MELD's figure). Returns (dev scores of the best epoch, wall seconds, best epoch)."""
    import peft
    from transformers import AutoModel, AutoTokenizer

    from fusion_ser.packaged import packaged_model_path

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    path = packaged_model_path("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=["query", "key", "value", "dense"])
    model = peft.get_peft_model(AutoModel.from_pretrained(path), lora)
    classes = sorted(train["label"].unique())
    y_tr = torch.tensor(train["label"].map(classes.index).to_numpy())
    head = torch.nn.Linear(model.config.hidden_size, len(classes))
    counts = torch.bincount(y_tr, minlength=len(classes)).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(classes) * counts))
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * ((len(train) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    def logits(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        return head((h * m).sum(1) / m.sum(1))

    texts_tr, texts_dev = train["text"].tolist(), dev["text"].tolist()
    best, best_epoch = None, 0
    for epoch in range(1, epochs + 1):
        model.train(), head.train()
        for idx in torch.randperm(len(train)).split(batch):
            loss = loss_fn(logits([texts_tr[i] for i in idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(), sched.step()
        model.eval(), head.eval()
        with torch.no_grad():
            pred = torch.cat([logits(texts_dev[i:i + 128]).argmax(-1) for i in range(0, len(dev), 128)])
        s = scores(dev["label"], pd.Series([classes[i] for i in pred.tolist()], index=dev.index))
        print(f"  plain epoch {epoch}/{epochs}: dev weighted-F1 {s['weighted_f1']:.4f} macro-F1 {s['macro_f1']:.4f}",
              flush=True)
        if best is None or s["weighted_f1"] > best["weighted_f1"]:
            best, best_epoch = s, epoch
    return best, time.perf_counter() - t0, best_epoch


def report_epoch(event: object) -> None:
    """Print one line per finished epoch of the trainer (the bench's only progress output)."""
    if isinstance(event, EpochEnded) and not event.refit:
        print(f"  epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.4f}, "
              f"{event.utt_per_s:.1f} utt/s, dev {event.metric} {event.dev:.4f}"
              f"{' (best)' if event.best else ''}", flush=True)


def ours(cfg, manifest: Path, dev: pd.DataFrame, out: Path) -> tuple[dict, float, int]:
    """Train with the project's trainer; dev scores of the selected epoch, training wall seconds, best epoch."""
    t0 = time.perf_counter()
    run = train_run(cfg, manifest, out, progress=report_epoch)
    wall = time.perf_counter() - t0
    pred = RunDir(run.path).read_predictions("dev")
    truth = dev.set_index("utt_id").loc[pred["utt_id"].astype(str), "label"].to_numpy()
    log = pd.read_csv(run.train_log_path)
    return scores(pd.Series(truth), pred["pred"].astype(str)), wall, int(log[log["best"]]["epoch"].max())


def line(name: str, s: dict, wall: float, extra: str = "") -> str:
    """One result line of the bench's table."""
    return (f"{name:<34} dev weighted-F1 {s['weighted_f1']:.4f}  macro-F1 {s['macro_f1']:.4f}  "
            f"wall {wall:5.0f} s  {extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "meld"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "text_minilm_lora.yaml"))
    ap.add_argument("--out", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--systems", default="plain,default,context",
                    help="comma list of reference, plain, default, context")
    ap.add_argument("--context", default="0,1,2,4", help="context_turns of the context variants")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value (the default and the context variants)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    systems = set(args.systems.split(","))
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
    results = []
    if "reference" in systems:
        ref, wall, c = reference(train, dev, cfg.seed)
        results.append(line("frozen MiniLM + logistic regression", ref, wall, f"C={c}"))
        print(results[-1], flush=True)
    if "plain" in systems:
        seed_everything(cfg.seed)
        s, wall, best = plain_lora(train, dev, cfg.seed)
        results.append(line("plain LoRA script", s, wall, f"best epoch {best}/3"))
        print(results[-1], flush=True)
    runs = {}
    if "default" in systems:
        runs[f"default ({Path(args.config).name})"] = cfg
    if "context" in systems:
        for n in [int(v) for v in args.context.split(",") if v.strip()]:
            if "default" in systems and n == cfg.text_encoder.context_turns:
                continue  # the default itself
            runs[f"default, context_turns={n}"] = load_config(args.config, args.overrides +
                                                              [f"text_encoder.context_turns={n}"])
    for i, (name, run_cfg) in enumerate(runs.items()):
        print(f"{name}: lr {run_cfg.optim.lr_encoder:g}, r={run_cfg.text_encoder.lora.r}, "
              f"epochs {run_cfg.train.epochs}, loss {run_cfg.loss.type}, "
              f"context_turns {run_cfg.text_encoder.context_turns}", flush=True)
        s, wall, best = ours(run_cfg, manifest, dev, work / f"run{i}")
        results.append(line(name, s, wall, f"best epoch {best}/{run_cfg.train.epochs}, "
                                           f"context_turns={run_cfg.text_encoder.context_turns}"))
        print(results[-1], flush=True)
    print("\nMELD dev (train on train, select on dev):")
    print("\n".join(results))


if __name__ == "__main__":
    main()
