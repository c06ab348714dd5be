"""Greedy decoding with our own GPT (the reference an exported model's ``generate()`` must match)."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompt: torch.Tensor, max_new_tokens: int, *,
                    vocab_size: int, eod: int | None = None) -> list[int]:
    """Continue ``prompt`` (``[s]`` token ids) by the most likely token, ``max_new_tokens`` times.

    The full sequence is re-run every step (no key/value cache: simple and exact). Only the
    first ``vocab_size`` logits (the tokenizer's, not the padded rows) compete. Generation stops
    after ``eod`` when given, as ``transformers``' ``generate`` does at its ``eos_token_id``.

    Args:
        model: Our ``GPTModel`` at TP=1 (``model(tokens)`` gives ``[b, s, V]`` logits).
        prompt: 1-D prompt ids.
        max_new_tokens: Most tokens to add.
        vocab_size: Real vocabulary (``spec.original_vocab_size``).
        eod: End-of-document id that ends generation, or None.

    Returns:
        The new token ids.
    """
    was_training = model.training
    model.eval()
    tokens = prompt.view(1, -1)
    new: list[int] = []
    try:
        for _ in range(max_new_tokens):
            logits = model(tokens)[0, -1, :vocab_size]
            token = int(logits.argmax())
            new.append(token)
            if token == eod:
                break
            tokens = torch.cat([tokens, tokens.new_tensor([[token]])], dim=1)
    finally:
        model.train(was_training)
    return new
