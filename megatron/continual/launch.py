"""Starting a stage: its command line, a dry run, the run itself, a universal conversion.

Every stage is an ordinary ``pretrain_gpt.py`` run, by default started through the launcher
(``bash train_alcf.sh``: PBS / Slurm / local topology, the environment's flags), in its own
process group so that a SIGTERM to the runner reaches every rank, and with a parent-death signal
so that it saves and stops if the runner dies. It writes its output to ``<stage>/stage.log``,
which the runner follows and copies to the console.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from megatron.config.env import child_environment
from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_argv(flags: dict[str, Any]) -> list[str]:
    """``{field: value}`` -> ``--kebab value`` (True: bare flag; False/None: left out)."""
    argv: list[str] = []
    for name, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


@dataclass(frozen=True, kw_only=True, slots=True)
class Launch:
    """How stage processes start.

    Attributes:
        launcher: train_alcf (bash train_alcf.sh) or python (one pretrain_gpt.py process).
        python: The interpreter (launcher python, conversions, PYTHON_EXEC for the launcher).
    """

    launcher: str = "train_alcf"
    python: str = sys.executable

    def command(self, flags: dict[str, Any], nproc: int | None) -> tuple[list[str], dict[str, str]]:
        """The argv and the extra environment of a stage run."""
        flags = dict(flags)
        if self.launcher == "python":
            return [self.python, "-W", "ignore", os.path.join(ROOT, "pretrain_gpt.py"), *to_argv(flags)], {}
        # CPT_PLAN emptied: the launcher would otherwise start this plan again instead of the stage.
        env = {"PYTHON_EXEC": self.python, "DATA_FILE_LIST": str(flags.pop("data_file_list")), "CPT_PLAN": ""}
        if nproc is not None:
            env["NPROC"] = str(nproc)
        return ["bash", os.path.join(ROOT, "train_alcf.sh"), *to_argv(flags)], env

    def dry_run(self, flags: dict[str, Any], nproc: int | None, where: str) -> dict[str, Any]:
        """Resolve a stage without starting it: the trainer's plan, schedule and DeepSpeed config.

        Raises:
            ConfigError: The trainer refused the stage's flags (its message, naming the stage).
        """
        with tempfile.TemporaryDirectory(prefix="dry_run_") as tmp:
            path = os.path.join(tmp, "plan.json")
            argv, env = self.command({**flags, "dry_run_file": path}, nproc)
            if self.launcher != "python":
                env["DRY_RUN"] = "1"
            out = subprocess.run(argv, capture_output=True, text=True, env=child_environment(env),
                                 cwd=os.getcwd())
            if out.returncode != 0:
                message = (out.stderr.strip() or out.stdout.strip()).splitlines()
                raise ConfigError(f"{where}: the trainer refused the stage: {' | '.join(message[-3:])}")
            if not os.path.isfile(path):  # fail closed: the stage's plan is read from the file only
                raise ConfigError(f"{where}: the trainer's dry run wrote no plan file ({path})")
            with open(path) as f:
                return json.load(f)


@dataclass
class StageProcess:
    """One finished stage process.

    Attributes:
        returncode: The exit status once finished.
        wall_s: Seconds from start to exit.
        started_at: Unix time of the start (the trainer's events carry Unix times too).
    """

    returncode: int | None = None
    wall_s: float = 0.0
    started_at: float = 0.0

    def timing(self, events: list[dict[str, Any]]) -> dict[str, float | None]:
        """Seconds of training (from the launch's ``run_start`` event to its last ``train``
        event: steps, interval evaluations and saves) and outside it (start-up; final
        evaluation, save and exit), for the runner's overhead report; from the trainer's event
        stream, never its console text."""
        steps = [e for e in events if e.get("event") == "train"]
        if not steps or events[0].get("event") != "run_start":
            return {"process": round(self.wall_s, 3), "training": None, "outside_training": None}
        startup = events[0]["time"] - self.started_at
        training = steps[-1]["time"] - events[0]["time"]
        return {"process": round(self.wall_s, 3), "training": round(training, 3),
                "startup": round(startup, 3), "after_last_step": round(self.wall_s - startup - training, 3),
                "outside_training": round(self.wall_s - training, 3)}


class Runner:
    """Runs stage processes one at a time and forwards SIGTERM / SIGINT to the running one."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.stop_requested = False
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> Runner:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        # The stage saves at its next step and exits; the runner then stops before the next
        # stage. A second signal does not wait for the save.
        again, self.stop_requested = self.stop_requested, True
        if self.proc is not None and self.proc.poll() is None:
            log.info("signal %d: %s", signum, "killing the running stage" if again
                     else "asking the running stage to save and stop (again to kill it)")
            os.killpg(self.proc.pid, signal.SIGKILL if again else signal.SIGTERM)

    def run(self, argv: Sequence[str], env: dict[str, str], log_path: str) -> StageProcess:
        """Run a stage to its end, copying its output to the console and ``log_path``.

        The stage writes straight into ``log_path`` (its output survives the runner) and the
        runner follows the file; the stage gets SIGTERM (save and stop) if the runner dies.
        """
        result = StageProcess(started_at=time.time())
        started = time.monotonic()
        with open(log_path, "ab") as log_file:
            log_file.write(f"# {' '.join(argv)}\n".encode())
            log_file.flush()
            offset = log_file.tell()
            self.proc = subprocess.Popen(list(argv), stdout=log_file, stderr=subprocess.STDOUT,
                                         env=child_environment(env), start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))
        if self.stop_requested:  # a signal that arrived while starting
            os.killpg(self.proc.pid, signal.SIGTERM)
        for line in _follow(log_path, offset, self.proc):
            sys.stdout.write(line)
            sys.stdout.flush()
        result.returncode = self.proc.wait()
        self.proc = None
        result.wall_s = time.monotonic() - started
        return result


def _follow(path: str, offset: int, proc: subprocess.Popen) -> Iterator[str]:
    """The lines written to ``path`` after ``offset`` until ``proc`` exits (and its last ones)."""
    pending = b""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode(errors="replace") + "\n" for line in lines)
                continue
            if proc.poll() is not None:
                tail = f.read()
                if not tail:
                    break
                pending += tail
                continue
            time.sleep(0.05)
    if pending:
        yield pending.decode(errors="replace") + "\n"


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the stage gets SIGTERM (save and stop) when the runner dies, even by
    ``kill -9`` (Linux ``prctl(PR_SET_PDEATHSIG)``; it survives the launcher's ``exec``)."""

    def arm() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return  # not Linux: the stage outlives a killed runner
        if os.getppid() != parent:  # the runner died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def convert_to_universal(launch: Launch, load_dir: str, tag: str) -> None:
    """Convert ``load_dir/tag`` to a universal checkpoint (``latest_universal`` points at it).

    Raises:
        ConfigError: The conversion failed (its last output lines).
    """
    pointer = os.path.join(load_dir, "latest_universal")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            if f.read().strip() == f"{tag}_universal":
                return
    log.info("converting %s/%s to a universal checkpoint (the next stage runs at another layout)", load_dir, tag)
    argv = [launch.python, "-W", "ignore", os.path.join(ROOT, "tools", "convert_checkpoint.py"),
            "--input", os.path.join(load_dir, tag)]
    out = subprocess.run(argv, capture_output=True, text=True, env=child_environment())
    if out.returncode != 0:
        tail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-3:]
        raise ConfigError(f"universal conversion of {load_dir}/{tag} failed: {' | '.join(tail)}")
