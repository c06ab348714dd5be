#!/usr/bin/env python3
"""Checkpoint benchmark: save and load time, and universal conversion against DeepSpeed's tool.

    DS_ACCELERATOR=cpu .venv/bin/python bench/checkpoint.py [--hidden 512 --layers 6 --vocab 32000]

1. Trains one step of a GPT at ZeRO-1, DP=2 (2 gloo processes) and times our save and our load
   (resume of the same layout) of that checkpoint.
2. Converts the checkpoint to a universal one with DeepSpeed's ``ds_to_universal`` (the
   baseline) and with ``tools/convert_checkpoint.py`` (ours, verification included and separately
   timed), each in a fresh process with 1 worker, and prints time, peak resident memory of the
   converter process and peak disk used under its output directory (temporaries included), with
   ratios ours / DeepSpeed's. The two outputs are compared tensor for tensor.
3. Exports the checkpoint to Hugging Face format (``LlamaForCausalLM``), each in a fresh process:
   the baseline materializes every exported tensor and writes one ``model.safetensors`` (what
   the first exporter did); ours streams tensor by tensor into ``--max-shard-size 100MB`` shards
   (fp32, and bf16). Time and peak RSS, ratios ours / baseline; the shards are compared with
   the single file tensor for tensor.
4. The training stall of a save (``--only-stall`` runs just this): a ~110M-parameter GPT on one
   process trains with a save every ``--stall-every`` steps, once synchronously and once with
   ``--async-save``; the time the step loop is blocked per save (the synchronous save's wall
   time against the async save's snapshot, plus any wait for the previous write), the ratio,
   and the whole loop's time (the background write competes with training for the CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

MEASURE = """
import resource, sys, time
t = time.perf_counter()
{body}
print("RESULT", time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
DS_BODY = """
sys.argv = ["ds_to_universal", "--input_folder", {src!r}, "--output_folder", {out!r},
            "--num_extract_workers", "1", "--num_merge_workers", "1"]
from deepspeed.checkpoint import ds_to_universal
ds_to_universal.main(ds_to_universal.parse_arguments())
"""
OURS_BODY = """
from megatron.checkpointing.convert import convert
r = convert({src!r}, {out!r}, workers=1, verify=True)
print("VERIFY", r.verify_seconds)
"""

EXPORT_BASELINE_BODY = """
import os, torch
from safetensors.torch import save_file
from megatron.checkpointing.hf_arch import select_exporter
from megatron.checkpointing.hf_export import open_checkpoint, _LastTensor
ckpt = open_checkpoint({src!r})
exporter = select_exporter(ckpt.spec)
get = _LastTensor(ckpt)
tensors = {{t.name: t.load().contiguous().clone() for t in exporter.tensors(get, ckpt.spec)}}
os.makedirs({out!r})
save_file(tensors, os.path.join({out!r}, "model.safetensors"), metadata={{"format": "pt"}})
"""
EXPORT_BODY = """
from megatron.checkpointing.hf_export import export_hf
export_hf({src!r}, {out!r}, dtype={dtype!r}, max_shard_size="100MB")
"""


def _flags(args: argparse.Namespace, save: str) -> list[str]:
    return ["--num-layers", str(args.layers), "--hidden-size", str(args.hidden), "--num-attention-heads", "8",
            "--seq-length", "128", "--micro-batch-size", "1", "--mock-data", "--vocab-size", str(args.vocab),
            "--swiglu", "--normalization", "rmsnorm", "--zero-stage", "1", "--train-iters", "2",
            "--eval-iters", "0", "--log-interval", "1", "--save", save, "--load", save]


def _save_and_load(env, flags: list[str]) -> tuple[float, float]:  # noqa: ANN001
    from megatron.config import parse_args
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.plan import resolve
    from megatron.trainer.loop import Trainer
    from megatron.trainer.state import TrainState

    plan = resolve(parse_args(flags).config, env)
    ctx = init_distributed(plan, env)
    try:
        trainer = Trainer(plan, ctx)
        state = TrainState()
        trainer.train_step(state)
        t0 = time.perf_counter()
        trainer.save(state)
        save_s = time.perf_counter() - t0
        trainer.reporter.close()
        trainer.stop.close()
        again = Trainer(plan, ctx)
        t0 = time.perf_counter()
        again.checkpoints.restore(again, again.callbacks)
        load_s = time.perf_counter() - t0
        again.reporter.close()
        again.stop.close()
        return save_s, load_s
    finally:
        destroy_distributed()


def _stall_run(env, flags: list[str], steps: int, every: int) -> dict[str, object]:  # noqa: ANN001
    """Train ``steps`` steps, saving every ``every``: each step's and each save's wall time."""
    from megatron.checkpointing.async_save import finish_async_save
    from megatron.config import parse_args, resolve
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.trainer.loop import Trainer
    from megatron.trainer.state import TrainState

    plan = resolve(parse_args(flags).config, env)
    ctx = init_distributed(plan, env)
    try:
        trainer = Trainer(plan, ctx)
        state, step_s, save_s = TrainState(), [], []
        trainer.train_step(state)  # warm-up, not timed
        started = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step(state)
            step_s.append(time.perf_counter() - t0)
            if state.iteration % every == 0:
                t0 = time.perf_counter()
                trainer.save(state)
                save_s.append(time.perf_counter() - t0)
        loop_s = time.perf_counter() - started
        t0 = time.perf_counter()
        finish_async_save(trainer.engine.engine, abandon=False)  # the last write (async only)
        drain_s = time.perf_counter() - t0
        trainer.reporter.close()
        trainer.stop.close()
        params = sum(p.numel() for p in trainer.engine.module.parameters())
        return {"step": step_s, "save": save_s, "loop": loop_s, "drain": drain_s, "params": params}
    finally:
        destroy_distributed()


def _bench_stall(args: argparse.Namespace, work: str) -> None:
    """Part 4: how long a save blocks the step loop, synchronous against --async-save."""
    import statistics

    from tests.helpers import run_distributed

    flags = ["--num-layers", str(args.stall_layers), "--hidden-size", str(args.stall_hidden),
             "--num-attention-heads", str(args.stall_hidden // 64), "--seq-length", "128", "--micro-batch-size", "1", "--mock-data",
             "--vocab-size", str(args.vocab), "--zero-stage", "0", "--train-iters", "100", "--eval-iters", "0",
             "--log-interval", "1000", "--lr-decay-style", "constant"]
    runs = {}
    for mode, extra in (("sync", []), ("async", ["--async-save"])):
        save = os.path.join(work, f"stall_{mode}")
        runs[mode] = run_distributed(_stall_run, [*flags, "--save", save, *extra], args.stall_steps,
                                     args.stall_every, world_size=1, timeout_s=1800)[0]
        size = _du(os.path.join(save, f"global_step{args.stall_every}"))
        shutil.rmtree(save, ignore_errors=True)
    sync, bg = runs["sync"], runs["async"]
    params = bg["params"]
    print(f"training stall per save (hidden {args.stall_hidden}, {args.stall_layers} layers, ~{params / 1e6:.0f}M "
          f"params, checkpoint {size / 2**20:.0f} MiB, 1 process, save every {args.stall_every} of "
          f"{args.stall_steps} steps)")
    sync_s, first_s = statistics.median(sync["save"]), bg["save"][0]
    later_s = statistics.median(bg["save"][1:]) if len(bg["save"]) > 1 else first_s
    print(f"{'save':<40} {'seconds':>8}")
    print(f"{'synchronous save (wall)':<40} {sync_s:>8.2f}")
    print(f"{'--async-save, first (buffers allocated)':<40} {first_s:>8.2f}")
    print(f"{'--async-save, later saves (median)':<40} {later_s:>8.2f}")
    print(f"stall ratio async/sync: {later_s / sync_s:.3f} (first save {first_s / sync_s:.3f}); goal <= 0.2")
    print(f"step loop: sync {sync['loop']:.1f}s, async {bg['loop']:.1f}s (+{bg['drain']:.1f}s for the last "
          f"write at the end); median step {statistics.median(sync['step']):.2f}s sync, "
          f"{statistics.median(bg['step']):.2f}s async (the write competes for the CPU)")


def _du(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def _measure(body: str, watch: str) -> tuple[float, int, int, str]:
    """Run ``body`` in a fresh interpreter; (seconds, peak RSS, peak bytes under ``watch``, stdout)."""
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _du(watch))
            time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    proc = subprocess.run([sys.executable, "-c", MEASURE.format(body=body)], capture_output=True,
                          text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"}, check=False)
    done.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"converter failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    _, seconds, rss = line.split()
    return float(seconds), int(rss), peak[0], proc.stdout


def _bench_export(step: str, work: str) -> None:
    """Part 3: HF export, baseline (whole model in memory, one file) against ours (streamed shards)."""
    import json

    from safetensors.torch import load_file

    base_out = os.path.join(work, "hf_baseline")
    base = _measure(EXPORT_BASELINE_BODY.format(src=step, out=base_out), base_out)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = os.path.join(work, f"hf_{dtype}")
        runs[dtype] = (_measure(EXPORT_BODY.format(src=step, out=out, dtype=dtype), out), out)
    size = _du(base_out)
    print(f"HF export (LlamaForCausalLM, {size / 2**20:.0f} MiB of fp32 weights)")
    print(f"{'exporter':<34} {'seconds':>8} {'peak RSS MiB':>13} {'files':>6}")
    print(f"{'whole model, one file (baseline)':<34} {base[0]:>8.2f} {base[1] / 2**20:>13.0f} {1:>6}")
    for dtype, (r, out) in runs.items():
        files = len([f for f in os.listdir(out) if f.endswith(".safetensors")])
        print(f"{'ours, 100MB shards, ' + dtype:<34} {r[0]:>8.2f} {r[1] / 2**20:>13.0f} {files:>6}")
    r, out = runs["float32"]
    print(f"ratio ours (fp32) / baseline: time {r[0] / base[0]:.2f}, peak RSS {r[1] / base[1]:.2f}")
    whole = load_file(os.path.join(base_out, "model.safetensors"))
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        shard_files = set(json.load(f)["weight_map"].values())
    import torch

    sharded = {k: v for file in shard_files for k, v in load_file(os.path.join(out, file)).items()}
    same = sorted(whole) == sorted(sharded) and all(torch.equal(whole[k], sharded[k]) for k in whole)
    print(f"sharded export identical to the single file: {same} ({len(whole)} tensors)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--stall-hidden", type=int, default=768, help="part 4's model (768, 12 layers: ~110M)")
    p.add_argument("--stall-layers", type=int, default=12)
    p.add_argument("--stall-steps", type=int, default=8)
    p.add_argument("--stall-every", type=int, default=2)
    p.add_argument("--only-stall", action="store_true", help="run part 4 only")
    args = p.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    from tests.helpers import run_distributed

    work = tempfile.mkdtemp(prefix="bench_ckpt_")
    try:
        save = os.path.join(work, "ckpt")
        logging.disable(logging.INFO)
        if args.only_stall:
            _bench_stall(args, work)
            return
        save_s, load_s = run_distributed(_save_and_load, _flags(args, save), timeout_s=900)[0]
        step = os.path.join(save, "global_step1")
        size = _du(step)
        print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; checkpoint "
              f"(ZeRO-1, DP=2, weights + Adam) {size / 2**20:.1f} MiB")
        print(f"save {save_s:.2f}s ({size / 2**20 / save_s:.0f} MiB/s), load {load_s:.2f}s")
        ds_out, our_out = os.path.join(work, "ds_universal"), os.path.join(work, "our_universal")
        ds = _measure(DS_BODY.format(src=step, out=ds_out), ds_out)
        ours = _measure(OURS_BODY.format(src=step, out=our_out), work)
        verify_s = float(next(x for x in ours[3].splitlines() if x.startswith("VERIFY")).split()[1])
        ours_disk = ours[2] - _du(save) - _du(ds_out)  # the watch covered the whole work dir
        print(f"{'converter':<34} {'seconds':>8} {'peak RSS MiB':>13} {'peak disk MiB':>14}")
        print(f"{'ds_to_universal (baseline)':<34} {ds[0]:>8.2f} {ds[1] / 2**20:>13.0f} {ds[2] / 2**20:>14.1f}")
        print(f"{'ours (incl. verification)':<34} {ours[0]:>8.2f} {ours[1] / 2**20:>13.0f} {ours_disk / 2**20:>14.1f}")
        print(f"ratio ours/baseline: time {ours[0] / ds[0]:.2f} (without the {verify_s:.2f}s verification "
              f"{(ours[0] - verify_s) / ds[0]:.2f}), peak RSS {ours[1] / ds[1]:.2f}, peak disk "
              f"{ours_disk / ds[2]:.2f}")
        from megatron.checkpointing.universal import UniversalCheckpoint

        a, b = UniversalCheckpoint(our_out), UniversalCheckpoint(ds_out)
        import torch

        same = all(torch.equal(a.full(n, k), b.full(n, k)) for n in a.dirs for k in ("fp32", "exp_avg", "exp_avg_sq"))
        print(f"outputs identical: {same} ({len(a.dirs)} parameters)")
        _bench_export(step, work)
        _bench_stall(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
