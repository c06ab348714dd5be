"""--fused-linear-cross-entropy: the chunked output layer + loss against the unfused path."""

from __future__ import annotations

import pytest
import torch

from megatron.config import ConfigError
from megatron.model.fused_loss import fused_token_losses
from megatron.model.gpt import GPTModel, masked_mean, token_losses
from megatron.model.memory_meter import PeakTensorMemory
from tests.helpers import tiny_plan

N_BATCH, N_SEQ, HIDDEN, VOCAB = 3, 13, 24, 96  # 39 tokens: most chunk sizes do not divide it


def _inputs(dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N_BATCH, N_SEQ, HIDDEN, generator=g).to(dtype)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.3).to(dtype)
    labels = torch.randint(0, VOCAB, (N_BATCH, N_SEQ), generator=g)
    mask = (torch.rand(N_BATCH, N_SEQ, generator=g) > 0.3).float()
    return hidden, weight, labels, mask


def _loss_and_grads(fused_chunk: int | None, hidden, weight, labels, weights):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    if fused_chunk is None:
        losses = token_losses(h @ w.t(), labels)
    else:
        losses = fused_token_losses(h, w, labels, fused_chunk)
    loss = (losses * weights).sum() / weights.sum()
    loss.backward()
    return losses.detach(), loss.detach(), h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("chunk", [1, 5, 16, 38, 39, 4096])
def test_fused_loss_and_grads_equal_unfused_with_loss_mask(dist_world1, chunk):
    hidden, weight, labels, mask = _inputs()
    ref = _loss_and_grads(None, hidden, weight, labels, mask)
    got = _loss_and_grads(chunk, hidden, weight, labels, mask)
    assert got[0].dtype == torch.float32 and got[0].shape == labels.shape
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)  # per-token losses
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=0)
    assert _rel(got[2], ref[2]) < 1e-5  # d loss / d hidden
    assert _rel(got[3], ref[3]) < 1e-5  # d loss / d weight
    assert (got[2][mask == 0] == 0).all()  # masked tokens send no gradient


def test_fused_per_token_weights_like_masked_diffusion(dist_world1):
    """Objectives weight the per-token losses afterwards (MDM: 1/p): the recomputing backward
    receives those weights, so the gradients stay exact."""
    hidden, weight, labels, _ = _inputs(seed=1)
    weights = torch.rand(N_BATCH, N_SEQ, generator=torch.Generator().manual_seed(2)) * 4
    ref = _loss_and_grads(None, hidden, weight, labels, weights)
    got = _loss_and_grads(7, hidden, weight, labels, weights)
    assert _rel(got[2], ref[2]) < 1e-5 and _rel(got[3], ref[3]) < 1e-5


def test_fused_bf16_matches_unfused_within_bf16_tolerance(dist_world1):
    hidden, weight, labels, mask = _inputs(torch.bfloat16, seed=3)
    ref = _loss_and_grads(None, hidden, weight, labels, mask)
    got = _loss_and_grads(8, hidden, weight, labels, mask)
    assert got[0].dtype == torch.float32
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=2e-2)
    assert _rel(got[2], ref[2]) < 2e-2 and _rel(got[3], ref[3]) < 2e-2


MUP = ("--scaling-recipe", "mup", "--mup-base-hidden-size", "4", "--mup-output-mult", "2")


@pytest.mark.parametrize(
    "flags", [(), ("--untie-embeddings-and-output-weights",), MUP], ids=["tied", "untied", "mup-logit-mult"]
)
def test_model_with_flag_equals_model_without(dist_world1, flags):
    """The whole GPT (tied and untied head; muP's multiplier of the head input): the same losses
    and the same gradient on every parameter, final norm and embeddings included."""
    plain = GPTModel(tiny_plan("--train-iters", "1", *flags).model)
    fused = GPTModel(tiny_plan("--train-iters", "1", *flags, "--fused-linear-cross-entropy",
                               "--fused-ce-chunk-tokens", "10").model)
    assert fused.spec.fused_ce_chunk_tokens == 10 and plain.spec.fused_ce_chunk_tokens == 0
    fused.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    labels = torch.roll(tokens, -1, dims=1)
    mask = torch.ones(2, 16)
    mask[1, 9:] = 0
    losses = []
    for model in (plain, fused):
        token = model(tokens, labels)
        masked_mean(token, mask).backward()
        losses.append(token.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    grads = dict(fused.named_parameters())
    for name, p in plain.named_parameters():
        assert _rel(grads[name].grad, p.grad) < 1e-5, name
    assert torch.equal(fused(tokens), plain(tokens))  # without labels: the logits, as before


def _peak_loss_bytes(fused_chunk: int | None, tokens: int, vocab: int, hidden: int) -> int:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.1).requires_grad_(True)
    labels = torch.randint(0, vocab, (1, tokens), generator=g)
    with PeakTensorMemory() as meter:
        if fused_chunk is None:
            losses = token_losses((h @ w.t()).unsqueeze(0), labels)
        else:
            losses = fused_token_losses(h.unsqueeze(0), w, labels, fused_chunk)
        losses.mean().backward()
    return meter.peak_bytes


def test_fused_loss_peak_memory_falls(dist_world1):
    """Measured (live tensor bytes of every op, forward and backward): the unfused loss holds
    [tokens, V] logits and their softmax gradient; the fused one a chunk of them, plus the
    gradients it returns (hidden [tokens, d], weight [V, d])."""
    tokens, vocab, hidden, chunk = 512, 2048, 16, 64
    unfused = _peak_loss_bytes(None, tokens, vocab, hidden)
    fused = _peak_loss_bytes(chunk, tokens, vocab, hidden)
    logits = tokens * vocab * 4
    assert unfused >= 2 * logits  # logits + d logits at least
    grads = (tokens + vocab) * hidden * 4
    assert fused <= grads + 4 * chunk * vocab * 4 + 64 * tokens  # a few chunks, never [tokens, V]
    assert fused < unfused / 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--fused-ce-chunk-tokens", "1024"), "--fused-ce-chunk-tokens: only used with --fused-linear-cross-entropy"),
        (("--fused-linear-cross-entropy", "--fused-ce-chunk-tokens", "0"), "--fused-ce-chunk-tokens: must be > 0"),
        (("--fused-linear-cross-entropy", "--zero-stage", "3"), "--fused-linear-cross-entropy: not supported at --zero-stage 3"),
    ],
)
def test_bad_combinations_refused(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tiny_plan("--train-iters", "1", *flags)


def test_lwf_refused(tmp_path):
    with pytest.raises(ConfigError, match="--fused-linear-cross-entropy: LwF"):
        tiny_plan("--train-iters", "1", "--fused-linear-cross-entropy", "--lwf-weight", "1",
                  "--load", str(tmp_path), "--finetune")


def test_pipeline_refused():
    from megatron.config import DistEnv

    with pytest.raises(ConfigError, match="--fused-linear-cross-entropy: not supported with --pipeline"):
        tiny_plan("--train-iters", "1", "--fused-linear-cross-entropy",
                  "--pipeline-model-parallel-size", "2", env=DistEnv(world_size=2, local_world_size=2))
