"""The model card of a run: `model/README.md` in the Hugging Face style, written by `evaluate_run`.

YAML front matter (library_name, tags, metrics, a model-index with the exact figures of metrics.json, and a
`fusion_ser` block with their 95 % intervals), then what the model is (task, modality, encoder, pooling, head, or
the members and combiner of a fused / ensembled run), its labels or attributes, the data it was trained on
(manifest path and sha256 from the `_run` block of config.yaml), dev / test figures with their intervals as
metrics.json holds them, the config, and intended use and limits. Nothing reads the card back: a run without one
loads and predicts the same.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import yaml

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.evaluation.metrics import headline_keys, metric_label
from fusion_ser.rundir import RunDir, RunDirError, RunInfo, atomic_write_text, read_run_config

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
SPLIT_ORDER = ("dev", "test")  # reported first, in this order; other evaluated splits follow
NON_CLASS = ("other", "no_agreement")


def _ordered_splits(metrics: dict) -> list[str]:
    scored = [s for s, m in metrics.items() if isinstance(m, dict) and "ci" in m and m.get("n", 0) > 0]
    return [s for s in SPLIT_ORDER if s in scored] + sorted(s for s in scored if s not in SPLIT_ORDER)


def _pipeline_tag(info: RunInfo) -> Optional[str]:
    """The Hugging Face task of a categorical or multitask run (there is none for attribute regression)."""
    if not has_classes(info.task):
        return None
    return "text-classification" if info.modality == "text" else "audio-classification"


def _encoder_names(values: dict, modality: str) -> list[str]:
    """Human names of the encoders a model's config uses (e.g. 'hf /models/wavlm-base (layers weighted)')."""
    out = []
    if modality in ("audio", "both"):
        a = values.get("audio_encoder") or {}
        kind = a.get("type", "?")
        if kind == "fbank":
            out.append(f"audio: fbank ({a.get('n_mels', '?')}-bin log-mel + a TDNN of width {a.get('hidden_dim', '?')}, "
                       "trained from scratch)")
        else:
            name = a.get("name_or_path") or ("the packaged Whisper tiny.en" if kind == "ct2_whisper" else "?")
            extras = [f"layers {a.get('layers')}"] + ([f"finetune {a.get('finetune')}"] if kind == "hf" else [])
            out.append(f"audio: {kind} {name} ({', '.join(extras)})")
    if modality in ("text", "both"):
        t = values.get("text_encoder") or {}
        name = t.get("name_or_path") or "packaged all-MiniLM-L6-v2"
        extras = [f"{k} {t[k]}" for k in ("finetune", "pooling") if t.get(k) is not None]
        out.append(f"text: {name}" + (f" ({', '.join(extras)})" if extras else ""))
    return out


def _tags(info: RunInfo, values: dict) -> list[str]:
    tags = ["speech-emotion-recognition", "fusion-ser", info.task, info.modality]
    if info.kind != "model":
        tags.append(info.kind)
    a_type = (values.get("audio_encoder") or {}).get("type") if info.modality in ("audio", "both") else None
    if a_type == "ct2_whisper":
        tags.append("whisper")
    elif a_type:
        tags.append(a_type)
    return list(dict.fromkeys(tags))


def _front_matter(run: RunDir, info: RunInfo, metrics: dict, values: dict, provenance: dict) -> dict:
    keys = headline_keys(info)
    manifest = provenance.get("manifest")
    dataset = Path(manifest).name if manifest else "unrecorded"
    results, intervals = [], {}
    for split in _ordered_splits(metrics):
        m = metrics[split]
        figures = [{"type": k, "name": f"{metric_label(k)} ({split})", "value": float(m[k])} for k in keys if k in m]
        results.append({"task": {"type": _pipeline_tag(info) or "other", "name": "Speech emotion recognition"},
                        "dataset": {"name": dataset, "type": "fusion-ser-manifest", "split": split},
                        "metrics": figures})
        intervals[split] = {"n": int(m["n"]), "ci_method": m.get("ci_method"),
                            "ci": {k: {f: float(v) for f, v in m["ci"][k].items()} for k in keys if k in m["ci"]}}
    front: dict[str, Any] = {"library_name": "fusion-ser"}
    if _pipeline_tag(info):
        front["pipeline_tag"] = _pipeline_tag(info)
    front.update({"tags": _tags(info, values), "metrics": keys})
    if results:
        front["model-index"] = [{"name": run.path.name, "results": results}]
    front["fusion_ser"] = {"kind": info.kind, "task": info.task, "modality": info.modality,
                           "labels": list(info.labels), "attributes": list(info.attributes),
                           "manifest": manifest, "manifest_sha256": provenance.get("manifest_sha256"),
                           "results": intervals}
    return front


def _member_lines(info: RunInfo, provenance: dict) -> list[str]:
    lines = []
    for path in info.members:
        try:
            member = RunDir(path).read_info()
            lines.append(f"- `{path}`: {member.kind} run, {member.modality}")
        except (RunDirError, OSError):  # a member moved or deleted since: the card still names it
            lines.append(f"- `{path}` (not readable now)")
    return lines


def _combiner(run: RunDir) -> Optional[dict]:
    p = run.model_dir / "combiner.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _model_section(run: RunDir, info: RunInfo, values: dict, provenance: dict) -> list[str]:
    parts = ([f"emotion classification into {len(info.labels)} classes"] if has_classes(info.task) else []) + (
        ["emotion attribute regression (" + ", ".join(info.attributes) + ")"] if has_attributes(info.task) else [])
    task = " and ".join(parts) + (" by one model with two heads" if info.task == "multitask" else "")
    lines = ["## Model", "", f"- task: {task}", f"- input: {info.modality}"
             + (" (text: a transcript, made by the packaged Whisper when none is given)"
                if info.modality in ("text", "both") else " (16 kHz mono waveform)")]
    if info.kind == "model":
        lines += [f"- encoder {e}" for e in _encoder_names(values, info.modality)]
        pooling = (values.get("pooling") or {}).get("type")
        if pooling:
            lines.append(f"- pooling: {pooling}" + (" (audio frames; text tokens pool as text_encoder.pooling says)"
                                                    if info.modality == "text" else ""))
        head = values.get("head") or {}
        lines.append(f"- head: the Odyssey 2024 baseline head (hidden {head.get('hidden_dim', '?')}, dropout "
                     f"{head.get('dropout', '?')})" + (", one per attribute" if head.get("per_attribute") else ""))
        loss = (values.get("loss") or {}).get("type")
        if loss:
            lines.append(f"- loss: {loss}")
        if info.modality == "both":
            f = values.get("fusion") or {}
            lines.append(f"- cross-modal attention fusion: {f.get('layers', '?')} layer(s), dim {f.get('dim', '?')}")
    else:
        method = provenance.get("method") or info.extra.get("method")
        lines.append(f"- {info.kind} of {len(info.members)} member runs, method {method}")
        spec = _combiner(run)
        if spec is not None:
            lines.append(f"- combiner: `{spec.get('method', method)}` over {spec.get('n_members', '?')} members "
                         "(numbers in model/combiner.json)")
        if info.extra.get("cv_folds"):
            lines.append(f"- dev figures are out-of-fold ({info.extra['cv_folds']} folds inside dev"
                         + (", grouped by speaker" if info.extra.get("cv_grouped_by_speaker") else "") + ")")
        lines += ["", "Members:", ""] + _member_lines(info, provenance)
    return lines + [""]


def _outputs_section(info: RunInfo, values: dict) -> list[str]:
    lines = []
    if has_classes(info.task):
        lines += ["## Labels", "", "Class order of the probabilities:", ""] + [
            f"{i}. {c}" for i, c in enumerate(info.labels)] + [""]
    if has_attributes(info.task):
        rng = (values.get("data") or {}).get("attribute_range")
        scale = f" on the corpus scale [{rng[0]}, {rng[1]}]" if rng else ""
        lines += ["## Attributes", "", f"Predicted{scale}, in this order: " + ", ".join(info.attributes) + ".", ""]
    return lines


def _data_section(info: RunInfo, provenance: dict) -> list[str]:
    manifest = provenance.get("manifest")
    lines = ["## Training data", ""]
    if manifest:
        lines += [f"- manifest: `{manifest}`", f"- sha256: `{provenance.get('manifest_sha256') or 'not recorded'}`"]
    else:
        lines.append("- no manifest recorded in config.yaml")
    if info.kind != "model":
        lines.append("- the members were trained on their own manifests (see each member's card); the combiner "
                     "was fitted on dev predictions")
    return lines + [""]


def _results_section(info: RunInfo, metrics: dict) -> list[str]:
    splits = _ordered_splits(metrics)
    lines = ["## Results", ""]
    if not splits:
        return lines + ["No split has been evaluated with intervals yet.", ""]
    keys = headline_keys(info)
    for split in splits:
        m = metrics[split]
        method = m.get("ci_method") or {}
        lines += [f"### {split}", "",
                  f"{m['n']} utterances scored ({m.get('n_skipped', 0)} without known truth skipped); 95 % bootstrap "
                  f"intervals over {method.get('n_boot', '?')} resamples of {method.get('unit', '?')}s "
                  f"(seed {method.get('seed', '?')}).", "",
                  "| metric | value | 95 % CI low | 95 % CI high |", "|---|---|---|---|"]
        for k in keys:
            if k in m["ci"]:
                c = m["ci"][k]
                lines.append(f"| {metric_label(k)} | {c['value']:.4f} | {c['low']:.4f} | {c['high']:.4f} |")
        if m.get("n_unknown_class"):
            lines.append("")
            lines.append(f"{m['n_unknown_class']} scored rows carry labels the model has no class for; they count "
                         "as errors.")
        lines.append("")
    lines += ["Values are rounded here; the front matter (`model-index`, `fusion_ser.results`) holds them exactly "
              "as metrics.json does.", ""]
    return lines


def _limits_section(info: RunInfo, values: dict, provenance: dict) -> list[str]:
    manifest = provenance.get("manifest")
    corpus = f"`{Path(manifest).name}`" if manifest else "its training corpus"
    lines = ["## Intended use and limits", "",
             f"- Research and analysis of emotional expression in speech resembling {corpus}: its recording "
             "conditions, speaking style (acted or natural), speakers and emotion annotation. The figures above "
             "hold for that corpus's splits only; expect lower figures on other domains.",
             "- Language: that of the training corpus. The packaged Whisper tiny.en (transcripts; the default audio "
             "encoder) and the default text model are English models."]
    if has_classes(info.task):
        lines.append(f"- Unknown classes: the model always answers one of its {len(info.labels)} classes "
                     f"({', '.join(info.labels)}); speech showing any other emotion, or none the annotators agreed on "
                     f"({' / '.join(NON_CLASS)} rows, left out of training), is forced into one of them. Use the "
                     "probabilities, not only the top class, to notice uncertain cases.")
    if has_attributes(info.task):
        lines.append("- Attribute values are not clipped to the scale and may fall slightly outside it.")
    lines += ["- Emotion recognised from voice or words is what the speech expresses, not what a person feels. "
              "Do not use it for decisions about individuals (hiring, health, policing, credit) or to monitor "
              "people without their consent.", ""]
    return lines


def _usage_section(run: RunDir, info: RunInfo) -> list[str]:
    lines = ["## How to use", "", "```python", "import fusion_ser", "",
             f"predictor = fusion_ser.load({str(run.path.resolve())!r})",
             "results = predictor.predict([\"clip.wav\"])", "```", "",
             f"or `fusion-ser predict {run.path} clip.wav`."]
    if info.kind == "model" and info.modality != "both":
        lines[-1] += f" As one ONNX graph: `fusion-ser export-onnx {run.path} -o model.onnx`."
    return lines + [""]


def model_card(run: RunDir, info: RunInfo, metrics: dict) -> str:
    """The text of the model card of a run from its run.json, config.yaml and metrics (as metrics.json holds them)."""
    values, provenance = read_run_config(run.config_path)
    front = _front_matter(run, info, metrics, values, provenance)
    noun = {"audio": "an audio model", "text": "a text model", "both": "an audio + text attention-fusion model"}
    what = ((noun.get(info.modality, "a model") if info.kind == "model" else f"a {info.kind} of runs") + " for "
            + {"categorical": "speech emotion classification", "attributes": "emotion attribute regression",
               "multitask": "speech emotion classification and attribute regression"}.get(info.task, info.task))
    config = dict(values)
    if provenance:
        config["_run"] = provenance
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {run.path.name}", "", f"This is {what}, trained with fusion-ser.", ""]
    lines += _model_section(run, info, values, provenance)
    lines += _outputs_section(info, values)
    lines += _data_section(info, provenance)
    lines += _results_section(info, metrics)
    lines += _limits_section(info, values, provenance)
    lines += _usage_section(run, info)
    lines += ["## Config", "", "The run's config.yaml:", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip(), "```", ""]
    return "\n".join(lines)


def write_model_card(run: RunDir, info: RunInfo) -> Optional[Path]:
    """Write model/README.md of a run that has a model/ folder, with the figures of its metrics.json; None (nothing
    written) when it has no model/ folder."""
    if not run.model_dir.is_dir():
        log.debug("run %s has no model/ folder: no model card", run.path)
        return None
    path = run.model_dir / CARD_FILE
    atomic_write_text(path, model_card(run, info, run.read_metrics()))
    return path


def read_card_front_matter(path: str | Path) -> dict:
    """The YAML front matter of a model card (the block between the first two '---' lines)."""
    text = Path(path).read_text()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0]) or {}
