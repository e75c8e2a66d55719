"""The all-layers Whisper encoder on ONNX Runtime: the PyTorch copy (`whisper_torch.py`) exported once to ONNX and run
by ONNX Runtime's CPU kernels, which fuse its LayerNorms, GELUs and attention.

On 1 CPU thread the eager PyTorch copy runs at about 80 % of CTranslate2's speed on the same float32 weights; the same
graph on ONNX Runtime runs within 10 % of it, with hidden states equal to PyTorch's to float rounding (relative error
about 1e-6), so both share one feature-cache id. The exported graph is kept in ~/.cache/fusion-ser/onnx
(XDG_CACHE_HOME respected), keyed by the model's hash, the code that defines the graph and the exporting torch's
version: a later process loads it instead of exporting again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion_ser.encoders.whisper_torch import MAX_MEL_FRAMES
from fusion_ser.errors import FusionSerError
from fusion_ser.onnx_exporter import OPSET, export_program

log = logging.getLogger(__name__)


class OnnxRuntimeUnavailable(FusionSerError):
    """The ONNX path cannot run here: onnxruntime, onnx or onnxscript is missing, or the export failed."""


def onnx_cache_dir() -> Path:
    """~/.cache/fusion-ser/onnx (XDG_CACHE_HOME respected)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion-ser" / "onnx"


class _Stacked(nn.Module):
    """(B, n_mels, F) log-mel -> (B, L+1, T, D): the encoder's hidden states as one output."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.encoder(mel), dim=1)


def export_stacked(encoder: nn.Module) -> bytes:
    """The serialized ONNX graph of `encoder`'s hidden states, batch and frame count dynamic (up to 30 s)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter builds its graph with it)
    except ImportError as e:
        raise OnnxRuntimeUnavailable(f"exporting to ONNX needs onnxscript ({e})") from e
    n_mels = encoder.conv1.in_channels
    dynamic = {"mel": {0: torch.export.Dim("batch"), 2: torch.export.Dim("frames", min=4, max=MAX_MEL_FRAMES)}}
    try:
        program = export_program(_Stacked(encoder).eval(), (torch.zeros(1, n_mels, 350),), ["mel"], ["hidden"], dynamic)
    except Exception as e:  # the exporter raises many types; each means this torch cannot give the graph
        raise OnnxRuntimeUnavailable(f"torch {torch.__version__} could not export the encoder to ONNX: "
                                     f"{type(e).__name__}: {str(e)[:300]}") from e
    return program.model_proto.SerializeToString()


def graph_path(key: str) -> Path:
    return onnx_cache_dir() / f"{key}.onnx"


def cached_graph(key: str, encoder: nn.Module) -> bytes:
    """The exported graph under `key`, read from the cache or exported and written there atomically (a cache that
    cannot be written is logged, and the graph is used from memory)."""
    path = graph_path(key)
    if path.is_file():
        return path.read_bytes()
    graph = export_stacked(encoder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as f:
            f.write(graph)
        os.replace(f.name, path)
    except OSError as e:
        log.warning("could not keep the exported Whisper graph in %s (%s); it is exported again next time",
                    path.parent, e)
    return graph


class OrtWhisperEncoder:
    """`encoder`'s stacked hidden states on an ONNX Runtime CPU session of its exported graph."""

    def __init__(self, encoder: nn.Module, key: str, threads: int):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise OnnxRuntimeUnavailable(f"onnxruntime is not installed ({e})") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        graph = cached_graph(key, encoder)
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # a truncated or foreign cache file: export afresh once
            log.warning("the cached Whisper graph %s.onnx did not load (%s); exporting it again", key, e)
            graph_path(key).unlink(missing_ok=True)
            self.session = ort.InferenceSession(cached_graph(key, encoder), options, providers=["CPUExecutionProvider"])

    def stacked(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, F) log-mel -> (B, L+1, T, D) float32 hidden states, on the CPU."""
        out = self.session.run(None, {"mel": np.ascontiguousarray(mel.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)


def graph_key(model_hash: str) -> str:
    """Cache key of an exported graph: the weights, the torch that exported it, and the code that defines it."""
    import hashlib

    from fusion_ser import onnx_exporter
    from fusion_ser.encoders import whisper_torch

    code = hashlib.sha256()
    for module_file in (whisper_torch.__file__, __file__, onnx_exporter.__file__):
        code.update(Path(module_file).read_bytes())
    return f"whisper-{model_hash[:16]}-{code.hexdigest()[:12]}-torch{torch.__version__}-opset{OPSET}"
