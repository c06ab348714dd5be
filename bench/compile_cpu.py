"""``--compile`` on the CPU: compile time and steady-state step time against eager, one run.

Two ``TrainEngine``s of the same model (the demo preset's shape by default) in one process: eager,
and each transformer layer under ``torch.compile`` (inductor's C++ backend here). Timed in
alternating blocks after warm-up so machine noise hits both; prints the first (compiling) step's
time and the ratio compiled / eager seconds per step (< 1.00 = compile is faster).

    DS_ACCELERATOR=cpu .venv/bin/python bench/compile_cpu.py
    DS_ACCELERATOR=cpu .venv/bin/python bench/compile_cpu.py --hidden-size 512 --num-layers 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.data.loader import Batch  # noqa: E402
from megatron.distributed import destroy_distributed, init_distributed  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from megatron.trainer.engine import TrainEngine  # noqa: E402


def time_steps(engine: TrainEngine, batches: list[Batch], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        engine.train_step([batches[i % len(batches)]], iteration=i)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    bench, model_flags = parser.parse_known_args()
    flags = ["--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "4",
             "--seq-length", "128", "--micro-batch-size", "8", "--normalization", "rmsnorm",
             "--swiglu", "--disable-bias-linear", "--mock-data", "--vocab-size", "258",
             "--train-iters", "1000", "--lr", "2e-3", *model_flags]
    eager_plan = resolve(parse_args(flags).config, DistEnv())
    compiled_plan = resolve(parse_args([*flags, "--compile"]).config, DistEnv())
    spec = eager_plan.model
    ctx = init_distributed(eager_plan, DistEnv())
    try:
        eager, compiled = TrainEngine(eager_plan, ctx), TrainEngine(compiled_plan, ctx)
        gen = torch.Generator().manual_seed(0)
        shape = (eager_plan.config.train.micro_batch_size, spec.seq_length + 1)
        batches = []
        for _ in range(4):
            seq = torch.randint(0, spec.original_vocab_size, shape, generator=gen)
            batches.append(Batch(seq[:, :-1], seq[:, 1:], torch.ones(shape[0], shape[1] - 1),
                                 torch.zeros(shape[0], dtype=torch.long)))
        first_eager = time_steps(eager, batches, 1)
        first_compiled = time_steps(compiled, batches, 1)  # compiles forward and backward
        time_steps(compiled, batches, 1)
        eager_t, compiled_t = [], []
        for _ in range(bench.rounds):
            eager_t.append(time_steps(eager, batches, bench.steps))
            compiled_t.append(time_steps(compiled, batches, bench.steps))
    finally:
        destroy_distributed()
    tokens = shape[0] * spec.seq_length
    base, mine = statistics.median(eager_t), statistics.median(compiled_t)
    print(f"model: {spec.num_layers} layers, hidden {spec.hidden_size}, seq {spec.seq_length}, "
          f"micro-batch {shape[0]}, {torch.get_num_threads()} threads, device cpu")
    print(f"first step: eager {first_eager:.2f} s, compiled {first_compiled:.1f} s (compile time)")
    print(f"eager    : {base * 1e3:8.1f} ms/step  {tokens / base:10,.0f} tok/s")
    print(f"compiled : {mine * 1e3:8.1f} ms/step  {tokens / mine:10,.0f} tok/s")
    print(f"ratio compiled/eager (time per step): {mine / base:.3f}")


if __name__ == "__main__":
    main()
