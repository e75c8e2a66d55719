"""The on-disk feature cache: round trip, reuse without recomputation, corrupt entries rebuilt, keys by encoder and file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import soundfile as sf
import torch

from fusion_ser.encoders.base import Encoder, EncoderOutput
from fusion_ser.errors import FusionSerError
from fusion_ser.data.feature_cache import CacheError, FeatureCache, read_entry

SR = 16000


class CountingEncoder(Encoder):
    """Frames = the waveform cut into 160-sample rows, scaled: easy to recompute independently; counts its calls."""

    def __init__(self, scale: float = 1.0, cacheable: bool = True):
        super().__init__()
        self.scale = scale
        self.cacheable = cacheable
        self.calls = 0

    @property
    def output_dim(self) -> int:
        return 160

    def cache_id(self) -> Optional[str]:
        return f"counting|{self.scale}" if self.cacheable else None

    def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
        self.calls += 1
        wav = np.asarray(sample["wav"])
        n = len(wav) // 160
        return torch.from_numpy(wav[: n * 160].reshape(n, 160) * self.scale)

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        raise AssertionError("the cache must use encode_for_cache")


def expected_frames(path: Path, scale: float = 1.0) -> np.ndarray:
    wav, sr = sf.read(path, dtype="float32")
    assert sr == SR
    n = len(wav) // 160
    return (wav[: n * 160].reshape(n, 160) * scale).astype(np.float16)


@pytest.fixture
def corpus(tmp_path: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        seconds = 0.3 + 0.1 * i
        t = np.arange(int(seconds * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.normal(size=t.size)
        p = tmp_path / "audio" / f"u{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, wav.astype(np.float32), SR, subtype="FLOAT")
        items.append({"utt_id": f"u{i}", "path": str(p)})
    return items


def entry_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.fsc"))


def test_round_trip_and_reuse_across_runs(tmp_path: Path, corpus: list[dict]) -> None:
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    ticks = []
    report = cache.ensure(enc, corpus, progress=ticks.append)
    assert (report.computed, report.reused, report.failed) == (4, 0, [])
    assert sum(ticks) == 4 and enc.calls == 4
    for item in corpus:
        got = cache.get(enc, item)
        assert got.dtype == torch.float16
        np.testing.assert_array_equal(got.numpy(), expected_frames(Path(item["path"])))
    assert enc.calls == 4  # get served from disk
    again = FeatureCache(tmp_path / "cache").ensure(enc, corpus)  # a new run on the same root
    assert (again.computed, again.reused) == (0, 4) and enc.calls == 4
    assert len(entry_files(tmp_path / "cache")) == 4


def test_truncated_entry_is_detected_and_rebuilt(tmp_path: Path, corpus: list[dict], caplog) -> None:
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(enc, corpus)
    victim = cache.entry_path(enc, corpus[1])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])
    with caplog.at_level(logging.WARNING):
        report = cache.ensure(enc, corpus)
    assert (report.rebuilt, report.reused, enc.calls) == (1, 3, 5)
    assert "corrupt" in caplog.text and "u1" in caplog.text
    np.testing.assert_array_equal(read_entry(victim), expected_frames(Path(corpus[1]["path"])))


def test_flipped_byte_fails_checksum_on_get_and_is_rebuilt(tmp_path: Path, corpus: list[dict], caplog) -> None:
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    cache.ensure(enc, corpus)
    victim = cache.entry_path(enc, corpus[2])
    data = bytearray(victim.read_bytes())
    data[-7] ^= 0xFF
    victim.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        got = cache.get(enc, corpus[2])
    assert "checksum" in caplog.text
    assert enc.calls == 5
    np.testing.assert_array_equal(got.numpy(), expected_frames(Path(corpus[2]["path"])))
    np.testing.assert_array_equal(read_entry(victim), got.numpy())


def test_leftover_temp_file_of_an_interrupted_write_is_not_used(tmp_path: Path, corpus: list[dict]) -> None:
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    final = cache.entry_path(enc, corpus[0])
    final.parent.mkdir(parents=True, exist_ok=True)
    (final.parent / f".{final.name}.abc.tmp").write_bytes(b"FSC1\x00")
    report = cache.ensure(enc, corpus)
    assert report.computed == 4
    np.testing.assert_array_equal(cache.get(enc, corpus[0]).numpy(), expected_frames(Path(corpus[0]["path"])))


def test_keys_depend_on_encoder_and_file_identity(tmp_path: Path, corpus: list[dict]) -> None:
    cache = FeatureCache(tmp_path / "cache")
    a, b = CountingEncoder(1.0), CountingEncoder(2.0)
    cache.ensure(a, corpus)
    cache.ensure(b, corpus)
    assert a.calls == 4 and b.calls == 4
    assert len(entry_files(tmp_path / "cache")) == 8
    assert cache.encoder_dir(a) != cache.encoder_dir(b)
    np.testing.assert_array_equal(cache.get(b, corpus[3]).numpy(), expected_frames(Path(corpus[3]["path"]), 2.0))
    # rewriting the audio file changes its identity: the entry is recomputed, not served stale
    p = Path(corpus[0]["path"])
    sf.write(p, np.full(8000, 0.25, dtype=np.float32), SR, subtype="FLOAT")
    os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    report = cache.ensure(a, corpus)
    assert (report.computed, report.reused, a.calls) == (1, 3, 5)
    np.testing.assert_array_equal(cache.get(a, corpus[0]).numpy(), expected_frames(p))


def test_bad_audio_is_skipped_and_counted(tmp_path: Path, corpus: list[dict]) -> None:
    bad = tmp_path / "audio" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    items = corpus + [{"utt_id": "broken", "path": str(bad)}, {"utt_id": "gone", "path": str(tmp_path / "no.wav")}]
    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    report = cache.ensure(enc, items)
    assert report.computed == 4
    assert [u for u, _ in report.failed] == ["broken", "gone"]
    assert "no.wav" in report.failed[1][1]
    with pytest.raises(FusionSerError, match="broken.wav"):
        cache.get(enc, items[4])


def test_text_items_and_uncacheable_encoder(tmp_path: Path) -> None:
    class TextCounter(CountingEncoder):
        def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
            self.calls += 1
            return torch.tensor([[float(len(sample["text"]))]])

    cache = FeatureCache(tmp_path / "cache")
    enc = TextCounter()
    items = [{"utt_id": "a", "text": "hello"}, {"utt_id": "b", "text": "hi"}, {"utt_id": "c", "text": "hello"}]
    report = cache.ensure(enc, items)
    assert (report.computed, report.reused) == (2, 1)  # same text, same entry
    assert cache.get(enc, items[1]).item() == 2.0 and enc.calls == 2
    with pytest.raises(CacheError, match="cannot be cached"):
        cache.ensure(CountingEncoder(cacheable=False), items)


def test_speed_perturbation_scales_duration_and_pitch_by_the_factor() -> None:
    from fusion_ser.data.augment import speed_perturb

    n, f0 = SR, 500.0
    wav = (0.5 * np.sin(2 * np.pi * f0 * np.arange(n) / SR)).astype(np.float32)
    for factor in (0.9, 1.1):
        out = speed_perturb(wav, factor, SR)
        assert out.dtype == np.float32
        assert abs(len(out) - n / factor) <= 2  # 0.9 -> 1.111 s, 1.1 -> 0.909 s
        spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
        peak = np.fft.rfftfreq(len(out), 1 / SR)[np.argmax(spectrum)]
        assert peak == pytest.approx(f0 * factor, rel=0.01)  # tempo and pitch change together
    np.testing.assert_array_equal(speed_perturb(wav, 1.0, SR), wav)


def test_speed_copies_are_keyed_separately_and_reused(tmp_path: Path, corpus: list[dict]) -> None:
    import soxr

    enc = CountingEncoder()
    cache = FeatureCache(tmp_path / "cache")
    items = corpus + [dict(it, speed=s) for s in (0.9, 1.1) for it in corpus]
    report = cache.ensure(enc, items)
    assert (report.computed, enc.calls) == (12, 12)
    assert len(entry_files(tmp_path / "cache")) == 12
    keys = {cache.item_key(it) for it in items}
    assert len(keys) == 12 and cache.item_key(dict(corpus[0], speed=1.0)) == cache.item_key(corpus[0])
    again = FeatureCache(tmp_path / "cache").ensure(enc, items)  # another run, another epoch: all from disk
    assert (again.computed, again.reused, enc.calls) == (0, 12, 12)
    wav, _ = sf.read(corpus[2]["path"], dtype="float32")
    slow = soxr.resample(wav, SR * 0.9, SR, quality="HQ")  # independent: the clip read as if sampled at 0.9*SR
    n = len(slow) // 160
    got = cache.get(enc, dict(corpus[2], speed=0.9))
    assert enc.calls == 12
    np.testing.assert_array_equal(got.numpy(), (slow[: n * 160].reshape(n, 160)).astype(np.float16))
    assert got.shape[0] == pytest.approx(cache.get(enc, corpus[2]).shape[0] / 0.9, abs=1)
