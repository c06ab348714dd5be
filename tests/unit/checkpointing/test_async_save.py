"""``--async-save``: the background write equals a synchronous save, resumes bit for bit,
converts to a universal checkpoint, and commits only complete checkpoints."""

from __future__ import annotations

import collections
import os
import threading
import time

import numpy as np
import pytest
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

from megatron.checkpointing import checkpoint
from megatron.checkpointing.async_save import AsyncCheckpointEngine
from megatron.checkpointing.convert import convert
from megatron.config import ConfigError, DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

ZERO1 = ["--zero-stage", "1", "--lr-decay-style", "constant"]


def run(*flags: str):
    return train(tiny_plan(*ZERO1, *flags), DistEnv())


def _state() -> dict:
    base = torch.arange(12, dtype=torch.float32)
    module = collections.OrderedDict(w=base[:6].view(2, 3), b=base[6:], tied=base[:6].view(2, 3))
    module._metadata = {"": {"version": 1}}
    return {"module": module, "flat": base, "step": 3, "rng": np.random.RandomState(0).get_state(),
            "half": torch.ones(4, dtype=torch.bfloat16), "nested": [(1, torch.zeros(2))]}


def test_engine_writes_what_a_synchronous_save_writes_from_a_copy(tmp_path):
    sync, background = str(tmp_path / "sync.pt"), str(tmp_path / "async.pt")
    state = _state()
    TorchCheckpointEngine().save(state, sync)
    engine = AsyncCheckpointEngine(TorchCheckpointEngine())
    engine.save(state, background)
    state["flat"].add_(100.0)  # training goes on before the thread writes: the file must not see it
    state["half"].zero_()
    engine.start(str(tmp_path), commit=lambda: None)
    engine.wait(torch.device("cpu"))
    # Not the bytes: torch.save gives every file a fresh serialization id, even two synchronous saves.
    loaded, expected = torch.load(background, weights_only=False), torch.load(sync, weights_only=False)
    _assert_same(loaded, expected)
    assert type(loaded["module"]) is collections.OrderedDict and loaded["module"]._metadata == {"": {"version": 1}}
    flat = loaded["flat"].untyped_storage().data_ptr()  # views of one storage stay views of one copy
    assert loaded["module"]["w"].untyped_storage().data_ptr() == flat
    assert loaded["module"]["b"].untyped_storage().data_ptr() == flat
    assert sorted(os.listdir(tmp_path)) == ["async.pt", "sync.pt"]  # no temporary file, no marker left

    buffers = dict(engine.pool._buffers)
    engine.save(state, background)  # the next save reuses the same host buffers
    assert all(engine.pool._buffers[k] is v for k, v in buffers.items())
    engine.start(str(tmp_path), commit=lambda: None)
    engine.wait(torch.device("cpu"))
    assert torch.equal(torch.load(background, weights_only=False)["flat"], state["flat"])


def _assert_same(a: object, b: object) -> None:
    """Equal structure and values; tensors equal in dtype, shape, stride and offset too."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.storage_offset()) == (b.dtype, b.shape, b.stride(), b.storage_offset())
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    else:
        assert a == b


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def _step_tensors(save: str, step: int) -> dict[str, dict[str, torch.Tensor]]:
    directory = os.path.join(save, f"global_step{step}")
    return {f: _tensors(torch.load(os.path.join(directory, f), weights_only=False))
            for f in sorted(os.listdir(directory)) if f.endswith(".pt")}


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for f in a:
        assert a[f].keys() == b[f].keys(), f
        for k in a[f]:
            assert a[f][k].dtype == b[f][k].dtype and torch.equal(a[f][k], b[f][k]), (f, k)


def test_async_checkpoints_equal_sync_ones_resume_bit_exact_and_convert(tmp_path):
    sync, background = str(tmp_path / "sync"), str(tmp_path / "async")
    full = run("--train-iters", "4", "--save", sync, "--save-interval", "1")
    first = run("--train-iters", "4", "--save", background, "--save-interval", "1", "--exit-interval", "2",
                "--async-save")
    for step in (1, 2):  # every committed step holds the synchronous run's tensors
        assert sorted(os.listdir(os.path.join(background, f"global_step{step}"))) == sorted(
            os.listdir(os.path.join(sync, f"global_step{step}")))
        _assert_same_tensors(_step_tensors(sync, step), _step_tensors(background, step))
    assert open(os.path.join(background, "latest")).read() == "global_step2"
    second = run("--train-iters", "4", "--save", background, "--load", background, "--save-interval", "1",
                 "--async-save")
    assert first.losses + second.losses == full.losses  # bit for bit
    _assert_same_tensors(_step_tensors(sync, 4), _step_tensors(background, 4))

    ours, theirs = convert(background).output, convert(sync).output  # universal: the same tensors
    for root, _, files in os.walk(theirs):
        for f in files:
            if f.endswith(".pt"):
                rel = os.path.relpath(os.path.join(root, f), theirs)
                a = torch.load(os.path.join(theirs, rel), weights_only=False)
                b = torch.load(os.path.join(ours, rel), weights_only=False)
                assert _tensors(a).keys() == _tensors(b).keys(), rel
                assert all(torch.equal(x, _tensors(b)[k]) for k, x in _tensors(a).items()), rel


def test_latest_moves_only_after_the_background_write(tmp_path, monkeypatch):
    save = str(tmp_path / "ckpt")
    seen = []
    real = checkpoint._commit

    def commit(save_dir: str, path: str, iteration: int, metadata: str) -> None:
        names = os.listdir(path)  # the moment rank 0 commits: every file renamed into place
        seen.append((os.path.basename(path), sorted(n for n in names if ".tmp" in n or n.startswith(".async"))))
        previous = os.path.join(save_dir, "latest")  # still the previous step until now
        assert (open(previous).read() if os.path.exists(previous) else None) == (
            f"global_step{iteration - 1}" if iteration > 1 else None)
        real(save_dir, path, iteration, metadata)

    monkeypatch.setattr(checkpoint, "_commit", commit)
    run("--train-iters", "3", "--save", save, "--save-interval", "1", "--async-save")
    assert seen == [(f"global_step{i}", []) for i in (1, 2, 3)]
    assert open(os.path.join(save, "latest")).read() == "global_step3"


def test_an_error_abandons_the_save_in_flight(tmp_path, monkeypatch):
    save = str(tmp_path / "ckpt")
    from megatron.trainer.loop import Trainer

    real_save = TorchCheckpointEngine.save

    def slow_save(self, state, path):  # noqa: ANN001, ANN202  (the write outlasts the crash)
        time.sleep(0.5)
        real_save(self, state, path)

    def crash(self, state, split):  # noqa: ANN001, ANN202
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(TorchCheckpointEngine, "save", slow_save)
    monkeypatch.setattr(Trainer, "evaluate", crash)  # at step 2, while step 1's save is written
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        run("--train-iters", "4", "--save", save, "--save-interval", "1", "--eval-interval", "2",
            "--async-save")
    assert os.path.isdir(os.path.join(save, "global_step1"))  # the save had started
    assert not os.path.exists(os.path.join(save, "latest"))  # abandoned, never committed
    assert not os.path.exists(os.path.join(save, "global_step1", "run_metadata.json"))
    assert not [t for t in threading.enumerate() if t.name.startswith("async-save")]


def test_async_save_needs_save():
    with pytest.raises(ConfigError, match="--async-save: needs --save"):
        tiny_plan("--async-save")


def test_async_save_refuses_deepspeeds_own_background_writer():
    from types import SimpleNamespace

    from deepspeed.runtime.checkpoint_engine import FastCheckpointEngine

    from megatron.checkpointing.async_save import use_async_save

    engine = SimpleNamespace(checkpoint_engine=FastCheckpointEngine.__new__(FastCheckpointEngine))
    with pytest.raises(ConfigError, match="--async-save: DeepSpeed already writes through its own "
                                          "FastCheckpointEngine .*--deepspeed-config"):
        use_async_save(engine)


def test_a_failed_background_write_stops_the_run_and_removes_the_step(tmp_path, monkeypatch):
    import errno

    from megatron.checkpointing.checkpoint import CheckpointError

    def full(self, state, path):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(TorchCheckpointEngine, "save", full)
    save = str(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"--save: the disk holding .* is full .*global_step1 was removed"):
        run("--train-iters", "3", "--save", save, "--save-interval", "1", "--async-save")
    assert not os.path.exists(os.path.join(save, "global_step1"))
    assert not os.path.exists(os.path.join(save, "latest"))
