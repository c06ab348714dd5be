"""``--async-save`` at 2 processes (ZeRO-1, DP=2): rank 0 commits a step only once the other
rank's files are written, and the run equals a synchronous one."""

from __future__ import annotations

import os
import time

import pytest
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from megatron.checkpointing import checkpoint
from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed

FLAGS = ["--zero-stage", "1", "--micro-batch-size", "2", "--train-iters", "3", "--save-interval", "1",
         "--lr-decay-style", "constant"]


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], list[tuple[str, list[str]]]]:
    seen: list[tuple[str, list[str]]] = []
    if env.rank == 1:  # the other rank writes slowly: rank 0 must wait for it
        real_save = TorchCheckpointEngine.save

        def slow_save(self, state, path):  # noqa: ANN001, ANN202
            time.sleep(0.4)
            real_save(self, state, path)

        TorchCheckpointEngine.save = slow_save
    else:
        real_commit = checkpoint._commit

        def commit(save_dir: str, path: str, iteration: int, metadata: str) -> None:
            seen.append((os.path.basename(path), sorted(os.listdir(path))))
            real_commit(save_dir, path, iteration, metadata)

        checkpoint._commit = commit
    return train(tiny_plan(*flags, env=env), env).losses, seen


def test_commit_waits_for_every_rank_and_the_run_equals_a_synchronous_one(tmp_path):
    sync = run_distributed(_run, [*FLAGS, "--save", str(tmp_path / "sync")])
    background = run_distributed(_run, [*FLAGS, "--save", str(tmp_path / "async"), "--async-save"])
    assert background[0][0] == sync[0][0]  # losses bit for bit
    files = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # At each commit both ranks' files are in place, renamed from their temporary names.
    assert background[0][1] == [(f"global_step{i}", files) for i in (1, 2, 3)]
    assert sync[0][1] == background[0][1]
    assert open(tmp_path / "async" / "latest").read() == "global_step3"


LAYOUTS = {
    "pp2": ["--pipeline-model-parallel-size", "2", "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"],
    "tp2": ["--tensor-model-parallel-size", "2", "--micro-batch-size", "2", "--gradient-accumulation-steps", "2"],
    "zero3-dp2": ["--zero-stage", "3", "--micro-batch-size", "2"],
}


def _losses(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*flags, env=env), env)
    return result.losses, result.valid_loss


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_async_resume_is_bit_exact_at_other_layouts(tmp_path, layout):
    flags = ["--train-iters", "4", "--save-interval", "1", "--lr-decay-style", "constant", *LAYOUTS[layout]]
    save = str(tmp_path / "async")
    full = run_distributed(_losses, [*flags, "--save", str(tmp_path / "sync")])[0]
    first = run_distributed(_losses, [*flags, "--save", save, "--exit-interval", "2", "--async-save"])[0]
    second = run_distributed(_losses, [*flags, "--save", save, "--load", save, "--async-save"])[0]
    assert first[0] + second[0] == full[0] and second[1] == full[1]
