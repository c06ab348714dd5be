"""Two data-parallel ranks read disjoint samples whose union is the single-process step."""

from __future__ import annotations

import pytest

from megatron.config import DistEnv
from megatron.data.builder import build_streams
from megatron.data.loader import BatchReader
from megatron.distributed import destroy_distributed, init_distributed
from tests.helpers import run_distributed, tiny_plan

pytestmark = pytest.mark.deepspeed


def _read(env: DistEnv, data_list: str, micro: str) -> list[tuple[int, ...]]:
    plan = tiny_plan("--data-file-list", data_list, "--tokenizer-type", "byte", "--seq-length", "32",
                     "--micro-batch-size", micro, "--train-iters", "4", "--split", "100,0,0",
                     env=env, mock=False)
    ctx = init_distributed(plan, env)
    try:
        streams = build_streams(plan, is_builder=env.rank == 0)
        reader = BatchReader(streams.train.stream, micro_batch_size=plan.micro_batch_size, dp_size=plan.dp,
                             dp_rank=ctx.dp_rank, grad_accum_steps=plan.grad_accum_steps, device=ctx.device)
        return [tuple(row.tolist()) for step in range(2)
                for batch in reader.step_batches(step * plan.global_batch_size) for row in batch.tokens]
    finally:
        destroy_distributed()


def test_two_ranks_read_disjoint_halves_of_each_step(tmp_path, three_corpora):
    data = tmp_path / "list.txt"
    data.write_text("".join(f"1 {p} {c}\n" for c, p in three_corpora.items()))
    single = _read(DistEnv(), str(data), "4")
    ranks = run_distributed(_read, str(data), "2")
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
