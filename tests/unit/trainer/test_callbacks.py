"""The Callback protocol: hooks run in list order, extra loss terms are added to the objective's
loss exactly, a callback can stop a run, and a zero EWC term leaves an mdm run bit for bit equal
to the plain run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron.config import DistEnv
from megatron.continual.ewc import EWCAnchor, owned_shards
from megatron.continual.regularizers import Regularizers
from megatron.distributed import destroy_distributed, init_distributed
from megatron.objectives.registry import OBJECTIVES
from megatron.trainer.callbacks import Callback, Callbacks, LossTerm, StepEnd
from megatron.trainer.loop import Trainer
from megatron.trainer.state import TrainResult, TrainState
from tests.helpers import engine_train_loss, tiny_plan


class _Recorder(Callback):
    def __init__(self, name: str, log: list, stop_at: int | None = None, state: dict | None = None):
        self.name, self.log, self.stop_at, self.state, self.loaded = name, log, stop_at, state or {}, None
        self.iteration = 0

    def on_step_end(self, run, step):  # noqa: ANN001, ANN201
        self.iteration = step.iteration
        self.log.append((self.name, "step", step.iteration))

    @property
    def stop_reason(self):  # noqa: ANN201
        return f"{self.name} says stop" if self.stop_at is not None and self.iteration >= self.stop_at else None

    def on_save(self, step_dir):  # noqa: ANN001, ANN201
        self.log.append((self.name, "save", step_dir))

    def state_dict(self):  # noqa: ANN201
        return self.state

    def load_state_dict(self, state):  # noqa: ANN001, ANN201
        self.loaded = state

    def on_run_end(self, run, state, result):  # noqa: ANN001, ANN201
        self.log.append((self.name, "end", result.train_loss))
        return TrainResult(iteration=result.iteration, train_loss=result.train_loss + 1, valid_loss=None,
                           test_loss=None, losses=(), stop_reason=None)


class _Constant(Callback):
    def __init__(self, value: float, reported: bool, name: str = "constant"):
        self.value, self.reported, self.name = value, reported, name

    def extra_loss_terms(self, out):  # noqa: ANN001, ANN201
        return [LossTerm("constant", torch.tensor(self.value), reported=self.reported)]


def test_hooks_run_in_list_order_and_the_first_stop_reason_wins():
    log: list = []
    first, second = _Recorder("a", log, stop_at=2), _Recorder("b", log, stop_at=1, state={"n": 3})
    callbacks = Callbacks([first, None, second])
    assert len(callbacks) == 2 and callbacks.loss_terms == []  # None (a feature that is off) dropped
    step = StepEnd(iteration=1, lr=0.1, loss=2.0, batches=[], log_due=True)
    assert callbacks.on_step_end(None, step) == "b says stop"
    assert callbacks.on_step_end(None, StepEnd(2, 0.1, 2.0, [], True)) == "a says stop"
    callbacks.on_save("dir")
    result = callbacks.on_run_end(None, TrainState(), TrainResult(2, 5.0, None, None, (), None))
    assert result.train_loss == 7.0  # each on_run_end sees the previous one's result
    assert log == [("a", "step", 1), ("b", "step", 1), ("a", "step", 2), ("b", "step", 2),
                   ("a", "save", "dir"), ("b", "save", "dir"), ("a", "end", 5.0), ("b", "end", 6.0)]
    assert callbacks.state_dict() == {"b": {"n": 3}}  # callbacks without state keep nothing
    callbacks.load_state_dict({"b": {"n": 4}})
    assert first.loaded is None and second.loaded == {"n": 4}
    with pytest.raises(ValueError, match="unique"):
        Callbacks([_Recorder("a", log), _Recorder("a", log)])


def _engine_loss(objective: str, losses: torch.Tensor, mask: torch.Tensor, *callbacks: Callback):
    batch = SimpleNamespace(tokens=None, labels=None, loss_mask=mask, dataset_ids=None)
    return engine_train_loss(OBJECTIVES[objective], losses, batch, list(callbacks))


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_extra_terms_add_exactly_their_value_to_the_objectives_loss(objective):
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(2, 8, generator=g) * 4
    mask = torch.zeros(2, 8)
    mask[0, :5], mask[1, 2:] = 2.0, 4.0  # mdm: 1/t weights; ar: any nonzero mask
    plain, plain_reported = _engine_loss(objective, losses, mask)
    assert torch.equal(plain, plain_reported)
    total, reported = _engine_loss(objective, losses, mask, _Constant(0.75, False), _Constant(0.5, True, "half"))
    # The terms are added in callback order to the objective's own reduction: exactly.
    assert torch.equal(total, plain + 0.75 + 0.5)
    assert torch.equal(reported, plain + 0.5)  # only the term marked reported is logged
    with pytest.raises(ValueError, match="unique"):
        _engine_loss(objective, losses, mask, _Constant(1.0, False), _Constant(1.0, False))


def _mdm_run(*extra) -> tuple[list[float], list[torch.Tensor]]:  # noqa: ANN002
    """Three mdm steps with the callbacks ``extra(trainer)`` appended; losses and final weights."""
    plan = tiny_plan("--objective", "mdm", "--train-iters", "3", "--global-batch-size", "2")
    ctx = init_distributed(plan, DistEnv())
    try:
        trainer = Trainer(plan, ctx)
        trainer.callbacks = Callbacks([*trainer.callbacks, *(make(trainer) for make in extra)])
        trainer.engine.callbacks = trainer.callbacks
        result = trainer.run()
        return list(result.losses), [p.detach().clone() for p in trainer.engine.module.parameters()]
    finally:
        destroy_distributed()


def _zero_ewc(trainer: Trainer) -> Regularizers:
    """EWC anchored on the initial weights with lambda = 0 and a nonzero Fisher."""
    reg = Regularizers(trainer)
    module = trainer.engine.module
    fisher = {n: torch.ones_like(p, dtype=torch.float32) for n, p in module.named_parameters()}
    reg.ewc = EWCAnchor.capture(module, owned_shards(trainer.engine), fisher, 0.0, 1)
    reg.cfg = SimpleNamespace(ewc_log_loss=True)
    return reg


def test_mdm_with_a_zero_ewc_term_equals_plain_mdm_bit_for_bit_and_a_constant_adds_exactly():
    losses, weights = _mdm_run()
    ewc_losses, ewc_weights = _mdm_run(_zero_ewc)
    assert ewc_losses == losses
    assert all(torch.equal(a, b) for a, b in zip(weights, ewc_weights, strict=True))
    const_losses, const_weights = _mdm_run(lambda _: _Constant(0.75, True))
    # A constant has no gradient: the same weights; the logged loss is the plain one plus 0.75
    # (one micro-batch per step, so the step's loss is that micro-batch's).
    assert all(torch.equal(a, b) for a, b in zip(weights, const_weights, strict=True))
    assert const_losses == [float(torch.tensor(x) + 0.75) for x in losses]
    assert const_losses != losses
