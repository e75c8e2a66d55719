"""Prediction: a saved run predicts on files exactly what it wrote for them; bad files are skipped and reported;
segments tile long recordings and the whole-file result is their duration-weighted mean."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir, prob_columns
from fusion_ser.segment import SegmentConfig, SegmentError, energy_segments, split, window_segments
from tests.tiny_models import save_tiny_bert

SR = 16000


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """24 hibari clips (3 speakers: one each for train/dev/test) with the packaged Whisper's transcripts as text."""
    from fusion_ser.data.manifest import read_manifest, write_manifest
    from fusion_ser.demo.corpus import generate_corpus
    from fusion_ser.transcribe import get_transcriber, transcribe_frame

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict_corpus")
    manifest = generate_corpus(root, n_speakers=3, per_emotion=2, seed=0)
    df, _ = transcribe_frame(read_manifest(manifest), get_transcriber("faster-whisper", device="cpu"), overwrite=True)
    out = root / "manifest_asr.csv"
    write_manifest(df, out)
    return out


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    """A random BERT (hidden 32, 2 layers) with the packaged MiniLM tokenizer, saved with save_pretrained."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _train(corpus, out, overrides):
    from fusion_ser.training.job import train_run

    cfg = load_config(None, ["train.epochs=1", "train.batch_size=8", "train.cache_features=false",
                             "head.hidden_dim=32", "pooling.type=mean", *overrides])
    return train_run(cfg, corpus, out).path


@pytest.fixture(scope="session")
def runs(corpus, tiny_text_model, tmp_path_factory):
    """A tiny fbank audio run, a tiny text run with LoRA, and their late fusion."""
    from fusion_ser.fusion.late import late_fuse

    root = tmp_path_factory.mktemp("predict_runs")
    audio = _train(corpus, root / "audio", ["modality=audio", "audio_encoder.type=fbank", "audio_encoder.finetune=full",
                                            "audio_encoder.hidden_dim=32", "audio_encoder.n_mels=40"])
    text = _train(corpus, root / "text", ["modality=text", f"text_encoder.name_or_path={tiny_text_model}",
                                          "text_encoder.lora.r=4", "text_encoder.max_length=32"])
    late = late_fuse([audio, text], root / "late", method="lr", folds=2).path
    return {"audio": audio, "text": text, "late": late}


def _test_rows(corpus) -> pd.DataFrame:
    from fusion_ser.data.manifest import read_manifest

    df = read_manifest(corpus)
    return df[df["split"] == "test"].reset_index(drop=True)


class CountingTranscriber:
    """Wraps the real transcriber and counts the clips it is given (one per input is the contract)."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.calls, self.threads, self.fail_after = inner, 0, set(), fail_after

    def transcribe_batch(self, audios):
        import threading

        self.threads.add(threading.current_thread().name)
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise FusionSerError("the recognizer failed on batch 2")
        self.calls += len(audios)
        return self.inner.transcribe_batch(audios)


@pytest.mark.parametrize("kind", ["audio", "late"])
def test_predictor_reproduces_the_runs_own_test_predictions(runs, corpus, kind):
    import fusion_ser

    test = _test_rows(corpus)
    predictor = fusion_ser.load(runs[kind])
    counter = CountingTranscriber(predictor.transcriber()) if predictor.needs_text else None
    if counter is not None:
        predictor._transcriber = counter
    results = predictor.predict(test["path"].tolist(), batch_size=3)
    saved = RunDir(runs[kind]).read_predictions("test").set_index("utt_id").loc[test["utt_id"]]
    info = RunDir(runs[kind]).read_info()
    got = np.array([[r["probs"][c] for c in info.labels] for r in results])
    np.testing.assert_allclose(got, saved[prob_columns(info.labels)].to_numpy(), atol=1e-5)
    assert [r["label"] for r in results] == saved["pred"].tolist()
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert all(r["timing"]["load"] > 0 for r in results)
    if kind == "late":
        # Two members, one of them text: each clip is transcribed once, and the transcript is the manifest's.
        assert counter.calls == len(test)
        assert [r["transcript"] for r in results] == test["text"].tolist()
        assert all(t.startswith("fusion-ser-asr") for t in counter.threads)  # beside the models, in order
        assert all(r["timing"]["asr"] > 0 and r["timing"]["model:audio"] > 0 and r["timing"]["model:text"] > 0
                   for r in results)
    else:
        assert all(r["transcript"] is None for r in results)


def test_waveform_inputs_match_path_inputs(runs, corpus):
    from fusion_ser.data.audio import load_audio
    from fusion_ser.predict import load

    paths = _test_rows(corpus)["path"].tolist()[:3]
    predictor = load(runs["audio"], device="cpu")
    by_path = predictor.predict(paths)
    by_wave = predictor.predict([load_audio(p) for p in paths], batch_size=2)
    for a, b in zip(by_path, by_wave):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-6)
    assert by_wave[0]["input"] == "array[0]"


def test_cli_skips_corrupt_and_empty_files_and_reports_them(runs, corpus, tmp_path):
    folder = tmp_path / "clips"
    (folder / "nested").mkdir(parents=True)
    good = _test_rows(corpus)["path"].tolist()[:3]
    for i, p in enumerate(good):
        shutil.copy(p, (folder / "nested" if i == 2 else folder) / f"good{i}.wav")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    (folder / "notes.txt").write_text("not audio, not looked at")
    out = tmp_path / "pred.jsonl"
    res = CliRunner().invoke(main, ["predict", str(runs["audio"]), str(folder), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Predicted 3 of 5 file(s)" in res.output
    assert "Skipped 2 file(s)" in res.output
    assert "corrupt.wav" in res.output and "empty.wav" in res.output and "notes.txt" not in res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["input"].rsplit("/", 1)[-1] for r in lines) == ["good0.wav", "good1.wav", "good2.wav"]
    info = RunDir(runs["audio"]).read_info()
    assert all(set(r["probs"]) == set(info.labels) and r["label"] in info.labels for r in lines)

    csv_out = tmp_path / "pred.csv"
    res = CliRunner().invoke(main, ["predict", str(runs["audio"]), str(folder), "-o", str(csv_out)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(csv_out)) == 3


def test_cli_with_only_bad_files_fails_cleanly(runs, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["predict", str(runs["audio"]), str(bad), "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 1
    assert "Error: none of the 1 file(s) could be used" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["predict", str(runs["audio"]), str(tmp_path / "missing.wav"), "-o", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 1 and "does not exist" in res.output


@pytest.mark.parametrize("duration,length,hop", [(20.0, 4.0, 4.0), (21.3, 4.0, 1.5), (9.05, 3.0, 2.0), (2.0, 4.0, 1.0)])
def test_window_segments_tile_the_file(duration, length, hop):
    segs = window_segments(duration, length, hop, min_length=1.0)
    starts = np.array([s.start for s in segs])
    ends = np.array([s.end for s in segs])
    assert starts[0] == 0.0 and ends[-1] == pytest.approx(duration)
    assert np.all(starts[1:] <= ends[:-1] + 1e-9)  # contiguous: no gap between a segment and the next
    np.testing.assert_allclose(np.diff(starts), hop)  # hop respected
    assert np.all(ends - starts <= length + 1.0 + 1e-9) and np.all(ends - starts >= min(1.0, duration) - 1e-9)
    if hop == length:
        np.testing.assert_allclose(starts[1:], ends[:-1])  # no overlap: an exact tiling


def test_segment_options_are_checked(runs, corpus, tmp_path):
    with pytest.raises(SegmentError, match="hop") as e:
        SegmentConfig(length=2.0, hop=3.0).validate()
    assert "--" not in str(e.value) and e.value.options == ("segment_length", "hop")
    wav = str(corpus.parent / pd.read_csv(corpus)["path"].iloc[0])
    out = CliRunner().invoke(main, ["predict", str(runs["audio"]), wav, "-o", str(tmp_path / "p.jsonl"),
                                    "--segment-length", "2", "--hop", "3"])
    assert out.exit_code == 1 and "longer than the segment length" in out.output
    assert "(options --segment-length, --hop)" in out.output
    with pytest.raises(SegmentError, match="positive"):
        SegmentConfig(length=0.0).validate()


def test_energy_segments_find_the_bursts():
    rng = np.random.default_rng(0)
    wav = (1e-4 * rng.standard_normal(8 * SR)).astype(np.float32)
    t = np.arange(SR * 2) / SR
    for s in (1.0, 5.0):
        wav[int(s * SR): int((s + 2) * SR)] += 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    segs = energy_segments(wav, SR, SegmentConfig(method="energy", length=10.0))
    assert len(segs) == 2
    for seg, s in zip(segs, (1.0, 5.0)):
        assert abs(seg.start - s) < 0.05 and abs(seg.end - (s + 2)) < 0.05


def test_segmented_prediction_of_a_long_file(runs, corpus, tmp_path):
    from fusion_ser.data.audio import load_audio
    from fusion_ser.predict import load

    wavs = [load_audio(p) for p in _test_rows(corpus)["path"].tolist()[:4]]
    long = np.concatenate(wavs)
    path = tmp_path / "long.flac"
    sf.write(path, long, SR)
    cfg = SegmentConfig(length=2.5, hop=2.0, min_length=1.0)
    predictor = load(runs["audio"], device="cpu")
    (res,) = predictor.predict([path], segment=cfg, batch_size=4)
    segs = res["segments"]
    expected = split(long, SR, cfg)
    assert [(s["start"], s["end"]) for s in segs] == [(e.start, e.end) for e in expected]
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == pytest.approx(len(long) / SR, abs=1e-4)
    labels = RunDir(runs["audio"]).read_info().labels
    p = np.array([[s["probs"][c] for c in labels] for s in segs])
    w = np.array([s["end"] - s["start"] for s in segs])
    np.testing.assert_allclose([res["probs"][c] for c in labels], (p * w[:, None]).sum(0) / w.sum(), atol=1e-6)
    assert res["label"] == labels[int(np.argmax((p * w[:, None]).sum(0)))]
    # Each segment's prediction is the model's prediction on that stretch of audio alone.
    (alone,) = predictor.predict([long[int(segs[1]["start"] * SR): int(segs[1]["end"] * SR)]])
    np.testing.assert_allclose([alone["probs"][c] for c in labels], p[1], atol=1e-5)


def test_a_failing_recognizer_stops_the_prediction_with_its_error(runs, corpus):
    import fusion_ser

    predictor = fusion_ser.load(runs["late"])
    predictor._transcriber = CountingTranscriber(predictor.transcriber(), fail_after=2)
    with pytest.raises(FusionSerError, match="the recognizer failed on batch 2"):
        predictor.predict(_test_rows(corpus)["path"].tolist(), batch_size=2)


def test_predict_transcribes_the_first_batches_while_the_models_load(runs, corpus):
    """load() reads the run's configs only; predict hands the ASR ASR_AHEAD + 1 batches before it reads the models'
    weights (a text model's first use imports transformers: seconds the ASR now works through), counts the loading as
    the `setup` stage on no input's account, and predicts what a predictor loaded up front predicts."""
    import fusion_ser
    from fusion_ser.predict import ASR_AHEAD

    paths = _test_rows(corpus)["path"].tolist()
    eager = fusion_ser.load(runs["late"])
    eager.load_models()
    assert all(m._model is not None for m in eager.members)
    expected = eager.predict(paths, batch_size=1)
    predictor = fusion_ser.load(runs["late"])
    assert [m._model for m in predictor.members] == [None, None]
    submitted, at_load = [], []
    submit, load_models = predictor._transcribe_async, predictor.load_models
    predictor._transcribe_async = lambda chunk: submitted.append(len(chunk)) or submit(chunk)
    predictor.load_models = lambda: at_load.append(len(submitted)) or load_models()
    results = predictor.predict(paths, batch_size=1)
    assert len(paths) > ASR_AHEAD + 1 and at_load[0] == ASR_AHEAD + 1
    assert predictor.last_timings["setup"] > 0 and all("setup" not in r["timing"] for r in results)
    assert [r["transcript"] for r in results] == [r["transcript"] for r in expected]
    np.testing.assert_allclose([list(r["probs"].values()) for r in results],
                               [list(r["probs"].values()) for r in expected], atol=1e-6)


def test_the_asr_encoder_pass_gives_a_windowed_whisper_audio_model_its_frames(runs, corpus, tmp_path):
    """A late fusion whose audio model is the transcriber's Whisper encoder in its window (window_seconds 10, int8):
    predict encodes each clip once, for the ASR and the audio model together (the audio encoder computes nothing
    itself), and still reproduces the run's own test predictions and the manifest's transcripts; a transcriber with
    another window shares nothing and gives the same results."""
    import fusion_ser
    from fusion_ser.fusion.late import late_fuse
    from fusion_ser.transcribe import get_transcriber

    audio = _train(corpus, tmp_path / "audio", ["modality=audio", "audio_encoder.type=ct2_whisper",
                                                "audio_encoder.layers=last", "audio_encoder.compute_type=int8",
                                                "audio_encoder.window_seconds=10"])
    late = late_fuse([audio, runs["text"]], tmp_path / "late", method="lr", folds=2).path
    test = _test_rows(corpus)
    saved = RunDir(late).read_predictions("test").set_index("utt_id").loc[test["utt_id"]]
    labels = RunDir(late).read_info().labels
    outputs, texts = {}, {}
    for name, transcriber in [("shared", None), ("apart", get_transcriber(device="cpu", window_seconds=30))]:
        predictor = fusion_ser.load(late, transcriber=transcriber)
        (encoder,) = predictor.members[0].audio_encoders()
        own_passes = []
        real = encoder.encode_waveform
        encoder.encode_waveform = lambda wav: own_passes.append(len(wav)) or real(wav)
        results = predictor.predict(test["path"].tolist(), batch_size=3)
        outputs[name] = np.array([[r["probs"][c] for c in labels] for r in results])
        texts[name] = [r["transcript"] for r in results]
        served = predictor._sharing().served
        assert (served, len(own_passes)) == ((len(test), 0) if name == "shared" else (0, len(test)))
        assert (encoder._model is None) == (name == "shared")  # sharing: its own CTranslate2 copy is never read
    assert texts["shared"] == test["text"].tolist()
    np.testing.assert_allclose(outputs["shared"], saved[prob_columns(labels)].to_numpy(), atol=2e-3)
    same = np.array(texts["apart"]) == np.array(texts["shared"])  # the 30 s window reads (nearly) every clip alike
    assert same.sum() >= len(test) - 1
    np.testing.assert_allclose(outputs["apart"][same], outputs["shared"][same], atol=2e-3)
    audio_saved = RunDir(audio).read_predictions("test").set_index("utt_id").loc[test["utt_id"]]
    shared_audio = fusion_ser.load(audio).predict(test["path"].tolist())
    np.testing.assert_allclose([[r["probs"][c] for c in labels] for r in shared_audio],
                               audio_saved[prob_columns(labels)].to_numpy(), atol=1e-5)
