"""Importing other frameworks' checkpoints (Hugging Face, Megatron-DeepSpeed) as our universal
checkpoints. ``source`` defines what a reader of one format provides; the writer turns any source
into ``DIR/zero/<name>/fp32.pt`` + ``run_metadata.json``.
"""
