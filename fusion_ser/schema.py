"""The manifest contract: column names, label and attribute names, the sample rate, how missing values are spelled."""

from __future__ import annotations

REQUIRED_COLUMNS = ["utt_id", "path", "split", "speaker", "gender", "label", "arousal", "valence", "dominance", "text"]
CORPUS_COLUMN = "corpus"  # which corpus a row comes from (multi-corpus training; metrics by corpus)
# one categorical vote per annotator, lower-case label names joined by ";" (data/annotations.py; data.soft_labels)
ANNOTATIONS_COLUMN = "annotations"
ANNOTATION_SEPARATOR = ";"
OPTIONAL_COLUMNS = ["fold", CORPUS_COLUMN, ANNOTATIONS_COLUMN]  # plus soft-label columns p_<label>
# Conversation context (text_encoder.context_turns): a conversation id and the row's turn number within it (numeric,
# unique within a conversation of a split). Optional; data/context.py assembles the earlier turns.
CONVERSATION_COLUMNS = ["conversation", "turn"]
SPLITS = ["train", "dev", "test"]
SOFT_PREFIX = "p_"
# The MSP-Podcast challenge classes (Task 1) and attributes (Task 2): the defaults of a config.
CATEGORICAL_LABELS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
ATTRIBUTES = ["arousal", "valence", "dominance"]
# Rows the MSP-Podcast adapter keeps but 8-class training leaves out unless a config asks for them.
NON_CLASS_LABELS = ["other", "no_agreement"]
# Every waveform inside the package is mono float32 at this rate; data/audio.py converts whatever is on disk.
SAMPLE_RATE = 16000
# What a run predicts: classes (Task 1), attributes (Task 2) or both from one model (multitask: two heads on one
# pooled embedding). Code asks `has_classes` / `has_attributes` rather than comparing task names.
TASKS = ["categorical", "attributes", "multitask"]


def has_classes(task: str) -> bool:
    """True when runs of `task` predict class probabilities (categorical, multitask)."""
    return task in ("categorical", "multitask")


def has_attributes(task: str) -> bool:
    """True when runs of `task` predict attribute values (attributes, multitask)."""
    return task in ("attributes", "multitask")
