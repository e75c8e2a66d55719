"""Prediction on new audio from any run directory: the Python API (`fusion_ser.load`) and the engine of `fusion-ser predict`.

    predictor = fusion_ser.load("runs/late")
    results = predictor.predict(["a.wav", "b.flac", waveform_16k], batch_size=8)

A trained run (kind "model") runs its saved model on in-memory waveforms; a fused or ensembled run loads its member
runs recursively and combines their prediction frames with its fitted combiner. Where a model needs text, each input
(or segment) is transcribed once with the packaged Whisper, on a background thread while the models run on the batch
before; an audio model whose encoder is that Whisper's in the same window takes its frames from the ASR's encoder
pass (fusion_ser.shared_pass). Inputs stream through in batches of `batch_size` units (whole inputs or segments), so
memory stays bounded however many files are given: this is the only batching layer. An input longer than the run's
audio limit (its models' data.max_eval_seconds) is cut into equal windows within it, so every second is predicted: its
result has `segments`, a whole-file aggregate, `auto_segmented: True` and a `note` saying so.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from fusion_ser.adapt import adapt_predictor
from fusion_ser.data.audio import load_audio, waveform
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.device import resolve_device
from fusion_ser.errors import FusionSerError
from fusion_ser.fusion.runs import load_combiner
from fusion_ser.prediction_values import PredictError, assemble_embeddings, assemble_values
from fusion_ser.rundir import RunDir, RunInfo
from fusion_ser.shared_pass import SharedPass
from fusion_ser.segment import SegmentConfig, covering_windows, cut, fit_to_limit, split

log = logging.getLogger(__name__)

MIN_SECONDS = 0.1
ASR_AHEAD = 3  # batches transcribed ahead of the models: the ASR keeps working while the models load on the first
AudioInput = Union[str, Path, np.ndarray]
Timings = dict[str, float]  # seconds per stage (load, segment, asr, model:<modality>, combine)


@dataclass
class Unit:
    """One thing a model sees: a whole input or one segment of it."""

    uid: str
    input_index: int
    wav: np.ndarray
    start: float
    end: float
    text: str = ""
    context: tuple[str, ...] = ()  # earlier turns of the input's conversation, oldest first


def _timed(fn: Callable, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


class Predictor(ABC):
    """A loaded run that predicts emotion labels/probabilities or attribute values for audio."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        self.run_dir = run_dir
        self.info = info
        self.device = device
        self._transcriber = None
        self._asr_pool: Optional[ThreadPoolExecutor] = None
        self._shared: Optional[SharedPass] = None
        self.last_timings: Timings = {}

    @property
    @abstractmethod
    def needs_text(self) -> bool:
        """True when some model of this run reads transcripts."""

    @property
    @abstractmethod
    def needs_audio(self) -> bool:
        """True when some model of this run reads audio."""

    @property
    @abstractmethod
    def max_seconds(self) -> Optional[float]:
        """The longest audio (s) every model of this run sees whole (data.max_eval_seconds); None: no audio model."""

    @abstractmethod
    def predict_units(self, units: list[Unit], timings: Timings) -> pd.DataFrame:
        """A prediction-format frame (utt_id = unit uid, pred, prob_<c>... | <attr>_pred...) for one batch of units."""

    @abstractmethod
    def audio_encoders(self) -> list:
        """The audio encoders of this run's models that can take their frames from a transcriber's encoder pass."""

    @abstractmethod
    def load_models(self) -> None:
        """Read the run's model weights (once): `predict` does it on the first batch, beside the first transcriptions."""

    def transcriber(self):
        """The packaged Whisper (faster-whisper, CTranslate2), loaded once on first use."""
        if self._transcriber is None:
            from fusion_ser.transcribe import get_transcriber

            self._transcriber = get_transcriber("faster-whisper", device=self.device.type)
        return self._transcriber

    def predict(self, inputs: Sequence[AudioInput], *, batch_size: int = 8, segment: Optional[SegmentConfig] = None,
                on_error: str = "raise", progress: Optional[Callable[[int], Any]] = None,
                context: Optional[Sequence[Sequence[str]]] = None, adapt: bool = True) -> list[dict]:
        """One result dict per input: label, probabilities / attribute values, transcript, duration, timing.

        Inputs are audio paths (any format soundfile reads) or 16 kHz mono float32 arrays. With `segment`, each input
        is cut into segments (each predicted, with start/end) and the whole-file result is their duration-weighted
        mean. Without it, an input longer than `max_seconds` is segmented the same way automatically (the result has
        `auto_segmented` and a `note`); segments longer than `max_seconds` are split too.
        on_error="skip" turns an unusable input into {"input": ..., "error": message} instead of raising.
        `progress(n)` is called as inputs finish, with the number of inputs finished since the last call.
        `context`: one list per input of the turns said before it in its conversation (oldest first, "Name: text"
        where the speaker is known), read by models trained with text_encoder.context_turns > 0 (each keeps its
        last N) and ignored by the others.
        `adapt`: models with head.standardize take their statistics from these inputs first (fusion_ser.adapt).
        """
        if adapt:
            adapt_predictor(self, inputs, batch_size=batch_size)
        return self._stream(inputs, batch_size, segment, on_error, progress, self._predict_batch, self._assemble,
                            context)

    def embed(self, inputs: Sequence[AudioInput], *, batch_size: int = 8, segment: Optional[SegmentConfig] = None,
              on_error: str = "raise", progress: Optional[Callable[[int], Any]] = None,
              context: Optional[Sequence[Sequence[str]]] = None) -> list[dict]:
        """One result dict per input with `embeddings`: {model name: pooled embedding (D,) float32} of the run's
        model, or of every trained member of a fused / ensembled run (names: member run folders, nested with '/').

        Inputs, segmentation (explicit or automatic for long inputs), errors and progress work as in `predict`; with
        segments, each segment carries its own `embeddings` and the whole-file ones are their duration-weighted mean.
        """
        return self._stream(inputs, batch_size, segment, on_error, progress, self.embed_units,
                            self._assemble_embeddings, context)

    def _predict_batch(self, chunk: list[Unit], timings: Timings) -> dict[str, Any]:
        frame = self.predict_units(chunk, timings)
        return dict(zip(frame["utt_id"].astype(str), frame.to_dict("records")))

    @abstractmethod
    def embed_units(self, units: list[Unit], timings: Timings) -> dict[str, dict[str, np.ndarray]]:
        """uid -> {model name: pooled embedding} for one batch of units (units a model cannot use are absent)."""

    def _stream(self, inputs: Sequence[AudioInput], batch_size: int, segment: Optional[SegmentConfig], on_error: str,
                progress: Optional[Callable[[int], Any]], handle: Callable, assemble: Callable,
                context: Optional[Sequence[Sequence[str]]] = None) -> list[dict]:
        """Load, segment and batch the inputs; `handle(batch, timings)` gives each unit's output, `assemble` turns
        one input's unit outputs into its result. Memory stays bounded: audio leaves with its batch."""
        if on_error not in ("raise", "skip"):
            raise PredictError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if context is not None and len(context) != len(inputs):
            raise PredictError(f"context: {len(context)} lists of earlier turns for {len(inputs)} inputs; give one "
                               "list per input (empty where an input has none)", options=("context",))
        if batch_size < 1:
            raise PredictError(f"the batch size must be >= 1, got {batch_size}")
        timings: Timings = defaultdict(float)
        per_input: dict[int, Timings] = defaultdict(lambda: defaultdict(float))
        results: list[dict] = []
        units_of: dict[int, list[Unit]] = {}
        segmented_of: dict[int, bool] = {}
        rows: dict[str, dict] = {}
        pending: list[Unit] = []
        inflight: list[tuple[list[Unit], Optional[Future]]] = []  # the batch whose transcripts are being made

        def run_batches(final: bool) -> None:
            nonlocal pending
            while len(pending) >= batch_size or (final and pending):
                chunk, pending = pending[:batch_size], pending[batch_size:]
                inflight.append((chunk, self._transcribe_async(chunk)))  # ASR of this batch runs beside ...
                if len(inflight) > ASR_AHEAD:
                    self._run_batch(*inflight.pop(0), rows, timings, per_input, handle)  # ... the batches before
            while final and inflight:
                self._run_batch(*inflight.pop(0), rows, timings, per_input, handle)
            waiting = {u.input_index for u in pending} | {u.input_index for c, _ in inflight for u in c}
            done = [i for i in units_of if i not in waiting]
            for i in done:
                assemble(results[i], units_of.pop(i), rows, segmented_of.pop(i), per_input[i])
            if progress is not None and done:
                progress(len(done))

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
                if progress is not None:
                    progress(1)
                continue
            dt = time.perf_counter() - t0
            timings["load"] += dt
            per_input[i]["load"] += dt
            results.append({"input": name, "duration": len(wav) / SAMPLE_RATE})
            t0 = time.perf_counter()
            units, note = self._units(i, wav, segment)
            if context is not None:
                for u in units:
                    u.context = tuple(str(t) for t in context[i] or ())
            timings["segment"] += time.perf_counter() - t0
            if note:
                log.info("%s: %s", name, note)
                results[-1].update(note=note, auto_segmented=segment is None)
            units_of[i] = units
            segmented_of[i] = segment is not None or len(units) > 1
            pending.extend(units)
            run_batches(final=False)
        run_batches(final=True)
        self.last_timings = dict(timings)
        return results

    def _units(self, i: int, wav: np.ndarray, segment: Optional[SegmentConfig]) -> tuple[list[Unit], str]:
        """The units of one input, and a note when it (or some of its segments) had to be cut to `max_seconds`."""
        duration = len(wav) / SAMPLE_RATE
        limit = self.max_seconds
        note = ""
        if segment is None:
            if limit is None or len(wav) <= int(limit * SAMPLE_RATE):
                return [Unit(f"{i}", i, wav, 0.0, duration)], ""
            segs = covering_windows(duration, limit, SAMPLE_RATE)
            note = (f"segmented automatically: {duration:.1f} s is longer than the {limit:g} s the run's models see "
                    f"whole (data.max_eval_seconds), so it was predicted in {len(segs)} windows of at most {limit:g} s "
                    "and the whole-file result is their duration-weighted mean")
        else:
            segs = split(wav, SAMPLE_RATE, segment)
            if limit is not None:
                segs, n_split = fit_to_limit(segs, limit, SAMPLE_RATE)
                if n_split:
                    note = (f"{n_split} segment(s) longer than the {limit:g} s the run's models see whole "
                            f"(data.max_eval_seconds) were split into windows of at most {limit:g} s")
        return [Unit(f"{i}_{k}", i, cut(wav, SAMPLE_RATE, s), s.start, s.end) for k, s in enumerate(segs)], note

    def _transcribe_async(self, chunk: list[Unit]) -> Optional[Future]:
        """(texts, seconds) of a batch, made on a background thread while the models run on the batch before
        (CTranslate2 and torch release the GIL)."""
        if not self.needs_text:
            return None
        self._asr_pool = self._asr_pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusion-ser-asr")
        return self._asr_pool.submit(_timed, self._sharing().transcribe, [u.wav for u in chunk])

    def _sharing(self) -> SharedPass:
        """The transcriber and the audio encoders that take their frames from its encoder pass."""
        if self._shared is None:
            self._shared = SharedPass(self.transcriber() if self.needs_text else None,
                                      self.audio_encoders if self.needs_text and self.needs_audio else None)
        return self._shared

    def _run_batch(self, chunk: list[Unit], asr: Optional[Future], rows: dict[str, Any], timings: Timings,
                   per_input: dict[int, Timings], handle: Callable) -> None:
        """Run one batch once its transcripts (when needed) are in; batched stages are shared by its inputs in
        proportion to their audio length; the first also loads the models (stage `setup`, on no input's account)."""
        t0 = time.perf_counter()
        self.load_models()
        timings["setup"] += time.perf_counter() - t0
        before, frames = dict(timings), {}
        if asr is not None:
            (texts, frames), seconds = asr.result()
            for u, text in zip(chunk, texts):
                u.text = text
            timings["asr"] += seconds
        with self._sharing().serving(frames):
            rows.update(handle(chunk, timings))
        total = sum(len(u.wav) for u in chunk) or 1
        for stage, sec in timings.items():
            spent = sec - before.get(stage, 0.0)
            if spent > 0:
                for u in chunk:
                    per_input[u.input_index][stage] += spent * len(u.wav) / total
        for u in chunk:
            u.wav = np.zeros(0, dtype=np.float32)  # the audio is no longer needed: keep memory bounded

    def _load(self, item: AudioInput, name: str) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return waveform(item, name, MIN_SECONDS, SAMPLE_RATE)
        return load_audio(item, sample_rate=SAMPLE_RATE, min_seconds=MIN_SECONDS)

    def _assemble(self, res: dict, units: list[Unit], rows: dict[str, dict], segmented: bool,
                  timing: Timings) -> None:
        if assemble_values(self.info, str(self.run_dir), res, units, rows, segmented):
            self._finish(res, timing)

    def _assemble_embeddings(self, res: dict, units: list[Unit], rows: dict[str, Any], segmented: bool,
                             timing: Timings) -> None:
        if assemble_embeddings(res, units, rows, segmented):
            self._finish(res, timing)

    def _finish(self, res: dict, timing: Timings) -> None:
        """No transcripts where no model reads text; the input's time per stage."""
        if not self.needs_text:
            res["transcript"] = None
            for v in res.get("segments", []):
                v["transcript"] = None
        res["timing"] = {k: round(t, 6) for k, t in timing.items()}


class ModelPredictor(Predictor):
    """A trained run: its saved model in model/, run on in-memory waveforms through the trainer's inference."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        super().__init__(run_dir, info, device)
        from fusion_ser.models.io import read_saved

        self.cfg, self.labels = read_saved(RunDir(run_dir).model_dir)
        self._model: Optional[torch.nn.Module] = None
        self.stage_name = f"model:{self.cfg.modality}"

    @property
    def model(self) -> torch.nn.Module:
        """The saved model, read on first use (a text model's first use imports transformers, seconds on a CPU)."""
        if self._model is None:
            from fusion_ser.models.io import load_model

            model = load_model(RunDir(self.run_dir).model_dir)[0]
            self._model = model.to(self.device).eval()
        return self._model

    def load_models(self) -> None:
        self.model

    @property
    def needs_text(self) -> bool:
        return self.cfg.modality in ("text", "both")

    @property
    def needs_audio(self) -> bool:
        return self.cfg.modality in ("audio", "both")

    @property
    def max_seconds(self) -> Optional[float]:
        return float(self.cfg.data.max_eval_seconds) if self.needs_audio else None

    def audio_encoders(self) -> list:
        return [m for m in self.model.modules() if hasattr(m, "shared_pass_key") and m.shared_pass_key() is not None]

    def predict_units(self, units: list[Unit], timings: Timings) -> pd.DataFrame:
        from fusion_ser.training.inference import predict_arrays

        return self._run_model(predict_arrays, units, timings)

    def embed_units(self, units: list[Unit], timings: Timings) -> dict[str, dict[str, np.ndarray]]:
        from fusion_ser.training.inference import embed_arrays

        return {uid: {self.run_dir.name: v} for uid, v in self._run_model(embed_arrays, units, timings).items()}

    def _run_model(self, fn: Callable, units: list[Unit], timings: Timings) -> Any:
        """`fn` (predict_arrays or embed_arrays) on one batch of units, timed as this model's stage."""
        t0 = time.perf_counter()
        cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, batch_size=max(1, len(units)),
                                                                      num_workers=0))
        out = fn(self.model, [u.uid for u in units], cfg, device=self.device,
                 waveforms=[u.wav for u in units] if self.needs_audio else None,
                 texts=[u.text for u in units], context=[list(u.context) for u in units])
        timings[self.stage_name] += time.perf_counter() - t0
        return out


class CombinedPredictor(Predictor):
    """A fused or ensembled run: member predictors on the same units, then the run's combiner."""

    def __init__(self, run_dir: Path, info: RunInfo, device: torch.device):
        super().__init__(run_dir, info, device)
        self.combiner = load_combiner(run_dir)
        self.members = [load(m, device=device) for m in info.members]

    @property
    def needs_text(self) -> bool:
        return any(m.needs_text for m in self.members)

    @property
    def needs_audio(self) -> bool:
        return any(m.needs_audio for m in self.members)

    @property
    def max_seconds(self) -> Optional[float]:
        limits = [m.max_seconds for m in self.members if m.max_seconds is not None]
        return min(limits) if limits else None

    def audio_encoders(self) -> list:
        return [e for m in self.members for e in m.audio_encoders()]

    def load_models(self) -> None:
        for m in self.members:
            m.load_models()

    def predict_units(self, units: list[Unit], timings: Timings) -> pd.DataFrame:
        frames = [m.predict_units(units, timings) for m in self.members]
        t0 = time.perf_counter()
        # A unit a member could not use (e.g. a silent segment for an audio model) is left out of the combination.
        common = set.intersection(*(set(f["utt_id"].astype(str)) for f in frames))
        frames = [f[f["utt_id"].astype(str).isin(common)].reset_index(drop=True) for f in frames]
        out = self.combiner.combine(frames)
        timings["combine"] += time.perf_counter() - t0
        return out

    def embed_units(self, units: list[Unit], timings: Timings) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for m in self.members:
            for uid, by_model in m.embed_units(units, timings).items():
                prefix = "" if isinstance(m, ModelPredictor) else f"{m.run_dir.name}/"
                out.setdefault(uid, {}).update({prefix + k: v for k, v in by_model.items()})
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
        raise PredictError(f"device '{preference}': {e}") from None
