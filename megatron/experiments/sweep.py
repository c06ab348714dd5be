"""A sweep on disk: its runs' directories, commands, states, checks and local execution.

::

    <output_dir>/<name>/sweep.json                 the sweep: base config, runs and their flags
    <output_dir>/<name>/runs/<run>/sweep_run.json  the run's definition (checked on every restart)
    <output_dir>/<name>/runs/<run>/checkpoints/    --save = --load: an interrupted run resumes
        .../checkpoints/run_result.json            its outcome (megatron/trainer/run_result.py)
    <output_dir>/<name>/runs/<run>/tensorboard/    --tensorboard-dir
    <output_dir>/<name>/runs/<run>/train.log       the launcher's output

Every run is an ordinary ``bash train_alcf.sh --config BASE [--config EXTRA] FLAGS --save D
--load D --tensorboard-dir T`` process; the launcher's environment variables reach all of them.
A run whose ``run_result.json`` says finished is skipped; one with a checkpoint resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from megatron.config import DistEnv, parse_args
from megatron.config.fields import ConfigError
from megatron.data.data_list import check_data_inputs
from megatron.experiments.grid import RunSpec
from megatron.plan.resolve import resolve
from megatron.trainer.run_result import read_result

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = "sweep.json"
RUN_FILE = "sweep_run.json"


@dataclass(frozen=True, slots=True)
class Sweep:
    """A named set of runs over one base config.

    Attributes:
        name: The sweep's name (its directory under ``output_dir``).
        root: ``<output_dir>/<name>``, absolute.
        base: The base ``--config`` file, absolute.
        runs: The runs, in order.
        meta: Extra facts for the manifest (the grid, an isoFLOP budget table, ...).
    """

    name: str
    root: str
    base: str
    runs: tuple[RunSpec, ...]
    meta: dict[str, Any]

    def run_dir(self, run: RunSpec) -> str:
        return os.path.join(self.root, "runs", run.name)

    def save_dir(self, run: RunSpec) -> str:
        return os.path.join(self.run_dir(run), "checkpoints")

    def trainer_args(self, run: RunSpec) -> list[str]:
        """The arguments after ``bash train_alcf.sh``."""
        configs = [a for c in (self.base, *run.configs) for a in ("--config", c)]
        save = self.save_dir(run)
        return [*configs, *run.flags, "--save", save, "--load", save,
                "--tensorboard-dir", os.path.join(self.run_dir(run), "tensorboard")]

    def command(self, run: RunSpec) -> list[str]:
        return ["bash", os.path.join(REPO_ROOT, "train_alcf.sh"), *self.trainer_args(run)]

    def definition(self, run: RunSpec) -> dict[str, Any]:
        """What makes a run this run: base, extra configs and flags (hashed into its file)."""
        return {"base": self.base, "configs": list(run.configs), "flags": list(run.flags),
                "overrides": run.overrides}


def make_sweep(name: str, output_dir: str, base: str, runs: list[RunSpec], meta: dict[str, Any] | None = None) -> Sweep:
    """A sweep; checks the base file exists and the run names are distinct.

    Raises:
        ConfigError: Missing base, a bad name or two runs with the same name.
    """
    if not os.path.isfile(base):
        raise ConfigError(f"--base: {base} does not exist (a --config YAML such as ALCF/presets/demo.yaml)")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name: {name!r} is not a directory name")
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--grid: runs {twice} would share a directory")
    return Sweep(name, os.path.abspath(os.path.join(output_dir, name)), os.path.abspath(base),
                 tuple(runs), dict(meta or {}))


def _hash(definition: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


def run_state(sweep: Sweep, run: RunSpec) -> str:
    """``done`` (finished result), ``partial`` (a checkpoint to resume) or ``new``."""
    result = read_result(sweep.save_dir(run))
    if result is not None and result.get("finished"):
        return "done"
    if os.path.isfile(os.path.join(sweep.save_dir(run), "latest")):
        return "partial"
    return "new"


def check_definitions(sweep: Sweep) -> None:
    """Refuse a run directory that holds another run (another base or other flags).

    Raises:
        ConfigError: Names the run and the file; the fix is another --name or removing it.
    """
    for run in sweep.runs:
        path = os.path.join(sweep.run_dir(run), RUN_FILE)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            old = json.load(f)
        if old.get("hash") != _hash(sweep.definition(run)):
            raise ConfigError(
                f"run {run.name}: {path} was made with another configuration "
                f"({old.get('definition')} != {sweep.definition(run)}); use another --name or remove it")


def validate(sweep: Sweep, launcher_flags: list[str] | None = None) -> None:
    """Resolve every run's flags as ``pretrain_gpt.py`` would, before any run starts.

    Args:
        sweep: The sweep.
        launcher_flags: The flags the launcher adds from its variables (``launcher.env_flags``).

    Raises:
        ConfigError: The first run that cannot start, named, with the trainer's message.
    """
    if not sweep.runs:
        raise ConfigError("--grid: the sweep has no runs")
    check_definitions(sweep)
    for run in sweep.runs:
        try:
            argv = [*(launcher_flags or []), *sweep.trainer_args(run)]
            plan = resolve(parse_args(argv).config, DistEnv())
            check_data_inputs(plan.config)
        except ConfigError as e:
            raise ConfigError(f"run {run.name}: {e}") from None


def write_manifest(sweep: Sweep) -> str:
    """``sweep.json`` and each run's ``sweep_run.json``."""
    os.makedirs(sweep.root, exist_ok=True)
    for run in sweep.runs:
        os.makedirs(sweep.run_dir(run), exist_ok=True)
        definition = sweep.definition(run)
        with open(os.path.join(sweep.run_dir(run), RUN_FILE), "w") as f:
            json.dump({"definition": definition, "hash": _hash(definition)}, f, indent=1, default=str)
    path = os.path.join(sweep.root, MANIFEST)
    with open(path, "w") as f:
        json.dump({"name": sweep.name, "base": sweep.base, "meta": sweep.meta,
                   "runs": [{"name": r.name, **sweep.definition(r)} for r in sweep.runs]},
                  f, indent=1, default=str)
    return path


def run_local(sweep: Sweep, parallel: int = 1, env: dict[str, str] | None = None) -> dict[str, int]:
    """Run the unfinished runs here, ``parallel`` at a time; finished ones are skipped.

    Args:
        sweep: The sweep (validated, manifest written).
        parallel: Runs at once.
        env: The runs' environment (None: this process's).

    Returns:
        Run name -> exit status of the runs started (0 = finished).
    """
    pending = [r for r in sweep.runs if run_state(sweep, r) != "done"]
    skipped = len(sweep.runs) - len(pending)
    if skipped:
        log.info("sweep %s: %d of %d runs already finished, skipped", sweep.name, skipped, len(sweep.runs))
    running: dict[str, tuple[subprocess.Popen, Any, float]] = {}
    status: dict[str, int] = {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            run = pending.pop(0)
            state = run_state(sweep, run)
            logf = open(os.path.join(sweep.run_dir(run), "train.log"), "a")  # noqa: SIM115
            log.info("sweep %s: %s run %s", sweep.name, "resuming" if state == "partial" else "starting", run.name)
            proc = subprocess.Popen(sweep.command(run), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO_ROOT)
            running[run.name] = (proc, logf, time.perf_counter())
        time.sleep(0.2)
        for name, (proc, logf, started) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            status[name] = proc.returncode
            del running[name]
            log.info("sweep %s: run %s exited %d after %.0f s", sweep.name, name, proc.returncode,
                     time.perf_counter() - started)
    return status
