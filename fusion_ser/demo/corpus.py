"""A small emotional speech corpus generated offline with hibari-tts, for the demo and for tests.

Emotion is carried by two channels on purpose, each incomplete alone: the words (sentences that name or imply the
emotion, or neutral wording) and the prosody (speaking rate, pitch level and range, loudness, vocal effort as spectral tilt; or a flat
delivery).
Each utterance is one of three kinds, so that neither modality alone can be perfect and fusion can beat both:

  both     emotional words + emotional prosody
  words    emotional words, flat (neutral) delivery      -> only text can tell
  prosody  neutral wording, emotional prosody            -> only audio can tell

Synthetic speakers differ in pitch (scaling of the F0 track that hibari predicts) and timbre (formant shift by
resampling, with the speaking rate approximately compensated through hibari's speed input). All are derived from hibari's bundled voice ("heart"): its other
voices are downloaded on first use, and the demo must run offline. Splits are by speaker. Everything is
deterministic from the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import soundfile as sf
import soxr

from fusion_ser.data.manifest import write_manifest
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)

EMOTIONS = ["anger", "happiness", "neutral", "sadness"]

# Emotional sentences: templates whose words carry the emotion; {e} is a neutral event, {o} a neutral object.
EMOTIONAL_TEMPLATES = {
    "anger": [
        "I am furious that {e}.",
        "How dare you take {o} without asking!",
        "This is outrageous, {e}.",
        "I hate it, {e}, and I will not stand for it!",
        "Stop lying to me about {o}, I am sick of it!",
        "I am so angry that {e}.",
    ],
    "happiness": [
        "I am so happy that {e}!",
        "This is wonderful, {e}.",
        "I love {o}, it makes me smile every day!",
        "What great news, {e}, I am delighted!",
        "We had a fantastic time with {o}, thank you so much!",
        "I feel so joyful that {e}.",
    ],
    "sadness": [
        "I feel so sad that {e}.",
        "I miss {o} so much, it hurts.",
        "It breaks my heart that {e}.",
        "I am lonely and tired, {e}.",
        "I cried all night about {o}.",
        "Everything feels hopeless since {e}.",
    ],
}
# Neutral wording: the only sentences of neutral utterances, and the words of prosody-only utterances.
NEUTRAL_TEMPLATES = [
    "The report says that {e}.",
    "Please put {o} on the second shelf.",
    "I was told that {e}.",
    "We talked about {o} for a while.",
    "According to the schedule, {e}.",
    "The form asks where {o} is kept.",
]
EVENTS = [
    "the train left at seven",
    "the meeting moved to Thursday",
    "my brother sold the house",
    "the store closed early",
    "the package arrived this morning",
    "they painted the kitchen",
    "the bus was replaced by a van",
    "the school changed the timetable",
    "our neighbor bought a boat",
    "the office moved downtown",
]
OBJECTS = [
    "the blue folder",
    "my old bicycle",
    "the garden chairs",
    "the kitchen radio",
    "your grandmother's letters",
    "the office keys",
    "the winter coats",
    "the little dog",
]


@dataclass(frozen=True)
class Prosody:
    """Multiplicative speaking rate and pitch level, pitch range (exponent on F0 around its median), gain in dB, and
    spectral tilt (vocal effort: > 0 brighter/tenser, < 0 duller/softer; the share of energy above ~1 kHz added)."""

    speed: float
    pitch: float
    pitch_range: float
    gain_db: float
    tilt: float = 0.0


PROSODY = {
    "neutral": Prosody(speed=1.0, pitch=1.0, pitch_range=1.0, gain_db=0.0),
    "sadness": Prosody(speed=0.78, pitch=0.86, pitch_range=0.45, gain_db=-9.0, tilt=-0.6),
    # Both aroused, told apart by melody and effort: happiness high and sweeping, anger fast, loud, tense and clipped.
    "happiness": Prosody(speed=1.06, pitch=1.3, pitch_range=1.8, gain_db=2.0, tilt=0.3),
    "anger": Prosody(speed=1.22, pitch=1.06, pitch_range=0.8, gain_db=7.0, tilt=1.2),
}
# Valence, arousal, dominance on a 1-7 scale (MSP convention), so the corpus also serves the attribute task.
ATTRIBUTES = {
    "anger": (6.0, 2.0, 6.0),
    "happiness": (5.5, 6.2, 5.0),
    "neutral": (4.0, 4.0, 4.0),
    "sadness": (2.2, 2.0, 2.5),
}
KIND_SHARES = {"both": 0.3, "words": 0.3, "prosody": 0.4}


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: pitch factor on the F0 track, formant factor (timbre), rate and loudness offsets."""

    speaker_id: str
    gender: str
    pitch: float
    formant: float
    speed: float
    gain_db: float


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """n speakers alternating female-like and male-like voices, with random pitch/timbre/rate/loudness."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for i in range(n):
        female = i % 2 == 0
        pitch = rng.uniform(0.9, 1.15) if female else rng.uniform(0.55, 0.7)
        formant = rng.uniform(0.97, 1.08) if female else rng.uniform(0.84, 0.92)
        out.append(Speaker(f"spk{i:02d}", "female" if female else "male", float(pitch), float(formant),
                           float(rng.uniform(0.93, 1.07)), float(rng.uniform(-3.0, 3.0))))
    return out


def speaker_splits(speakers: list[Speaker]) -> dict[str, str]:
    """Speaker-independent splits: the last speakers go to test, the ones before to dev (two each from 6 speakers
    on, one female- and one male-like voice, since voices alternate), the rest to train."""
    if len(speakers) < 3:
        raise FusionSerError(f"the demo corpus needs at least 3 speakers for train/dev/test splits, got {len(speakers)}")
    k = 2 if len(speakers) >= 6 else 1
    ids = [s.speaker_id for s in speakers]
    split = {spk: "train" for spk in ids[: -2 * k]}
    split.update({spk: "dev" for spk in ids[-2 * k: -k]})
    split.update({spk: "test" for spk in ids[-k:]})
    return split


def utterance_plan(per_emotion: int, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(emotion, kind, sentence) for one speaker: per_emotion utterances of each emotion, kinds drawn by share."""
    plan = []
    kinds = list(KIND_SHARES)
    shares = np.array([KIND_SHARES[k] for k in kinds])
    for emotion in EMOTIONS:
        # Spread kinds evenly over a speaker's utterances of an emotion (stratified, not left to chance).
        counts = np.floor(shares * per_emotion).astype(int)
        for i in np.argsort(-(shares * per_emotion - counts))[: per_emotion - counts.sum()]:
            counts[i] += 1
        order = [k for k, c in zip(kinds, counts) for _ in range(c)]
        rng.shuffle(order)
        for kind in order:
            if emotion == "neutral":
                kind = "both"
            emotional_words = emotion != "neutral" and kind in ("both", "words")
            template = rng.choice(EMOTIONAL_TEMPLATES[emotion] if emotional_words else NEUTRAL_TEMPLATES)
            sentence = template.format(e=rng.choice(EVENTS), o=rng.choice(OBJECTS))
            plan.append((emotion, kind, sentence[0].upper() + sentence[1:]))
    return plan


def apply_tilt(wav: np.ndarray, tilt: float, cutoff_hz: float = 1000.0) -> np.ndarray:
    """Add `tilt` times the part of the signal above cutoff_hz (one-pole high-pass): vocal effort as spectral slope."""
    if tilt == 0.0:
        return wav
    from scipy.signal import lfilter

    a = float(np.exp(-2.0 * np.pi * cutoff_hz / SAMPLE_RATE))
    low = lfilter([1.0 - a], [1.0, -a], wav)
    return (wav + tilt * (wav - low)).astype(np.float32)


class Synthesizer:
    """hibari-tts with control of rate, F0 (level and range), formants and loudness; output 16 kHz float32."""

    def __init__(self) -> None:
        try:
            from hibari import Hibari
            from hibari import dsp
        except ImportError as e:
            raise FusionSerError("the demo corpus needs hibari-tts: pip install hibari-tts") from e
        self._tts = Hibari(threads=1)
        self._dsp = dsp
        self.source_rate = int(dsp.SR)

    def synthesize(self, text: str, prosody: Prosody, speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
        """One utterance at 16 kHz: hibari's F0 track is rescaled before vocoding, formants moved by resampling."""
        speed = prosody.speed * speaker.speed * float(rng.uniform(0.95, 1.05))
        pitch = prosody.pitch * speaker.pitch * float(rng.uniform(0.95, 1.05))
        # Resampling by `formant` also scales pitch and rate by it: compensate both before vocoding.
        parts = []
        for phonemes in self._tts.phonemize(text):
            ids = self._tts.ids(phonemes)
            if len(ids) < 3:
                continue
            lh, th, ln, lr, phi, f0 = (o[0] for o in self._tts.sess.run(
                None, {"ids": np.asarray([ids], np.int64), "speed": np.asarray([speed / speaker.formant], np.float32)}))
            f0 = self._reshape_f0(f0, pitch / speaker.formant, prosody.pitch_range)
            parts.append(self._dsp.synth(lh, th, ln, lr, phi, f0, rng))
        if not parts:
            raise FusionSerError(f"hibari produced no audio for the sentence {text!r}")
        wav = np.concatenate(parts).astype(np.float32)
        wav = soxr.resample(wav, self.source_rate * speaker.formant, SAMPLE_RATE).astype(np.float32)
        wav = apply_tilt(wav, prosody.tilt)
        peak = float(np.max(np.abs(wav))) or 1.0
        gain = 10 ** ((prosody.gain_db + speaker.gain_db + rng.uniform(-1.5, 1.5)) / 20.0)
        wav = wav / peak * 0.25 * gain
        wav += rng.normal(0.0, 3e-4, size=wav.shape).astype(np.float32)  # a faint noise floor, like a room
        return np.clip(wav, -0.99, 0.99).astype(np.float32)

    @staticmethod
    def _reshape_f0(f0: np.ndarray, level: float, pitch_range: float, voiced_hz: float = 40.0) -> np.ndarray:
        """Scale voiced F0 by `level` and expand/compress its excursions around the median by `pitch_range`."""
        f0 = f0.astype(np.float32).copy()
        voiced = f0 > voiced_hz
        if voiced.any():
            med = float(np.median(f0[voiced]))
            f0[voiced] = med * (f0[voiced] / med) ** pitch_range * level
        return np.maximum(f0, 0.0)


def generate_corpus(
    out_dir: str | Path,
    *,
    n_speakers: int = 8,
    per_emotion: int = 12,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Path:
    """Write WAVs (16 kHz) and manifest.csv (the manifest contract, paths relative) to out_dir; returns the manifest path.

    The manifest's `text` column holds the script (what was said); `kind` records which channel carries the emotion.
    """
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    speakers = make_speakers(n_speakers, seed)
    splits = speaker_splits(speakers)
    synth = Synthesizer()
    total = n_speakers * per_emotion * len(EMOTIONS)
    rows = []
    done = 0
    for si, spk in enumerate(speakers):
        plan = utterance_plan(per_emotion, np.random.default_rng([seed, 2, si]))
        for ui, (emotion, kind, sentence) in enumerate(plan):
            rng = np.random.default_rng([seed, 3, si, ui])
            prosody = PROSODY[emotion] if kind in ("both", "prosody") else PROSODY["neutral"]
            wav = synth.synthesize(sentence, prosody, spk, rng)
            utt_id = f"{spk.speaker_id}_{ui:03d}_{emotion}"
            rel = f"wav/{utt_id}.wav"
            sf.write(out / rel, wav, SAMPLE_RATE, subtype="PCM_16")
            a, v, d = (float(np.clip(x + rng.normal(0.0, 0.3), 1.0, 7.0)) for x in ATTRIBUTES[emotion])
            if kind == "words":  # a flat delivery lowers the arousal a listener hears
                a = float(np.clip(4.0 + (a - 4.0) * 0.4, 1.0, 7.0))
            rows.append({"utt_id": utt_id, "path": rel, "split": splits[spk.speaker_id], "speaker": spk.speaker_id,
                         "gender": spk.gender, "label": emotion, "arousal": round(a, 3), "valence": round(v, 3),
                         "dominance": round(d, 3), "text": sentence, "kind": kind,
                         "duration_s": round(len(wav) / SAMPLE_RATE, 3)})
            done += 1
            if progress is not None:
                progress(done, total)
    df = pd.DataFrame(rows)
    manifest = out / "manifest.csv"
    write_manifest(df, manifest)
    log.info("demo corpus: %d utterances, %d speakers -> %s", len(df), n_speakers, manifest)
    return manifest
