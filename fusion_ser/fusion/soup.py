"""Model soups (`fusion-ser ensemble --method soup`): the mean of the weights of runs of one architecture.

Runs trained from one recipe with different seeds (or learning rates) are averaged tensor by tensor into one model,
so predicting costs one forward pass instead of one per member (Wortsman et al., 2022, "uniform soup"). The result
is a trained run (kind "model") like any other: `fusion_ser.load`, `predict`, `embed` and `export-onnx` read it.
Its run.json lists the members and its dev/test predictions come from the souped model on the members' rows. Members
refit on train+dev (train.refit_on_dev) also hold their dev-selected model: those are souped too and give the dev
predictions, so dev figures are never those of a model trained on dev.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import torch

from fusion_ser.data.manifest import read_manifest
from fusion_ser.data.selection import split_rows
from fusion_ser.fusion.members import FusionError, Member, open_members
from fusion_ser.fusion.runs import CombinedRun
from fusion_ser.models.io import load_model, save_model
from fusion_ser.rundir import RunDir, RunInfo, file_hash, prepare_output, write_run_config
from fusion_ser.training.inference import predict_frame
from fusion_ser.training.job import feature_caches

log = logging.getLogger(__name__)

# the config sections that define the network: members must agree on every value in them
ARCHITECTURE_KEYS = ("task", "modality", "audio_encoder", "text_encoder", "pooling", "head", "fusion")


def _architecture(cfg_dict: dict) -> dict:
    return {k: cfg_dict.get(k) for k in ARCHITECTURE_KEYS} | {"attributes": cfg_dict.get("data", {}).get("attributes")}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def average_state_dicts(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating tensors (computed in float64, stored in each tensor's dtype); other
    tensors (counters) must be equal and are kept. Different keys or shapes are an error naming the tensor."""
    first = states[0]
    for name, s in zip(names[1:], states[1:]):
        if set(s) != set(first):
            diff = sorted(set(s) ^ set(first))
            raise FusionError(f"runs {names[0]} and {name} have different weights (e.g. '{diff[0]}'), so they are not "
                              "one architecture and cannot be souped; ensemble them with --method mean instead")
        bad = next((k for k in first if s[k].shape != first[k].shape), None)
        if bad is not None:
            raise FusionError(f"weight '{bad}' has shape {tuple(first[bad].shape)} in {names[0]} but "
                              f"{tuple(s[bad].shape)} in {name}; soups need one architecture")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _check_members(members: list[Member]) -> None:
    for m in members:
        if m.info.kind != "model" or not (m.path / "model").is_dir():
            raise FusionError(f"run {m.name} is a '{m.info.kind}' run; a soup averages trained runs (kind 'model') "
                              "with a model/ folder: soup their members, or use --method mean")
    base = _flat(_architecture(members[0].config))
    for m in members[1:]:
        other = _flat(_architecture(m.config))
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            k = diff[0]
            raise FusionError(f"runs {members[0].name} and {m.name} differ in {k} ({base.get(k)!r} vs "
                              f"{other.get(k)!r}); a soup needs runs of one architecture (same encoder, pooling, head)")
        if list(m.info.labels) != list(members[0].info.labels):
            raise FusionError(f"runs {members[0].name} and {m.name} order their classes differently "
                              f"({members[0].info.labels} vs {m.info.labels}); a soup needs the same class order")


def _soup(members: list[Member], folder: str) -> tuple[torch.nn.Module, object, list[str]]:
    """The model whose weights are the mean of the members' `folder` models (model/ or model_dev_selected/)."""
    loaded = [load_model(m.path / folder) for m in members]
    model, cfg, labels = loaded[0]
    model.load_state_dict(average_state_dicts([mdl.state_dict() for mdl, _, _ in loaded], [m.name for m in members]))
    return model.eval(), cfg, labels


def soup_runs(runs: list[Union[str, Path]], out_dir: Union[str, Path], *, seed: int = 0,
              force: bool = False) -> CombinedRun:
    """Average trained runs of one architecture into one model and write it as a trained run in `out_dir`."""
    from fusion_ser.evaluation.metrics import compute_metrics
    from fusion_ser.evaluation.report import evaluate_run

    members = open_members(runs)
    _check_members(members)
    names = [m.name for m in members]
    model, cfg, labels = _soup(members, "model")
    dev_selected = all((m.path / "model_dev_selected").is_dir() for m in members)
    dev_model = _soup(members, "model_dev_selected")[0] if dev_selected else model
    manifest = members[0].manifest
    if not manifest or not Path(manifest).is_file():
        raise FusionError(f"run {names[0]} records no readable manifest ({manifest}); the soup's dev/test "
                          "predictions are made on its rows")
    # the dev/test rows as the members' training read them: fold, text column per split, conversation context
    _, _, dev_rows, test_rows = split_rows(read_manifest(manifest), cfg, str(manifest))
    rows = {"dev": dev_rows, "test": test_rows}
    rd = prepare_output(out_dir, kind="model", force=force, inputs=[m.path for m in members])
    info = RunInfo(kind="model", task=cfg.task, labels=list(labels), attributes=list(cfg.data.attributes),
                   modality=cfg.modality, members=[str(m.path) for m in members],
                   extra={"method": "soup", "options": {"seed": seed}})
    rd.write_info(info)
    provenance = {"manifest": str(manifest), "manifest_sha256": file_hash(manifest), "kind": "model",
                  "method": "soup", "members": info.members}
    write_run_config(rd.config_path, dict(members[0].config), provenance)
    save_model(model, cfg, labels, rd.model_dir)
    if dev_selected:
        save_model(dev_model, cfg, labels, rd.path / "model_dev_selected")
        info.extra.update({"test_model": "refit_on_dev", "dev_model": "model_dev_selected"})
        rd.write_info(info)
    cached = feature_caches(model, cfg)
    splits = [s for s in ("dev", "test") if all(s in RunDir(m.path).splits() for m in members)]
    metrics, member_metrics = {}, {n: {} for n in names}
    for split in splits:
        ids = set(RunDir(members[0].path).read_predictions(split)["utt_id"].astype(str))
        frame = rows[split][rows[split]["utt_id"].astype(str).isin(ids)].reset_index(drop=True)
        pred = predict_frame(dev_model if split == "dev" else model, frame, cfg, cached=cached, stage=split)
        rd.write_predictions(split, pred)
        metrics[split] = compute_metrics(pred, info)
        for m in members:
            member_metrics[m.name][split] = compute_metrics(RunDir(m.path).read_predictions(split), m.info)
    rd.write_metrics(metrics)
    report = evaluate_run(rd.path, seed=seed, allow_incomplete=True)
    metrics = {s: report.get(s, v) for s, v in metrics.items()}
    rd.mark_complete()
    info.complete = True
    log.info("wrote the soup of %d runs to %s", len(members), rd.path)
    return CombinedRun(rd.path, info, "soup", metrics, member_metrics, 0, False, splits)
