"""What --sequence-parallel keeps for backward (2 gloo ranks, TP=2): no activation of the full
sequence at the hidden width, and dropout masks of 1 byte per element of this rank's shard.

Under SP the norms, dropout and residual stream hold ``s / tp`` positions; the column-parallel
GEMMs (QKV, fc1 and the output layer) all-gather their input and must save only the shard (the
all-gather is repeated in backward, as megatron-core does). Tensors of the full sequence that
backward keeps are then only the TP-split ones (QKV ``3h / tp``, attention ``h / tp``, MLP
``4h / tp``, logits ``V / tp`` wide), none ``h`` wide; without SP the norms' inputs and the
GEMMs' inputs are ``[s, b, h]``.
"""

from __future__ import annotations

import pytest
import torch

from megatron.config import DistEnv
from tests.helpers import run_distributed, tiny_plan

pytestmark = [pytest.mark.deepspeed, pytest.mark.compat("--sequence-parallel")]

SEQ, HIDDEN, LAYERS, VOCAB = 32, 32, 2, 96  # V / tp = 48: no TP-split width equals h
MODEL = ["--seq-length", str(SEQ), "--hidden-size", str(HIDDEN), "--num-layers", str(LAYERS),
         "--num-attention-heads", "4", "--vocab-size", str(VOCAB), "--make-vocab-size-divisible-by", "1",
         "--micro-batch-size", "1", "--train-iters", "1"]  # fmt: skip
TP2 = ["--tensor-model-parallel-size", "2"]


def _saved(env: DistEnv, flags: list[str]) -> tuple[int, list[tuple[int, ...]]]:
    """(bytes alive after the forward, shapes of the activation storages backward keeps)."""
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.model.gpt import GPTModel, masked_mean
    from megatron.model.memory_meter import PeakTensorMemory

    plan = tiny_plan(*MODEL, *flags, env=env)
    init_distributed(plan, env)
    try:
        model = GPTModel(plan.model)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        tokens = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(0))
        kept: dict[int, tuple[int, ...]] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = t.untyped_storage().data_ptr()
            if key not in params and t.dtype.is_floating_point:
                kept.setdefault(key, (t.untyped_storage().nbytes() // t.element_size(),))
            return t

        torch.manual_seed(1)
        with PeakTensorMemory() as meter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = masked_mean(model(tokens, tokens), torch.ones(1, SEQ))
            saved = meter.live_bytes
        loss.backward()
    finally:
        destroy_distributed()
    return saved, sorted(kept.values())


@pytest.fixture(scope="module")
def sp() -> list[tuple[int, list[tuple[int, ...]]]]:
    return run_distributed(_saved, [*TP2, "--sequence-parallel"])


def test_sequence_parallel_keeps_no_full_sequence_activation_at_hidden_width(sp):
    full_width = (SEQ * HIDDEN,)  # elements of one [s, 1, h] activation
    tp = run_distributed(_saved, TP2)
    for (_, sp_kept), (_, tp_kept) in zip(sp, tp):
        assert full_width not in sp_kept
        assert tp_kept.count(full_width) >= 4 * LAYERS  # two norm inputs, two GEMM inputs


def test_sequence_parallel_dropout_masks_take_one_byte_per_shard_element(sp):
    with_masks = run_distributed(_saved, [*TP2, "--sequence-parallel", "--hidden-dropout", "0.1"])
    masks = (2 * LAYERS + 1) * (SEQ // 2) * HIDDEN  # two per layer and the embedding's, in bytes
    for (saved, _), (base, _) in zip(with_masks, sp):
        # The meter keys storages by address; a small temporary can land on a freed address and
        # shift either run by one allocation (128 bytes seen in CI). fp32 masks would add 4x.
        assert abs((saved - base) - masks) <= 256, (saved - base, masks)
