"""Per-rank activation memory of one training micro-batch: sequence parallelism and recompute.

Rows (the GPT of ``--layers``/``--hidden``/``--heads`` at ``--seq``, micro-batch 1, fp32):

- TP=N (``--tp``, default 2) without and with ``--sequence-parallel`` (N gloo processes;
  ratio SP / no SP; ``--hidden-dropout`` adds the dropout masks SP splits);
- DeepSpeed-Ulysses ``--ds-sequence-parallel-size 2`` (2 gloo processes, each with its half of
  the sequence) against one process with the whole sequence (the "no recompute" row);
- one process: no recompute, ``--recompute-granularity selective`` and ``full``
  (ratios to no recompute; step time too).

Memory is ``PeakTensorMemory`` (megatron/model/memory_meter.py): ``saved`` = bytes alive right
after the forward (what backward keeps: the activations, logits included), ``peak`` = the
largest live total over forward and backward (activations + gradients, weights excluded).
Step time is the median of ``--repeats`` forward+backward passes without the meter (CPU
seconds of this process on CPU, which a shared machine disturbs less than wall time).

    .venv/bin/python bench/activation_memory.py                    # seq 2048, d 256, 4 layers
    .venv/bin/python bench/activation_memory.py --seq 4096 --hidden 512
    .venv/bin/python bench/activation_memory.py --skip-recompute --tp 4 --hidden-dropout 0.1
    .venv/bin/python bench/activation_memory.py --only ulysses     # the Ulysses row and its baseline
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
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from megatron.core import parallel_state  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.model.gpt import GPTModel, masked_mean  # noqa: E402
from megatron.model.memory_meter import PeakTensorMemory  # noqa: E402
from megatron.plan import resolve  # noqa: E402


def model_flags(a: argparse.Namespace) -> list[str]:
    return ["--num-layers", str(a.layers), "--hidden-size", str(a.hidden), "--num-attention-heads",
            str(a.heads), "--seq-length", str(a.seq), "--micro-batch-size", "1", "--mock-data",
            "--vocab-size", str(a.vocab), "--train-iters", "1",
            "--attention-dropout", str(a.attention_dropout),
            "--hidden-dropout", str(a.hidden_dropout)]  # fmt: skip


def measure(a: argparse.Namespace, flags: list[str], world: int, shards: int = 1) -> dict[str, float]:
    """Saved/peak bytes and step seconds of one forward+backward on this rank (``shards`` > 1:
    this Ulysses rank's slice of the sequence)."""
    plan = resolve(parse_args([*model_flags(a), *flags]).config, DistEnv(world_size=world))
    model = GPTModel(plan.model)
    tokens = torch.randint(0, a.vocab, (1, a.seq), generator=torch.Generator().manual_seed(0))
    if shards > 1:
        tokens = tokens.chunk(shards, dim=1)[parallel_state.get_context_parallel_rank()]
    mask = torch.ones(tokens.shape)

    def step(meter: PeakTensorMemory | None = None) -> None:
        loss = masked_mean(model(tokens, tokens), mask)
        if meter is not None:
            meter.saved = meter.live_bytes
        loss.backward()
        model.zero_grad(set_to_none=True)

    with PeakTensorMemory() as meter:
        step(meter)
    times = []
    for _ in range(a.repeats):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return {"saved": meter.saved, "peak": meter.peak_bytes, "seconds": statistics.median(times)}


def _rank(rank: int, a: argparse.Namespace, port: int, queue) -> None:  # noqa: ANN001
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=a.tp)
    parallel_state.initialize_model_parallel(a.tp, 1, create_gloo_process_groups=False)
    tp = ["--tensor-model-parallel-size", str(a.tp)]
    rows = {name: measure(a, [*tp, *extra], a.tp) for name, extra in
            ((f"TP={a.tp}", []), (f"TP={a.tp} + SP", ["--sequence-parallel"]))}
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def tp_rows(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(a, port, queue), nprocs=a.tp, start_method="spawn")
    return queue.get()


def _ulysses_rank(rank: int, a: argparse.Namespace, port: int, queue) -> None:  # noqa: ANN001
    import deepspeed

    from megatron.distributed import _skip_deepspeed_shm_build

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    _skip_deepspeed_shm_build()  # an inference-only op that takes minutes of g++ on a fresh box
    deepspeed.init_distributed(dist_backend="gloo")  # DistributedAttention's all-to-all
    parallel_state.initialize_model_parallel(1, 1, context_parallel_size=2, create_gloo_process_groups=False)
    row = measure(a, ["--ds-sequence-parallel-size", "2"], 2, shards=2)
    if rank == 0:
        queue.put(row)
    dist.destroy_process_group()


def ulysses_row(a: argparse.Namespace) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ulysses_rank, args=(a, _port(), queue), nprocs=2, start_method="spawn")
    return queue.get()


def recompute_rows(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_port()}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
    rows = {}
    for name, extra in (("no recompute", []), ("selective", ["--recompute-granularity", "selective"]),
                        ("full", ["--recompute-granularity", "full"])):
        rows[name] = measure(a, extra, 1)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return rows


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show(title: str, rows: dict[str, dict[str, float]], base: str) -> None:
    b = rows[base]
    print(f"\n{title} (ratios to {base})")
    print(f"{'run':<14}{'saved MiB':>10}{'x':>7}{'peak MiB':>10}{'x':>7}{'step s':>8}{'x':>7}")
    for name, r in rows.items():
        print(f"{name:<14}{r['saved'] / 2**20:>10.1f}{r['saved'] / b['saved']:>7.2f}"
              f"{r['peak'] / 2**20:>10.1f}{r['peak'] / b['peak']:>7.2f}"
              f"{r['seconds']:>8.3f}{r['seconds'] / b['seconds']:>7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attention-dropout", type=float, default=0.0,
                   help="> 0 takes SDPA off its fused kernels on CPU (the s x s scores are kept)")
    p.add_argument("--hidden-dropout", type=float, default=0.0,
                   help="dropout on the embedding and the residual branches (its masks are saved)")
    p.add_argument("--tp", type=int, default=2, help="TP size of the sequence-parallel rows")
    p.add_argument("--skip-recompute", action="store_true",
                   help="only the sequence-parallel rows (no recompute and no Ulysses rows)")
    p.add_argument("--only", choices=["all", "ulysses"], default="all")
    a = p.parse_args()
    print(f"GPT: {a.layers} layers, hidden {a.hidden}, {a.heads} heads, seq {a.seq}, "
          f"vocab {a.vocab}, micro-batch 1, fp32, attention dropout {a.attention_dropout}, "
          f"hidden dropout {a.hidden_dropout}, CPU")
    if a.only == "all":
        show(f"Per rank, {a.tp} processes", tp_rows(a), f"TP={a.tp}")
        if a.skip_recompute:
            return
    one = recompute_rows(a)
    show("One process", one, "no recompute")
    show("Ulysses, per rank", {"one process": one["no recompute"], "Ulysses SP=2": ulysses_row(a)}, "one process")


if __name__ == "__main__":
    main()
