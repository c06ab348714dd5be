"""``--async-save``: DeepSpeed writes the checkpoint from a background thread.

The stall is a copy: DeepSpeed's ``save_checkpoint`` runs as usual, but the checkpoint engine
it writes through (``AsyncCheckpointEngine``) copies each state dict it is handed into host
buffers (``snapshot``; the buffers are kept and reused by the next save, so after the first save
the copy is a plain ``memcpy`` with no page faults) and returns. A background thread then writes
the copies with DeepSpeed's own engine (same ``torch.save`` format, same file names), each under
a temporary name, ``fsync``\\ s it and renames it into place. The files are byte-for-byte those a
synchronous save writes, so loading, resuming and universal conversion see no difference.

The commit follows the synchronous protocol, just later:

1. each rank's thread, once its files are renamed and ``fsync``\\ ed, writes
   ``<step>/.async-done-<rank>`` (or ``.async-failed-<rank>`` when a write failed);
2. rank 0's thread waits until every rank's marker exists, removes the markers and only then
   calls the commit (``run_metadata.json``, then ``latest``), exactly the synchronous code;
3. the next save first waits for this one (``wait``: every rank joins its thread, one
   all-reduce agrees on failure), and so does the end of a run (``finish``). A run leaving by
   an exception abandons the save instead: the thread stops after the file it is writing and
   never commits.

A process killed (``kill -9``) during the write leaves a step directory without
``run_metadata.json``; ``latest`` still names the previous checkpoint, and the next save of that
step removes the leftover. Markers live on the checkpoint's file system, which every rank
already shares (rank 0 commits what all ranks wrote).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from megatron.checkpointing.lifecycle import save_failed
from megatron.checkpointing.metadata import CheckpointError
from megatron.config.fields import ConfigError

log = logging.getLogger(__name__)

DONE_MARKER = ".async-done-{rank}"
FAILED_MARKER = ".async-failed-{rank}"
_POLL_S = 0.02


class SnapshotPool:
    """Host buffers of the previous save, reused by the next one (same file, same order).

    A checkpoint's structure does not change between saves, so the i-th storage of file F has
    the same size every time; reusing its buffer turns the stall into a copy without allocation.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, int], torch.UntypedStorage] = {}

    def storage(self, key: tuple[str, int], like: torch.UntypedStorage) -> torch.UntypedStorage:
        """A host storage of ``like``'s size for slot ``key`` (reused when the size matches)."""
        buf = self._buffers.get(key)
        if buf is None or buf.nbytes() != like.nbytes():
            pin = like.device.type == "cuda"
            buf = torch.UntypedStorage(like.nbytes(), device="cpu")
            if pin:
                buf = buf.pin_memory()
            self._buffers[key] = buf
        return buf


def snapshot(obj: Any, pool: SnapshotPool, name: str) -> Any:
    """A copy of ``obj`` whose tensors live in host buffers, storage sharing preserved.

    Dicts, lists and tuples are rebuilt (dict subclasses keep their type and attributes, e.g. a
    module state dict's ``_metadata``); tensors are copied storage by storage, so views of one
    storage stay views of one copy (``torch.save`` then writes the same records); anything else
    is deep-copied (small: scalars, RNG states, loss scalers).

    Args:
        obj: A state dict as DeepSpeed hands it to its checkpoint engine.
        pool: Reusable host buffers.
        name: The file's name (the pool's key together with the storage's ordinal).
    """
    storages: dict[tuple[int, int, str], torch.UntypedStorage] = {}

    def copy_tensor(t: torch.Tensor) -> torch.Tensor:
        src = t.untyped_storage()
        key = (src.data_ptr(), src.nbytes(), str(src.device))
        dst = storages.get(key)
        if dst is None:
            dst = pool.storage((name, len(storages)), src)
            dst.copy_(src)
            storages[key] = dst
        out = torch.empty(0, dtype=t.dtype).set_(dst, t.storage_offset(), t.size(), t.stride())
        return out.requires_grad_(True) if t.requires_grad else out

    def walk(x: Any) -> Any:
        if type(x) is torch.Tensor:
            return copy_tensor(x)
        if type(x) is torch.nn.Parameter:
            return torch.nn.Parameter(copy_tensor(x.detach()), requires_grad=x.requires_grad)
        if isinstance(x, dict):
            out = copy.copy(x)  # keeps the type, a default factory and attributes (_metadata)
            for k, v in x.items():
                out[k] = walk(v)
            return out
        if type(x) is list:
            return [walk(v) for v in x]
        if type(x) is tuple:
            return tuple(walk(v) for v in x)
        return copy.deepcopy(x)

    return walk(obj)


class _Writer(threading.Thread):
    """One rank's background write of one checkpoint (and, on rank 0, its commit)."""

    def __init__(self, engine: Any, files: list[tuple[Any, str]], step_dir: str,
                 commit: Callable[[], None] | None, world_size: int, rank: int):
        super().__init__(name=f"async-save-{os.path.basename(step_dir)}", daemon=True)
        self.engine, self.files, self.step_dir, self.commit = engine, files, step_dir, commit
        self.world_size, self.rank = world_size, rank
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.committed = False

    def run(self) -> None:
        try:
            self._write_files()
            _touch(os.path.join(self.step_dir, DONE_MARKER.format(rank=self.rank)))
            if self.commit is not None and self._all_done():
                for r in range(self.world_size):
                    os.remove(os.path.join(self.step_dir, DONE_MARKER.format(rank=r)))
                self.commit()
                self.committed = True
                log.info("saved checkpoint %s (written in the background)", self.step_dir)
        except BaseException as e:  # noqa: BLE001  (reported by wait(); the thread must not die silently)
            self.error = e
            try:
                _touch(os.path.join(self.step_dir, FAILED_MARKER.format(rank=self.rank)))
            except OSError:
                pass

    def _write_files(self) -> None:
        dirs = set()
        while self.files:
            if self.abort.is_set():
                raise _Abandoned()
            state, path = self.files.pop(0)
            tmp = f"{path}.tmp-async"
            self.engine.save(state, tmp)
            del state  # the buffers stay in the pool; this structure is no longer needed
            _fsync(tmp)
            os.replace(tmp, path)
            dirs.add(os.path.dirname(path))
        for d in dirs:
            _fsync_dir(d)

    def _all_done(self) -> bool:
        """Rank 0: wait for every rank's marker; False when one failed or the save was abandoned."""
        while not self.abort.is_set():
            names = set(os.listdir(self.step_dir))
            failed = [n for n in names if n.startswith(FAILED_MARKER.format(rank=""))]
            if failed:
                raise CheckpointError(f"--async-save: {failed[0]} in {self.step_dir}: that rank's "
                                      "write failed (see its message)")
            if all(DONE_MARKER.format(rank=r) in names for r in range(self.world_size)):
                return True
            time.sleep(_POLL_S)
        return False


class _Abandoned(Exception):
    """The run ended by an exception while the save was in flight."""


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync(path)
    except OSError:  # some file systems cannot fsync a directory; the files themselves are synced
        pass


class AsyncCheckpointEngine:
    """DeepSpeed checkpoint engine for ``--async-save``: ``save`` snapshots, a thread writes.

    Wraps the engine DeepSpeed built (whose ``load`` is already the safe loader), so loads and
    the file format are unchanged. DeepSpeed calls ``create``, ``makedirs``, ``save`` (once per
    file) and ``commit``; ``commit`` does nothing here: ours happens after every rank's write.
    """

    name = "AsyncCheckpointEngine"

    def __init__(self, inner: Any):
        self.inner = inner
        self.pool = SnapshotPool()
        self.files: list[tuple[Any, str]] = []
        self.writer: _Writer | None = None

    # ---- DeepSpeed's CheckpointEngine interface ----------------------------------------------
    def create(self, info: Any) -> None:
        """DeepSpeed announces a checkpoint (delegated)."""
        self.inner.create(info)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Create a directory (delegated; synchronous, so the thread finds it)."""
        self.inner.makedirs(path, exist_ok=exist_ok)

    def save(self, state_dict: Any, path: str) -> None:
        """Copy ``state_dict`` into host buffers; ``start`` writes it to ``path`` later."""
        self.files.append((snapshot(state_dict, self.pool, os.path.basename(path)), path))

    def load(self, path: str, map_location: Any = None) -> Any:
        """Load with the wrapped engine (the safe loader)."""
        return self.inner.load(path, map_location=map_location)

    def commit(self, info: Any) -> bool:
        """Nothing to do: ``start`` commits once every rank's files are written."""
        return True

    def is_decoupled(self) -> bool:
        """False: DeepSpeed's own decoupled commit path stays unused."""
        return False

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        """Which ranks write (delegated: the same files as a synchronous save)."""
        return self.inner.is_data_parallel_writer(dp_rank)

    def preserves_storage_sharing(self) -> bool:
        """Delegated (DeepSpeed clones views before saving when True)."""
        return self.inner.preserves_storage_sharing()

    def get_commit_info(self) -> None:
        """None: no DeepSpeed-side commit is pending."""
        return None

    def cleanup(self) -> None:
        """Nothing: the end of a run calls ``finish_async_save``."""
        pass

    # ---- ours --------------------------------------------------------------------------------
    def start(self, step_dir: str, commit: Callable[[], None]) -> None:
        """Write the snapshots taken since the last start in the background; rank 0 then commits."""
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.writer = _Writer(self.inner, self.files, step_dir, commit if rank == 0 else None, world, rank)
        self.files = []
        self.writer.start()

    def discard(self) -> None:
        """Drop snapshots of a save that failed before ``start``."""
        self.files = []

    def wait(self, device: torch.device) -> None:
        """Every rank: the save in flight is written and committed (collective; none: no-op).

        Raises:
            CheckpointError: A rank's write failed (the partial directory is removed).
        """
        writer, self.writer = self.writer, None
        if writer is None:
            return
        writer.join()
        failed = writer.error is not None
        if dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(failed)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            failed = bool(flag.item())
        if not failed:
            return
        if isinstance(writer.error, OSError):
            raise save_failed(writer.step_dir, writer.error) from None
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_failed(writer.step_dir, OSError("another rank's write failed"))
        if isinstance(writer.error, CheckpointError):
            raise writer.error
        raise CheckpointError(f"--async-save: writing {writer.step_dir} failed on another rank "
                              f"(see its message); {writer.error or ''} the previous checkpoint is intact")

    def abandon(self) -> None:
        """This rank only, no collective: stop after the file being written; never commit."""
        writer, self.writer = self.writer, None
        self.files = []
        if writer is None:
            return
        writer.abort.set()
        writer.join()
        if not writer.committed:
            log.warning("--async-save: abandoned the save of %s (the run is ending on an error); "
                        "`latest` still names the previous checkpoint", writer.step_dir)


def use_async_save(engine: Any) -> AsyncCheckpointEngine:
    """Make ``engine`` (DeepSpeed's) save through an ``AsyncCheckpointEngine``.

    Raises:
        ConfigError: DeepSpeed writes through another engine of its own (a ``checkpoint.writer``
            or DataStates section in the ``--deepspeed-config`` JSON): two background writers
            would each commit on their own terms.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine  # only with a DeepSpeed engine

    inner = engine.checkpoint_engine
    if type(inner) is not TorchCheckpointEngine:
        raise ConfigError(
            f"--async-save: DeepSpeed already writes through its own {type(inner).__name__} (the "
            "--deepspeed-config JSON's checkpoint writer or DataStates section); use one or the other"
        )
    wrapper = AsyncCheckpointEngine(inner)
    engine.checkpoint_engine = wrapper
    return wrapper


def async_engine(engine: Any) -> AsyncCheckpointEngine | None:
    """The engine's ``AsyncCheckpointEngine``, or None when it saves synchronously."""
    found = getattr(engine, "checkpoint_engine", None)
    return found if isinstance(found, AsyncCheckpointEngine) else None


def finish_async_save(engine: Any, *, abandon: bool) -> None:
    """End of a run: wait for the save in flight (collective), or abandon it on an error."""
    found = async_engine(engine)
    if found is None:
        return
    if abandon:
        found.abandon()
    else:
        found.wait(getattr(engine, "device", torch.device("cpu")))
