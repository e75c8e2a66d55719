"""Prediction on new audio from any run directory: the Python API (`fusion_ser.load`) and the engine of `fusion-ser predict`.

    predictor = fusion_ser.load("runs/late")
    results = predictor.predict(["a.wav", "b.flac", waveform_16k], batch_size=8)

A trained run (kind "model") runs its saved model; a fused or ensembled run loads its member runs recursively, runs
them on the same inputs and combines their prediction frames with the run's fitted combiner. When any model needs
text, each input (or segment) is transcribed once with the packaged Whisper, and every member uses that transcript.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from fusion_ser.device import resolve_device
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir, RunInfo
from fusion_ser.segment import SegmentConfig, aggregate, cut, split

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1
AudioInput = Union[str, Path, np.ndarray]


class PredictError(FusionSerError):
    """An input or run that prediction cannot use."""


@dataclass
class Unit:
    """One thing a model sees: a whole input or one segment of it."""

    uid: str
    input_index: int
    wav: np.ndarray
    start: float
    end: float
    text: str = ""
    path: str = ""  # the unit's audio as a float32 WAV, for the trainer's dataset


@dataclass
class Stages:
    """Seconds spent per stage (load, segment, asr, model runs, combine), summed over a predict call."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds


class Predictor(ABC):
    """A loaded run that predicts emotion labels/probabilities or attribute values for audio."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        self.run_dir = run_dir
        self.info = info
        self.device = device
        self._transcriber = None
        self.last_timings: dict[str, float] = {}

    @property
    @abstractmethod
    def needs_text(self) -> bool:
        """True when some model of this run reads transcripts."""

    @property
    @abstractmethod
    def needs_audio(self) -> bool:
        """True when some model of this run reads audio."""

    @abstractmethod
    def predict_units(self, units: list[Unit], batch_size: int, stages: Stages) -> pd.DataFrame:
        """A prediction-format frame (utt_id = unit uid, pred, prob_<c>... | <attr>_pred...) for the units."""

    def transcriber(self):
        """The packaged Whisper (faster-whisper, CTranslate2), loaded once on first use."""
        if self._transcriber is None:
            from fusion_ser.transcribe import get_transcriber

            self._transcriber = get_transcriber("faster-whisper", device=self.device.type)
        return self._transcriber

    def predict(
        self,
        inputs: Sequence[AudioInput],
        *,
        batch_size: int = 8,
        segment: Optional[SegmentConfig] = None,
        on_error: str = "raise",
        progress: Optional[Callable[[int], Any]] = None,
    ) -> list[dict]:
        """One result dict per input: label, probabilities / attribute values, transcript, duration, timing.

        Inputs are audio paths (any format soundfile reads) or 16 kHz mono float32 arrays. With `segment`, each input
        is cut into segments (each predicted, with start/end) and the whole-file result is their duration-weighted
        mean. on_error="skip" turns an unusable input into {"input": ..., "error": message} instead of raising.
        `progress(n)` is called after each model batch with its number of units (inputs, or segments).
        """
        if on_error not in ("raise", "skip"):
            raise PredictError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if batch_size < 1:
            raise PredictError(f"--batch-size must be >= 1, got {batch_size}")
        stages = Stages()
        results: list[dict] = []
        units: list[Unit] = []
        per_input_time: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for i, item in enumerate(inputs):
            name = str(item) if not isinstance(item, np.ndarray) else f"array[{i}]"
            t0 = time.perf_counter()
            try:
                wav = self._load(item, name)
            except FusionSerError as e:
                if on_error == "raise":
                    raise
                log.info("skipping %s: %s", name, e)
                results.append({"input": name, "error": str(e)})
                continue
            dt = time.perf_counter() - t0
            stages.add("load", dt)
            per_input_time[i]["load"] += dt
            results.append({"input": name, "index": i, "duration": len(wav) / SAMPLE_RATE})
            t0 = time.perf_counter()
            segs = split(wav, SAMPLE_RATE, segment) if segment is not None else None
            stages.add("segment", time.perf_counter() - t0)
            if segs is None:
                units.append(Unit(f"{i}", i, wav, 0.0, len(wav) / SAMPLE_RATE))
            else:
                units.extend(Unit(f"{i}_{k}", i, cut(wav, SAMPLE_RATE, s), s.start, s.end) for k, s in enumerate(segs))
        if self.needs_text:
            asr = self.transcriber()
            for start in range(0, len(units), batch_size):
                chunk = units[start: start + batch_size]
                t0 = time.perf_counter()
                texts = asr.transcribe_batch([u.wav for u in chunk])
                dt = time.perf_counter() - t0
                stages.add("asr", dt)
                total = sum(len(u.wav) for u in chunk)
                for u, text in zip(chunk, texts):
                    u.text = text
                    per_input_time[u.input_index]["asr"] += dt * len(u.wav) / total
        frames = []
        with tempfile.TemporaryDirectory(prefix="fusion-ser-predict-") as tmp:
            for start in range(0, len(units), batch_size):
                chunk = units[start: start + batch_size]
                before = dict(stages.seconds)
                if self.needs_audio:
                    t0 = time.perf_counter()
                    for u in chunk:
                        u.path = str(Path(tmp) / f"{u.uid}.wav")
                        sf.write(u.path, u.wav, SAMPLE_RATE, subtype="FLOAT")
                    stages.add("write", time.perf_counter() - t0)
                frames.append(self.predict_units(chunk, batch_size, stages))
                # Batched stages are shared by the inputs of the batch in proportion to their audio length.
                total = sum(len(u.wav) for u in chunk) or 1
                for stage, sec in stages.seconds.items():
                    spent = sec - before.get(stage, 0.0)
                    if spent > 0:
                        for u in chunk:
                            per_input_time[u.input_index][stage] += spent * len(u.wav) / total
                if progress is not None:
                    progress(len(chunk))
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"utt_id": []})
        self.last_timings = dict(stages.seconds)
        return self._assemble(results, units, frame, segment is not None, per_input_time)

    def _load(self, item: AudioInput, name: str) -> np.ndarray:
        if isinstance(item, np.ndarray):
            wav = np.asarray(item, dtype=np.float32)
            if wav.ndim != 1 or wav.size == 0:
                raise PredictError(f"{name}: expected a non-empty 1-D waveform at 16 kHz, got shape {wav.shape}")
            if not np.isfinite(wav).all():
                raise PredictError(f"{name}: the waveform contains NaN or infinite samples")
            if len(wav) < MIN_SECONDS * SAMPLE_RATE:
                raise PredictError(f"{name}: {len(wav) / SAMPLE_RATE:.3f} s of audio is shorter than {MIN_SECONDS} s")
            return wav
        from fusion_ser.data.audio import load_audio

        return load_audio(item, sample_rate=SAMPLE_RATE, min_seconds=MIN_SECONDS)

    def _row_values(self, row: dict) -> dict:
        info = self.info
        if info.task == "categorical":
            probs = {c: float(row[f"prob_{c}"]) for c in info.labels}
            return {"label": str(row["pred"]), "probs": probs}
        return {"attributes": {a: float(row[f"{a}_pred"]) for a in info.attributes}}

    def _assemble(self, results: list[dict], units: list[Unit], frame: pd.DataFrame, segmented: bool,
                  per_input_time: dict[int, dict[str, float]]) -> list[dict]:
        rows = {str(u): r for u, r in zip(frame["utt_id"].astype(str), frame.to_dict("records"))} if len(frame) else {}
        by_input: dict[int, list[Unit]] = defaultdict(list)
        for u in units:
            by_input[u.input_index].append(u)
        for res in results:
            if "error" in res:
                continue
            i = res.pop("index")
            parts = [u for u in by_input[i] if u.uid in rows]
            if not parts:
                res["error"] = f"{res['input']}: no usable audio for the model (every segment was unreadable or silent)"
                continue
            values = [{"start": u.start, "end": u.end, "transcript": u.text, **self._row_values(rows[u.uid])}
                      for u in parts]
            if segmented:
                res.update(self._aggregate(values))
                res["transcript"] = " ".join(v["transcript"] for v in values if v["transcript"])
                res["segments"] = values
                res["skipped_segments"] = len(by_input[i]) - len(parts)
            else:
                v = values[0]
                res.update({k: v[k] for k in v if k not in ("start", "end")})
            if not self.needs_text:
                res["transcript"] = None
                for v in res.get("segments", []):
                    v["transcript"] = None
            res["timing"] = {k: round(t, 6) for k, t in per_input_time[i].items()}
        return results

    def _aggregate(self, values: list[dict]) -> dict:
        """Whole-file values: duration-weighted mean of the segments' probabilities / attribute values."""
        if self.info.task == "categorical":
            flat = [{"start": v["start"], "end": v["end"], **v["probs"]} for v in values]
            probs = aggregate(flat, list(self.info.labels))
            return {"label": max(probs, key=probs.get), "probs": probs}
        flat = [{"start": v["start"], "end": v["end"], **v["attributes"]} for v in values]
        return {"attributes": aggregate(flat, list(self.info.attributes))}


class ModelPredictor(Predictor):
    """A trained run: its saved model in model/, run through the trainer's own inference (predict_frame)."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        super().__init__(run_dir, info, device)
        from fusion_ser.models import load_model

        self.model, self.cfg, self.labels = load_model(RunDir(run_dir).model_dir)
        self.model.to(device)
        self.model.eval()
        self.stage_name = f"model:{self.cfg.modality}"

    @property
    def needs_text(self) -> bool:
        return self.cfg.modality in ("text", "both")

    @property
    def needs_audio(self) -> bool:
        return self.cfg.modality in ("audio", "both")

    def predict_units(self, units: list[Unit], batch_size: int, stages: Stages) -> pd.DataFrame:
        from fusion_ser.training.trainer import predict_frame

        t0 = time.perf_counter()
        cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, batch_size=batch_size, num_workers=0))
        df = pd.DataFrame({"utt_id": [u.uid for u in units], "path": [u.path for u in units],
                           "text": [u.text for u in units]})
        frame = predict_frame(self.model, df, cfg, self.device)
        stages.add(self.stage_name, time.perf_counter() - t0)
        return frame


class CombinedPredictor(Predictor):
    """A fused or ensembled run: member predictors on the same units, then the run's combiner."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        super().__init__(run_dir, info, device)
        from fusion_ser.fusion.combine import load_combiner

        self.combiner = load_combiner(run_dir)
        self.members = [load(m, device=device) for m in info.members]

    @property
    def needs_text(self) -> bool:
        return any(m.needs_text for m in self.members)

    @property
    def needs_audio(self) -> bool:
        return any(m.needs_audio for m in self.members)

    def predict_units(self, units: list[Unit], batch_size: int, stages: Stages) -> pd.DataFrame:
        frames = [m.predict_units(units, batch_size, stages) for m in self.members]
        t0 = time.perf_counter()
        # A unit a member could not use (e.g. a silent segment for an audio model) is left out of the combination.
        common = set.intersection(*(set(f["utt_id"].astype(str)) for f in frames))
        frames = [f[f["utt_id"].astype(str).isin(common)].reset_index(drop=True) for f in frames]
        out = self.combiner.combine(frames)
        stages.add("combine", time.perf_counter() - t0)
        return out


def load(run_dir: Union[str, Path], device: str | torch.device = "auto", transcriber: Optional[Any] = None) -> Predictor:
    """A predictor for any finished run directory (trained model, fusion or ensemble), on `device`.

    `transcriber` (a fusion_ser.transcribe Transcriber) replaces the packaged Whisper for runs that need text, e.g.
    the same recognizer and options that transcribed the training manifest.
    """
    path = Path(run_dir).resolve()
    info = RunDir(path).require_complete()
    dev = device if isinstance(device, torch.device) else _device(device)
    if info.kind == "model":
        predictor: Predictor = ModelPredictor(path, info, dev)
    elif info.kind in ("fusion", "ensemble"):
        predictor = CombinedPredictor(path, info, dev)
    else:
        raise PredictError(f"run '{path}' has kind '{info.kind}', which predict does not know (model, fusion, ensemble)")
    predictor._transcriber = transcriber
    return predictor


def _device(preference: str) -> torch.device:
    try:
        return resolve_device(preference)
    except RuntimeError as e:
        raise PredictError(f"--device {preference}: {e}") from None
