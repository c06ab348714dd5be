#!/usr/bin/env python3
"""AR vs masked diffusion when data runs out: the same GPT trained with ``--objective ar`` and
``--objective mdm`` on a subset of the Shakespeare corpus repeated E times, as a sweep
(tools/sweep.py: every run an ordinary train_alcf.sh run, resumable, ``--parallel``, job arrays).

    python tools/mdm_vs_ar.py                                   # U = 614,400 / E, E = 1, 4, 16
    python tools/mdm_vs_ar.py --unique-tokens 12800 --epochs 1,8,64 --seeds 1234   # heavy repetition

At each E both objectives train the same tokens (the same FLOPs: 6N + 12 L d s per token).
Validation is the held-out split of the corpus (not in any subset): AR's value is its
cross-entropy (an exact NLL per token); MDM's the negative ELBO per token averaged over
``--num-mc`` maskings, an *upper bound* on its NLL. Writes ``OUT/results.json`` and
``OUT/results.md`` (table and samples of the most-repeated runs), and the sweep's
``sweep.csv`` under ``OUT/sweep``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.experiments import results  # noqa: E402
from megatron.experiments.repetition import repetition_runs, table  # noqa: E402
from megatron.experiments.sweep import make_sweep  # noqa: E402
from tools.sweep import add_common_args, execute  # noqa: E402

PRESET = "ALCF/presets/mdm-vs-ar.yaml"


def sample(save: str, args: argparse.Namespace) -> str:
    """One sample of the checkpoint (mdm: random-order reveal, one step per token)."""
    from tools import generate

    gen = generate.parse_args(["--load", save, "--prompt", args.prompt, "--gen-length",
                                   str(args.gen_length), "--alg", "origin", "--temperature",
                                   str(args.temperature), "--seed", "0"])
    return args.prompt + generate.generate(gen)[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=PRESET)
    p.add_argument("--total-tokens", type=int, help="training tokens of every run (U = total / E); default 614,400")
    p.add_argument("--unique-tokens", type=int, help="a fixed subset of U tokens repeated E times instead")
    p.add_argument("--epochs", default="1,4,16", help="comma-separated epoch counts")
    p.add_argument("--num-mc", type=int, default=8, help="MDM validation draws per sample")
    p.add_argument("--out", default="outputs/mdm_vs_ar")
    p.add_argument("--seeds", default="1234,5678", help="comma-separated seeds (replicates)")
    p.add_argument("--prompt", default="ROMEO:\n")
    p.add_argument("--gen-length", type=int, default=56)
    p.add_argument("--temperature", type=float, default=0.8)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.total_tokens is None and args.unique_tokens is None:
        args.total_tokens = 614_400
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    try:
        epochs = [float(e) for e in args.epochs.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        runs = repetition_runs(epochs, seeds, unique_tokens=args.unique_tokens, total_tokens=args.total_tokens,
                               num_mc=args.num_mc)
        sweep = make_sweep(args.name or "sweep", out, args.preset, runs, meta={"study": "mdm-vs-ar"})
        status = execute(sweep, args, ["objective", "epochs"])
    except ConfigError as e:
        print(f"mdm_vs_ar.py: error: {e}", file=sys.stderr)
        return 2
    if status != 0 or args.dry_run or args.scheduler or args.report:
        return status
    rows = results.collect(sweep)
    most = max(epochs)
    last = {r.overrides["objective"]: r for r in runs if r.overrides["epochs"] == most and r.overrides["seed"] == seeds[0]}
    samples = {o: sample(sweep.save_dir(run), args) for o, run in last.items()}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"runs": rows, "samples": samples}, f, indent=1)
    text = table(rows) + "".join(f"\n\n{o.upper()} sample ({most:g} epochs):\n```\n{s}\n```" for o, s in samples.items())
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
