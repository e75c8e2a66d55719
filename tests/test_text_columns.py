"""Human transcripts to train, ASR for dev/test (data.text_columns), and `transcribe --column`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fusion_ser.config import load_config
from fusion_ser.data.selection import SelectionError, split_rows
from tests.tiny_models import save_tiny_bert


def _manifest(path) -> str:
    """12 rows whose human `text` and `asr_text` differ on every row (the ASR drops the emotional words)."""
    rows = []
    for i in range(12):
        label = "happiness" if i % 2 == 0 else "sadness"
        words = "so happy and glad" if label == "happiness" else "very sad and lonely"
        split = "train" if i < 8 else "dev" if i < 10 else "test"
        rows.append({"utt_id": f"u{i}", "path": "", "split": split, "speaker": f"s{i % 3}", "gender": "",
                     "label": label, "arousal": "", "valence": "", "dominance": "",
                     "text": f"i am {words} number {i}", "asr_text": f"i am number {i}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_each_split_reads_its_column(tmp_path):
    from fusion_ser.data.manifest import read_manifest

    df = read_manifest(_manifest(tmp_path / "m.csv"))
    cfg = load_config(None, ["modality=text", "data.text_columns.dev=asr_text", "data.text_columns.test=asr_text"])
    _, train, dev, test = split_rows(df, cfg, "m.csv")
    assert train["text"].tolist() == df.loc[df.split == "train", "text"].tolist()
    assert dev["text"].tolist() == df.loc[df.split == "dev", "asr_text"].tolist()
    assert test["text"].tolist() == df.loc[df.split == "test", "asr_text"].tolist()
    audio = load_config(None, ["modality=audio", "data.text_columns.dev=no_such"])
    assert split_rows(df, audio, "m.csv")[2]["text"].tolist() == df.loc[df.split == "dev", "text"].tolist()
    bad = load_config(None, ["modality=text", "data.text_columns.test=whisper_text"])
    with pytest.raises(SelectionError, match=r"whisper_text.*transcribe m.csv --column whisper_text"):
        split_rows(df, bad, "m.csv")


def test_run_tests_on_asr_text_and_records_the_choice(tmp_path):
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir, prob_columns, read_run_config
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import train_run

    manifest = _manifest(tmp_path / "m.csv")
    bert = save_tiny_bert(tmp_path / "bert")
    cfg = load_config(None, ["modality=text", f"text_encoder.name_or_path={bert}", "text_encoder.lora.r=2",
                             "train.epochs=1", "train.batch_size=4", "head.hidden_dim=16", "train.device=cpu",
                             "data.text_columns.dev=asr_text", "data.text_columns.test=asr_text"])
    run = RunDir(train_run(cfg, manifest, tmp_path / "run").path)
    values, _ = read_run_config(run.config_path)
    assert values["data"]["text_columns"] == {"train": "text", "dev": "asr_text", "test": "asr_text"}
    model, cfg2, labels = load_model(run.model_dir)
    test = read_manifest(manifest).query("split == 'test'").reset_index(drop=True)
    saved = run.read_predictions("test").set_index("utt_id").loc[test["utt_id"], prob_columns(labels)].to_numpy()
    on_asr = predict_frame(model, test.assign(text=test["asr_text"]), cfg2, torch.device("cpu"))
    on_human = predict_frame(model, test, cfg2, torch.device("cpu"))
    np.testing.assert_allclose(on_asr[prob_columns(labels)].to_numpy(), saved, atol=1e-6)
    assert not np.allclose(on_human[prob_columns(labels)].to_numpy(), saved, atol=1e-6)


class EchoTranscriber:
    """A recognizer that 'hears' the clip's length: enough to check which column the text lands in."""

    def cache_id(self) -> str:
        return "echo"

    def transcribe_batch(self, audios):
        return [f"clip of {len(a)} samples" for a in audios]


def test_transcribe_column_keeps_the_human_text(tmp_path, monkeypatch):
    import soundfile as sf

    from fusion_ser.cli.main import main
    from fusion_ser.data.manifest import read_manifest, write_manifest

    rows = []
    for i, n in enumerate([8000, 12000]):
        p = tmp_path / f"c{i}.wav"
        sf.write(p, 0.1 * np.sin(np.arange(n) / 10.0), 16000)
        rows.append({"utt_id": f"c{i}", "path": str(p), "split": "test", "speaker": "s", "gender": "", "label": "",
                     "arousal": "", "valence": "", "dominance": "", "text": f"human words {i}"})
    write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    monkeypatch.setattr("fusion_ser.cli.transcribe.get_transcriber", lambda *a, **k: EchoTranscriber())
    res = CliRunner().invoke(main, ["transcribe", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out.csv"),
                                    "--column", "asr_text", "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    out = read_manifest(tmp_path / "out.csv")
    assert out["text"].tolist() == ["human words 0", "human words 1"]
    assert out["asr_text"].tolist() == ["clip of 8000 samples", "clip of 12000 samples"]


def test_soup_of_text_runs_reads_each_splits_column(tmp_path):
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.fusion.ensemble import ensemble_runs
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir, prob_columns
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import train_run

    manifest = _manifest(tmp_path / "m.csv")
    bert = save_tiny_bert(tmp_path / "bert")
    runs = [train_run(load_config(None, ["modality=text", f"text_encoder.name_or_path={bert}", "text_encoder.lora.r=2",
                                         "train.epochs=1", "train.batch_size=4", "head.hidden_dim=16",
                                         "train.device=cpu", "data.text_columns.test=asr_text", f"seed={s}"]),
                      manifest, tmp_path / f"run{s}").path for s in (0, 1)]
    soup = ensemble_runs(runs, tmp_path / "soup", method="soup").path
    model, cfg, labels = load_model(RunDir(soup).model_dir)
    test = read_manifest(manifest).query("split == 'test'").reset_index(drop=True)
    expect = predict_frame(model, test.assign(text=test["asr_text"]), cfg, torch.device("cpu"))
    got = RunDir(soup).read_predictions("test").set_index("utt_id").loc[expect["utt_id"]]
    np.testing.assert_allclose(got[prob_columns(labels)].to_numpy(), expect[prob_columns(labels)].to_numpy(),
                               atol=1e-6)
