"""Committed checkpoints are immutable; a typo'd --load is an error; the final save comes first."""

from __future__ import annotations

import errno
import os

import pytest

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.config import DistEnv
from megatron.trainer import checkpoints
from megatron.trainer.loop import Trainer, train
from tests.helpers import tiny_plan


def run(*flags: str):
    return train(tiny_plan(*flags), DistEnv())


def _snapshot(directory: str) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``directory``."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            st = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("relaunch_iters", ["3", pytest.param("2", marks=pytest.mark.slow)])
def test_relaunch_of_a_finished_run_touches_nothing(tmp_path, capsys, relaunch_iters):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "3", "--save", save, "--lr-decay-style", "constant")
    before = _snapshot(save)
    result = run("--train-iters", relaunch_iters, "--save", save, "--load", save,
                 "--lr-decay-style", "constant")
    assert result.iteration == 3 and result.stop_reason is None
    assert _snapshot(save) == before  # not one byte or timestamp changed
    assert "nothing to do, the checkpoint is left as it is" in capsys.readouterr().out


def test_a_committed_step_is_never_resaved(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    with pytest.raises(CheckpointError, match=r"global_step2 is a committed checkpoint"):
        run("--train-iters", "2", "--save", save, "--load", save, "--finetune")


def test_final_save_happens_before_the_final_evaluation(tmp_path, monkeypatch):
    save = str(tmp_path / "ckpt")

    def crash(self, state, split):  # noqa: ANN001, ANN202
        raise RuntimeError("final evaluation crashed")

    monkeypatch.setattr(Trainer, "evaluate", crash)
    with pytest.raises(RuntimeError, match="final evaluation crashed"):
        run("--train-iters", "2", "--save", save)
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step2"


@pytest.mark.parametrize("extra", [[], pytest.param(["--finetune"], marks=pytest.mark.slow),
                                   pytest.param(["--save", "SAVE"], marks=pytest.mark.slow)])
def test_load_of_a_missing_directory_is_an_error(tmp_path, extra):
    extra = [str(tmp_path / "other") if e == "SAVE" else e for e in extra]
    with pytest.raises(CheckpointError, match=r"--load: .*typo does not exist"):
        run("--train-iters", "1", "--load", str(tmp_path / "typo"), *extra)


@pytest.mark.slow
def test_empty_or_own_save_directory_starts_fresh(tmp_path):
    (tmp_path / "empty").mkdir()
    assert run("--train-iters", "1", "--load", str(tmp_path / "empty")).iteration == 1
    own = str(tmp_path / "own")  # first launch: --load is --save and does not exist yet
    assert run("--train-iters", "1", "--load", own, "--save", own).iteration == 1


def test_disk_full_names_the_disk_and_leaves_no_partial_step(tmp_path, monkeypatch):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "1", "--save", save, "--lr-decay-style", "constant")
    real_save = checkpoints.save_checkpoint.__globals__["_write_atomic"]

    def full(path, text):  # noqa: ANN001, ANN202
        if path.endswith("run_metadata.json") and "global_step2" in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real_save(path, text)

    monkeypatch.setitem(checkpoints.save_checkpoint.__globals__, "_write_atomic", full)
    with pytest.raises(CheckpointError, match=r"the disk holding .*ckpt is full .*GiB free"):
        run("--train-iters", "2", "--save", save, "--load", save, "--lr-decay-style", "constant")
    assert not os.path.exists(os.path.join(save, "global_step2"))
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step1"


def test_convert_and_export_refuse_an_uncommitted_step(tmp_path):
    from megatron.checkpointing.convert import convert
    from megatron.checkpointing.hf_export import export_hf

    save = str(tmp_path / "ckpt")
    run("--train-iters", "1", "--save", save)
    os.remove(os.path.join(save, "global_step1", "run_metadata.json"))  # as an interrupted save leaves it
    with pytest.raises(CheckpointError, match=r"--input: .*global_step1 has no run_metadata.json"):
        convert(os.path.join(save, "global_step1"))
    with pytest.raises(CheckpointError, match=r"--input: .*global_step1 has no run_metadata.json"):
        export_hf(save, str(tmp_path / "hf"))
    assert not os.path.exists(os.path.join(save, "latest_universal"))


def test_checkpoint_errors_reach_the_user_as_one_line(tmp_path, capsys):
    import pretrain_gpt
    from tests.helpers import tiny_args

    save = str(tmp_path / "ckpt")
    run("--train-iters", "1", "--save", save)
    with open(os.path.join(save, "global_step1", "mp_rank_00_model_states.pt"), "r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    assert pretrain_gpt.main(tiny_args("--train-iters", "2", "--load", save)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pretrain_gpt.py: error: --load: cannot load ") and "mp_rank_00_model_states.pt" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.slow
def test_a_step_committed_but_never_published_is_redone(tmp_path):
    """kill -9 between the completion marker and `latest`: the resumed run redoes that step."""
    save = str(tmp_path / "ckpt")
    flags = ("--save", save, "--load", save, "--save-interval", "1", "--lr-decay-style", "constant")
    run("--train-iters", "2", *flags)
    (tmp_path / "ckpt" / "latest").write_text("global_step1")
    assert run("--train-iters", "3", *flags).iteration == 3
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step3"


def test_relaunch_through_the_entry_point_touches_nothing(tmp_path):
    # pretrain_gpt.py also writes run_result.json after train(): a relaunch that trained nothing
    # must not rewrite it either.
    import pretrain_gpt
    from tests.helpers import tiny_args

    save = str(tmp_path / "ckpt")
    argv = tiny_args("--train-iters", "2", "--save", save, "--load", save, "--lr-decay-style", "constant")
    assert pretrain_gpt.main(argv) == 0
    assert os.path.isfile(os.path.join(save, "run_result.json"))
    before = {k: v for k, v in _snapshot(save).items() if not os.path.basename(k).startswith("run-")}
    assert pretrain_gpt.main(argv) == 0
    after = {k: v for k, v in _snapshot(save).items() if not os.path.basename(k).startswith("run-")}
    assert after == before
