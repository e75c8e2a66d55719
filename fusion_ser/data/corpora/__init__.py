"""Corpus adapters, one module per corpus, behind one registry: `prepare_corpus(name, root, options)`.

Every adapter has a typed options dataclass and returns a frame in the manifest contract. Corpora without
official splits (RAVDESS, EmoDB, CREMA-D, IEMOCAP, CSVs without a split column) get speaker-independent folds
(IEMOCAP: its sessions) and splits from fold 0: test fold 0, dev fold 1, train the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from fusion_ser.config import ConfigError, build_dataclass
from fusion_ser.data.corpora import crema_d, emodb, generic_csv, iemocap, meld, msp_podcast, ravdess
from fusion_ser.data.corpora.common import CorpusError
from fusion_ser.data.folds import apply_fold, assign_folds

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 4


@dataclass(frozen=True)
class Corpus:
    """A registered adapter: its options class, its build function and the attribute scale it declares."""

    name: str
    config_cls: type
    build: Callable[[Path, Any], pd.DataFrame]
    description: str
    attribute_range: Optional[tuple[float, float]] = None


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in [
        Corpus("msp-podcast", msp_podcast.MspPodcastConfig, msp_podcast.prepare,
               "ROOT with Audios/, Labels/labels_consensus.csv|json, optional Transcripts/ and labels_detailed.json",
               msp_podcast.ATTRIBUTE_RANGE),
        Corpus("ravdess", ravdess.RavdessConfig, ravdess.prepare,
               "ROOT with Actor_XX/03-01-EE-II-SS-RR-AA.wav, or ROOT/manifest.csv"),
        Corpus("emodb", emodb.EmoDBConfig, emodb.prepare, "ROOT with wav/03a01Fa.wav ..."),
        Corpus("crema-d", crema_d.CremaDConfig, crema_d.prepare,
               "ROOT with AudioWAV/1001_DFA_ANG_XX.wav ..., optional VideoDemographics.csv"),
        Corpus("iemocap", iemocap.IemocapConfig, iemocap.prepare,
               "ROOT with Session1..5/dialog/EmoEvaluation, sentences/wav, dialog/transcriptions",
               iemocap.ATTRIBUTE_RANGE),
        Corpus("meld", meld.MeldConfig, meld.prepare, "ROOT with train/dev/test_sent_emo.csv (text only)"),
        Corpus("csv", generic_csv.CsvCorpusConfig, generic_csv.prepare,
               "ROOT is any CSV; map columns with --col, labels with --map"),
    ]
}


def get_corpus(name: str) -> Corpus:
    """The registered adapter called `name` (underscores accepted for dashes)."""
    key = name.strip().lower().replace("_", "-")
    if key not in CORPORA:
        raise CorpusError(f"unknown corpus '{name}'; choose one of {sorted(CORPORA)}")
    return CORPORA[key]


def corpus_config(name: str, options: Optional[dict] = None) -> Any:
    """Build the typed options of corpus `name` from a dict; unknown keys name the closest valid one."""
    corpus = get_corpus(name)
    try:
        return build_dataclass(corpus.config_cls, dict(options or {}))
    except ConfigError as e:
        raise CorpusError(f"corpus '{corpus.name}' options: {e}") from None


def prepare_corpus(
    name: str,
    root: str | Path,
    options: Optional[dict] = None,
    *,
    folds: Optional[int] = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Run the adapter on ROOT; add speaker-independent folds (always when the corpus has no splits)."""
    corpus = get_corpus(name)
    cfg = corpus_config(name, options)
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise CorpusError(f"ROOT '{root}' does not exist")
    df = corpus.build(root, cfg).reset_index(drop=True)
    has_splits = bool((df["split"] != "").any())
    if folds is not None:
        with_speaker = df["speaker"] != ""
        if has_splits and not with_speaker.all():
            log.warning("%d rows without a speaker get no fold", int((~with_speaker).sum()))
            df["fold"] = pd.Series(pd.NA, index=df.index, dtype="Int64")
            df.loc[with_speaker, "fold"] = assign_folds(df[with_speaker], folds, seed).astype("Int64")
        else:
            df["fold"] = assign_folds(df, folds, seed).astype("Int64")
    elif not has_splits and "fold" not in df.columns:
        df["fold"] = assign_folds(df, DEFAULT_FOLDS, seed).astype("Int64")
    if not has_splits:
        df = apply_fold(df, 0)
    return df
