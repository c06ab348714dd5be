#!/usr/bin/env python3
"""Import of a random Llama written by ``transformers`` (sharded safetensors) vs the baseline.

    OMP_NUM_THREADS=1 python bench/import_checkpoint.py [--sizes 0.25 0.5 1] [--dtypes fp32 bf16]

Baseline: ``AutoModelForCausalLM.from_pretrained`` + our ``GPTModel`` + ``load_state_dict`` of
the converted tensors + a save of every tensor to the same universal layout (what a converter
written the obvious way does). Ours: ``tools/import_checkpoint.py`` (``--workers 1`` and 2).
Every measurement runs in its own process (peak RSS is the process's ``ru_maxrss``); the
model is written once per size and dtype by ``save_pretrained``. 1B runs only when ``free``
reports more than 14 GiB available (``--skip-baseline``: ours only, for boxes that cannot hold
the baseline's full model copies). Prints peak RSS, wall time and MB/s (input bytes / wall),
the ratios ours / baseline measured in this run, and the disk's own write speed measured in the
same directory just before (the same number of bytes, plain ``write`` calls, no fsync): an
import that writes at that speed is bound by the disk, where more ``--workers`` cannot help.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

# Size (billions) -> Llama shape: vocab 32000, GQA 16/8 heads, untied (Llama-2-like).
SHAPES = {
    "0.25": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16),
    "0.5": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16),
    "1": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18),
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make(size: str, dtype: str, out: str) -> dict:
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, num_attention_heads=16, num_key_value_heads=8,
                                      max_position_embeddings=2048, tie_word_embeddings=False, **SHAPES[size])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, DTYPES[dtype]))
    model.save_pretrained(out, max_shard_size="500MB")
    return {"parameters": sum(p.numel() for p in model.parameters())}


def _dist() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)


def baseline(src: str, out: str) -> dict:
    """from_pretrained + our model + load_state_dict + save (the obvious converter)."""
    import torch
    import transformers

    from megatron.checkpointing.importing.formats import open_source
    from megatron.checkpointing.importing.writer import spec_from_flags
    from megatron.model.gpt import GPTModel

    _dist()
    source = open_source(src)  # only for the tensor recipes and the spec
    spec = spec_from_flags(source.model_flags())
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    weights = hf.state_dict()
    ours = GPTModel(spec)
    converted = {r.name: r.combine([weights[n] for n in r.hf_names]).float() for r in source._recipes}
    ours.load_state_dict(converted, strict=False)
    del converted
    for name, param in ours.named_parameters():
        os.makedirs(os.path.join(out, "zero", name), exist_ok=True)
        torch.save({"param": param.detach()}, os.path.join(out, "zero", name, "fp32.pt"))
    return {}


def ours(src: str, out: str, workers: int) -> dict:
    from megatron.checkpointing.importing.formats import open_source
    from megatron.checkpointing.importing.writer import import_checkpoint

    report = import_checkpoint(open_source(src), out, workers=workers)
    return {"largest_tensor_mib": max(4 * _numel(s) for s in _shapes(report.spec)) / 2**20}


def _shapes(spec):  # noqa: ANN001, ANN202
    from megatron.checkpointing.layout import full_shapes

    return full_shapes(spec).values()


def _numel(shape) -> int:  # noqa: ANN001
    n = 1
    for s in shape:
        n *= s
    return n


def child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.child == "make":
        extra = make(args.size, args.dtype, args.src)
    elif args.child == "baseline":
        extra = baseline(args.src, args.out)
    else:
        extra = ours(args.src, args.out, args.workers)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": _peak_mib(), **extra}))


def _run(*argv: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-W", "ignore", __file__, *argv], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemAvailable"] / 2**20


def disk_write_mbps(directory: str, megabytes: float) -> float:
    """MB/s of writing ``megabytes`` into a new file in ``directory`` (64 MiB ``write`` calls)."""
    chunk = b"\1" * (64 << 20)
    path, left = os.path.join(directory, "disk_probe"), int(megabytes * 1e6)
    start = time.perf_counter()
    with open(path, "wb") as f:
        while left > 0:
            left -= f.write(chunk[: min(left, len(chunk))])
    seconds = time.perf_counter() - start
    os.remove(path)
    return megabytes / seconds


def measure(size: str, dtype: str, tmp: str, skip_baseline: bool = False) -> dict:
    src, base_out = os.path.join(tmp, "hf"), os.path.join(tmp, "base")
    made = _run("--child", "make", "--size", size, "--dtype", dtype, "--src", src)
    input_mb = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 1e6
    base = None
    if not skip_baseline:
        base = _run("--child", "baseline", "--src", src, "--out", base_out)
        shutil.rmtree(base_out)
    row = {"size": size, "dtype": dtype, "parameters": made["parameters"], "input_mb": input_mb, "baseline": base}
    row["disk_mbps"] = disk_write_mbps(tmp, input_mb * (2 if dtype == "bf16" else 1))  # the import writes fp32
    for workers in (1, 2):
        out = os.path.join(tmp, f"ours{workers}")
        row[f"ours{workers}"] = _run("--child", "ours", "--src", src, "--out", out, "--workers", str(workers))
        shutil.rmtree(out)
    shutil.rmtree(src)
    return row


def report(row: dict) -> str:
    b, o1, o2 = row["baseline"], row["ours1"], row["ours2"]
    head = (f"{row['size']:>5}B {row['dtype']:>4} ({row['parameters'] / 1e9:.2f}B params, {row['input_mb']:.0f} MB in, "
            f"disk writes {row['disk_mbps']:.0f} MB/s): ")
    if b is None:
        return head + (f"ours w1 {o1['seconds']:.1f} s {o1['peak_mib']:.0f} MiB {row['input_mb'] / o1['seconds']:.0f} MB/s, "
                       f"w2 {o2['seconds']:.1f} s {o2['peak_mib']:.0f} MiB {row['input_mb'] / o2['seconds']:.0f} MB/s | "
                       f"w2/w1 wall {o2['seconds'] / o1['seconds']:.2f}, largest tensor {o1['largest_tensor_mib']:.0f} MiB")
    return head + (f"baseline {b['seconds']:.1f} s, {b['peak_mib']:.0f} MiB | ours w1 {o1['seconds']:.1f} s "
            f"{o1['peak_mib']:.0f} MiB {row['input_mb'] / o1['seconds']:.0f} MB/s, w2 {o2['seconds']:.1f} s "
            f"{o2['peak_mib']:.0f} MiB {row['input_mb'] / o2['seconds']:.0f} MB/s | RSS ratio "
            f"{o1['peak_mib'] / b['peak_mib']:.2f}, wall ratio {o1['seconds'] / b['seconds']:.2f}, "
            f"w2/w1 wall {o2['seconds'] / o1['seconds']:.2f}, largest tensor {o1['largest_tensor_mib']:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["0.25", "0.5", "1"], choices=sorted(SHAPES))
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--skip-baseline", action="store_true", help="measure ours only (no full-model baseline)")
    p.add_argument("--child", choices=["make", "baseline", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    for size in args.sizes:
        if size == "1" and _available_gib() <= 14 and not args.skip_baseline:
            print(f"1B skipped: {_available_gib():.1f} GiB available (needs > 14)")
            continue
        for dtype in args.dtypes:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                print(report(measure(size, dtype, tmp, args.skip_baseline)), flush=True)


if __name__ == "__main__":
    main()
