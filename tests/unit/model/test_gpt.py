"""The GPT on megatron-core layers: shapes, parameter count, causality, init std, RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from megatron.model.gpt import GPTModel, masked_mean
from megatron.model.rope import apply_rope, rope_tables
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--hidden-size", "--normalization", "--swiglu", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--init-method-std", "--recompute-activations", "--train-iters",
    "--seed")


def build(*flags: str) -> GPTModel:
    return GPTModel(tiny_plan("--train-iters", "1", *flags).model)


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear"),
        ("--num-key-value-heads", "2", "--untie-embeddings-and-output-weights"),
        ("--no-use-rotary-position-embeddings",),
    ],
)
def test_forward_shapes_and_parameter_count(dist_world1, flags):
    model = build(*flags)
    tokens = torch.randint(0, 64, (3, 16))
    logits = model(tokens)
    assert logits.shape == (3, 16, model.spec.vocab_size)
    losses = model(tokens, tokens)
    assert losses.shape == (3, 16)
    assert sum(p.numel() for p in model.parameters()) == model.spec.num_parameters()


def test_attention_is_causal(dist_world1):
    model = build().eval()
    tokens = torch.randint(0, 64, (1, 16))
    changed = tokens.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 64
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_loss_of_uniform_logits_is_log_vocab(dist_world1):
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    tokens = torch.randint(0, 64, (2, 16))
    loss = masked_mean(model(tokens, tokens), torch.ones(2, 16))
    assert loss.item() == pytest.approx(math.log(model.spec.vocab_size), rel=1e-6)


def test_masked_mean_ignores_masked_positions():
    losses = torch.tensor([[1.0, 2.0, 100.0]])
    assert masked_mean(losses, torch.tensor([[1.0, 1.0, 0.0]])).item() == 1.5


@pytest.mark.parametrize(
    ("flags", "embedding_std", "hidden_std"),
    [
        ((), 0.02, 0.02),
        (("--init-method-std", "0.05"), 0.05, 0.05),
        (("--init-method-std", "0.05", "--adjust-word-embedding-init", "--word-embedding-init-std", "0.632"), 0.632, 0.05),
    ],
)
def test_init_flags_set_the_built_weights(dist_world1, flags, embedding_std, hidden_std):
    model = GPTModel(tiny_plan("--train-iters", "1", "--hidden-size", "64", *flags).model)
    layers = model.spec.num_layers
    emb = model.embedding.word_embeddings.weight
    qkv = model.layers[0].self_attention.query_key_value.weight
    out = model.layers[0].self_attention.dense.weight
    assert emb.std().item() == pytest.approx(embedding_std, rel=0.05)
    assert qkv.std().item() == pytest.approx(hidden_std, rel=0.05)
    # Output projections use Megatron's scaled init: std / sqrt(2 * layers).
    assert out.std().item() == pytest.approx(hidden_std / math.sqrt(2 * layers), rel=0.1)


def test_same_seed_same_weights_other_seed_other_weights(dist_world1):
    a, b = build(), build()
    c = build("--seed", "7")
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if pa.ndim == 2:
            assert not torch.equal(pa, pc), name


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(32, 8, 10000.0, torch.device("cpu"), torch.float64)
    q = torch.randn(1, 1, 1, 8, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k, cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-9)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), rel=1e-12)


def test_recompute_gives_same_gradients(dist_world1):
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 16))
    grads = []
    for flags in ((), ("--recompute-activations",)):
        model = build(*flags)
        masked_mean(model(tokens, tokens), torch.ones(2, 16)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1)
