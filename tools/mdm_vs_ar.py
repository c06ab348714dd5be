#!/usr/bin/env python3
"""AR vs masked diffusion when data runs out: the same tiny GPT trained with ``--objective ar``
and ``--objective mdm`` on a fixed subset of the Shakespeare corpus repeated 1, 4 and 16 times,
at the same number of training tokens (so the same FLOPs: 6N + 12 L d s per token for both).

    python tools/mdm_vs_ar.py                       # ALCF/presets/mdm-vs-ar.yaml, ~600 steps per run
    python tools/mdm_vs_ar.py --total-tokens 153600 --epochs 1,4   # smaller

Each run's unique tokens are U = total / E. Validation is the held-out split of the corpus (not
in any subset): the AR value is its cross-entropy (an exact NLL per token); the MDM value is the
negative ELBO per token averaged over ``--num-mc`` maskings, an *upper bound* on its NLL. Writes
``OUT/results.json`` and ``OUT/results.md`` (table and samples of the most-repeated runs).
Needs data/shakespeare/ (tools/prepare_default_corpus.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESET = "ALCF/presets/mdm-vs-ar.yaml"


def run(objective: str, epochs: int, seed: int, args: argparse.Namespace) -> dict:
    """Train one configuration in this process; its validation value and wall time."""
    from megatron.config import DistEnv, parse_args, resolve
    from megatron.trainer.loop import train

    save = os.path.join(args.out, f"{objective}_e{epochs}_s{seed}")
    argv = ["--config", args.preset, "--objective", objective, "--unique-tokens",
            str(args.total_tokens // epochs), "--epochs", str(epochs), "--save", save,
            "--seed", str(seed)]
    if objective == "mdm":
        argv += ["--num-mc", str(args.num_mc)]
    plan = resolve(parse_args(argv).config, DistEnv())
    started = time.perf_counter()
    result = train(plan, DistEnv())
    return {"objective": objective, "epochs": epochs, "seed": seed, "unique_tokens": args.total_tokens // epochs,
            "train_iters": plan.train_iters, "train_tokens": plan.train_iters * plan.tokens_per_step,
            "flops": plan.summary()["flops_per_step"] * plan.train_iters,
            "valid": result.valid_loss, "final_train": result.train_loss,
            "seconds": round(time.perf_counter() - started, 1), "save": save}


def sample(save: str, args: argparse.Namespace) -> str:
    """One sample of the checkpoint (mdm: random-order reveal, one step per token)."""
    from tools import generate

    gen = generate.parse_args(["--load", save, "--prompt", args.prompt, "--gen-length",
                                   str(args.gen_length), "--alg", "origin", "--temperature",
                                   str(args.temperature), "--seed", "0"])
    return args.prompt + generate.generate(gen)[0]


def _cell(rows: list[dict]) -> str:
    values = [r["valid"] for r in rows]
    mean = sum(values) / len(values)
    return f"{mean:.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


def table(rows: list[dict]) -> str:
    """The README table: one row per epoch count, AR loss beside the MDM bound (mean over seeds
    ± half their range)."""
    lines = ["| epochs | unique tokens | train tokens | AR valid loss (NLL, nats/token) | "
             "MDM valid bound (negative ELBO >= NLL, nats/token) |", "|---|---|---|---|---|"]
    for e in sorted({r["epochs"] for r in rows}):
        ar = [r for r in rows if r["objective"] == "ar" and r["epochs"] == e]
        mdm = [r for r in rows if r["objective"] == "mdm" and r["epochs"] == e]
        lines.append(f"| {e} | {ar[0]['unique_tokens']:,} | {ar[0]['train_tokens']:,} | "
                     f"{_cell(ar)} | {_cell(mdm)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=PRESET)
    p.add_argument("--total-tokens", type=int, default=614_400, help="training tokens of every run")
    p.add_argument("--epochs", default="1,4,16", help="comma-separated epoch counts")
    p.add_argument("--num-mc", type=int, default=8, help="MDM validation draws per sample")
    p.add_argument("--out", default="outputs/mdm_vs_ar")
    p.add_argument("--seeds", default="1234,5678", help="comma-separated seeds (replicates)")
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--gen-length", type=int, default=56)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy CPU)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    epochs = [int(e) for e in args.epochs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [run(o, e, s, args) for s in seeds for e in epochs for o in ("ar", "mdm")]
    most = max(epochs)
    samples = {o: sample(os.path.join(args.out, f"{o}_e{most}_s{seeds[0]}"), args) for o in ("ar", "mdm")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"runs": rows, "samples": samples}, f, indent=1)
    text = table(rows) + "".join(
        f"\n\n{o.upper()} sample ({most} epochs):\n```\n{s}\n```" for o, s in samples.items())
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
