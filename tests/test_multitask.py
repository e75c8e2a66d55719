"""task: multitask: one model with a categorical and an attribute head on one pooled embedding.

The loss equals a numpy computation; a trained run holds both sets of predictions and figures and is selected on
the documented combined score; rows with only one kind of target train; fuse, ensemble, compare, predict,
export-submission (both tracks) and export-onnx take multitask runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import f1_score

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.evaluation.metrics import ccc, compute_metrics, multitask_score
from fusion_ser.models.losses import build_criterion
from fusion_ser.rundir import RunDir, prob_columns
from tests.test_trainer import make_corpus

ATTRS = ["arousal", "valence"]
MT = ["task=multitask", "data.attributes=[arousal, valence]"]


def fbank_cfg(*extra: str):
    """A small fbank (TDNN from scratch) audio model: trains in seconds on the sine corpus."""
    return load_config(None, ["audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=32",
                              "audio_encoder.n_mels=40", "pooling.type=mean_std", "head.hidden_dim=32",
                              "head.dropout=0.1", "train.epochs=12", "train.batch_size=8", "optim.lr_head=0.01",
                              "optim.lr_encoder=0.01", "train.cache_features=false", "train.report=true",
                              *extra])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("mt_corpus"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    from fusion_ser.training.job import train_run

    root = tmp_path_factory.mktemp("mt_runs")
    out = {f"mt{s}": train_run(fbank_cfg(*MT, f"seed={s}"), corpus, root / f"mt{s}").path for s in (0, 1)}
    out["cat"] = train_run(fbank_cfg("seed=0"), corpus, root / "cat").path
    return out


def _np_ccc(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(), y.mean()
    return 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)


def test_multitask_loss_equals_numpy() -> None:
    cfg = load_config(None, MT + ["multitask.weight_categorical=1.5", "multitask.weight_attributes=0.4"])
    crit = build_criterion(cfg, 3)
    weights = np.array([0.5, 1.0, 2.0])
    crit.set_class_weights(torch.tensor(weights, dtype=torch.float32))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3))
    values = rng.uniform(1, 7, size=(6, 2))
    label = np.array([0, 2, 1, -1, 2, 0])  # one row without a class
    attrs = rng.uniform(1, 7, size=(6, 2))
    attrs[1, 1] = np.nan  # one row without valence
    batch = {"label": torch.tensor(label), "attributes": torch.tensor(attrs, dtype=torch.float32)}
    loss = crit((torch.tensor(logits, dtype=torch.float32), torch.tensor(values, dtype=torch.float32)), batch)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ok = label >= 0
    w = weights[label[ok]]
    ce = -(w * logp[ok, label[ok]]).sum() / w.sum()
    att = sum(1 - _np_ccc(values[np.isfinite(attrs[:, a]), a], attrs[np.isfinite(attrs[:, a]), a]) for a in range(2))
    assert float(loss) == pytest.approx(1.5 * ce + 0.4 * att, rel=1e-5)
    only_attrs = {"label": torch.full((6,), -1), "attributes": batch["attributes"]}
    assert crit.has_targets(only_attrs)
    loss = crit((torch.tensor(logits, dtype=torch.float32), torch.tensor(values, dtype=torch.float32)), only_attrs)
    assert float(loss) == pytest.approx(0.4 * att, rel=1e-5)


def test_a_multitask_run_holds_both_predictions_and_is_selected_on_the_combined_score(runs) -> None:
    run = RunDir(runs["mt0"])
    info = run.require_complete()
    assert info.task == "multitask" and info.labels == ["anger", "happiness", "sadness"] and info.attributes == ATTRS
    pred = run.read_predictions("test")
    assert {"label", "pred", *prob_columns(info.labels), "arousal", "arousal_pred", "valence_pred"} <= set(pred.columns)
    metrics = run.read_metrics()
    test = metrics["test"]
    assert test["macro_f1"] == pytest.approx(f1_score(pred["label"], pred["pred"], average="macro"))
    assert test["ccc_arousal"] == pytest.approx(ccc(pred["arousal"], pred["arousal_pred"]), abs=1e-9)
    assert test["multitask_score"] == pytest.approx((test["macro_f1"] + test["ccc_mean"]) / 2)
    assert metrics["selection_metric"] == "multitask_score"
    assert test["macro_f1"] > 0.6 and test["ccc_arousal"] > 0.4  # pitch gives the class and the arousal
    assert "ci" in test and "multitask_score" in test["ci"]  # bootstrap interval of the combined score
    log = pd.read_csv(run.path / "train_log.csv")
    best = log.loc[log["dev_multitask_score"].idxmax(), "epoch"]
    assert int(best) == metrics["best_epoch"]
    report = (run.path / "report.md").read_text()
    assert "| class |" in report and "| attribute |" in report


def test_rows_with_one_kind_of_target_train_a_multitask_model(corpus, tmp_path) -> None:
    from fusion_ser.data.selection import split_rows

    df = pd.read_csv(corpus)
    train = df.index[df["split"] == "train"]
    df.loc[train[:5], "label"] = "no_agreement"  # attributes only
    df.loc[train[5:10], ["arousal", "valence"]] = np.nan  # class only
    df.loc[train[10:12], ["arousal", "valence"]] = np.nan
    df.loc[train[10:12], "label"] = ""  # neither: left out
    mt = split_rows(df, fbank_cfg(*MT), "m.csv")[1]
    cat = split_rows(df, fbank_cfg(), "m.csv")[1]
    ids = set(df.loc[train, "utt_id"])
    assert set(mt["utt_id"]) == ids - set(df.loc[train[10:12], "utt_id"])
    assert set(cat["utt_id"]) == ids - set(df.loc[train[:5], "utt_id"]) - set(df.loc[train[10:12], "utt_id"])


def test_predict_returns_class_and_attributes_as_the_run_predicted(runs, corpus) -> None:
    import fusion_ser

    df = pd.read_csv(corpus)
    test = df[df["split"] == "test"].head(4)
    paths = [str(Path(corpus).parent / p) for p in test["path"]]
    results = fusion_ser.load(runs["mt0"]).predict(paths)
    saved = RunDir(runs["mt0"]).read_predictions("test").set_index("utt_id")
    for uid, res in zip(test["utt_id"], results):
        assert res["label"] == saved.loc[uid, "pred"]
        assert res["probs"]["anger"] == pytest.approx(saved.loc[uid, "prob_anger"], abs=1e-5)
        assert res["attributes"]["valence"] == pytest.approx(saved.loc[uid, "valence_pred"], abs=1e-4)


def test_fuse_and_ensemble_combine_each_head(runs, tmp_path) -> None:
    from fusion_ser.fusion.ensemble import ensemble_runs
    from fusion_ser.fusion.late import late_fuse
    from fusion_ser.fusion.runs import load_combiner

    members = [runs["mt0"], runs["mt1"]]
    mean = ensemble_runs(members, tmp_path / "mean", method="mean")
    frames = [RunDir(m).read_predictions("test").set_index("utt_id") for m in members]
    out = RunDir(mean.path).read_predictions("test").set_index("utt_id")
    cols = prob_columns(mean.info.labels) + ["arousal_pred", "valence_pred"]
    np.testing.assert_allclose(out[cols].to_numpy(), (frames[0].loc[out.index, cols].to_numpy()
                                                     + frames[1].loc[out.index, cols].to_numpy()) / 2, atol=1e-9)
    assert mean.info.task == "multitask" and "multitask_score" in mean.metrics["test"]
    fused = late_fuse(members, tmp_path / "fused", method="lr", attribute_method="ridge", folds=2)
    combiner = load_combiner(fused.path)
    assert set(combiner.parts) == {"categorical", "attributes"}
    assert combiner.parts["attributes"].method == "ridge" and combiner.parts["categorical"].method == "logistic"
    again = combiner.combine([RunDir(m).read_predictions("test") for m in members])
    saved = RunDir(fused.path).read_predictions("test")
    np.testing.assert_allclose(again[cols].to_numpy(), saved[cols].to_numpy(), atol=1e-9)
    assert fused.n_folds == 2 and "ccc_mean" in fused.metrics["dev"]
    soup = ensemble_runs(members, tmp_path / "soup", method="soup")
    souped = RunDir(soup.path).read_predictions("test")
    assert soup.info.task == "multitask" and set(cols) <= set(souped.columns) and "multitask_score" in soup.metrics["test"]
    res = CliRunner().invoke(main, ["fuse", str(members[0]), str(members[1]), "-o", str(tmp_path / "bad"),
                                    "--attribute-method", "mean", "--method", "interp"])
    assert res.exit_code == 1 and "does not apply to the class posteriors of multitask runs" in res.output


def test_compare_a_multitask_run_with_a_categorical_one_on_the_class_figures(runs, tmp_path) -> None:
    from fusion_ser.evaluation.compare import compare_runs

    comp = compare_runs([runs["mt0"]], runs["cat"], n_boot=50, n_perm=50)
    assert comp.task == "categorical" and "multitask_score" not in comp.columns
    row = comp.table.set_index("run").loc["mt0"]
    pm = RunDir(runs["mt0"]).read_predictions("test")
    pc = RunDir(runs["cat"]).read_predictions("test")
    delta = f1_score(pm["label"], pm["pred"], average="macro") - f1_score(pc["label"], pc["pred"], average="macro")
    assert row["delta_macro_f1"] == pytest.approx(delta)
    both = compare_runs([runs["mt1"]], runs["mt0"], n_boot=50, n_perm=50)
    assert both.task == "multitask" and {"macro_f1", "ccc_mean", "multitask_score"} <= set(both.columns)
    m1 = compute_metrics(RunDir(runs["mt1"]).read_predictions("test"), RunDir(runs["mt1"]).read_info())
    assert both.table.set_index("run").loc["mt1", "multitask_score"] == pytest.approx(
        multitask_score(m1["macro_f1"], m1["ccc_mean"]))
    res = CliRunner().invoke(main, ["compare", str(runs["cat"]), str(runs["mt0"]), "--baseline", str(runs["cat"]),
                                    "-o", str(tmp_path / "cmp.md"), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["compare", str(runs["mt1"]), "--baseline", str(runs["mt0"]),
                                    "-o", str(tmp_path / "cmp.html"), "--n-boot", "20"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "cmp.html").read_text()
    assert "multitask score" in page and "CCC arousal" in page and "anger" in page


def test_export_submission_writes_either_track_of_a_multitask_run(runs, tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["export-submission", str(runs["mt0"]), "-o", str(tmp_path / "s.csv")])
    assert res.exit_code == 1 and "--track" in res.output and not (tmp_path / "s.csv").exists()
    ok = runner.invoke(main, ["export-submission", str(runs["mt0"]), "-o", str(tmp_path / "t1.csv"),
                              "--track", "categorical", "--allow-partial"])
    assert ok.exit_code == 0, ok.output
    t1 = pd.read_csv(tmp_path / "t1.csv")
    pred = RunDir(runs["mt0"]).read_predictions("test")
    assert list(t1.columns) == ["FileName", "EmoClass"]
    assert list(t1["EmoClass"]) == list(pred["pred"].map({"anger": "A", "happiness": "H", "sadness": "S"}))
    refused = runner.invoke(main, ["export-submission", str(runs["cat"]), "-o", str(tmp_path / "t2.csv"),
                                   "--track", "attributes"])
    assert refused.exit_code == 1 and "predicts no attributes" in refused.output


def test_export_onnx_of_a_multitask_model_gives_probabilities_then_attributes(runs, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from fusion_ser.export import export_onnx

    result = export_onnx(runs["mt0"], tmp_path / "mt.onnx")
    meta = result.meta
    assert meta["outputs"][0]["name"] == "probabilities_attributes"
    assert meta["outputs"][0]["columns"] == ["anger", "happiness", "sadness", "arousal", "valence"]
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-3


def test_auxiliary_head_adds_its_cross_entropy_in_training_only(corpus, tmp_path) -> None:
    from fusion_ser.data.dataset import AUXILIARY_KEY
    from fusion_ser.models.factory import build_model
    from fusion_ser.training.job import train_run

    cfg = fbank_cfg(*MT, "multitask.auxiliary=gender", "multitask.weight_auxiliary=0.3", "head.dropout=0.0")
    torch.manual_seed(0)
    model = build_model(cfg, ["anger", "happiness", "sadness"], auxiliary_classes=["f", "m"])
    batch = {"wav": torch.randn(4, 8000) * 0.1, "wav_lengths": torch.tensor([8000, 7000, 6000, 8000]),
             "label": torch.tensor([0, 1, 2, -1]), "attributes": torch.tensor([[5.0, 2.0], [4.0, 3.0], [2.0, 6.0],
                                                                                [3.0, 1.0]]),
             AUXILIARY_KEY: ["f", "m", "", "m"]}
    model.train()
    with_aux = model(batch)
    task_loss = model.criterion((with_aux.logits, with_aux.attributes), batch)
    logits = model.auxiliary.net(with_aux.records["embedding"]).detach().numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -np.mean([logp[0, 0], logp[1, 1], logp[3, 1]])  # the row without a value is ignored
    assert float(with_aux.loss.detach()) == pytest.approx(float(task_loss.detach()) + 0.3 * ce, rel=1e-4)
    model.eval()
    plain = model(batch)
    assert float(plain.loss) == pytest.approx(float(model.criterion((plain.logits, plain.attributes), batch)), rel=1e-6)

    df = pd.read_csv(corpus)
    df["gender"] = np.where(df["speaker"].str[-1].astype(int) % 2 == 0, "f", "m")
    manifest = Path(corpus).parent / "with_gender.csv"
    df.to_csv(manifest, index=False)
    run = train_run(fbank_cfg(*MT, "multitask.auxiliary=gender", "train.epochs=2", "train.report=false"), manifest,
                    tmp_path / "aux")
    from safetensors.torch import load_file

    keys = load_file(str(run.model_dir / "weights.safetensors")).keys()
    assert not any(k.startswith("auxiliary.") for k in keys)  # training-only: not saved, the run reloads
    import fusion_ser

    assert "attributes" in fusion_ser.load(run.path).predict([str(Path(corpus).parent / df["path"].iloc[0])])[0]
    (tmp_path / "c.yaml").write_text("audio_encoder:\n  type: fbank\n")
    res = CliRunner().invoke(main, ["train", "-c", str(tmp_path / "c.yaml"), "--manifest", str(corpus), "-o",
                                    str(tmp_path / "bad"), "multitask.auxiliary=accent"])
    assert res.exit_code == 1 and "accent" in res.output and "multitask.auxiliary" in res.output
