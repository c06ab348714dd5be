#!/usr/bin/env python3
"""Run a continual-pretraining plan: its stages in order, resumably.

    python tools/continual_run.py --plan ALCF/presets/cpt-demo.yaml
    CPT_PLAN=plan.yaml bash train_alcf.sh           # the same through the launcher
    python tools/continual_run.py --plan plan.yaml --dry-run   # check everything, run nothing
    python tools/continual_run.py --plan plan.yaml --lr 1e-4 --use-ar-schedule --time-range 201401:201412
    python tools/continual_run.py --plan plan.yaml --parent-dataset-manifest tic_cc/ \
        --try-balanced-manifest --suffixes manifest.jsonl --starting-timestep 201312

With --parent-dataset-manifest DIR (plan key periods_from), every period folder of DIR
(201305/, 201312/, ... in order) becomes a stage with its data and held-out lists; its data may
be open_lm shards listed in manifest.jsonl, indexed datasets or raw JSONL/Parquet (see
docs/data_formats.md).

Flags override the plan in TiC-LM's spellings (--exp-name, --init-ckpt, --lr, --warmup,
--warmup-usage, --lr-scheduler, --use-ar-schedule, --replay-ratio, --num-timesteps, ...; see
--help); they enter the stages' hashes like the file's values.

Exit status: 0 when every stage has finished, 75 when it stopped cleanly (SIGTERM, the kill
switch ``<output_dir>/<name>/STOP``, ``--time-limit-mins``; run it again to continue), 2 for a
plan that cannot run (the message names the file, line, stage or field).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.metadata import CheckpointError  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402
from megatron.continual.launch import Launch  # noqa: E402
from megatron.continual.overrides import add_override_args, given_overrides, refuse_foreign  # noqa: E402
from megatron.continual.plan import load_plan  # noqa: E402
from megatron.continual.runner import EXIT_DONE, PlanRunner  # noqa: E402

PROG = "continual_run.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", required=True, help="the plan (YAML)")
    p.add_argument("--launcher", choices=("train_alcf", "python"), default=None,
                   help="override the plan's launcher (train_alcf: bash train_alcf.sh)")
    p.add_argument("--time-limit-mins", type=float, default=None,
                   help="stop (saving) this many minutes after start, e.g. before a job's walltime")
    p.add_argument("--dry-run", action="store_true",
                   help="check the plan, write the data lists and resolve every stage; start nothing")
    p.add_argument("--multi-node", "--multi_node", action="store_true",
                   help="TiC-LM's multi-node run without a scheduler: every stage starts torchrun across "
                        "NUM_NODES nodes (NODE_RANK, MASTER_ADDR, MASTER_PORT) through train_alcf.sh; run "
                        "the same command on every node")
    tic = p.add_argument_group("TiC-LM period folders (docs/data_formats.md)")
    tic.add_argument("--parent-dataset-manifest", default=None,
                     help="folder of period folders (201305/ ...): one stage per period "
                          "(the plan key periods_from)")
    tic.add_argument("--suffixes", "--manifest-suffixes", default=None,
                     help="name of the shard manifest in a period folder (default manifest.jsonl)")
    tic.add_argument("--try-balanced-manifest", action="store_true",
                     help="use a folder's manifest_balanced.jsonl when it has one")
    add_override_args(p)
    return p.parse_args(argv)


def check_multi_node(launcher: str | None, environ: dict[str, str] | None = None) -> None:
    """``--multi-node``: the launcher starts torchrun across nodes from NUM_NODES / NODE_RANK /
    MASTER_ADDR (or the scheduler's node list); refuse what cannot start that way.

    Raises:
        ConfigError: The python launcher, or neither a scheduler nor NUM_NODES and MASTER_ADDR.
    """
    env = os.environ if environ is None else environ
    if launcher == "python":
        raise ConfigError("--multi-node: needs the train_alcf launcher (drop --launcher python)")
    if env.get("PBS_NODEFILE") or env.get("SLURM_JOB_NODELIST"):
        return  # the scheduler's node list
    missing = [v for v in ("NUM_NODES", "MASTER_ADDR") if not env.get(v)]
    if missing:
        raise ConfigError(
            f"--multi-node: set {' and '.join(missing)} (and NODE_RANK on every node but node 0); "
            "train_alcf.sh then starts torchrun across the nodes"
        )


def plan_values(args: argparse.Namespace) -> dict:
    """Plan keys given as flags."""
    suffix = args.suffixes.lstrip("/") if args.suffixes else None  # TiC-LM writes "/manifest.jsonl"
    values = {"periods_from": args.parent_dataset_manifest, "periods_manifest": suffix,
              "try_balanced_manifest": args.try_balanced_manifest or None}
    return {k: v for k, v in values.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] continual: %(message)s", datefmt="%H:%M:%S")
    try:
        refuse_foreign(args)
        plan = load_plan(args.plan, given_overrides(args), plan_values(args))
        if args.multi_node:
            check_multi_node(args.launcher or plan.launcher)
        launch = Launch(launcher=args.launcher or plan.launcher, python=sys.executable)
        runner = PlanRunner(plan, launch, time_limit_mins=args.time_limit_mins)
        if args.dry_run:
            specs, markers, dry, _ = runner.prepare()
            for spec in specs:
                state = ("finished" if spec.key in markers
                         else f"to run, ends at iteration {dry[spec.key]['plan']['train_iters']}")
                print(f"stage {spec.key}: {state}; data {spec.data_list_path}; replay {list(spec.weights)}")
            return EXIT_DONE
        return runner.run()
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # e.g. another runner holds the plan root
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
