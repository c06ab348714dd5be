#!/usr/bin/env python3
"""Hyper-parameter sweeps: a grid over config keys, each point an ordinary train_alcf.sh run.

    python tools/sweep.py --base ALCF/presets/demo.yaml --grid 'lr=1e-3,3e-3' \\
        --grid 'adam_beta2=0.95,0.99' [--random 3 --seed 0] [--name NAME] [--output-dir outputs/sweeps]
    python tools/sweep.py ... --parallel 2                 # two runs at a time on this machine
    python tools/sweep.py ... --scheduler pbs --nodes 1 --walltime 02:00:00 --account P --submit
    python tools/sweep.py ... --dry-run                    # check every run, list them, run nothing

Grid keys are the --config file keys (``lr``, ``adam_beta2``, ``hidden_size``; flag spellings work
too); every run is checked by the trainer's own resolver before any starts. Launcher variables
(``OPT=muon``, ``MICRO_BATCH=8``) reach every run; one that sets a swept key is refused. Runs write
to ``<output-dir>/<name>/runs/<run>/``; a rerun skips finished runs and resumes interrupted ones.
Results come from each run's ``run_result.json`` into ``sweep.csv``; a ranked table is printed
and ``sweep.png`` plots the loss against each swept key. ``--scheduler`` writes one PBS/Slurm job
array (``<name>.<scheduler>.sh`` in the sweep directory) of the unfinished runs instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.experiments import launcher, results  # noqa: E402
from megatron.experiments.grid import expand, parse_axes  # noqa: E402
from megatron.experiments.sweep import REPO_ROOT, Sweep, make_sweep, run_local, run_state, validate, write_manifest  # noqa: E402
from tools import submit  # noqa: E402

PROG = "sweep.py"


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared with tools/isoflop.py."""
    p.add_argument("--name", help="the sweep's name (default: from the base and the keys)")
    p.add_argument("--output-dir", default="outputs/sweeps", help="sweeps live in OUTPUT_DIR/NAME")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (local), or the Slurm array's %%K")
    p.add_argument("--dry-run", action="store_true", help="check and list the runs; start nothing")
    p.add_argument("--report", action="store_true", help="no training: sweep.csv, table and plots only")
    submit.add_job_args(p, scheduler_required=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base --config YAML every run starts from")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key (repeatable)")
    p.add_argument("--random", type=int, help="random search: N distinct points of the grid")
    p.add_argument("--seed", type=int, default=0, help="--random's seed")
    add_common_args(p)
    return p.parse_args(argv)


def run_environment(parallel: int) -> dict[str, str]:
    """The runs' environment: ours, with PYTHON_EXEC defaulting to this interpreter and CPU
    threads split between the parallel runs."""
    env = dict(os.environ)
    env.setdefault("PYTHON_EXEC", sys.executable)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, parallel))))
    return env


def _prepare_demo_corpus(sweep: Sweep) -> None:
    files = [sweep.base, *(c for r in sweep.runs for c in r.configs)]
    if any("data-lists/shakespeare.txt" in open(f).read() for f in set(files)):
        from tools.prepare_default_corpus import main as prepare

        if prepare() != 0:
            raise ConfigError("the bundled Shakespeare corpus could not be prepared (tools/prepare_default_corpus.py)")


def write_array(sweep: Sweep, args: argparse.Namespace) -> int:
    """One job array of the unfinished runs (``--submit``: qsub/sbatch it)."""
    pending = [r for r in sweep.runs if run_state(sweep, r) != "done"]
    if not pending:
        print(f"all {len(sweep.runs)} runs finished; nothing to submit")
        return 0
    args.name = f"sweep-{sweep.name}"
    args.array_parallel = args.parallel if args.parallel > 1 else None
    text = submit.array_job_script(args, [sweep.trainer_args(r) for r in pending],
                                   launcher.launcher_environment(os.environ))
    path = os.path.join(sweep.root, f"{sweep.name}.{args.scheduler}.sh")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    print(f"wrote {path}: a job array of {len(pending)} runs ({len(sweep.runs) - len(pending)} finished)")
    if args.submit:
        submit.submit(args.scheduler, path)
    return 0


def execute(sweep: Sweep, args: argparse.Namespace, keys: list[str], extra_flags: list[str] = ()) -> int:
    """Check, then run (locally or as a job array) and report a sweep."""
    launcher.check_conflicts(os.environ, [f for r in sweep.runs for f in r.flags] + list(extra_flags))
    os.chdir(REPO_ROOT)  # the launcher runs from the repository root: relative data paths too
    if not args.report:
        _prepare_demo_corpus(sweep)
        validate(sweep, launcher.env_flags(os.environ))
        write_manifest(sweep)
    if args.dry_run:
        for run in sweep.runs:
            print(f"{run_state(sweep, run):8} {run.name}: {' '.join(sweep.trainer_args(run))}")
        return 0
    if args.scheduler and not args.report:
        return write_array(sweep, args)
    failed = {} if args.report else {
        k: v for k, v in run_local(sweep, args.parallel, run_environment(args.parallel)).items() if v}
    table, csv_path, png = results.report(sweep, keys)
    print(table)
    print(f"wrote {csv_path}" + (f" and {png}" if png else ""))
    for name, code in failed.items():
        print(f"{PROG}: run {name} exited {code}; see {os.path.join(sweep.root, 'runs', name, 'train.log')}",
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    try:
        axes = parse_axes(args.grid)
        keys = [a.knob.name for a in axes]
        name = args.name or "-".join([os.path.splitext(os.path.basename(args.base))[0], *keys])
        sweep = make_sweep(name, args.output_dir, args.base, expand(axes, args.random, args.seed),
                           meta={"grid": args.grid, "random": args.random, "seed": args.seed})
        return execute(sweep, args, keys)
    except (ConfigError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
