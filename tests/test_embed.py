"""Embeddings out (`Predictor.embed`, `fusion-ser embed`): the vectors are the model's own pooled embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner

from fusion_ser.cli.main import main
from tests.test_predict import _test_rows, corpus, runs, tiny_text_model  # noqa: F401


def _own_embedding(run, wav=None, text=""):
    """The pooled vector of the run's model on one input, straight from its forward pass (a batch of one)."""
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir

    model, cfg, _ = load_model(RunDir(run).model_dir)
    batch = {"utt_id": ["x"], "text": [text], "size": 1, "skipped": 0, "label": torch.tensor([-1])}
    if wav is not None:
        batch["wav"], batch["wav_lengths"] = torch.from_numpy(wav)[None], torch.tensor([len(wav)])
    with torch.no_grad():
        return model.eval()(batch).records["embedding"][0].numpy()


def test_embeddings_equal_the_models_pooled_vectors(runs, corpus):
    import fusion_ser
    from fusion_ser.data.audio import load_audio

    test = _test_rows(corpus).head(3)
    results = fusion_ser.load(runs["audio"], device="cpu").embed(test["path"].tolist(), batch_size=1)
    for path, res in zip(test["path"], results):
        (name,) = res["embeddings"]
        assert name == runs["audio"].name
        np.testing.assert_allclose(res["embeddings"][name], _own_embedding(runs["audio"], load_audio(path)), atol=1e-5)
    late = fusion_ser.load(runs["late"], device="cpu").embed(test["path"].tolist(), batch_size=2)
    for res, text in zip(late, test["text"]):
        assert sorted(res["embeddings"]) == sorted([runs["audio"].name, runs["text"].name])
        assert res["transcript"] == text
        np.testing.assert_allclose(res["embeddings"][runs["text"].name], _own_embedding(runs["text"], text=text),
                                   atol=1e-5)


def test_segment_embeddings_and_their_duration_weighted_mean(runs, corpus):
    import fusion_ser
    from fusion_ser.data.audio import load_audio
    from fusion_ser.segment import SegmentConfig

    path = _test_rows(corpus)["path"].iloc[0]
    wav = np.concatenate([load_audio(path)] * 3)
    (res,) = fusion_ser.load(runs["audio"], device="cpu").embed([wav], segment=SegmentConfig(length=1.0))
    name = runs["audio"].name
    segs = res["segments"]
    assert len(segs) >= 2
    w = np.array([s["end"] - s["start"] for s in segs])
    expect = (w[:, None] * np.stack([s["embeddings"][name] for s in segs])).sum(0) / w.sum()
    np.testing.assert_allclose(res["embeddings"][name], expect, atol=1e-6)


def test_cli_writes_index_and_npy_and_reports_bad_files(runs, corpus, tmp_path):
    test = _test_rows(corpus).head(3)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = tmp_path / "emb"
    res = CliRunner().invoke(main, ["embed", str(runs["late"]), *test["path"].tolist(), str(bad), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "Embedded 3 of 4 file(s)" in res.output and "bad.wav" in res.output
    index = pd.read_csv(out / "index.csv")
    assert index["input"].tolist() == test["path"].tolist() and (index["segment"] == "all").all()
    audio = np.load(out / f"{runs['audio'].name}.npy")
    text = np.load(out / f"{runs['text'].name}.npy")
    assert audio.shape[0] == text.shape[0] == 3 and audio.dtype == np.float32
    from fusion_ser.data.audio import load_audio

    np.testing.assert_allclose(audio[0], _own_embedding(runs["audio"], load_audio(test["path"].iloc[0])), atol=1e-4)
