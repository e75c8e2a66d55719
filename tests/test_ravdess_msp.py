"""bench/ravdess_msp.py: a tiny RAVDESS corpus written in the MSP-Podcast layout reads back through the real adapter."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.data.audio import load_audio
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.data.manifest import read_manifest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "ravdess_msp.py"
spec = importlib.util.spec_from_file_location("ravdess_msp", BENCH)
ravdess_msp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ravdess_msp)

# (emotion code, intensity code) of each actor's clips: neutral, calm normal/strong, angry normal/strong
CLIPS = [("01", "01"), ("02", "01"), ("02", "02"), ("05", "01"), ("05", "02")]
ACTORS = [1, 2, 3, 4, 5]


def _corpus(root: Path) -> Path:
    """RAVDESS-named FLAC files (sine tones) in Actor_XX folders, as the RAVDESS adapter reads them."""
    rate = 16000
    for actor in ACTORS:
        for i, (emotion, intensity) in enumerate(CLIPS):
            path = root / f"Actor_{actor:02d}" / f"03-01-{emotion}-{intensity}-01-01-{actor:02d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(int(0.3 * rate)) / rate
            sf.write(path, (0.2 * np.sin(2 * np.pi * (200 + 40 * i + 7 * actor) * t)).astype(np.float32), rate)
    return root


@pytest.fixture
def written(tmp_path):
    rows = ravdess_msp.ravdess_rows(_corpus(tmp_path / "ravdess"))
    return tmp_path, ravdess_msp.write_folds(rows, tmp_path / "msp")


def test_labels_splits_and_attributes_read_back(written):
    tmp_path, manifests = written
    assert len(manifests) == 4
    for k, path in enumerate(manifests):
        df = read_manifest(path).set_index("utt_id")
        assert len(df) == len(ACTORS) * len(CLIPS)
        # fold of Actor_a: (a - 1) mod 4 (sorted names dealt round-robin); fold k test, k+1 dev, the rest train
        actor = df.index.str[-2:].astype(int)
        fold = (actor - 1) % 4
        expected = np.where(fold == k, "test", np.where(fold == (k + 1) % 4, "dev", "train"))
        assert df["split"].tolist() == expected.tolist()
        assert set(df.loc[fold == k, "speaker"]) == {f"Actor_{a:02d}" for a in ACTORS if (a - 1) % 4 == k}
        emotion = df.index.str[6:8]
        assert df["label"].tolist() == [{"01": "neutral", "02": "calm", "05": "anger"}[e] for e in emotion]
        assert set(df["gender"]) == {"male", "female"}
        assert (df.loc[actor % 2 == 1, "gender"] == "male").all()
        assert (df["text"] == "Kids are talking by the door").all()
    df = read_manifest(manifests[0]).set_index("utt_id")
    # NRC VAD (valence, arousal, dominance): anger 0.167 0.865 0.657, neutral 0.469 0.184 0.357, calm 0.875 0.100
    # 0.282, on 1 + 6x; strong: neutral + 1.25 (entry - neutral), clipped to [0, 1] (worked out by hand here)
    cols = ["arousal", "valence", "dominance"]
    assert df.loc["03-01-05-01-01-01-01", cols].tolist() == pytest.approx([6.19, 2.002, 4.942])
    assert df.loc["03-01-05-02-01-01-01", cols].tolist() == pytest.approx([7.0, 1.549, 5.392])
    assert df.loc["03-01-01-01-01-01-01", cols].tolist() == pytest.approx([2.104, 3.814, 3.142])
    assert df.loc["03-01-02-02-01-01-01", cols].tolist() == pytest.approx([1.474, 6.859, 2.5795])


def test_audio_links_decode_and_cache_as_the_originals(written):
    tmp_path, manifests = written
    df = read_manifest(manifests[1])
    cache = FeatureCache(tmp_path / "cache")
    for r in df.head(3).itertuples():
        link = Path(r.path)
        assert link.is_symlink() and link.suffix == ".wav" and link.parent.name == "Audios"
        original = tmp_path / "ravdess" / r.speaker / f"{r.utt_id}.flac"
        np.testing.assert_array_equal(load_audio(link), load_audio(original))
        assert cache.item_key({"path": str(link)}) == cache.item_key({"path": str(original)})


def test_prepare_command_reads_the_layout_like_the_library(written):
    tmp_path, manifests = written
    out = tmp_path / "cli.csv"
    result = CliRunner().invoke(main, ["prepare", "msp-podcast", str(tmp_path / "msp" / "msp_fold2"), "-o", str(out),
                                       "--map", "other=calm", "--set", "include_test3=false"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(manifests[2]))
    consensus = pd.read_csv(tmp_path / "msp" / "msp_fold2" / "Labels" / "labels_consensus.csv")
    assert set(consensus.loc[consensus["FileName"].str[6:8] == "02", "EmoClass"]) == {"O"}  # calm, renamed back
