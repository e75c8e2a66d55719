"""Model soups (`ensemble --method soup`): one model whose weights are the mean of its members' weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_ser.fusion.ensemble import ensemble_runs
from fusion_ser.fusion.members import FusionError
from fusion_ser.models.io import load_model
from fusion_ser.rundir import RunDir, prob_columns
from tests.test_predict import _test_rows, _train, corpus, tiny_text_model  # noqa: F401

FBANK = ["modality=audio", "audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=32",
         "audio_encoder.n_mels=40"]


@pytest.fixture(scope="module")
def members(corpus, tiny_text_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("soup_members")
    text = ["modality=text", f"text_encoder.name_or_path={tiny_text_model}", "text_encoder.lora.r=4",
            "text_encoder.max_length=32"]
    return {
        "audio": [_train(corpus, root / f"a{s}", [*FBANK, f"seed={s}"]) for s in (0, 1)],
        "text": [_train(corpus, root / f"t{s}", [*text, f"seed={s}"]) for s in (0, 1)],
        "wide": _train(corpus, root / "wide", [*FBANK, "head.hidden_dim=48"]),
        "refit": [_train(corpus, root / f"r{s}", [*FBANK, f"seed={s}", "train.refit_on_dev=true"]) for s in (0, 1)],
    }


def _weights(run, folder: str = "model") -> dict[str, np.ndarray]:
    model, _, _ = load_model(RunDir(run).path / folder)
    return {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_soup_weights_are_the_numpy_mean_and_reload(members, modality, tmp_path):
    runs = members[modality]
    res = ensemble_runs(runs, tmp_path / "soup", method="soup")
    a, b, soup = _weights(runs[0]), _weights(runs[1]), _weights(res.path)
    assert set(soup) == set(a)
    trained = [k for k in a if not np.array_equal(a[k], b[k])]
    assert trained, "the two seeds should give different weights"
    if modality == "text":
        assert any("lora" in k for k in trained)  # the adapters are averaged and saved with peft
    for k in soup:
        np.testing.assert_allclose(soup[k], (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7, err_msg=k)
    info = RunDir(res.path).read_info()
    assert info.kind == "model" and info.extra["method"] == "soup" and len(info.members) == 2


def test_soup_run_predicts_like_its_own_model(members, corpus, tmp_path):
    import fusion_ser

    res = ensemble_runs(members["audio"], tmp_path / "soup", method="soup")
    test = _test_rows(corpus)
    saved = RunDir(res.path).read_predictions("test").set_index("utt_id").loc[test["utt_id"]]
    results = fusion_ser.load(res.path).predict(test["path"].tolist(), batch_size=4)
    labels = RunDir(res.path).read_info().labels
    got = np.array([[r["probs"][c] for c in labels] for r in results])
    np.testing.assert_allclose(got, saved[prob_columns(labels)].to_numpy(), atol=1e-5)
    assert set(res.metrics) == {"dev", "test"} and set(res.member_metrics) == {"a0", "a1"}


def test_soup_refuses_other_architectures_and_combined_runs(members, tmp_path):
    with pytest.raises(FusionError, match="head.hidden_dim"):
        ensemble_runs([members["audio"][0], members["wide"]], tmp_path / "bad", method="soup")
    mean = ensemble_runs(members["audio"], tmp_path / "mean", method="mean").path
    with pytest.raises(FusionError, match="trained runs"):
        ensemble_runs([mean, members["audio"][0]], tmp_path / "bad2", method="soup")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_average_state_dicts_keeps_counters_and_checks_shapes():
    from fusion_ser.fusion.soup import average_state_dicts

    s1 = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    s2 = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(3)}
    out = average_state_dicts([s1, s2], ["a", "b"])
    assert out["w"].tolist() == [2.0, 4.0] and out["n"].item() == 3 and out["n"].dtype == torch.int64
    with pytest.raises(FusionError, match="shape"):
        average_state_dicts([s1, {"w": torch.zeros(3), "n": torch.tensor(3)}], ["a", "b"])


def test_soup_of_refit_runs_scores_dev_with_the_dev_selected_soup(members, corpus, tmp_path):
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.training.inference import predict_frame

    runs = members["refit"]
    res = ensemble_runs(runs, tmp_path / "soup", method="soup")
    for folder in ("model", "model_dev_selected"):
        a, b, soup = _weights(runs[0], folder), _weights(runs[1], folder), _weights(res.path, folder)
        for k in soup:
            np.testing.assert_allclose(soup[k], (a[k] + b[k]) / 2, rtol=1e-6, atol=1e-7, err_msg=f"{folder}/{k}")
    dev_model, cfg, labels = load_model(RunDir(res.path).path / "model_dev_selected")
    df = read_manifest(corpus)
    dev = df[df["split"] == "dev"].reset_index(drop=True)
    expect = predict_frame(dev_model, dev, cfg, torch.device("cpu"), stage="dev").set_index("utt_id")
    got = RunDir(res.path).read_predictions("dev").set_index("utt_id").loc[expect.index]
    np.testing.assert_allclose(got[prob_columns(labels)].to_numpy(), expect[prob_columns(labels)].to_numpy(), atol=1e-6)
    assert RunDir(res.path).read_info().extra["dev_model"] == "model_dev_selected"
