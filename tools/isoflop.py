#!/usr/bin/env python3
"""IsoFLOP studies: for each compute budget, the runs along a size ladder, as one sweep.

    python tools/isoflop.py --flops 1e17,3e17,1e18,3e18 --ladder datablations --base my_c4.yaml \\
        [--unique-tokens 100M] [--sizes 14M,35M,74M] [--scheduler pbs --walltime 06:00:00 --submit]
    python tools/isoflop.py --flops 3e12,1e13,3e13 --ladder tiny --sizes L2-d64,L3-d96,L4-d128,L4-d192
    python tools/isoflop.py --ladder datablations --list       # the rungs and N by our formula

Each run is rung N trained on D = floor(C / 6N) tokens (``--train-tokens D``; with
``--unique-tokens U``: ``--unique-tokens U --epochs D/U``), an ordinary train_alcf.sh run of the
sweep ``<output-dir>/<name>`` (tools/sweep.py: resumable, sweep.csv, job arrays). N is the budget
formula 4Ld^2 + 3Ldf + 6Ld + Vd at the base run's vocabulary. A budget that buys fewer than
``--min-steps`` steps of the smallest rung is refused before anything runs; bigger rungs that
would get fewer are left out of that budget. Fit the results with utils/fit_scaling_law.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.experiments import launcher  # noqa: E402
from megatron.experiments.ladder import GPT2_VOCAB, isoflop_runs, ladder_table, load_ladder  # noqa: E402
from megatron.experiments.sweep import make_sweep  # noqa: E402
from tools.sweep import add_common_args, execute  # noqa: E402
from utils.compute_budget import parse_count  # noqa: E402

PROG = "isoflop.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flops", help="comma-separated compute budgets C, e.g. 1e17,3e17")
    p.add_argument("--ladder", required=True, help="a directory of ALCF/presets/arch/ (datablations, tiny)")
    p.add_argument("--base", default="ALCF/presets/isoflop-demo.yaml", help="the --config every run starts from")
    p.add_argument("--unique-tokens", help="U: data-constrained runs repeat U unique tokens D/U times")
    p.add_argument("--sizes", help="comma-separated rung names to use (default: all that fit)")
    p.add_argument("--min-steps", type=int, default=10, help="fewest optimizer steps of a run")
    p.add_argument("--list", action="store_true", help="print the ladder's rungs and N; run nothing")
    p.add_argument("--vocab-size", type=int, help="V for --list (default: GPT-2's 50257)")
    add_common_args(p)
    return p.parse_args(argv)


def base_shape(base: str, rung: str) -> tuple[int, int]:
    """(tokens per step, vocabulary) of the base config with one rung, as the trainer resolves it."""
    from megatron.config import DistEnv
    from megatron.config import parse_args as trainer_args
    from megatron.plan import resolve

    argv = [*launcher.env_flags(os.environ), "--config", base, "--config", rung, "--train-iters", "1"]
    plan = resolve(trainer_args(argv).config, DistEnv())
    return plan.tokens_per_step, plan.model.original_vocab_size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        if args.list:
            vocab = args.vocab_size or GPT2_VOCAB
            print(ladder_table(load_ladder(args.ladder, vocab), vocab))
            return 0
        if not args.flops:
            raise ConfigError("--flops: give the compute budgets, e.g. --flops 1e17,3e17")
        budgets = [parse_count(x, "--flops", integer=False) for x in args.flops.split(",") if x.strip()]
        base = os.path.abspath(args.base)
        os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        rungs = load_ladder(args.ladder)
        if args.sizes:
            wanted = [s.strip() for s in args.sizes.split(",") if s.strip()]
            unknown = [s for s in wanted if s not in {r.name for r in rungs}]
            if unknown:
                raise ConfigError(f"--sizes: {unknown[0]!r} is not a rung of {args.ladder}; "
                                  f"known: {', '.join(r.name for r in rungs)}")
            rungs = [r for r in rungs if r.name in wanted]
        tokens_per_step, vocab = base_shape(base, rungs[0].path)
        rungs = load_ladder(args.ladder, vocab) if not args.sizes else [
            r for r in load_ladder(args.ladder, vocab) if r.name in {x.name for x in rungs}]
        print(ladder_table(rungs, vocab))
        unique = parse_count(args.unique_tokens, "--unique-tokens") if args.unique_tokens else None
        runs = isoflop_runs(budgets, rungs, tokens_per_step=tokens_per_step, unique_tokens=unique,
                            min_steps=args.min_steps)
        name = args.name or f"isoflop-{args.ladder}" + (f"-U{unique}" if unique else "")
        sweep = make_sweep(name, args.output_dir, base, runs,
                           meta={"flops": budgets, "ladder": args.ladder, "unique_tokens": unique})
        arch_keys = ["num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size"]
        return execute(sweep, args, ["flops_budget", "arch"],
                       extra_flags=["--" + k.replace("_", "-") for k in arch_keys])
    except (ConfigError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
