"""Conversation context for text models: assembly, tokenization, the manifest columns, the adapters, train + predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import TextEncoderConfig, load_config
from fusion_ser.data.context import CONTEXT_COLUMN, SEPARATOR, ContextError, conversation_context, with_context
from fusion_ser.data.corpora import prepare_corpus
from fusion_ser.data.corpora.msp_podcast import conversation_of
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.data.manifest import ManifestError, read_manifest, validate_manifest, write_manifest
from fusion_ser.encoders.text import HFTextEncoder
from tests.test_corpora import _msp
from tests.tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def toy_conversations() -> pd.DataFrame:
    """Two train conversations given out of order, an unlabelled row, a row without text, and a dev conversation
    reusing a train conversation id."""
    rows = [  # utt_id, split, conversation, turn, speaker, text, label
        ("a2", "train", "c1", 2, "Ross", "we were on a break", "anger"),
        ("b0", "train", "c2", 0, "", "hello", "neutral"),
        ("a0", "train", "c1", 0, "Rachel", "hi", "neutral"),
        ("a3", "train", "c1", 3, "Rachel", "no we were not", ""),  # unlabelled: still context
        ("a1", "train", "c1", 1, "", "how are you", "happiness"),  # no speaker name
        ("a5", "train", "c1", 5, "Ross", "fine", "sadness"),
        ("a4", "train", "c1", 4, "Joey", "", "neutral"),  # no text: never context
        ("d0", "dev", "c1", 0, "Monica", "dev words", "neutral"),
        ("d1", "dev", "c1", 1, "Chandler", "more dev words", "anger"),
        ("x", "train", "", np.nan, "", "alone", "neutral"),
    ]
    return pd.DataFrame(rows, columns=["utt_id", "split", "conversation", "turn", "speaker", "text", "label"])


def expected_context(df: pd.DataFrame, utt: str, n: int) -> str:
    """Brute force: rows of the same split and conversation with a smaller turn and some text, last n by turn."""
    row = df.set_index("utt_id").loc[utt]
    if not row["conversation"]:
        return ""
    same = df[(df["split"] == row["split"]) & (df["conversation"] == row["conversation"]) & (df["turn"] < row["turn"])
              & (df["text"] != "")].sort_values("turn")
    turns = [f"{s}: {t}" if s else t for s, t in zip(same["speaker"], same["text"])]
    return SEPARATOR.join(turns[-n:]) if n else ""


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_context_is_the_previous_turns_of_the_same_conversation_and_split(n):
    df = toy_conversations()
    got = conversation_context(df, n)
    for i, utt in enumerate(df["utt_id"]):
        assert got.iloc[i] == expected_context(df, utt, n), utt


def test_context_order_speakers_and_no_future_turn():
    df = toy_conversations()
    ctx = dict(zip(df["utt_id"], conversation_context(df, 4)))
    # a4 has no text, so the four turns before a5 that said something are a0..a3
    assert ctx["a5"] == "Rachel: hi | how are you | Ross: we were on a break | Rachel: no we were not"
    assert ctx["a0"] == "" and ctx["b0"] == "" and ctx["x"] == ""  # first turns, a row without a conversation
    assert ctx["d1"] == "Monica: dev words"  # the dev "c1" never sees the train "c1"
    assert "fine" not in " ".join(ctx.values())  # the last turn is nobody's context
    assert ctx["a2"] == "Rachel: hi | how are you"


def test_explicit_previous_turns_and_their_count_is_checked():
    df = toy_conversations().head(2)
    out = with_context(df, 2, previous=[["one", "two", "three"], []])
    assert out[CONTEXT_COLUMN].tolist() == ["two | three", ""]
    with pytest.raises(ContextError, match="1 lists of previous turns for 2 inputs"):
        with_context(df, 2, previous=[["one"]])


def test_truncation_cuts_the_oldest_context_and_keeps_the_target(tiny_bert):
    enc = HFTextEncoder(TextEncoderConfig(name_or_path=tiny_bert, finetune="frozen", max_length=16))
    tok = enc.tokenizer
    target = "we were on a break"
    context = "one two three four five six seven eight nine ten eleven twelve"
    out = enc.tokenize([target, "short"], [context, ""])
    ids, types, att = out["input_ids"][0], out["token_type_ids"][0], out["attention_mask"][0]
    assert int(att.sum()) == 16  # filled up to max_length
    target_ids = tok(target, add_special_tokens=False)["input_ids"]
    second = ids[types == 1].tolist()
    assert second == target_ids + [tok.sep_token_id]  # the whole target is the second segment
    first = ids[(types == 0) & (att == 1)].tolist()
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    kept = first[1:-1]  # without [CLS] ... [SEP]
    assert kept == ctx_ids[-len(kept):] and len(kept) < len(ctx_ids)  # the newest context tokens survive
    # the row without context is encoded exactly as without any context
    alone = enc.tokenize(["short"])
    n = int(alone["attention_mask"][0].sum())
    assert out["input_ids"][1][:n].tolist() == alone["input_ids"][0][:n].tolist()
    # a target too long to leave room for context is encoded alone, cut like any long text
    long_target = " ".join(["word"] * 40)
    both = enc.tokenize([long_target], [context])
    assert both["input_ids"][0].tolist() == enc.tokenize([long_target])["input_ids"][0].tolist()


def test_cached_text_features_depend_on_the_context(tiny_bert, tmp_path):
    enc = HFTextEncoder(TextEncoderConfig(name_or_path=tiny_bert, finetune="frozen", max_length=32)).eval()
    cache = FeatureCache(tmp_path / "cache")
    plain = {"utt_id": "u", "text": "fine thanks"}
    with_ctx = {**plain, "context": "Ross: how are you"}
    assert cache.item_key(plain) != cache.item_key(with_ctx)
    assert cache.item_key({**plain, "context": ""}) == cache.item_key(plain)
    got = cache.get(enc, with_ctx).float()
    direct = enc({"text": [with_ctx["text"]], "context": [with_ctx["context"]]})
    assert torch.allclose(got, direct.features[0][direct.mask[0]], atol=2e-3)
    assert got.shape != cache.get(enc, plain).shape  # the context tokens are part of the cached sequence


def test_manifest_conversation_columns_are_validated(tmp_path):
    df = toy_conversations().assign(path="")
    df.loc[df["utt_id"] == "a4", "path"] = "a4.wav"  # a row needs audio or text
    validate_manifest(df, "toy")  # the same turn numbers in the dev and train "c1" are fine
    path = tmp_path / "m.csv"
    write_manifest(df, path)
    back = read_manifest(path)
    assert back["turn"].dtype == "Int64" and back.loc[back["utt_id"] == "a5", "turn"].item() == 5
    assert back.loc[back["utt_id"] == "a5", "conversation"].item() == "c1"
    bad = df.astype({"turn": object})
    bad.loc[bad["utt_id"] == "a1", "turn"] = "first"
    bad.loc[bad["utt_id"] == "a3", "turn"] = 2  # the turn of a2
    bad.loc[bad["utt_id"] == "b0", "turn"] = ""
    with pytest.raises(ManifestError) as e:
        validate_manifest(bad, "toy")
    text = str(e.value)
    assert "column 'turn' value 'first' is not a number" in text
    assert "lines 2, 5: turn 2 appears more than once in conversation 'c1' (split train)" in text
    assert "line 3 (utt_id 'b0'): conversation 'c2' without a turn number" in text


def _fake_meld(root) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):  # both files start at Dialogue_ID 0, as the real ones do
        pd.DataFrame({
            "Sr No.": [1, 2, 3], "Utterance": [f"{split} first", f"{split} second", "other dialogue"],
            "Speaker": ["Phoebe", "Monica", "Joey"], "Emotion": ["sadness", "surprise", "joy"],
            "Sentiment": ["negative", "negative", "positive"], "Dialogue_ID": [0, 0, 1], "Utterance_ID": [0, 1, 0],
        }).to_csv(root / f"{split}_sent_emo.csv", index=False, encoding="utf-8")


def test_meld_adapter_fills_conversations_unique_per_split(tmp_path):
    _fake_meld(tmp_path / "meld")
    df = prepare_corpus("meld", tmp_path / "meld")
    assert df["conversation"].tolist() == ["train_0", "train_0", "train_1", "dev_0", "dev_0", "dev_1"]
    assert df["turn"].tolist() == [0, 1, 0, 0, 1, 0]
    ctx = dict(zip(df["utt_id"], conversation_context(df, 2)))
    assert ctx["dev_dia0_utt1"] == "Phoebe: dev first"  # not the train dialogue 0
    assert ctx["train_dia1_utt0"] == ""


def test_msp_podcast_names_give_podcast_and_segment(tmp_path):
    assert conversation_of("MSP-PODCAST_0001_0008") == ("0001", 8.0)
    assert conversation_of("MSP-PODCAST_test3_0001_0002")[0] == ""
    df = prepare_corpus("msp-podcast", _msp(tmp_path / "MSP")).set_index("utt_id")
    assert df.loc["MSP-PODCAST_0001_0019", "conversation"] == "0001"
    assert df.loc["MSP-PODCAST_0001_0019", "turn"] == 19
    assert df.loc["MSP-PODCAST_test3_0001_0002", "conversation"] == ""
    validate_manifest(df.reset_index(), "msp")


def test_csv_adapter_maps_conversation_and_turn(tmp_path):
    src = tmp_path / "talk.csv"
    pd.DataFrame({"id": ["u1", "u2"], "words": ["hi", "bye"], "emo": ["neutral", "anger"], "set": ["train", "dev"],
                  "dialog": ["d1", "d1"], "order": ["3", "4"]}).to_csv(src, index=False)
    cols = {"utt_id": "id", "text": "words", "label": "emo", "split": "set", "conversation": "dialog", "turn": "order"}
    df = prepare_corpus("csv", src, {"columns": cols})
    assert df["conversation"].tolist() == ["d1", "d1"] and df["turn"].tolist() == [3, 4]
    with pytest.raises(ManifestError, match="turn column 'order' value 'x' is not a number"):
        pd.DataFrame({"id": ["u1"], "words": ["hi"], "order": ["x"], "dialog": ["d"]}).to_csv(src, index=False)
        prepare_corpus("csv", src, {"columns": {"utt_id": "id", "text": "words", "turn": "order",
                                                "conversation": "dialog"}})


class LengthTranscriber:
    """Reads a clip's transcript from its length: the test's own table of clip lengths -> texts."""

    def __init__(self, table: dict[int, str]):
        self.table = table

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        return [self.table[len(a)] for a in audios]


def _dialogue_manifest(path) -> pd.DataFrame:
    """Text-only dialogues where the emotion of a turn is said by the turn before it ("... so angry" -> anger)."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n_conv in (("train", 12), ("dev", 4), ("test", 4)):
        for c in range(n_conv):
            for t in range(5):
                label = ["anger", "happiness"][int(rng.integers(2))]
                rows.append({"utt_id": f"{split}_{c}_{t}", "path": "", "split": split, "conversation": f"{split}{c}",
                             "turn": t, "speaker": ["Ann", "Bob"][t % 2], "label": label if t else "",
                             "text": f"turn {t} says {'so angry' if label == 'anger' else 'so happy'}"})
    df = pd.DataFrame(rows)
    write_manifest(df, path)
    return df


def test_text_train_and_predict_with_two_turns_of_context(tiny_bert, tmp_path):
    import fusion_ser
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir, prob_columns
    from fusion_ser.training.inference import predict_arrays
    from fusion_ser.training.job import train_run

    torch.set_num_threads(1)
    df = _dialogue_manifest(tmp_path / "talk.csv")
    cfg = load_config(None, ["modality=text", f"text_encoder.name_or_path={tiny_bert}", "text_encoder.context_turns=2",
                             "text_encoder.max_length=24", "text_encoder.lora.r=4", "train.epochs=1",
                             "train.batch_size=8", "train.cache_features=false", "head.hidden_dim=16"])
    run = train_run(cfg, tmp_path / "talk.csv", tmp_path / "run")
    assert load_model(RunDir(run.path).model_dir)[1].text_encoder.context_turns == 2  # a corpus with conversations
    saved = RunDir(run.path).read_predictions("test")
    test = df[df["split"] == "test"].reset_index(drop=True)
    # the test's own context: earlier turns of the same conversation, "Speaker: text", at most two
    previous = [[f"{s}: {x}" for s, x in zip(g["speaker"], g["text"])][max(0, t - 2):t]
                for (conv, t) in zip(test["conversation"], test["turn"])
                for g in [test[test["conversation"] == conv].sort_values("turn")]]
    model, model_cfg, labels = load_model(RunDir(run.path).model_dir)
    model.eval()
    cols = prob_columns(labels)
    again = predict_arrays(model, test["utt_id"].tolist(), model_cfg, texts=test["text"].tolist(), context=previous)
    labelled = again["utt_id"].isin(saved["utt_id"])
    assert np.allclose(again.loc[labelled, cols].to_numpy(), saved[cols].to_numpy(), atol=1e-5)
    alone = predict_arrays(model, test["utt_id"].tolist(), model_cfg, texts=test["text"].tolist())
    assert not np.allclose(alone[cols].to_numpy(), again[cols].to_numpy(), atol=1e-4)  # the context is read
    # the predict API: audio in, transcripts from the transcriber, context given per input
    clips = [np.sin(np.linspace(0, 300, 3200 + 16 * i)).astype(np.float32) for i in range(len(test))]
    transcriber = LengthTranscriber({len(c): t for c, t in zip(clips, test["text"])})
    results = fusion_ser.load(run.path, device="cpu", transcriber=transcriber).predict(clips, context=previous)
    probs = np.array([[r["probs"][c] for c in labels] for r in results])
    assert np.allclose(probs, again[cols].to_numpy(), atol=1e-5)
    with pytest.raises(fusion_ser.predict.PredictError, match="context: 1 lists of earlier turns for 20 inputs"):
        fusion_ser.load(run.path, device="cpu", transcriber=transcriber).predict(clips, context=[[]])


def test_the_attention_model_reads_the_context_on_its_text_side(tiny_bert):
    from fusion_ser.data.dataset import EmotionDataset, collate
    from fusion_ser.models.factory import build_model

    torch.manual_seed(0)
    cfg = load_config(None, ["modality=both", "audio_encoder.type=fbank", "audio_encoder.finetune=full",
                             "audio_encoder.hidden_dim=16", "audio_encoder.n_mels=20", "fusion.dim=16",
                             "fusion.heads=2", f"text_encoder.name_or_path={tiny_bert}", "text_encoder.context_turns=2",
                             "text_encoder.lora.r=2", "head.hidden_dim=8"])
    df = with_context(toy_conversations(), 2)[lambda d: d["utt_id"].isin(["a2", "a5"])].reset_index(drop=True)
    wavs = [np.sin(np.linspace(0, 200, 4000)).astype(np.float32)] * len(df)
    model = build_model(cfg, ["anger", "sadness"]).eval()
    batch = collate([EmotionDataset(df, cfg, ["anger", "sadness"], training=False, waveforms=wavs)[i]
                     for i in range(len(df))])
    assert batch["context"] == ["Rachel: hi | how are you", "Ross: we were on a break | Rachel: no we were not"]
    with torch.no_grad():
        with_ctx = model(batch).logits
        without = model({k: v for k, v in batch.items() if k != "context"}).logits
    assert not torch.allclose(with_ctx, without)
