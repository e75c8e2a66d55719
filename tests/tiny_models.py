"""Tiny randomly initialised models saved with save_pretrained, so tests exercise the real from_pretrained path."""

from __future__ import annotations

from pathlib import Path


def save_tiny_bert(directory: str | Path, *, hidden: int = 32, layers: int = 2, max_positions: int = 128) -> str:
    """A random BERT (seed 0) with the packaged MiniLM tokenizer, saved to `directory`; returns its path."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fusion_ser.packaged import packaged_model_path

    tok = AutoTokenizer.from_pretrained(packaged_model_path("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=max_positions)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)
