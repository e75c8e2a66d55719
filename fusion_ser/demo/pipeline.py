"""The whole flow on a generated corpus, offline and on CPU: what `fusion-ser demo` runs.

corpus (hibari-tts) -> transcripts (packaged Whisper tiny.en) -> audio model, text model (MiniLM + LoRA) ->
late fusion of the two -> attention fusion model -> comparison against the audio baseline -> report with plots.
Each step is the library function its CLI command calls, so the demo exercises exactly what a user runs.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

import fusion_ser
from fusion_ser.config import Config, load_config
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir

log = logging.getLogger(__name__)

# progress(stage, done, total): stage is one of STAGES; done/total count the stage's own units (clips, epochs, ...)
Progress = Callable[[str, int, int], None]
STAGES = ["corpus", "transcribe", "train audio", "train text", "late fusion", "attention fusion", "compare", "report"]

SIZES = {
    # speakers, utterances per emotion and speaker, config overrides (train.* for every model), late-fusion folds
    # inside dev (at most the dev clips per class: per_emotion x dev speakers)
    "full": {"n_speakers": 8, "per_emotion": 12, "overrides": [], "fuse_folds": 5},
    "small": {"n_speakers": 4, "per_emotion": 3, "overrides": ["train.epochs=1", "train.batch_size=8"], "fuse_folds": 3},
}
MARKER = ".fusion-ser-demo"
CONFIGS = {"audio": "demo_audio.yaml", "text": "demo_text.yaml", "both": "demo_both.yaml"}


class DemoError(FusionSerError):
    """The demo cannot run as asked (unknown size, missing demo configs, output folder in use)."""


@dataclass
class DemoSummary:
    """Where the demo put everything and how the models scored on the test split."""

    out_dir: str
    corpus_manifest: str
    manifest: str  # the corpus with Whisper transcripts in `text`: what the models trained on
    runs: dict[str, str]  # audio, text, late, both -> run dir
    comparison: str
    report: str
    test_scores: dict[str, float]  # run name -> test macro F1
    metric: str
    asr_wer: float
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time per step
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)  # CPU time (user + system, all threads)
    n_clips: int = 0

    @property
    def best(self) -> str:
        return max(self.test_scores, key=self.test_scores.get)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def config_dir() -> Path:
    """The repository's configs/ folder (beside the fusion_ser package)."""
    return Path(fusion_ser.__file__).resolve().parent.parent / "configs"


def demo_config(modality: str, out_dir: Path, seed: int, overrides: list[str]) -> Config:
    """The demo config of a modality with the seed, a feature cache inside the demo folder, and size overrides."""
    path = config_dir() / CONFIGS[modality]
    if not path.is_file():
        raise DemoError(f"demo config '{path}' is missing; run the demo from a checkout of fusion-ser (configs/ holds it)")
    return load_config(path, [f"seed={seed}", f"train.cache_dir={out_dir / 'cache' / 'features'}", *overrides])


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prepare_out_dir(out: Path) -> Path:
    """An empty folder, or one a previous demo wrote (its corpus, runs and reports are replaced; caches are kept)."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise DemoError(f"-o {out} is a file; give a folder for the demo")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoError(f"-o {out} is not empty and was not written by the demo; give a new or empty folder")
    for sub in ("corpus", "runs", "reports"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `fusion-ser demo`; the demo may replace this folder's contents\n")
    return out


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Word error rate over a corpus (lower-cased, punctuation stripped): edits / reference words."""
    def words(s: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() or c == "'" else " " for c in s).split()

    edits = total = 0
    for ref, hyp in zip(refs, hyps):
        r, h = words(ref), words(hyp)
        prev = list(range(len(h) + 1))
        for i, rw in enumerate(r, 1):
            cur = [i] + [0] * len(h)
            for j, hw in enumerate(h, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
            prev = cur
        edits += prev[-1]
        total += len(r)
    return edits / total if total else 0.0


def run_demo(out_dir: str | Path, *, size: str = "full", seed: int = 0, progress: Optional[Progress] = None) -> DemoSummary:
    """Run every step into out_dir (corpus/, runs/{audio,text,late,both}/, reports/) and return where things are."""
    from fusion_ser.data.manifest import read_manifest, write_manifest
    from fusion_ser.demo.corpus import generate_corpus
    from fusion_ser.evaluation.compare import compare_runs, write_comparison
    from fusion_ser.evaluation.metrics import primary_key
    from fusion_ser.fusion.late import late_fuse
    from fusion_ser.training.events import EpochEnded
    from fusion_ser.training.job import train_run
    from fusion_ser.transcribe import TranscriptCache, get_transcriber, transcribe_frame

    if size not in SIZES:
        raise DemoError(f"size '{size}' is not one of {list(SIZES)}", options=("size",))
    spec = SIZES[size]
    out = prepare_out_dir(Path(out_dir))
    runs_dir, reports = out / "runs", out / "reports"
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(stage, done, total)

    def timed(stage: str, fn: Callable, *args, **kwargs):
        report(stage, 0, 1)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        result = fn(*args, **kwargs)
        seconds[stage] = round(time.perf_counter() - t0, 2)
        cpu[stage] = round(_cpu_seconds() - c0, 2)
        log.info("demo %s: %.1f s wall, %.1f s CPU", stage, seconds[stage], cpu[stage])
        report(stage, 1, 1)
        return result

    corpus_manifest = timed("corpus", generate_corpus, out / "corpus", n_speakers=spec["n_speakers"],
                            per_emotion=spec["per_emotion"], seed=seed,
                            progress=lambda d, t: report("corpus", d, t))

    df = read_manifest(corpus_manifest)
    transcriber = get_transcriber("faster-whisper", device="cpu")
    done = [0]

    def asr_progress(n: int, audio_s: float, compute_s: float) -> None:
        done[0] += n
        report("transcribe", done[0], len(df))

    asr, _ = timed("transcribe", transcribe_frame, df, transcriber, TranscriptCache(out / "cache" / "transcripts"),
                   overwrite=True, progress=asr_progress)
    asr["script"] = df["text"]
    wer = word_error_rate(df["text"].tolist(), asr["text"].tolist())
    manifest = out / "corpus" / "manifest_asr.csv"
    asr["path"] = [str(Path(p).relative_to(out / "corpus")) for p in asr["path"]]
    write_manifest(asr, manifest)

    runs = {"audio": runs_dir / "audio", "text": runs_dir / "text", "late": runs_dir / "late", "both": runs_dir / "both"}

    def train(modality: str, stage: str) -> None:
        def on_event(event: Any) -> None:
            if isinstance(event, EpochEnded) and event.epoch < event.epochs:
                report(stage, event.epoch, event.epochs)

        cfg = demo_config(modality, out, seed, spec["overrides"])
        train_run(cfg, str(manifest), str(runs[modality]), progress=on_event)

    timed("train audio", train, "audio", "train audio")
    timed("train text", train, "text", "train text")
    timed("late fusion", late_fuse, [runs["audio"], runs["text"]], runs["late"], method="lr",
          folds=spec["fuse_folds"], seed=seed, force=True)
    timed("attention fusion", train, "both", "attention fusion")

    names = ["audio", "text", "late", "both"]
    comparison = reports / "comparison.md"
    comp = timed("compare", compare_runs, [runs[n] for n in names], runs["audio"], split="test", seed=seed,
                 n_boot=200, n_perm=200, manifest=manifest)
    write_comparison(comp, comparison)
    write_comparison(comp, reports / "comparison.json")

    metric = primary_key(RunDir(runs["audio"]).read_info())
    scores = {n: float(RunDir(runs[n]).read_metrics().get("test", {}).get(metric, float("nan"))) for n in names}
    summary = DemoSummary(out_dir=str(out), corpus_manifest=str(corpus_manifest), manifest=str(manifest),
                          runs={n: str(runs[n]) for n in names}, comparison=str(comparison),
                          report=str(reports / "demo_report.md"), test_scores=scores, metric=metric,
                          asr_wer=round(wer, 4), stage_seconds=seconds, stage_cpu_seconds=cpu, n_clips=len(df))
    timed("report", write_demo_report, summary, asr)
    (out / "demo_summary.json").write_text(summary.to_json())
    return summary


def write_demo_report(summary: DemoSummary, manifest: pd.DataFrame) -> Path:
    """reports/demo_report.md: the corpus, transcription quality, test scores by modality with a bar chart and a
    breakdown by which channel carried the emotion (words, prosody, both), linking each run's own report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(summary.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(summary.runs)
    titles = {"audio": "audio (Whisper encoder)", "text": "text (MiniLM + LoRA)", "late": "late fusion (LR)",
              "both": "attention fusion"}
    test = manifest[manifest["split"] == "test"][["utt_id", "kind"]].astype(str)
    by_kind: dict[str, dict[str, float]] = {}
    for n in names:
        preds = RunDir(summary.runs[n]).read_predictions("test").astype({"utt_id": str})
        merged = preds.merge(test, on="utt_id")
        by_kind[n] = {k: float((g["pred"] == g["label"]).mean()) for k, g in merged.groupby("kind")}

    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [summary.test_scores[n] for n in names]
    ax.bar([titles[n] for n in names], values, color=["#4C72B0", "#55A868", "#C44E52", "#8172B2"])
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"test {summary.metric}")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    bars = path.parent / "demo_scores.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    kinds = sorted({k for d in by_kind.values() for k in d})
    lines = [
        "# fusion-ser demo",
        "",
        f"Corpus: {summary.n_clips} clips generated with hibari-tts ({summary.corpus_manifest}); speaker-independent "
        "train/dev/test splits. Each utterance carries its emotion in the words and the prosody (`both`), in the "
        "words only with a flat delivery (`words`), or in the prosody only with neutral wording (`prosody`).",
        f"Transcripts: packaged Whisper tiny.en, word error rate against the script {summary.asr_wer:.1%}.",
        "",
        f"## Test {summary.metric} by model",
        "",
        "| model | run | test " + summary.metric + " |",
        "|---|---|---|",
        *[f"| {titles[n]} | `{summary.runs[n]}` | {summary.test_scores[n]:.3f} |" for n in names],
        "",
        f"![test scores]({bars.name})",
        "",
        "## Test accuracy by which channel carries the emotion",
        "",
        "| model | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        *[f"| {titles[n]} | " + " | ".join(f"{by_kind[n].get(k, float('nan')):.3f}" for k in kinds) + " |" for n in names],
        "",
        f"Comparison with confidence intervals and paired tests against the audio baseline: `{summary.comparison}`.",
        "Each run's own report (confusion matrix, per-class F1, training curves): `<run>/report.md`.",
        "",
        "Time per step, wall (CPU) seconds: "
        + ", ".join(f"{k} {v:.1f} ({summary.stage_cpu_seconds.get(k, 0.0):.1f})" for k, v in summary.stage_seconds.items()),
        "",
    ]
    path.write_text("\n".join(lines))
    return path
