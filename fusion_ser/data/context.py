"""Conversation context for text models: the previous turns of a row, assembled here and nowhere else.

A manifest may carry `conversation` (an id) and `turn` (a number, unique within a conversation of a split). With
`text_encoder.context_turns` N > 0, a row's context is the text of the N rows before it in the same conversation and
the same split, ordered by turn (strictly earlier turns only: never the row itself or a later one), oldest first,
each written "<speaker>: <text>" when the speaker is known and joined by SEPARATOR. Every manifest row with text
counts, labelled or not, including rows the run leaves out of training (no label, other classes): they are still
what was said before. Rows of another split never do, even under the same conversation id, and a row without a
conversation or turn has no context. Predictions on in-memory inputs take the previous turns as a list
(`context_text`). The text encoder puts context and target in separate segments and cuts the context from its
start when both exceed max_length, so the target stays whole (`encoders/text.py`). A run whose manifest has no
conversations records context_turns 0 (`effective_context`): it trains, exports and predicts as a context-free model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from fusion_ser.config import Config
from fusion_ser.errors import FusionSerError

logger = logging.getLogger(__name__)

CONTEXT_COLUMN = "_context"  # the assembled context of a row, added to the frames of a run (never written out)
CONVERSATION = "conversation"
TURN = "turn"
SEPARATOR = " | "


class ContextError(FusionSerError):
    """Context given for prediction that does not fit the inputs."""


def turn_text(text: str, speaker: str = "") -> str:
    """One context turn: "<speaker>: <text>" when the speaker is known, else the text."""
    text = str(text).strip()
    speaker = str(speaker or "").strip()
    return f"{speaker}: {text}" if speaker and text else text


def context_text(previous: Sequence[str], n_turns: int) -> str:
    """The context of a target from its previous turns (oldest first): the last `n_turns` non-empty ones joined."""
    turns = [str(t).strip() for t in previous if str(t or "").strip()]
    return SEPARATOR.join(turns[-n_turns:]) if n_turns > 0 else ""


def has_conversations(df: pd.DataFrame) -> bool:
    """True when the frame has both the conversation and the turn column and some row fills them."""
    if CONVERSATION not in df.columns or TURN not in df.columns:
        return False
    conv = df[CONVERSATION].fillna("").astype(str).str.strip()
    return bool(((conv != "") & pd.to_numeric(df[TURN], errors="coerce").notna()).any())


def effective_context(cfg: Config, df: pd.DataFrame, source: str) -> Config:
    """`cfg` with text_encoder.context_turns 0 when the model reads text but `df` has no conversations: a config
    meant for conversational corpora still trains there, and its run says it read no context."""
    n = cfg.text_encoder.context_turns
    if n <= 0 or cfg.modality not in ("text", "both") or has_conversations(df):
        return cfg
    logger.info("%s: no conversation and turn columns, so text_encoder.context_turns=%d has no earlier turns to read; "
                "the run records context_turns=0", source, n)
    return dataclasses.replace(cfg, text_encoder=dataclasses.replace(cfg.text_encoder, context_turns=0))


def conversation_context(df: pd.DataFrame, n_turns: int) -> pd.Series:
    """Each row's context (index of `df`): the previous `n_turns` turns with text of its (split, conversation)."""
    out = pd.Series([""] * len(df), index=df.index, dtype=object)
    if n_turns <= 0 or not has_conversations(df):
        return out
    conv = df[CONVERSATION].fillna("").astype(str).str.strip()
    turn = pd.to_numeric(df[TURN], errors="coerce")
    split = df["split"].fillna("").astype(str) if "split" in df.columns else pd.Series("", index=df.index)
    text = df["text"].fillna("").astype(str) if "text" in df.columns else pd.Series("", index=df.index)
    speaker = df["speaker"].fillna("").astype(str) if "speaker" in df.columns else pd.Series("", index=df.index)
    usable = (conv != "") & turn.notna()
    frame = pd.DataFrame({"split": split, "conv": conv, "turn": turn})[usable]
    for _, group in frame.groupby(["split", "conv"], sort=False):
        order = group.sort_values("turn", kind="stable")
        turns = order["turn"].to_numpy()
        said = [turn_text(text[i], speaker[i]) for i in order.index]
        for pos, i in enumerate(order.index):
            earlier = int(np.searchsorted(turns, turns[pos], side="left"))  # equal turns never see each other
            out[i] = context_text(said[:earlier], n_turns)
    return out


def with_context(df: pd.DataFrame, n_turns: int, previous: Optional[Sequence[Sequence[str]]] = None) -> pd.DataFrame:
    """A copy of `df` with CONTEXT_COLUMN: from `previous` (one list of earlier turns per row) when given, else from
    the frame's conversations; a frame that already has the column (a run's rows) keeps it."""
    if previous is not None:
        if len(previous) != len(df):
            raise ContextError(f"context: {len(previous)} lists of previous turns for {len(df)} inputs; give one list "
                               "per input (an empty list where an input has none)", options=("context",))
        out = df.copy()
        out[CONTEXT_COLUMN] = [context_text(list(p or []), n_turns) for p in previous]
        return out
    if CONTEXT_COLUMN in df.columns:
        return df
    out = df.copy()
    out[CONTEXT_COLUMN] = conversation_context(df, n_turns)
    return out
