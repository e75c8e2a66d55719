"""ONNX export of a trained run: encoder, pooling and head as one graph, plus a JSON that says how to call it.

    export_onnx("runs/audio", "model.onnx")   # writes model.onnx and model.onnx.json

An audio run's graph takes `wav` (B, S) float32 at 16 kHz, zero-padded, and `wav_lengths` (B,) int64; a text run's
takes `input_ids` and `attention_mask` (B, T) int64 from the run's tokenizer, which stays outside the graph and is
saved beside it; a run that reads conversation context (text_encoder.context_turns) takes (context, text) pairs,
with `token_type_ids` where the tokenizer makes them, and the JSON says how the pair is built. Outputs:
`probabilities` (B, K) in the run's class order, or `attributes` (B, A) on the manifest scale, and
`pooled_embedding` (B, D). Batch and length axes are dynamic; padding does not change a clip's outputs.

Audio encoders: fbank and Hugging Face SSL models run their own forward in the graph; the CTranslate2 Whisper encoder
is replaced by its PyTorch copy on padded batches (`encoders/whisper_graph.py`). With audio_encoder.layers=last the
run used CTranslate2 itself, so the copy is exported only after it reproduces CTranslate2's output on a probe clip.
Refused with a clear error: fused and ensembled runs (a combiner over member predictions, not one network),
attention-fusion models (they tell rows without text from the strings), and encoders whose features are computed
outside PyTorch (w2v-BERT's feature extractor). Before the files are written, the graph is run with onnxruntime
(when installed) on clips of different lengths in one batch and compared with the run's own model on each clip alone.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fusion_ser.config import Config
from fusion_ser.data.context import SEPARATOR
from fusion_ser.schema import SAMPLE_RATE, has_attributes, has_classes
from fusion_ser.errors import FusionSerError
from fusion_ser.models.output import readout
from fusion_ser.onnx_exporter import OPSET, export_program
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text

log = logging.getLogger(__name__)

AUDIO_INPUTS = ("wav", "wav_lengths")
TEXT_INPUTS = ("input_ids", "attention_mask")
SEGMENT_INPUT = "token_type_ids"  # context runs on tokenizers with segment ids: 0 context, 1 text
EMBEDDING_OUTPUT = "pooled_embedding"
OUTPUT_NAMES = {"categorical": "probabilities", "attributes": "attributes", "multitask": "probabilities_attributes"}
TOLERANCE = 1e-3  # largest difference to the run's own model accepted at export (tests check 1e-4)
CT2_TOLERANCE = 1e-3  # largest difference between CTranslate2's Whisper frames and the PyTorch copy's
EXTERNAL_BYTES = 1_500_000_000  # weights above this go to <model>.onnx.data (protobuf files stop at 2 GB)
PROBE_SECONDS = (1.7, 1.1, 0.6)  # example clips: traced with, and checked on, one padded batch


class ExportError(FusionSerError):
    """A run, model or output path that cannot be exported to ONNX."""


@dataclass
class ExportResult:
    """What export_onnx wrote and how close the graph came to the run's own model."""

    onnx_path: Path
    meta_path: Path
    files: list[Path] = field(default_factory=list)
    max_abs_diff: Optional[float] = None  # None when onnxruntime is not installed
    meta: dict = field(default_factory=dict)


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) for `out`: a path ending in .onnx, or a folder that receives model.onnx."""
    p = Path(out)
    onnx_path = p if p.suffix.lower() == ".onnx" else p / "model.onnx"
    return onnx_path, onnx_path.with_name(onnx_path.name + ".json")


def _check_dependencies() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs the {' and '.join(missing)} package(s); install them with "
                          "pip install 'fusion-ser[onnx]'")


def _check_run(run: RunDir) -> RunInfo:
    info = run.require_complete()
    if info.kind != "model":
        members = ", ".join(Path(m).name for m in info.members) or "none recorded"
        raise ExportError(f"run '{run.path}' is a {info.kind} run (members: {members}): its combiner works on the "
                          "members' predictions, not one network, so it has no single graph to export; export each "
                          "member model run and apply the combiner in model/combiner.json to their outputs")
    if info.modality == "both":
        raise ExportError(f"run '{run.path}' is an attention-fusion model (modality both), which tells rows without "
                          "text from the transcript strings themselves, and strings cannot enter an ONNX graph; "
                          "export an audio or a text model run instead")
    if not run.model_dir.is_dir():
        raise ExportError(f"run '{run.path}' has no model/ folder to export; train the run again")
    return info


def _probe_waveforms() -> list[np.ndarray]:
    """Deterministic speech-like example clips of different lengths (tones with noise)."""
    rng = np.random.default_rng(0)
    clips = []
    for i, seconds in enumerate(PROBE_SECONDS):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (140 + 60 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        clips.append((x + 0.03 * rng.normal(size=t.size)).astype(np.float32))
    return clips


def pad_waveforms(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(B, S) float32 zero-padded waveforms and (B,) int64 lengths: the inputs of an exported audio graph."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    wav = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
    for i, c in enumerate(clips):
        wav[i, : len(c)] = c
    return wav, lengths


class AudioGraph(nn.Module):
    """wav (B, S), wav_lengths (B,) -> probabilities or attribute values (B, K|A), pooled embedding (B, D)."""

    def __init__(self, model: nn.Module, whisper: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        self.whisper = whisper  # WhisperFrames standing in for a CTranslate2 Whisper encoder

    def forward(self, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.whisper is not None:
            features, mask = self.whisper(wav, wav_lengths)
            batch = {"cached_audio": features, "cached_audio_mask": mask}
        else:
            batch = {"wav": wav, "wav_lengths": wav_lengths}
        return _readout(self.model(batch), self.model.task)


class TextGraph(nn.Module):
    """input_ids, attention_mask (B, T) -> probabilities or attribute values, pooled embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.backbone = model.encoder.backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state.float()
        return _readout(self.model({"cached_text": hidden, "cached_text_mask": attention_mask.bool()}), self.model.task)


def _readout(out: Any, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    return readout(out, task), out.records["embedding"].float()


def _whisper_frames(encoder: Any) -> nn.Module:
    """The padded-batch Whisper path of a ct2_whisper encoder; with layers=last, checked against CTranslate2."""
    from fusion_ser.encoders.whisper_graph import WhisperFrames
    from fusion_ser.encoders.whisper_torch import WhisperWeightsError

    if getattr(encoder, "window_seconds", 0.0):
        raise ExportError(f"the run's Whisper encoder reads each clip in the transcriber's {encoder.window_seconds:g} s "
                          "window (audio_encoder.window_seconds), which the exported graph does not compute (it encodes "
                          "clips unpadded); export a run trained with audio_encoder.window_seconds=0",
                          options=("audio_encoder.window_seconds",))
    try:
        frames = WhisperFrames(encoder.torch_encoder, all_layers=encoder.stack_layers).eval()
    except WhisperWeightsError as e:
        raise ExportError(f"the run's Whisper encoder cannot be exported: {e}") from None
    if not encoder.stack_layers:  # the run used CTranslate2 itself: export the copy only if it gives the same frames
        clip = _probe_waveforms()[0]
        reference = encoder.encode_waveform(clip)
        with torch.no_grad():
            mine, _ = frames(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
        diff = float(np.abs(mine[0].numpy() - reference).max())
        if mine.shape[1] != reference.shape[0] or diff > CT2_TOLERANCE:
            raise ExportError(f"the run's Whisper encoder runs through CTranslate2 only (audio_encoder.layers=last, "
                              f"compute_type {encoder.compute_type}), and the PyTorch copy that an ONNX graph needs "
                              f"does not reproduce its output (largest difference {diff:.2g} > {CT2_TOLERANCE}), e.g. "
                              "because CTranslate2 quantises the weights; use a run trained with compute_type default "
                              "or float32, or with audio_encoder.layers weighted or concat")
        log.info("Whisper's PyTorch copy reproduces CTranslate2 to %.2g on the probe clip", diff)
    return frames


def _build_audio_graph(model: nn.Module) -> AudioGraph:
    encoder = model.encoder
    kind = getattr(getattr(encoder, "config", None), "type", None)
    if kind == "ct2_whisper":
        return AudioGraph(model, _whisper_frames(encoder)).eval()
    if kind == "hf" and getattr(encoder, "input_name", "input_values") != "input_values":
        raise ExportError(f"the run's audio encoder ({encoder.config.name_or_path}) takes {encoder.input_name} made by "
                          "its feature extractor in numpy, outside PyTorch, so it has no single graph; only raw-waveform "
                          "models (WavLM, wav2vec2, HuBERT, data2vec-audio) export")
    if kind not in ("hf", "fbank"):
        raise ExportError(f"audio encoder type '{kind}' has no ONNX export")
    return AudioGraph(model).eval()


def _build_text_graph(model: nn.Module) -> TextGraph:
    encoder = model.encoder
    backbone = encoder.backbone
    if hasattr(backbone, "merge_and_unload"):  # LoRA: fold the adapter into the base weights
        encoder.backbone = backbone.merge_and_unload()
    return TextGraph(model).eval()


def _text_inputs(encoder: Any, texts: list[str], contexts: Optional[list[str]]) -> dict[str, np.ndarray]:
    """The graph's feeds for `texts` (and their contexts), as the run's encoder tokenizes them."""
    enc = encoder.tokenize(texts, contexts)
    return {n: enc[n].numpy().astype(np.int64) for n in (*TEXT_INPUTS, SEGMENT_INPUT) if n in enc}


PROBE_TEXTS = ["i am so happy to see you again today", "leave me alone", ""]
PROBE_CONTEXTS = ["Monica: what happened | Ross: we were on a break", "", "Joey: how you doin"]  # context runs


def _reference(model: nn.Module, cfg: Config, probe: list) -> np.ndarray:
    """The run's own model on each probe input alone (no padding), as inference computes it."""
    rows = []
    with torch.no_grad():
        for x in probe:
            if cfg.modality == "text":
                batch = {"text": [x[0]], **({"context": [x[1]]} if x[1] is not None else {})}
            else:
                batch = {"wav": torch.from_numpy(x)[None], "wav_lengths": torch.tensor([len(x)])}
            rows.append(_readout(model(batch), cfg.task)[0][0].numpy())
    return np.stack(rows)


def _export_graph(graph: nn.Module, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...], outputs: list[str],
                  dynamic: dict, path: Path, external: bool) -> None:
    try:
        program = export_program(graph, inputs, list(names), outputs, dynamic)
    except Exception as e:  # the exporter raises many types; the message says which operation failed
        raise ExportError(f"torch.onnx.export could not trace the model: {type(e).__name__}: {str(e)[:400]}") from e
    program.save(str(path), external_data=external)


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> Optional[list[np.ndarray]]:
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: the exported graph was not checked against the model")
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _usage(meta: dict) -> str:
    onnx_name = meta["onnx"]
    if meta["modality"] == "text" and "context" in meta["tokenizer"]:
        feed = ("tok = AutoTokenizer.from_pretrained(meta['tokenizer']['path'])\n"
                "tok.truncation_side = 'left'  # the oldest context is cut first: meta['tokenizer']['context']\n"
                "enc = tok([context], [text], truncation='only_first', max_length=meta['tokenizer']['max_length'], "
                "return_tensors='np')\n"
                "feeds = {i['name']: enc[i['name']].astype('int64') for i in meta['inputs']}\n")
        head = "from transformers import AutoTokenizer\n"
    elif meta["modality"] == "text":
        feed = ("tok = AutoTokenizer.from_pretrained(meta['tokenizer']['path'])\n"
                "enc = tok(texts, padding=True, truncation=True, max_length=meta['tokenizer']['max_length'], "
                "return_tensors='np')\n"
                "feeds = {'input_ids': enc['input_ids'].astype('int64'), "
                "'attention_mask': enc['attention_mask'].astype('int64')}\n")
        head = "from transformers import AutoTokenizer\n"
    else:
        feed = ("wav, sr = sf.read('clip.wav', dtype='float32')  # mono, meta['sample_rate'] Hz\n"
                "feeds = {'wav': wav[None], 'wav_lengths': np.array([len(wav)], dtype=np.int64)}\n")
        head = "import soundfile as sf\n"
    names = "meta['outputs'][0]['columns']"
    return ("import json\nimport numpy as np\nimport onnxruntime as ort\n" + head
            + f"meta = json.load(open('{onnx_name}.json'))\nsession = ort.InferenceSession('{onnx_name}')\n" + feed
            + f"values, embedding = session.run(None, feeds)\nprint(dict(zip({names}, values[0].tolist())))")


def _metadata(run: RunDir, info: RunInfo, cfg: Config, onnx_path: Path, labels: list[str], width: int,
              dim: int, min_samples: int, tokenizer_dir: Optional[Path], pooling: str,
              inputs: tuple[str, ...] = TEXT_INPUTS) -> dict:
    out_name = OUTPUT_NAMES[info.task]
    provenance = run.provenance()
    meta: dict[str, Any] = {
        "format": "fusion-ser onnx", "version": 1, "onnx": onnx_path.name, "opset": OPSET,
        "run": str(run.path.resolve()), "kind": info.kind, "task": info.task, "modality": cfg.modality,
        "manifest": provenance.get("manifest"), "manifest_sha256": provenance.get("manifest_sha256"),
    }
    if has_classes(info.task):
        meta["labels"] = list(labels)
    if has_attributes(info.task):
        meta["attributes"] = list(cfg.data.attributes)
        meta["attribute_range"] = list(cfg.data.attribute_range)
    if cfg.modality == "audio":
        enc = cfg.audio_encoder
        meta["sample_rate"] = SAMPLE_RATE
        meta["encoder"] = {"type": enc.type, "name_or_path": enc.name_or_path, "layers": enc.layers}
        meta["inputs"] = [
            {"name": "wav", "dtype": "float32", "shape": ["batch", "samples"],
             "about": f"mono waveforms at {SAMPLE_RATE} Hz, zero-padded to the longest clip of the batch"},
            {"name": "wav_lengths", "dtype": "int64", "shape": ["batch"],
             "about": f"samples of each clip before padding; at least {min_samples} ({min_samples / SAMPLE_RATE:g} s)"},
        ]
    else:
        meta["encoder"] = {"type": "hf_text", "name_or_path": cfg.text_encoder.name_or_path,
                           "finetune": cfg.text_encoder.finetune}
        meta["tokenizer"] = {"path": tokenizer_dir.name if tokenizer_dir else None,
                             "max_length": cfg.text_encoder.max_length, "padding": "longest", "truncation": True,
                             "empty_text": "give an empty text one position: attention_mask 1 at the first token, 0 "
                                           "elsewhere"}
        if cfg.text_encoder.context_turns > 0:
            meta["tokenizer"]["context"] = {
                "turns": cfg.text_encoder.context_turns, "turn": "'<speaker>: <text>' where the speaker is known",
                "separator": SEPARATOR,
                "context": "the last `turns` non-empty turns said before the text in its conversation, oldest first, "
                           "joined by `separator` (fusion_ser.data.context.context_text)",
                "pair": "tokenizer(context, text, truncation='only_first') with truncation_side 'left': context first, "
                        "its oldest tokens cut; a text without context, or too long to leave a context any room, is "
                        "tokenized alone (the first segment then is the text)"}
        meta["inputs"] = [{"name": n, "dtype": "int64", "shape": ["batch", "tokens"],
                           "about": "from the tokenizer saved beside the graph"
                                    + (": 0 on the context, 1 on the text" if n == SEGMENT_INPUT else "")}
                          for n in inputs]
    meta["pooling"] = pooling
    meta["outputs"] = [
        {"name": out_name, "dtype": "float32", "shape": ["batch", width],
         "columns": meta.get("labels", []) + meta.get("attributes", []),
         "about": {"categorical": "softmax class probabilities in 'labels' order",
                   "attributes": "attribute values on the manifest scale 'attribute_range'",
                   "multitask": "softmax class probabilities in 'labels' order, then the attribute values on the "
                                "manifest scale 'attribute_range'"}[info.task]},
        {"name": EMBEDDING_OUTPUT, "dtype": "float32", "shape": ["batch", dim],
         "about": "the pooled utterance embedding the head reads"},
    ]
    meta["usage"] = _usage(meta)
    return meta


def export_onnx(run_dir: str | Path, out: str | Path, *, force: bool = False, check: bool = True) -> ExportResult:
    """Export the model of a trained run as one ONNX graph at `out` (a .onnx path or a folder) with its JSON."""
    _check_dependencies()
    from fusion_ser.models.io import load_model

    run = RunDir(run_dir)
    info = _check_run(run)
    onnx_path, meta_path = output_paths(out)
    if onnx_path.exists() and not force:
        raise ExportError(f"'{onnx_path}' exists; choose another output path or allow overwriting",
                          options=("force",))
    model, cfg, labels = load_model(run.model_dir)
    model = model.float().eval()  # the graph is float32 (ONNX Runtime on CPU has no bfloat16 kernels)
    batch = torch.export.Dim("batch")
    if cfg.modality == "audio":
        probe: list = _probe_waveforms()
        reference = _reference(model, cfg, probe)
        graph: nn.Module = _build_audio_graph(model)
        feeds = dict(zip(AUDIO_INPUTS, pad_waveforms(probe)))
        min_samples = max(int(cfg.data.min_seconds * SAMPLE_RATE), 400)
        dynamic = {"wav": {0: batch, 1: torch.export.Dim("samples", min=min_samples)}, "wav_lengths": {0: batch}}
    else:
        contexts = PROBE_CONTEXTS if cfg.text_encoder.context_turns > 0 else None
        probe = list(zip(PROBE_TEXTS, contexts or [None] * len(PROBE_TEXTS)))
        reference = _reference(model, cfg, probe)
        feeds = _text_inputs(model.encoder, PROBE_TEXTS, contexts)
        graph = _build_text_graph(model)
        min_samples = 0
        tokens = torch.export.Dim("tokens", max=max(cfg.text_encoder.max_length, feeds["input_ids"].shape[1]))
        dynamic = {n: {0: batch, 1: tokens} for n in feeds}
    tensors = tuple(torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad():
        traced = graph(*tensors)
    width, dim = int(traced[0].shape[1]), int(traced[1].shape[1])
    out_name = OUTPUT_NAMES[info.task]
    external = sum(p.numel() * p.element_size() for p in graph.parameters()) > EXTERNAL_BYTES
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    _export_graph(graph, tensors, tuple(feeds), [out_name, EMBEDDING_OUTPUT], dynamic, onnx_path, external)
    files = [onnx_path] + [p for p in [onnx_path.with_name(onnx_path.name + ".data")] if external and p.is_file()]
    diff = None
    if check:
        result = _run_onnx(onnx_path, feeds)
        if result is not None:
            diff = float(np.abs(result[0] - reference).max())
            if not np.isfinite(diff) or diff > TOLERANCE:
                for f in files:
                    f.unlink(missing_ok=True)
                raise ExportError(f"the exported graph does not reproduce the run's model (largest difference "
                                  f"{diff:.3g} > {TOLERANCE} on a probe batch of clips of different lengths), so "
                                  f"nothing was written to '{onnx_path}'; please report this with the run's config")
    tokenizer_dir = None
    if cfg.modality == "text":
        tokenizer_dir = onnx_path.with_name(onnx_path.stem + "_tokenizer")
        if tokenizer_dir.is_dir():
            shutil.rmtree(tokenizer_dir)
        model.encoder.tokenizer.save_pretrained(str(tokenizer_dir))
        files.append(tokenizer_dir)
    pooling = getattr(model.encoder, "pooling_mode", None) if cfg.modality == "text" else cfg.pooling.type
    meta = _metadata(run, info, cfg, onnx_path, labels, width, dim, min_samples, tokenizer_dir, pooling or "mean",
                     tuple(feeds))
    if external:
        meta["external_data"] = onnx_path.name + ".data"
    meta["check"] = {"max_abs_diff": diff, "against": "the run's own model on each probe input alone",
                     "probe_batch": {n: list(v.shape) for n, v in feeds.items()}}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    files.append(meta_path)
    log.info("exported %s to %s (largest difference to the model: %s)", run.path, onnx_path, diff)
    return ExportResult(onnx_path, meta_path, files, diff, meta)

