"""--fused-linear-cross-entropy on CUDA in bf16: the unfused numbers, less peak memory.

Skipped without CUDA (conftest). Shapes of a real head: 8192 tokens, vocab 32000, hidden 1024.
"""

from __future__ import annotations

import pytest
import torch

from megatron.model.fused_loss import fused_token_losses
from megatron.model.gpt import masked_mean, token_losses

pytestmark = pytest.mark.gpu


def _run(chunk: int | None, h0, w0, labels, mask):
    h = h0.detach().requires_grad_(True)
    w = w0.detach().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    losses = token_losses(h @ w.t(), labels) if chunk is None else fused_token_losses(h, w, labels, chunk)
    masked_mean(losses, mask).backward()
    torch.cuda.synchronize()
    return losses.detach(), h.grad, w.grad, torch.cuda.max_memory_allocated() - base


def test_fused_bf16_equals_unfused_and_peak_memory_falls(dist_world1):
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens, vocab, hidden = 8192, 32000, 1024
    h = torch.randn(2, tokens // 2, hidden, device="cuda", generator=g).bfloat16()
    w = (torch.randn(vocab, hidden, device="cuda", generator=g) * hidden**-0.5).bfloat16()
    labels = torch.randint(0, vocab, (2, tokens // 2), device="cuda", generator=g)
    mask = (torch.rand(2, tokens // 2, device="cuda", generator=g) > 0.1).float()
    ref = _run(None, h, w, labels, mask)
    got = _run(2048, h, w, labels, mask)
    torch.testing.assert_close(got[0], ref[0], rtol=2e-2, atol=2e-2)
    for a, b in ((got[1], ref[1]), (got[2], ref[2])):
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 2e-2
    assert got[3] < ref[3] / 2, (got[3], ref[3])
