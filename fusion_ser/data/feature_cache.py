"""On-disk feature cache of frozen encoders: outputs computed once, stored as float16, reused across epochs and runs.

Layout: root/<sha256(cache_id)[:20]>/<key[:2]>/<key>.fsc, one file per utterance (two-level fan-out keeps
directories small at 100k utterances), and root/<sha256(cache_id)[:20]>/cache_id.txt naming the encoder.
The key is a sha256 of the audio file's identity (resolved path, size, mtime), the loading options and the
speed-perturbation factor of an augmented copy (item["speed"], training only), or of the text. Each file is a
small header (magic, shape, dtype, payload length, crc32) followed by the float16 payload, written to a temp
file and renamed into place, so an interrupted write never leaves a file under the final name; a truncated
or corrupt file fails its length or checksum check, is logged and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch

from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.encoders.base import Encoder
from fusion_ser.errors import FusionSerError
from fusion_ser.files import atomic_write_bytes

log = logging.getLogger(__name__)

MAGIC = b"FSC1"
_HEADER_LEN = struct.Struct("<I")
SUFFIX = ".fsc"


class CacheError(FusionSerError):
    """A feature cache request that cannot be served (uncacheable encoder, item without audio or text)."""


class CorruptEntry(Exception):
    """A cache file whose header, length or checksum does not check out."""


def default_cache_dir() -> Path:
    """~/.cache/fusion-ser/features (or $XDG_CACHE_HOME/fusion-ser/features)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusion-ser" / "features"


@dataclass
class CacheReport:
    """What `ensure` did: entries computed, found valid, rebuilt after corruption, and items that failed."""

    computed: int = 0
    reused: int = 0
    rebuilt: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (utt_id, reason)


def write_entry(path: Path, array: np.ndarray) -> None:
    """Write one float16 array atomically (temp file in the same folder, then rename)."""
    data = np.ascontiguousarray(array, dtype=np.float16)
    payload = data.tobytes()
    header = json.dumps({"shape": list(data.shape), "dtype": "float16", "nbytes": len(payload),
                         "crc32": zlib.crc32(payload)}).encode()
    atomic_write_bytes(path, MAGIC + _HEADER_LEN.pack(len(header)) + header + payload)  # mode as open() would give


def _read_header(f: Any, path: Path) -> tuple[dict, int]:
    head = f.read(len(MAGIC) + _HEADER_LEN.size)
    if len(head) < len(MAGIC) + _HEADER_LEN.size or head[: len(MAGIC)] != MAGIC:
        raise CorruptEntry(f"{path}: bad magic or truncated header")
    (n,) = _HEADER_LEN.unpack(head[len(MAGIC):])
    try:
        header = json.loads(f.read(n))
        expected = int(np.prod(header["shape"])) * np.dtype(header["dtype"]).itemsize
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"{path}: unreadable header ({e})") from e
    if expected != header["nbytes"]:
        raise CorruptEntry(f"{path}: header shape {header['shape']} does not match its length {header['nbytes']}")
    return header, len(head) + n


def check_entry(path: Path) -> bool:
    """Cheap validity check (header and file length, no checksum): True when the entry looks complete."""
    try:
        with open(path, "rb") as f:
            header, offset = _read_header(f, path)
        return path.stat().st_size == offset + header["nbytes"]
    except (OSError, CorruptEntry):
        return False


def read_entry(path: Path) -> np.ndarray:
    """Read and fully verify (length and crc32) one entry; raises CorruptEntry when it does not check out."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
        payload = f.read()
    if len(payload) != header["nbytes"]:
        raise CorruptEntry(f"{path}: payload is {len(payload)} bytes, header says {header['nbytes']} (truncated write?)")
    if zlib.crc32(payload) != header["crc32"]:
        raise CorruptEntry(f"{path}: checksum mismatch")
    return np.frombuffer(payload, dtype=header["dtype"]).reshape(header["shape"])


class FeatureCache:
    """Per-utterance cache of a frozen encoder's `encode_for_cache` outputs, keyed by encoder and input identity."""

    def __init__(self, root: Optional[str | Path] = None, *, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.1,
                 max_seconds: Optional[float] = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.sample_rate = sample_rate
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds

    def encoder_dir(self, encoder: Encoder) -> Path:
        """The folder holding one encoder's entries (created with a cache_id.txt naming the encoder)."""
        cid = encoder.cache_id()
        if cid is None:
            raise CacheError(f"{type(encoder).__name__} trains or cannot be cached; set train.cache_features=false "
                             "or freeze the encoder")
        d = self.root / hashlib.sha256(cid.encode()).hexdigest()[:20]
        if not (d / "cache_id.txt").is_file():
            d.mkdir(parents=True, exist_ok=True)
            (d / "cache_id.txt").write_text(cid + "\n")
        return d

    def item_key(self, item: dict[str, Any]) -> str:
        """sha256 of the audio file identity (resolved path, size, mtime) and loading options, or of the text."""
        path = item.get("path")
        if path:
            p = Path(path).resolve()
            try:
                st = p.stat()
            except OSError as e:
                raise CacheError(f"utterance '{item.get('utt_id', '?')}': audio file '{p}' cannot be read ({e.strerror}); "
                                 "fix the manifest path") from e
            material = f"audio|{p}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}|{self.min_seconds}|{self.max_seconds}"
            speed = float(item.get("speed") or 1.0)
            if speed != 1.0:  # speed-perturbed copies are separate entries; the plain clip keeps its historic key
                material += f"|speed={speed!r}"
        elif "text" in item and item["text"] is not None:
            material = "text|" + str(item["text"])
            if item.get("context"):  # the previous turns are part of the encoder's input; none keeps the old key
                material += "|context|" + str(item["context"])
        else:
            raise CacheError(f"utterance '{item.get('utt_id', '?')}' has neither a path nor a text to cache")
        return hashlib.sha256(material.encode()).hexdigest()

    def entry_path(self, encoder: Encoder, item: dict[str, Any], encoder_dir: Optional[Path] = None) -> Path:
        key = self.item_key(item)
        return (encoder_dir or self.encoder_dir(encoder)) / key[:2] / f"{key}{SUFFIX}"

    def _sample(self, item: dict[str, Any]) -> dict[str, Any]:
        """The encoder input of one item: {"wav": float32 16 kHz} loaded from its path, or {"text": str}."""
        if item.get("path"):
            if item.get("wav") is not None:
                wav = np.asarray(item["wav"], dtype=np.float32)
            else:
                from fusion_ser.data.audio import load_audio

                wav = load_audio(item["path"], sample_rate=self.sample_rate, min_seconds=self.min_seconds)
            speed = float(item.get("speed") or 1.0)
            if speed != 1.0:
                from fusion_ser.data.augment import speed_perturb

                wav = speed_perturb(wav, speed, self.sample_rate)
            if self.max_seconds is not None:
                wav = wav[: int(self.max_seconds * self.sample_rate)]
            return {"wav": wav}
        return {"text": str(item["text"]), "context": str(item.get("context") or "")}

    def _compute(self, encoder: Encoder, item: dict[str, Any], path: Path) -> np.ndarray:
        with torch.no_grad():
            out = encoder.encode_for_cache(self._sample(item))
        array = out.detach().to("cpu", torch.float32).numpy().astype(np.float16)
        if not np.isfinite(array).all():
            raise CacheError(f"utterance '{item.get('utt_id', '?')}': the encoder produced non-finite features "
                             "(or they overflow float16)")
        write_entry(path, array)
        return array

    def ensure(self, encoder: Encoder, items: Iterable[dict[str, Any]],
               progress: Optional[Callable[[int], Any]] = None) -> CacheReport:
        """Compute every missing or damaged entry; bad items are logged, counted in `failed` and skipped.

        `progress(n)` is called after each item with n=1 (tqdm's `update` fits).
        """
        report = CacheReport()
        d = self.encoder_dir(encoder)
        for item in items:
            utt = str(item.get("utt_id", "?"))
            try:
                path = self.entry_path(encoder, item, d)
                if path.exists():
                    if check_entry(path):
                        report.reused += 1
                    else:
                        log.warning("feature cache entry %s of '%s' is truncated or corrupt; rebuilding", path, utt)
                        self._compute(encoder, item, path)
                        report.rebuilt += 1
                else:
                    self._compute(encoder, item, path)
                    report.computed += 1
            except FusionSerError as e:
                log.warning("skipping '%s' in the feature cache: %s", utt, e)
                report.failed.append((utt, str(e)))
            if progress is not None:
                progress(1)
        if report.failed:
            log.warning("%d of %d utterances could not be encoded and were skipped", len(report.failed),
                        report.computed + report.reused + report.rebuilt + len(report.failed))
        return report

    def get(self, encoder: Encoder, item: dict[str, Any]) -> torch.Tensor:
        """The cached float16 features (..., T, D) of one item, computed (and stored) when missing or corrupt."""
        path = self.entry_path(encoder, item)
        if path.exists():
            try:
                return torch.from_numpy(read_entry(path).copy())
            except (CorruptEntry, OSError) as e:
                log.warning("feature cache entry of '%s' is corrupt (%s); rebuilding", item.get("utt_id", "?"), e)
        return torch.from_numpy(self._compute(encoder, item, path))
