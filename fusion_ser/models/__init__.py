"""Models: heads, the unimodal model, the attention-fusion model, losses, and their save/load.

Every model's forward takes the batch dict of docs/architecture.md and returns a `ModelOutput`
(models/output.py), so the one trainer, checkpointing and prediction code serve audio, text and fusion alike.
Build with `models.factory.build_model`, persist with `models.io.save_model` / `load_model`.
"""
