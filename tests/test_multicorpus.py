"""Training on several corpora (data.manifests): corpus sampling proportions over an epoch, the sampler's exactness
on resume and across ranks, the provenance of both manifests, a label map, utt_id clashes, metrics by corpus."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import load_config
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.data.sources import combine_manifests
from fusion_ser.rundir import RunDir, file_hash
from fusion_ser.training.job import train_run
from tests.test_trainer import make_corpus

GROUPS = ["a"] * 60 + ["b"] * 30 + ["c"] * 10


def _epoch(sampler: BucketBatchSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return [i for batch in sampler for i in batch]


@pytest.mark.parametrize("balanced", [False, True])
def test_corpus_shares_of_an_epoch(balanced):
    lengths = np.random.default_rng(0).uniform(1, 5, len(GROUPS))
    sampler = BucketBatchSampler(lengths, 8, seed=3, groups=GROUPS if balanced else None)
    items = _epoch(sampler, 1)
    counts = Counter(GROUPS[i] for i in items)
    expected = {"a": 34, "b": 33, "c": 33} if balanced else {"a": 60, "b": 30, "c": 10}
    assert dict(counts) == expected and len(items) == len(GROUPS)
    if balanced:  # a small corpus is repeated (every item at least 3 times), a large one subsampled
        per_item = Counter(items)
        assert min(per_item[i] for i in range(90, 100)) == 3 and len(set(items) & set(range(60))) == 34
        assert len(sampler) == len(list(sampler))


def test_balanced_sampler_is_exact_on_resume_and_disjoint_across_ranks():
    lengths = np.ones(len(GROUPS))
    first = [_epoch(BucketBatchSampler(lengths, 4, seed=1, groups=GROUPS), e) for e in (1, 2, 3)]
    resumed = BucketBatchSampler(lengths, 4, seed=1, groups=GROUPS)
    assert _epoch(resumed, 3) == first[2] and first[1] != first[2]
    ranks = [BucketBatchSampler(lengths, 4, seed=1, groups=GROUPS, num_replicas=2, rank=r) for r in (0, 1)]
    together = Counter(_epoch(ranks[0], 2) + _epoch(ranks[1], 2))
    assert together == Counter(first[1])  # the two ranks split the same epoch


def _corpora(tmp_path):
    a = make_corpus(tmp_path / "a", n_speakers=4, per_class=2, seed=0)
    b = make_corpus(tmp_path / "b", n_speakers=4, per_class=1, seed=1)
    df = pd.read_csv(b)
    df["label"] = df["label"].replace({"sadness": "low"})
    df.to_csv(b, index=False)
    return a, b


def test_combine_maps_labels_and_renames_clashing_utt_ids(tmp_path):
    a, b = _corpora(tmp_path)
    cfg = load_config(None, [f"data.manifests=[{{path: {a}, corpus: ra}}, "
                             f"{{path: {b}, corpus: tts, label_map: {{low: sadness}}}}]"])
    df = combine_manifests(cfg.data.manifests)
    assert Counter(df["corpus"]) == {"ra": 24, "tts": 12}
    assert set(df.loc[df["corpus"] == "tts", "label"]) == {"anger", "happiness", "sadness"}
    assert df["utt_id"].is_unique and df["utt_id"].str.startswith("tts/spk0_").any()


def test_multi_corpus_run_records_both_manifests_and_scores_by_corpus(tmp_path):
    torch.set_num_threads(1)
    a, b = _corpora(tmp_path)
    cfg = load_config(None, [f"data.manifests=[{{path: {a}, corpus: ra}}, "
                             f"{{path: {b}, corpus: tts, label_map: {{low: sadness}}}}]",
                             "data.corpus_sampling=balanced", "train.epochs=1", "train.batch_size=8",
                             "train.cache_features=false", "head.hidden_dim=16", "pooling.type=mean",
                             "audio_encoder.type=fbank", "audio_encoder.hidden_dim=16", "audio_encoder.n_mels=20"])
    run = train_run(cfg, None, tmp_path / "run")
    provenance = run.provenance()
    assert [(m["path"], m["sha256"], m["corpus"]) for m in provenance["manifests"]] == [
        (str(a.resolve()), file_hash(a), "ra"), (str(b.resolve()), file_hash(b), "tts")]
    assert provenance["manifests"][1]["label_map"] == {"low": "sadness"}
    assert run.manifest() == str((tmp_path / "run" / "manifest.csv").resolve())
    assert provenance["manifest_sha256"] == file_hash(tmp_path / "run" / "manifest.csv")
    assert run.read_info().labels == ["anger", "happiness", "sadness"]  # "low" was mapped
    pred = run.read_predictions("test")
    assert set(pred["corpus"]) == {"ra", "tts"}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    from sklearn.metrics import f1_score

    for name, rows in pred.groupby("corpus"):
        assert metrics["by_corpus"][name]["macro_f1"] == pytest.approx(f1_score(rows["label"], rows["pred"], average="macro"))
        assert metrics["by_corpus"][name]["n"] == len(rows)


def test_resume_refuses_an_edited_source_manifest(tmp_path):
    from fusion_ser.data.sources import sources_changes, sources_provenance

    a, b = _corpora(tmp_path)
    cfg = load_config(None, [f"data.manifests=[{{path: {a}}}, {{path: {b}, corpus: tts}}]"])
    recorded = sources_provenance(cfg.data.manifests)
    assert sources_changes(recorded, cfg.data.manifests) == []
    pd.read_csv(b).iloc[:-1].to_csv(b, index=False)
    changed = sources_changes(recorded, cfg.data.manifests)
    assert len(changed) == 1 and "tts" in changed[0] and "edited" in changed[0]
