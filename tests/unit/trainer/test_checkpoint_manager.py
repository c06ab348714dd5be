"""CheckpointManager: the save cadence (interval, pre-cooldown step, early stop, non-finite
streaks), the restore policy (resume from --save, a finished relaunch, --finetune starting a
stage), callbacks' state through a checkpoint, retention, and the --save lock."""

from __future__ import annotations

import os

import pytest

from megatron.checkpointing.checkpoint import PRE_COOLDOWN_FILE, CheckpointError
from megatron.config import DistEnv
from megatron.distributed import destroy_distributed, init_distributed
from megatron.trainer.callbacks import Callback, Callbacks
from megatron.trainer.checkpoints import CheckpointManager
from megatron.trainer.loop import Trainer
from tests.helpers import tiny_plan

COOLDOWN = ["--lr-decay-style", "constant", "--lr-constant-plus-cooldown", "--lr-constant-plus-cooldown-frac", "0.4"]


def test_cadence_interval_pre_cooldown_stop_and_nonfinite_streak(tmp_path):
    # 10 steps, cooldown over the last 4: the checkpoint after step 6 is the peak-LR one.
    plan = tiny_plan("--train-iters", "10", "--save-interval", "4", "--save", str(tmp_path), *COOLDOWN)
    manager = CheckpointManager(plan, None)
    due = [i for i in range(1, 11) if manager.due(i, stopping=False, nonfinite_streak=False)]
    assert due == [4, 6, 8]  # step 10 is the final save, the loop's end
    assert all(manager.due(i, stopping=True, nonfinite_streak=True) for i in (1, 5, 10))
    assert not any(manager.due(i, stopping=False, nonfinite_streak=True) for i in (4, 6, 8))
    no_interval = CheckpointManager(tiny_plan("--train-iters", "10", "--save", str(tmp_path)), None)
    assert [i for i in range(1, 11) if no_interval.due(i, stopping=False, nonfinite_streak=False)] == []


class _Counter(Callback):
    """Counts steps across launches through its checkpointed state; records what it restored."""

    name = "counter"

    def __init__(self) -> None:
        self.steps, self.loaded, self.restored = 0, None, None

    def on_step_end(self, run, step):  # noqa: ANN001, ANN201
        self.steps += 1

    def state_dict(self):  # noqa: ANN201
        return {"steps": self.steps}

    def load_state_dict(self, state):  # noqa: ANN001, ANN201
        self.loaded = dict(state)
        self.steps = state["steps"]

    def on_restore(self, run, restored):  # noqa: ANN001, ANN201
        self.restored = restored


def _launch(*flags: str) -> tuple[Trainer, _Counter, object]:
    plan = tiny_plan(*flags)
    ctx = init_distributed(plan, DistEnv())
    try:
        trainer = Trainer(plan, ctx)
        counter = _Counter()
        trainer.callbacks = Callbacks([*trainer.callbacks, counter])
        return trainer, counter, trainer.run()
    finally:
        destroy_distributed()


def _steps(save: str) -> list[str]:
    return sorted(e for e in os.listdir(save) if e.startswith("global_step"))


def test_restore_policy_callback_state_and_retention(tmp_path):
    save = str(tmp_path / "run")
    _, first, _ = _launch("--lr-decay-style", "constant", "--train-iters", "2", "--save", save, "--save-interval", "1")
    assert first.loaded is None and first.restored is None and _steps(save) == ["global_step1", "global_step2"]
    # Resume from its own --save: the callback gets its saved state; the loaded checkpoint is not
    # written again; retention keeps the newest one only.
    trainer, again, result = _launch("--lr-decay-style", "constant", "--train-iters", "3", "--load", save, "--save", save,
                                     "--keep-last-n-checkpoints", "1")
    assert again.loaded == {"steps": 2} and again.steps == 3 and result.iteration == 3
    assert again.restored.where == os.path.join(save, "global_step2") and not again.restored.stage_start
    assert again.restored.iteration == 2
    assert _steps(save) == ["global_step3"]
    assert trainer.checkpoints.saved_iteration == 3
    # A relaunch of the finished run does nothing (no step, no save).
    _, done, result = _launch("--lr-decay-style", "constant", "--train-iters", "3", "--load", save, "--save", save)
    assert done.loaded == {"steps": 3} and done.steps == 3  # restored, and no step taken
    assert result.iteration == 3 and _steps(save) == ["global_step3"]
    # --finetune starts a stage: weights only, no callback state, iteration 0.
    stage = str(tmp_path / "stage")
    _, tuned, result = _launch("--lr-decay-style", "constant", "--train-iters", "1", "--load", save, "--finetune", "--save", stage)
    assert tuned.loaded is None and tuned.restored.stage_start and tuned.restored.iteration == 0
    assert tuned.steps == 1 and _steps(stage) == ["global_step1"]


def test_pre_cooldown_checkpoint_survives_pruning(tmp_path):
    save = str(tmp_path / "run")
    _launch("--train-iters", "10", "--save", save, "--save-interval", "4", "--keep-last-n-checkpoints", "1",
            *COOLDOWN)
    with open(os.path.join(save, PRE_COOLDOWN_FILE)) as f:
        assert f.read() == "global_step6"
    assert _steps(save) == ["global_step10", "global_step6"]


def test_the_save_lock_is_the_managers(tmp_path):
    plan = tiny_plan("--train-iters", "1", "--save", str(tmp_path / "run"))
    ctx = init_distributed(plan, DistEnv())
    try:
        first, second = CheckpointManager(plan, ctx), CheckpointManager(plan, ctx)
        first.acquire()
        with pytest.raises(CheckpointError, match="in use by pid"):
            second.acquire()
        first.release()
        second.acquire()
        second.release()
        assert not os.path.exists(tmp_path / "run" / ".lock")
    finally:
        destroy_distributed()
