"""The manifest contract: column names, allowed values, and how missing values are spelled (empty)."""

from __future__ import annotations

REQUIRED_COLUMNS = ["utt_id", "path", "split", "speaker", "gender", "label", "arousal", "valence", "dominance", "text"]
OPTIONAL_COLUMNS = ["fold"]  # plus soft-label columns p_<label>
SPLITS = ["train", "dev", "test"]
SOFT_PREFIX = "p_"
# Rows the MSP-Podcast adapter keeps but 8-class training leaves out unless a config asks for them.
NON_CLASS_LABELS = ["other", "no_agreement"]
