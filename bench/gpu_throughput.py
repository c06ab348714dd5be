"""Training throughput on one GPU: our stack against a hand-written PyTorch loop, in one run (issue 17).

Variants, each timed after its own warm-up (which includes any compilation):

- ``plain-eager``: ``PlainGPT`` (megatron/model/reference.py: the same Llama-style model in plain
  ``torch.nn``, proven equal to ours by tests/unit/model/test_reference.py), bf16 autocast,
  ``torch.optim.AdamW(fused=True)``, ``clip_grad_norm_``; the baseline of the first ratio.
- ``plain-compiled``: the same under ``torch.compile`` (whole model); the second baseline.
- ``ours``: ``TrainEngine.train_step`` (megatron-core TP layers, DeepSpeed engine, ZeRO-0,
  bf16), i.e. what ``pretrain_gpt.py --bf16`` runs per step, on synthetic batches.
- ``ours-compile``: plus ``--compile``; ``ours-compile-fused``: plus
  ``--fused-linear-cross-entropy``. A variant whose flags this checkout's CLI does not know is
  skipped with a note, so the script runs before and after those flags exist.

Prints tokens/s, MFU (6N + 12 L d s FLOPs per token against the device's dense bf16 peak),
peak memory, and each variant's ratios to both baselines; writes everything to ``--out`` (JSON,
rewritten after every variant, so a run cut short keeps what it measured).

    python bench/gpu_throughput.py --preset 1.3b --out gpu_throughput.json   # ~4 min on an H200
    python bench/gpu_throughput.py --preset small
    python bench/gpu_throughput.py --preset 1.3b --variants plain-eager,ours --steps 10

Without CUDA it says so and exits 0 (``--allow-cpu`` runs the ``tiny`` preset on CPU, a smoke
test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.registry import Registry  # noqa: E402

PRESETS: dict[str, dict[str, int]] = {
    # Llama-style 1.3B of issue 17's table.
    "1.3b": dict(layers=24, hidden=2048, heads=16, ffn=5632, vocab=32000, seq=2048, micro_batch=8),
    "small": dict(layers=8, hidden=1024, heads=8, ffn=2816, vocab=32000, seq=1024, micro_batch=8),
    "tiny": dict(layers=2, hidden=64, heads=4, ffn=128, vocab=256, seq=64, micro_batch=2),
}

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
"""Dense bf16 peak TFLOP/s by a substring of ``torch.cuda.get_device_name()`` (datasheets)."""


@dataclass(frozen=True)
class Variant:
    """One measured configuration: ``kind`` is ``plain`` or ``ours``; ``flags`` go to our CLI."""

    name: str
    kind: str
    flags: tuple[str, ...] = ()
    compiled: bool = False


VARIANTS: Registry[Variant] = Registry("throughput variant", "--variants")
for _variant in (
    # Cheap ones first; with --max-seconds a long compile skips what comes after it.
    Variant("plain-eager", "plain"),
    Variant("ours", "ours"),
    Variant("plain-compiled", "plain", compiled=True),
    Variant("ours-compile", "ours", ("--compile",)),
    Variant("ours-compile-fused", "ours", ("--compile", "--fused-linear-cross-entropy")),
):
    VARIANTS.add(_variant.name, _variant)


@dataclass
class Result:
    """What one variant measured (``None`` where it did not run)."""

    name: str
    status: str = "ok"
    note: str = ""
    warmup_s: float | None = None
    step_ms: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_memory_gib: float | None = None
    """Peak allocated by this variant, above what was allocated when it started."""
    held_before_gib: float | None = None
    """Allocated when it started (what earlier variants did not give back)."""
    last_loss: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


def model_flags(preset: dict[str, int], steps: int) -> list[str]:
    """Our CLI flags for the preset (Llama-style: RMSNorm, SwiGLU, no biases, untied head)."""
    p = preset
    return [
        "--num-layers", str(p["layers"]), "--hidden-size", str(p["hidden"]),
        "--num-attention-heads", str(p["heads"]), "--ffn-hidden-size", str(p["ffn"]),
        "--vocab-size", str(p["vocab"]), "--seq-length", str(p["seq"]),
        "--micro-batch-size", str(p["micro_batch"]), "--global-batch-size", str(p["micro_batch"]),
        "--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear",
        "--untie-embeddings-and-output-weights", "--bf16", "--zero-stage", "0", "--mock-data",
        "--train-iters", str(max(steps, 10)), "--lr", "3e-4", "--min-lr", "3e-5",
        "--lr-warmup-iters", "0", "--weight-decay", "0.1", "--adam-beta2", "0.95",
    ]  # fmt: skip


def missing_flags(flags: tuple[str, ...]) -> list[str]:
    """The flags among ``flags`` that this checkout's CLI does not define."""
    from megatron.config.schema import knob_by_flag

    known = knob_by_flag()
    return [f for f in flags if f.startswith("--") and f not in known]


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_TFLOPS[key]
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: achieved model FLOP/s over the peak (TFLOP/s); None without one."""
    return tokens_per_s * flops_per_token / (peak * 1e12) if peak else None


def synthetic_batches(spec: Any, micro_batch: int, device: Any, n: int = 4) -> list:
    """``n`` micro-batches of uniform random tokens (throughput does not depend on the text)."""
    import torch

    from megatron.data.loader import Batch

    gen = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for _ in range(n):
        seq = torch.randint(0, spec.original_vocab_size, (micro_batch, spec.seq_length + 1), generator=gen)
        seq = seq.to(device)
        out.append(Batch(seq[:, :-1], seq[:, 1:], torch.ones_like(seq[:, 1:], dtype=torch.bool),
                         torch.zeros(micro_batch, dtype=torch.long, device=device)))
    return out


def plain_step(plan: Any, device: Any, compiled: bool) -> tuple[Callable, list]:
    """The hand-written loop: autocast bf16, fused AdamW, grad clipping at 1.0."""
    import torch

    from megatron.model.reference import PlainGPT

    with torch.device(device):
        model = PlainGPT(plan.model)
    opt_cfg = plan.config.optim
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=opt_cfg.lr, betas=(0.9, 0.95),
                            weight_decay=0.1, fused=fused, foreach=not fused)
    forward = torch.compile(model) if compiled else model

    def step(batch: Any, iteration: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(batch.tokens, batch.labels).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, [model, opt, forward]


def our_step(plan: Any, ctx: Any) -> tuple[Callable, list]:
    """``TrainEngine.train_step``: the step ``pretrain_gpt.py`` runs."""
    from megatron.trainer.engine import TrainEngine

    engine = TrainEngine(plan, ctx)

    def step(batch: Any, iteration: int) -> float:
        return engine.train_step([batch], iteration=iteration).loss

    return step, [engine]


def run_variant(variant: Variant, plan: Any, ctx: Any, batches: list, args: argparse.Namespace) -> Result:
    """Build, warm up (compiling), time ``args.steps`` steps; free everything."""
    import torch

    device = ctx.device
    cuda = device.type == "cuda"
    result = Result(variant.name)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
        result.held_before_gib = held / 2**30
    start = time.perf_counter()
    if variant.kind == "plain":
        step, keep = plain_step(plan, device, variant.compiled)
    else:
        step, keep = our_step(plan, ctx)
    for i in range(args.warmup):
        loss = step(batches[i % len(batches)], i)
    if cuda:
        torch.cuda.synchronize()
    result.warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[i % len(batches)], args.warmup + i)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result.last_loss = float(loss)
    result.step_ms = seconds * 1e3
    result.tokens_per_s = plan.model.seq_length * batches[0].tokens.shape[0] / seconds
    if cuda:
        result.peak_memory_gib = (torch.cuda.max_memory_allocated() - held) / 2**30
    del step, keep
    gc.collect()
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
    return result


def add_ratios(results: list[Result]) -> None:
    by_name = {r.name: r for r in results if r.status == "ok"}
    for r in results:
        if r.status != "ok":
            continue
        for base in ("plain-eager", "plain-compiled"):
            if base in by_name:
                r.ratios[f"tokens_per_s_vs_{base}"] = r.tokens_per_s / by_name[base].tokens_per_s
                if r.peak_memory_gib and by_name[base].peak_memory_gib:
                    r.ratios[f"peak_memory_vs_{base}"] = r.peak_memory_gib / by_name[base].peak_memory_gib


def print_table(results: list[Result]) -> None:
    print(f"{'variant':<20} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'warm-up s':>10} "
          f"{'x plain-eager':>14} {'x plain-compiled':>17}")
    for r in results:
        if r.status != "ok":
            print(f"{r.name:<20} {r.status}: {r.note}")
            continue
        mfu = f"{100 * r.mfu:6.1f}%" if r.mfu is not None else "    n/a"
        mem = f"{r.peak_memory_gib:9.1f}" if r.peak_memory_gib is not None else "      n/a"
        eager = r.ratios.get("tokens_per_s_vs_plain-eager")
        comp = r.ratios.get("tokens_per_s_vs_plain-compiled")
        print(f"{r.name:<20} {r.tokens_per_s:10,.0f} {mfu:>7} {mem} {r.warmup_s:10.1f} "
              f"{(f'{eager:.3f}' if eager else '-'):>14} {(f'{comp:.3f}' if comp else '-'):>17}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1.3b")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--fused-ce-chunk-tokens", type=int, default=None,
                        help="passed to ours-compile-fused when given (else the flag's default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak for MFU (default: by device name, H100/H200 989)")
    parser.add_argument("--out", default="gpu_throughput.json", help="JSON results file")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="start no variant after this many seconds (the rest are skipped "
                        "by name), so an unattended run ends by itself with its table")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="smoke-test this script on CPU (tiny preset; numbers mean nothing)")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1 (the warm-up compiles)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_throughput.py: needs a CUDA GPU and none is visible; nothing measured "
              "(see docs/gpu.md for the GPU-machine steps)")
        return 0
    if not torch.cuda.is_available():
        args.preset = "tiny"
    return measure(args)


def measure(args: argparse.Namespace) -> int:
    import torch

    from megatron.config import DistEnv, parse_args
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.plan import resolve

    preset = PRESETS[args.preset]
    base_flags = model_flags(preset, args.warmup + args.steps)
    plan = resolve(parse_args(base_flags).config, DistEnv())
    ctx = init_distributed(plan, DistEnv())
    device_name = torch.cuda.get_device_name() if ctx.device.type == "cuda" else "cpu"
    peak = peak_tflops(device_name, args.peak_tflops)
    flops_per_token = plan.model.flops_per_token()
    batches = synthetic_batches(plan.model, preset["micro_batch"], ctx.device)
    report: dict[str, Any] = {
        "preset": args.preset, "shape": preset, "device": device_name, "torch": torch.__version__,
        "peak_tflops": peak, "flops_per_token": flops_per_token,
        "parameters": plan.model.num_parameters(), "steps": args.steps, "warmup": args.warmup,
        "flags": base_flags, "results": [],
    }  # fmt: skip
    print(f"{device_name}, torch {torch.__version__}, preset {args.preset} {preset}, "
          f"{plan.model.num_parameters() / 1e9:.2f}B parameters, {flops_per_token / 1e9:.2f} GFLOP/token, "
          f"peak {peak} TFLOP/s")
    results: list[Result] = []
    start = time.perf_counter()
    try:
        for name in args.variants.split(","):
            elapsed = time.perf_counter() - start
            if args.max_seconds is not None and elapsed > args.max_seconds:
                note = f"time budget: {elapsed:.0f} s > --max-seconds {args.max_seconds:g}"
                results.append(Result(name, "skipped", note))
            else:
                results.append(one_variant(VARIANTS[name], base_flags, ctx, batches, args))
            r = results[-1]
            if r.status == "ok":
                r.mfu = mfu(r.tokens_per_s, flops_per_token, peak)
            print(f"  {name}: {r.status} {r.note}".rstrip()
                  + (f" {r.tokens_per_s:,.0f} tokens/s, warm-up {r.warmup_s:.1f} s" if r.status == "ok" else ""),
                  flush=True)
            add_ratios(results)
            report["results"] = [asdict(x) for x in results]
            Path(args.out).write_text(json.dumps(report, indent=1))
    finally:
        destroy_distributed()
    print_table(results)
    print(f"results: {args.out}")
    return 0


def one_variant(variant: Variant, base_flags: list[str], ctx: Any, batches: list,
                args: argparse.Namespace) -> Result:
    """Run one variant, or say why not (flags this CLI lacks, a refused config, an error)."""
    import torch

    from megatron.config import ConfigError, DistEnv, parse_args
    from megatron.plan import resolve

    missing = missing_flags(variant.flags)
    if missing:
        return Result(variant.name, "skipped", f"this checkout's CLI has no {' '.join(missing)}")
    flags = list(variant.flags)
    if "--fused-linear-cross-entropy" in flags and args.fused_ce_chunk_tokens is not None:
        flags += ["--fused-ce-chunk-tokens", str(args.fused_ce_chunk_tokens)]
    try:
        plan = resolve(parse_args([*base_flags, *flags]).config, DistEnv())
    except ConfigError as e:
        return Result(variant.name, "skipped", f"refused: {e}")
    try:
        return run_variant(variant, plan, ctx, batches, args)
    except Exception as e:  # noqa: BLE001  (one failing variant must not lose the others)
        gc.collect()
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Result(variant.name, "failed", f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    sys.exit(main())
