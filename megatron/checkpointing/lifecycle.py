"""Checkpoint lifecycle rules: what is committed, what a load may name, when a run is finished.

Small functions over paths (no engine, no trainer) so that one checkpoint owner can call them:

- a step directory is *committed* once its ``run_metadata.json`` exists (written after every rank
  finished its files); a committed checkpoint is never written again;
- an uncommitted step directory is the leftover of an interrupted save and may be replaced;
- ``--load`` must name an existing directory, except the first launch of a run whose
  ``--load`` is its own ``--save`` (the directory is created by the first save);
- a run whose checkpoint is at or past ``--train-iters`` is finished: a relaunch (a requeued
  job) reports it and leaves the checkpoint alone.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil

from megatron.checkpointing.metadata import CheckpointError
from megatron.config.checkpoint import CheckpointConfig
from megatron.config.checkpoint_files import METADATA_FILE

log = logging.getLogger(__name__)


def is_committed(step_dir: str) -> bool:
    """True when ``step_dir`` holds a complete checkpoint (its completion marker exists)."""
    return os.path.isfile(os.path.join(step_dir, METADATA_FILE))


def require_committed(step_dir: str, flag: str) -> None:
    """Refuse a step directory without its completion marker (an interrupted save).

    Raises:
        CheckpointError: Naming ``flag`` and the directory.
    """
    if not is_committed(step_dir):
        raise CheckpointError(
            f"{flag}: {step_dir} has no {METADATA_FILE}: the save was interrupted and the "
            "checkpoint is incomplete; use an earlier global_step directory"
        )


def prepare_step_dir(step_dir: str, latest: str | None) -> None:
    """Make ``step_dir`` ready for a new save (rank 0, before any rank writes).

    Args:
        step_dir: ``SAVE/global_stepN``.
        latest: The tag ``SAVE/latest`` names (None: none yet).

    Raises:
        CheckpointError: It is a committed checkpoint at or before ``latest`` (a checkpoint is
            never re-saved in place). A committed step *after* ``latest`` was never published: a
            save killed between its marker and the pointer; the resumed run redoes that step
            and replaces it.
    """
    refuse_committed(step_dir, latest)
    if os.path.isdir(step_dir):
        log.warning("removing %s: an interrupted save left it (never named by `latest`)", step_dir)
        shutil.rmtree(step_dir)


def refuse_committed(step_dir: str, latest: str | None) -> None:
    """The check half of ``prepare_step_dir`` (every rank; nothing is removed).

    Raises:
        CheckpointError: ``step_dir`` is committed at or before ``latest``.
    """
    if is_committed(step_dir) and not _after(step_dir, latest):
        raise CheckpointError(
            f"--save: {step_dir} is a committed checkpoint and is never overwritten; this run "
            "reached an iteration an earlier run already saved (a --finetune or restarted run "
            "needs its own --save directory)"
        )


def _after(step_dir: str, latest: str | None) -> bool:
    """``step_dir``'s iteration is past the one ``latest`` names (or there is no ``latest``)."""
    step = _STEP.fullmatch(os.path.basename(os.path.normpath(step_dir)))
    if latest is None:
        return True
    last = _STEP.fullmatch(latest)
    return step is not None and last is not None and int(step.group(1)) > int(last.group(1))


_STEP = re.compile(r"global_step(\d+)")


def save_failed(step_dir: str, error: OSError) -> CheckpointError:
    """Remove the partial ``step_dir`` and describe the failure (disk full names the disk)."""
    shutil.rmtree(step_dir, ignore_errors=True)
    where = os.path.dirname(step_dir) or "."
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(where).free / 2**30
        except OSError:
            free = float("nan")
        return CheckpointError(
            f"--save: the disk holding {where} is full ({os.strerror(error.errno)}; "
            f"{free:.2f} GiB free); {step_dir} was removed and the previous checkpoint is intact; "
            "free space or give another --save"
        )
    return CheckpointError(
        f"--save: writing {step_dir} failed ({error}); the partial directory was removed and the "
        "previous checkpoint is intact"
    )


def same_directory(a: str | None, b: str | None) -> bool:
    """Both name the same directory (neither None)."""
    return a is not None and b is not None and os.path.abspath(a) == os.path.abspath(b)


def check_load_dir(ckpt: CheckpointConfig) -> None:
    """``--load`` names a directory that exists (a typo must not start from random weights).

    The one exception is a first launch with ``--load`` equal to ``--save`` (no ``--finetune``):
    the save directory does not exist yet and the run starts fresh.

    Raises:
        CheckpointError: The directory does not exist.
    """
    if ckpt.load is None or os.path.isdir(ckpt.load):
        return
    if same_directory(ckpt.load, ckpt.save) and not ckpt.finetune:
        return
    if os.path.exists(ckpt.load):
        raise CheckpointError(f"--load: {ckpt.load} is a file, not a checkpoint directory")
    raise CheckpointError(
        f"--load: {ckpt.load} does not exist (a typo?); give the directory holding the checkpoint "
        "(its `latest` file), or leave --load out to start from scratch"
    )


def finished_message(where: str, iteration: int, train_iters: int) -> str | None:
    """The log line of a relaunched run that has nothing left to do, or None.

    Args:
        where: The loaded checkpoint.
        iteration: Its iteration.
        train_iters: ``--train-iters`` of this launch.
    """
    if iteration < train_iters:
        return None
    if iteration == train_iters:
        return (f"run already finished: {where} is the final checkpoint (iteration {iteration} of "
                f"{train_iters}); nothing to do, the checkpoint is left as it is")
    return (f"run already past --train-iters {train_iters}: {where} is at iteration {iteration}; "
            "nothing to do, the checkpoint is left as it is (raise --train-iters to train on)")


EXIT_STOPPED = 75
"""Exit status of a run that stopped early with work left (sysexits' EX_TEMPFAIL): SIGTERM, the
kill switch, the exit duration or interval. Job scripts requeue on it; 0 means done."""


def consume_kill_switch(path: str | None) -> bool:
    """A kill switch present when a run starts: honour it by not starting, and remove it.

    A run that finds the kill switch while running stops (``EXIT_STOPPED``) and leaves the file,
    so the next run of a job chain (a requeued job) finds it here and the chain ends; the run
    after that starts normally.

    Returns:
        True when the run must not start.
    """
    if not path or not os.path.exists(path):
        return False
    os.remove(path)
    log.info("kill switch %s present at start: not starting, and removed it (run again to "
             "continue from the last checkpoint)", path)
    return True
