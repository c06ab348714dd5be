"""Checkpoint files are unpickled with weights_only=True and an allow-list: a .pt carrying a
pickle payload is refused, naming the file, and its payload never runs (--load, convert, export)."""

from __future__ import annotations

import os

import pytest
import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import convert
from megatron.checkpointing.safe_load import load_file
from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import tiny_plan


class Payload:
    """Unpickling this calls open(marker, "w"): proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    save = str(tmp_path_factory.mktemp("safe") / "ckpt")
    train(tiny_plan("--train-iters", "1", "--save", save, "--zero-stage", "1"), DistEnv())
    return save


def _poison(path: str, marker: str) -> None:
    state = torch.load(path, weights_only=False)  # the test's own file
    state["payload"] = Payload(marker)
    torch.save(state, path)


@pytest.mark.parametrize("name", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_pickle_payload_is_refused_and_never_runs(trained, tmp_path, name):
    import shutil

    save = str(tmp_path / "ckpt")
    shutil.copytree(trained, save)
    marker = str(tmp_path / "executed")
    path = os.path.join(save, "global_step1", name)
    _poison(path, marker)
    with pytest.raises(CheckpointError, match=rf"{name}: refused to load: Unsupported global: GLOBAL io\.open;"):
        train(tiny_plan("--train-iters", "2", "--load", save, "--zero-stage", "1"), DistEnv())
    if name.startswith("mp_rank"):
        with pytest.raises(CheckpointError, match=rf"{name}: refused to load"):
            convert(save)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_file(path)
    assert not os.path.exists(marker)


def test_our_checkpoints_load_under_the_allow_list(trained):
    for root, _, files in os.walk(trained):
        for name in files:
            if name.endswith(".pt"):
                assert isinstance(load_file(os.path.join(root, name)), dict)


def test_our_checkpoint_loads_in_a_fresh_process_whatever_was_imported_before(tmp_path, repo_root):
    # NumPy's RNG state is in every checkpoint; its globals are on our list, not borrowed from
    # megatron-core's process-wide registration (which depends on what was imported first).
    import subprocess
    import sys

    from megatron.config import DistEnv
    from megatron.trainer.loop import train
    from tests.helpers import tiny_plan

    save = str(tmp_path / "ckpt")
    train(tiny_plan("--train-iters", "1", "--save", save), DistEnv())
    code = ("import sys, torch\n"
            "assert not [g for g in torch.serialization.get_safe_globals() if 'numpy' in str(g)]\n"
            "from megatron.checkpointing.safe_load import load_file\n"
            f"state = load_file({save + '/global_step1/mp_rank_00_model_states.pt'!r})\n"
            "print(type(state['rng']['numpy'][1]).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "ndarray"
