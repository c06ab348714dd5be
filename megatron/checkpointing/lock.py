"""An advisory lock file per directory: one writer per ``--save`` directory and per plan root.

``<dir>/.lock`` holds JSON ``{"host", "pid", "started", "proc_start", "what"}``. Taking it:

- no lock file: create it (``O_EXCL``, so two racing processes cannot both succeed);
- a lock of a process that is gone (same host, pid dead or reused): a stale lock, taken over with
  a log line;
- a lock of a live process, or of another host (whose processes we cannot see): refused,
  naming the holder.

Advisory: it protects our own processes from each other (two trainers on one ``--save``, two
runners on one plan), not against anything that ignores it. Released on exit (``release``, or a
``with`` block); a killed process leaves a stale lock that the next run takes over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from megatron.checkpointing.metadata import CheckpointError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    now = _proc_start(pid)
    return proc_start is None or now is None or now == proc_start


class DirectoryLock:
    """The lock of one directory, held by this process.

    Args:
        directory: The directory to lock (created if missing).
        what: Who takes it, for messages (``--save``, ``plan root``).
    """

    def __init__(self, directory: str, what: str):
        self.directory = directory
        self.what = what
        self.path = os.path.join(directory, LOCK_FILE)
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "what": self.what,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "proc_start": _proc_start(os.getpid())}

    def acquire(self) -> DirectoryLock:
        """Take the lock (or take over a stale one).

        Raises:
            CheckpointError: Another live process holds it (named in the message).
        """
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(3):  # a stale lock removed by a racing process: try again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue
                self._refuse_or_take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self.held = True
            return self
        raise CheckpointError(f"{self.what}: could not take the lock {self.path}; another process "
                              "keeps replacing it")

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Half-written by a process killed while creating it: old enough means dead.
            if time.time() - os.path.getmtime(self.path) < 5:
                time.sleep(1)
                return {"host": socket.gethostname(), "pid": -1, "what": "?", "started": "?"}
            return {"host": socket.gethostname(), "pid": 0, "what": "?", "started": "?"}

    def _refuse_or_take_over(self, holder: dict[str, Any]) -> None:
        pid, host = int(holder.get("pid", 0)), holder.get("host")
        if pid == -1:  # just created by someone else: read it again
            return
        same_host = host == socket.gethostname()
        if same_host and (pid <= 0 or not _alive(pid, holder.get("proc_start"))):
            log.warning("%s: taking over the stale lock %s of pid %s on %s (started %s), which is "
                        "no longer running", self.what, self.path, pid, host, holder.get("started"))
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return
        where = "this host" if same_host else f"host {host}"
        raise CheckpointError(
            f"{self.what}: {self.directory} is in use by pid {pid} on {where} (started "
            f"{holder.get('started')}; lock {self.path}); two writers would corrupt each other's "
            "checkpoints. Stop that process, or remove the lock file if it is certainly gone"
        )

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if not self.held:
            return
        self.held = False
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid():
            os.remove(self.path)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
