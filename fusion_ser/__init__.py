"""fusion-ser: speech emotion recognition from audio, text and both."""

from __future__ import annotations

__version__ = "0.1.0"


def load(run_dir, **kwargs):
    """Load a run directory (trained, fused or ensembled) as a predictor: `fusion_ser.load(run).predict(paths)`.

    Keyword arguments (device=, transcriber=) go to `fusion_ser.predict.load`.
    """
    from fusion_ser.predict import load as _load

    return _load(run_dir, **kwargs)
