#!/usr/bin/env python3
"""Write (and optionally submit) a PBS or Slurm job script that runs train_alcf.sh.

    python tools/submit.py --scheduler pbs --nodes 4 --walltime 06:00:00 --queue prod \\
        --account MyProject --filesystems flare:home --env DATA_FILE_LIST=list.txt --env LR=2e-4 \\
        --save /flare/me/ckpt/run1 [--submit] -- --finetune

The job resumes by itself: it loads from the directory it saves to (``SAVE`` = ``LOAD``), so a
requeued or resubmitted job continues from the latest checkpoint. It stops cleanly before the
walltime: training saves and exits ``--margin-minutes`` before the end (``EXIT_DURATION_MINS``),
and a SIGTERM from the scheduler also saves at the next step.

    python tools/submit.py --scheduler pbs --nodes 2 --walltime 06:00:00 --plan cpt.yaml [--submit]

submits a whole continual-pretraining plan (``CPT_PLAN``) as one job: the runner stops
``--margin-minutes`` before the walltime (mid-stage, saving) and the job resubmits itself until
every stage has finished (the runner's exit status 75 means "stopped, more to do"). A single run's
job resubmits itself on 75 too (the trainer stopped before the walltime with iterations left).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def walltime_minutes(walltime: str) -> int:
    """``HH:MM:SS`` (or ``MM``) -> whole minutes."""
    parts = [int(p) for p in walltime.split(":")]
    if len(parts) == 1:
        return parts[0]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return h * 60 + m + (s + 59) // 60


_SCRIPT_VALUE = re.compile(r"[A-Za-z0-9_.:/@+=,%-]*")
"""What a value written unquoted into a ``#PBS``/``#SBATCH`` line may contain."""


def check_script_values(args: argparse.Namespace) -> None:
    """Every value that enters the job script is one line of ordinary characters.

    Header values are written unquoted (the scheduler parses them), so a newline would start a
    new shell line and a space or quote would change the directive; exported values are quoted
    but must not carry control characters either.

    Raises:
        ValueError: Naming the flag and the offending value.
    """
    for flag in ("name", "walltime", "queue", "account", "filesystems"):
        value = getattr(args, flag)
        if value is not None and not _SCRIPT_VALUE.fullmatch(value):
            raise ValueError(f"--{flag} {value!r}: only letters, digits and _.:/@+=,%- are allowed "
                             "(it is written into the job script's scheduler directives)")
    for flag, values in (("save", [args.save]), ("plan", [args.plan]), ("output", [args.output]),
                         ("env", args.env), ("--", args.extra)):
        for value in values:
            if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"{'--' if flag != '--' else 'after '}{flag} {value!r}: control "
                                 "characters (a newline, tab, escape) are not allowed in a job script")


def scheduler_header(args: argparse.Namespace, array: int | None = None) -> tuple[list[str], str]:
    """The ``#PBS`` / ``#SBATCH`` lines (a job array of ``array`` tasks when given) and the
    ``cd`` line of the job."""
    if args.scheduler == "pbs":
        header = [f"#PBS -N {args.name}", f"#PBS -l select={args.nodes}", f"#PBS -l walltime={args.walltime}",
                  "#PBS -l place=scatter", "#PBS -j oe", "#PBS -r y"]
        header += [f"#PBS -J 0-{array - 1}"] if array and array > 1 else []  # PBS arrays need 2+
        header += [f"#PBS -q {args.queue}"] if args.queue else []
        header += [f"#PBS -A {args.account}"] if args.account else []
        header += [f"#PBS -l filesystems={args.filesystems}"] if args.filesystems else []
        return header, 'cd "${PBS_O_WORKDIR:-' + ROOT + '}"'
    header = [f"#SBATCH --job-name={args.name}", f"#SBATCH --nodes={args.nodes}",
              f"#SBATCH --time={args.walltime}", "#SBATCH --requeue", "#SBATCH --signal=TERM@120"]
    throttle = f"%{args.array_parallel}" if getattr(args, "array_parallel", None) else ""
    header += [f"#SBATCH --array=0-{array - 1}{throttle}"] if array else []
    header += [f"#SBATCH --partition={args.queue}"] if args.queue else []
    header += [f"#SBATCH --account={args.account}"] if args.account else []
    header += [f"#SBATCH --gpus-per-node={args.gpus_per_node}"] if args.gpus_per_node else []
    return header, f"cd {shlex.quote(ROOT)}"


def array_job_script(args: argparse.Namespace, runs: list[list[str]], env: dict[str, str]) -> str:
    """One job array whose task i runs ``bash train_alcf.sh runs[i]`` (each run saves to and
    resumes from its own directory, named in its arguments), stopping ``--margin-minutes``
    before the walltime. Every word is shell-quoted: nothing typed becomes shell code."""
    minutes = walltime_minutes(args.walltime)
    if minutes <= args.margin_minutes:
        raise ValueError(f"--walltime {args.walltime} leaves no time after --margin-minutes {args.margin_minutes}")
    if not runs:
        raise ValueError("no runs to submit")
    header, workdir = scheduler_header(args, array=len(runs))
    env = {**env, "EXIT_DURATION_MINS": str(minutes - args.margin_minutes)}
    cases = [f"    {i}) args=({' '.join(map(shlex.quote, run))}) ;;" for i, run in enumerate(runs)]
    body = ['task="${PBS_ARRAY_INDEX:-${SLURM_ARRAY_TASK_ID:-0}}"', 'case "${task}" in', *cases,
            '    *) echo "no run for array index ${task}" >&2; exit 2 ;;', "esac",
            'bash train_alcf.sh "${args[@]}"']
    exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(["#!/bin/bash", *header, "set -euo pipefail", workdir, *exports, *body, ""])


def add_job_args(p: argparse.ArgumentParser, scheduler_required: bool = True) -> None:
    """The scheduler options (shared with tools/sweep.py's job arrays)."""
    p.add_argument("--scheduler", choices=("pbs", "slurm"), required=scheduler_required)
    p.add_argument("--nodes", type=int, default=1 if not scheduler_required else None,
                   required=scheduler_required, help="nodes per run")
    p.add_argument("--walltime", default="01:00:00" if not scheduler_required else None,
                   required=scheduler_required, help="HH:MM:SS (per run)")
    p.add_argument("--queue", help="PBS queue / Slurm partition")
    p.add_argument("--account", help="project / account")
    p.add_argument("--filesystems", help="PBS filesystems, e.g. flare:home")
    p.add_argument("--gpus-per-node", type=int, help="Slurm GPUs per node")
    p.add_argument("--margin-minutes", type=int, default=10, help="save and exit this long before the walltime")
    p.add_argument("--submit", action="store_true", help="also qsub / sbatch it")


def submit(scheduler: str, path: str) -> None:
    """qsub / sbatch the script."""
    subprocess.run(["qsub" if scheduler == "pbs" else "sbatch", path], check=True)


def job_script(args: argparse.Namespace, extra: list[str]) -> str:
    """The job script's text."""
    check_script_values(argparse.Namespace(**{**vars(args), "extra": extra}))
    minutes = walltime_minutes(args.walltime)
    if minutes <= args.margin_minutes:
        raise ValueError(f"--walltime {args.walltime} leaves no time after --margin-minutes {args.margin_minutes}")
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.plan:
        env.update(CPT_PLAN=os.path.abspath(args.plan))
        extra = ["--time-limit-mins", str(minutes - args.margin_minutes), *extra]
    else:
        env.update(SAVE=args.save, LOAD=args.save, EXIT_DURATION_MINS=str(minutes - args.margin_minutes))
    header, workdir = scheduler_header(args)
    exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    run = " ".join(["bash", "train_alcf.sh", *map(shlex.quote, extra)])
    # 75: the run (or plan) stopped cleanly with work left (time limit, SIGTERM, the kill switch);
    # queue the next job, which continues it. A kill switch is still there for the next job: it
    # removes it and exits 0 without training, so the chain ends.
    again = "qsub" if args.scheduler == "pbs" else "sbatch"
    me = shlex.quote(os.path.abspath(args.output or f"{args.name}.{args.scheduler}.sh"))
    command = [f"status=0; {run} || status=$?",
               f'if [[ "$status" == 75 ]]; then {again} {me}; exit 0; fi', 'exit "$status"']
    return "\n".join(["#!/bin/bash", *header, "set -euo pipefail", workdir, *exports, *command, ""])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_job_args(p)
    p.add_argument("--save", help="checkpoint directory (also loaded from: auto-resume)")
    p.add_argument("--plan", help="a continual-pretraining plan (CPT_PLAN) instead of one run; resubmits until done")
    p.add_argument("--name", default="train_alcf")
    p.add_argument("--env", action="append", default=[], metavar="VAR=VALUE", help="train_alcf.sh variable")
    p.add_argument("--output", default=None, help="job script path (default: <name>.<scheduler>.sh)")
    args = p.parse_args(ours)
    if (args.save is None) == (args.plan is None):
        print("submit.py: error: --save: give --save (one run) or --plan (a continual plan)", file=sys.stderr)
        return 2
    bad = [kv for kv in args.env if "=" not in kv or not kv.split("=", 1)[0].isidentifier()]
    if bad:
        print(f"submit.py: error: --env {bad[0]!r}: expected VAR=VALUE", file=sys.stderr)
        return 2
    try:
        text = job_script(args, extra)
    except ValueError as e:
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 2
    path = args.output or f"{args.name}.{args.scheduler}.sh"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    print(f"wrote {path}")
    if args.submit:
        submit(args.scheduler, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
