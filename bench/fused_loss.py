"""Output layer + cross-entropy, forward and backward: fused (chunked) against unfused, one run.

Baseline ("unfused"): what the model does without ``--fused-linear-cross-entropy``: the logits
``hidden @ W.T`` ``[tokens, V]``, ``token_losses`` (fp32 ``F.cross_entropy``), the masked mean,
backward to the hidden states and the head weight. Fused: ``fused_token_losses`` at each
``--chunks`` size. Time is the median of ``--repeats`` alternating runs (same inputs); peak
memory is measured by ``PeakTensorMemory`` (live bytes of every tensor the ops allocate,
forward and backward, inputs excluded), in a separate pass so the meter does not slow the
timed runs. Ratios are fused / unfused; on CPU ``time x`` compares this process's CPU seconds,
which a busy shared machine disturbs far less than wall time (both printed). ``--device cuda``
times wall seconds (synchronized) and reads the CUDA allocator's peak instead.

    .venv/bin/python bench/fused_loss.py                          # V 32000, 4096 tokens, d 256
    .venv/bin/python bench/fused_loss.py --tokens 8192 --hidden 1024 --chunks 1024 4096
    .venv/bin/python bench/fused_loss.py --device cuda --dtype bf16 --tokens 16384 --hidden 2048
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from megatron.core import parallel_state  # noqa: E402

from megatron.model.fused_loss import fused_token_losses  # noqa: E402
from megatron.model.gpt import masked_mean, token_losses  # noqa: E402
from megatron.model.memory_meter import PeakTensorMemory  # noqa: E402


def make_inputs(tokens: int, vocab: int, hidden: int, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(1, tokens, hidden, generator=g).to(device, dtype)
    w = (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).to(device, dtype)
    labels = torch.randint(0, vocab, (1, tokens), generator=g).to(device)
    mask = (torch.rand(1, tokens, generator=g) > 0.1).float().to(device)
    return h, w, labels, mask


def step(chunk: int | None, h0, w0, labels, mask) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One forward + backward; returns (loss, d hidden, d weight)."""
    h = h0.detach().requires_grad_(True)
    w = w0.detach().requires_grad_(True)
    losses = token_losses(h @ w.t(), labels) if chunk is None else fused_token_losses(h, w, labels, chunk)
    loss = masked_mean(losses, mask)
    loss.backward()
    return loss.item(), h.grad, w.grad


def measure_memory(chunk: int | None, inputs) -> dict:
    """Loss, gradients and peak tensor memory of one step (untimed: the meter costs time).
    On CUDA the allocator's own peak above the memory held before the step."""
    if inputs[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        loss, gh, gw = step(chunk, *inputs)
        peak = torch.cuda.max_memory_allocated() - held
    else:
        with PeakTensorMemory() as meter:
            loss, gh, gw = step(chunk, *inputs)
        peak = meter.peak_bytes
    return {"loss": loss, "grads": (gh, gw), "peak": peak, "times": []}


def measure_time(chunk: int | None, inputs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one step."""
    wall, cpu = time.perf_counter(), time.process_time()
    step(chunk, *inputs)
    if inputs[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--chunks", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: CPU time is stable on a busy box)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=0, world_size=1)
        parallel_state.initialize_model_parallel(1, 1)
        dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
        inputs = make_inputs(args.tokens, args.vocab, args.hidden, dtype, args.device)
        print(f"tokens {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, {args.dtype}, "
              f"{args.device}, {torch.get_num_threads()} threads; logits [tokens, V] fp32 = "
              f"{args.tokens * args.vocab * 4 / 2**20:.0f} MiB")
        variants = [None, *args.chunks]
        results = {c: measure_memory(c, inputs) for c in variants}  # also the warm-up
        for _ in range(args.repeats):  # alternate so machine noise hits every variant alike
            for c in variants:
                results[c]["times"].append(measure_time(c, inputs))
        base = results[None]
        print(f"{'variant':<18}{'wall s':>8}{'cpu s':>8}{'peak MiB':>10}{'time x':>7}{'mem x':>7}"
              f"{'loss':>10}{'dW rel err':>12}")
        timed = 0 if args.device == "cuda" else 1  # the ratio: wall on CUDA, CPU seconds on CPU
        btime = statistics.median(t[timed] for t in base["times"])
        for c in variants:
            r = results[c]
            wall, cpu = (statistics.median(t[i] for t in r["times"]) for i in (0, 1))
            err = (r["grads"][1].float() - base["grads"][1].float()).norm() / base["grads"][1].float().norm()
            name = "unfused" if c is None else f"fused chunk {c}"
            print(f"{name:<18}{wall:>8.3f}{cpu:>8.3f}{r['peak'] / 2**20:>10.1f}{(wall, cpu)[timed] / btime:>7.2f}"
                  f"{r['peak'] / base['peak']:>7.3f}{r['loss']:>10.5f}{err.item():>12.1e}")
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
