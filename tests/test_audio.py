"""Audio loading: resampling and down-mixing against numpy, every bad-clip reason, the bad-audio report."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fusion_ser.data.audio import AudioError, audio_duration, check_audio, load_audio


def _sine(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def test_stereo_8k_becomes_16k_mono_with_same_pitch(tmp_path):
    left, right = _sine(440, 1.0, 8000), _sine(1000, 1.0, 8000) * 0.2
    path = tmp_path / "stereo8k.wav"
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 16000
    assert abs(_peak_hz(x, 16000) - 440) < 2
    assert abs(np.abs(x[2000:-2000]).max() - 0.25 - 0.05) < 0.03  # mean of 0.5 and 0.1 amplitude sines


def test_channels_are_averaged_exactly_at_native_rate(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-0.5, 0.5, size=(4000, 3)).astype(np.float32)
    path = tmp_path / "three.flac"
    sf.write(path, data, 16000, subtype="PCM_24")
    expected = sf.read(path, dtype="float32")[0].mean(axis=1)
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6)


def test_other_rates_resample_to_requested_rate(tmp_path):
    path = tmp_path / "a44.wav"
    sf.write(path, _sine(300, 0.5, 44100), 44100)
    x = load_audio(path, sample_rate=22050)
    assert len(x) == 11025
    assert abs(_peak_hz(x, 22050) - 300) < 3


def test_audio_duration_reads_header(tmp_path):
    path = tmp_path / "d.wav"
    sf.write(path, _sine(200, 1.25, 8000), 8000)
    assert audio_duration(path) == pytest.approx(1.25)
    with pytest.raises(AudioError, match="unreadable"):
        audio_duration(tmp_path / "nope.wav")


@pytest.fixture
def bad_files(tmp_path):
    """One file per failure reason plus two good ones; returns {name: (path, expected reason or None)}."""
    files = {}
    good = tmp_path / "good.wav"
    sf.write(good, _sine(220, 0.5, 16000), 16000)
    files["good"] = (good, None)
    good2 = tmp_path / "good2.flac"
    sf.write(good2, _sine(330, 0.3, 22050), 22050)
    files["good2"] = (good2, None)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wave file at all" * 10)
    files["corrupt"] = (corrupt, "unreadable")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    files["empty"] = (empty, "empty")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    files["silent"] = (silent, "silent")
    nan = tmp_path / "nan.wav"
    x = _sine(220, 0.5, 16000)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    files["nan"] = (nan, "non-finite")
    short = tmp_path / "short.wav"
    sf.write(short, _sine(220, 0.05, 16000), 16000)
    files["short"] = (short, "too short")
    truncated = tmp_path / "truncated.wav"
    sf.write(truncated, _sine(220, 1.0, 16000), 16000)
    raw = truncated.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (truncated, "truncated")
    return files


def test_load_audio_names_file_and_reason(bad_files):
    for name, (path, reason) in bad_files.items():
        if reason is None or reason == "truncated":
            continue
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert info.value.reason == reason, name
        assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")


def test_check_audio_reports_each_bad_file_among_good_ones(bad_files):
    names = list(bad_files)
    paths = [bad_files[n][0] for n in names]
    calls = []
    ok, rejected = check_audio(paths, progress=calls.append)
    assert calls == [1] * len(paths)
    expected_ok = [bad_files[n][1] is None for n in names]
    assert ok.tolist() == expected_ok
    reasons = {p: r for p, r in rejected}
    assert len(rejected) == len(paths) - 2
    for n in names:
        path, reason = bad_files[n]
        if reason is not None:
            assert reasons[str(path)].startswith(reason), (n, reasons[str(path)])
