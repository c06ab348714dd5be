"""Element-wise optimizers (lion, adopt from pytorch-optimizer; adam, sgd from torch) under
ZeRO-1 at 2 processes reproduce the single-process losses: on flat fp32 shards their update is
the same per element. Muon splits its Newton-Schulz work across DP ranks without changing it.
Sophia at ZeRO-1/2 reproduces its ZeRO-0 run, and samples consistently under TP=2.

Tolerance as in test_parallel_equivalence: relative 1e-4 on every step's loss.
"""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

STEPS = {
    "lion": ["--lr", "3e-3"], "adopt": ["--lr", "1e-2"], "adam": ["--lr", "1e-2"], "sgd": ["--lr", "0.3"],
}


def _losses(env: DistEnv, flags: list[str]) -> list[float]:
    result = train(tiny_plan("--train-iters", "4", *flags, env=env), env)
    return [*result.losses, result.valid_loss]


@pytest.mark.parametrize("name", sorted(STEPS))
def test_zero1_at_two_processes_matches_single_process(name):
    flags = ["--optimizer", name, *STEPS[name]]
    # DP=2 with micro-batch 2 sees the same 4 samples per step as one process with micro-batch 4.
    reference = _losses(DistEnv(), [*flags, "--micro-batch-size", "4"])
    ranks = run_distributed(_losses, [*flags, "--micro-batch-size", "2", "--zero-stage", "1"])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-4)


SOPHIA = ["--optimizer", "sophia", "--lr", "1e-2", "--sophia-hessian-interval", "2"]


@pytest.mark.parametrize("zero", ["1", "2"])
def test_sophia_zero_matches_zero0_at_two_processes(zero):
    # The Hessian estimate is folded into DeepSpeed's flat fp32 partitions through each
    # parameter's fragment mapping; ZeRO-0 folds whole tensors. Same draws (seeded per DP rank).
    reference = run_distributed(_losses, [*SOPHIA, "--zero-stage", "0"])
    ranks = run_distributed(_losses, [*SOPHIA, "--zero-stage", zero])
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference[0], rel=1e-5)


def _tp_samples(env: DistEnv) -> tuple[list[int], list[float]]:
    import torch

    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.optimizer.sophia_torch import sample_vocab_parallel

    ctx = init_distributed(tiny_plan("--tensor-model-parallel-size", "2", "--train-iters", "1", env=env), env)
    try:
        full = torch.tensor([1.0, -0.5, 0.0, 2.0, 0.3, -1.0])
        mine = full[3 * ctx.tp_rank : 3 * ctx.tp_rank + 3]
        gen = torch.Generator().manual_seed(100 + ctx.tp_rank)
        ids = sample_vocab_parallel(mine.expand(2, 20_000, 3), gen)
        freq = torch.bincount(ids.flatten(), minlength=6).float() / ids.numel()
        return ids.flatten()[:50].tolist(), (freq - full.softmax(-1)).abs().tolist()
    finally:
        destroy_distributed()


def test_sophia_samples_agree_across_tensor_parallel_ranks():
    ranks = run_distributed(_tp_samples)
    assert ranks[0][0] == ranks[1][0]
    assert max(ranks[0][1]) < 0.005


def _train_losses(env: DistEnv, flags: list[str]) -> list[float]:
    return list(train(tiny_plan(*flags, env=env), env).losses)


def test_sophia_trains_at_tensor_parallel_2():
    flags = [*SOPHIA, "--tensor-model-parallel-size", "2", "--train-iters", "12"]
    ranks = run_distributed(_train_losses, flags)
    losses = ranks[0]
    assert ranks[0] == ranks[1]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3


def _muon_run(env: DistEnv, flags: list[str], split: bool = True) -> tuple[list[float], int]:
    from megatron.optimizer import muon, muon_torch

    calls = 0
    real = muon_torch.orthogonalize
    if not split:  # every rank orthogonalizes every matrix itself (runs in a forked child)
        muon._data_parallel_group = lambda: None

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    muon_torch.orthogonalize = counting
    try:
        return _losses(env, flags), calls
    finally:
        muon_torch.orthogonalize = real


def test_muon_splits_newton_schulz_across_data_parallel_ranks():
    # 2 layers x 4 matrices x 4 steps = 32 orthogonalizations; each DP rank does half and
    # receives the other half (tall matrices too: a transposed result must be sent contiguous).
    flags = ["--optimizer", "muon", "--lr", "1e-2"]
    reference, calls = _muon_run(DistEnv(), [*flags, "--micro-batch-size", "4"])
    assert calls == 32
    ranks = run_distributed(_muon_run, [*flags, "--micro-batch-size", "2"])
    assert [r[1] for r in ranks] == [16, 16]
    assert ranks[0][0] == ranks[1][0]
    assert ranks[0][0] == pytest.approx(reference, rel=1e-5)
    unsplit = run_distributed(_muon_run, [*flags, "--micro-batch-size", "2"], False)
    assert [r[1] for r in unsplit] == [32, 32]
    assert unsplit[0][0] == ranks[0][0]  # bit for bit
