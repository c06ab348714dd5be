"""The plain-PyTorch reference GPT (megatron/model/reference.py) is our GPTModel: with the
weights copied across, logits, per-token losses and every weight gradient agree in fp32 on CPU.

This is what makes the reference a valid baseline for bench/gpu_throughput.py and the oracle of
tests/gpu/test_bf16_reference.py."""

from __future__ import annotations

import json.decoder
import pathlib

import pytest
import torch

from megatron.model.gpt import GPTModel
from megatron.model.reference import PlainGPT, copy_gpt_weights, reference_state_dict
from tests.helpers import tiny_plan

LLAMA = ("--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear", "--hidden-size", "32",
         "--num-attention-heads", "4", "--vocab-size", "256", "--seq-length", "32")


def real_text_batch(batch: int, seq: int) -> torch.Tensor:
    """Byte tokens ``[batch, seq + 1]`` of a Python standard-library source file."""
    data = pathlib.Path(json.decoder.__file__).read_bytes()
    return torch.tensor(list(data[: batch * (seq + 1)]), dtype=torch.long).view(batch, seq + 1)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from the GPT init (matrices std 0.1, norm scales 1 +- 0.2), so the logits are
    far from uniform and every tensor, the norm scales too, matters to the output."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=gen)
        p.copy_(noise * 0.1 if p.dim() == 2 else 1.0 + 0.2 * noise)


@pytest.mark.parametrize(
    "flags",
    [(), ("--num-key-value-heads", "2", "--untie-embeddings-and-output-weights")],
    ids=["tied-mha", "untied-gqa"],
)
def test_plain_reference_equals_gpt_in_fp32(dist_world1, flags):
    spec = tiny_plan("--train-iters", "1", *LLAMA, *flags).model
    ours = GPTModel(spec)
    randomize_(ours)
    plain = copy_gpt_weights(ours, PlainGPT(spec))
    seq = real_text_batch(2, spec.seq_length)
    tokens, labels = seq[:, :-1], seq[:, 1:]

    assert torch.allclose(ours(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    our_losses, plain_losses = ours(tokens, labels), plain(tokens, labels)
    assert torch.allclose(our_losses, plain_losses, rtol=1e-5, atol=1e-5)
    # Not a near-uniform model (whose per-token losses would all be about log V).
    assert our_losses.std().item() > 0.2

    our_losses.mean().backward()
    plain_losses.mean().backward()
    our_grads = {n: p.grad for n, p in ours.named_parameters()}
    expected = reference_state_dict(our_grads, spec)
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_reference_refuses_what_it_does_not_implement_and_tp_shards(dist_world1):
    with pytest.raises(ValueError, match="no biases"):
        PlainGPT(tiny_plan("--train-iters", "1", "--swiglu", "--normalization", "rmsnorm").model)
    spec = tiny_plan("--train-iters", "1", *LLAMA).model
    state = {k: v for k, v in GPTModel(spec).state_dict().items() if k.endswith("weight")}
    state["layers.0.self_attention.query_key_value.weight"] = state[
        "layers.0.self_attention.query_key_value.weight"][:48]  # a TP=2 shard
    with pytest.raises(ValueError, match="TP=1"):
        reference_state_dict(state, spec)
