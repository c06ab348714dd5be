"""EWC/LwF add terms to the objective's loss, never replace it: under ``--objective mdm`` the
regularized loss is MDM's 1/t-weighted ELBO (not the AR masked mean) plus exactly the penalty.

The loss is the engine's (``TrainEngine._train_loss``: the objective's reduction plus the
callbacks' extra terms); the engine's forward is a stand-in returning fixed token losses."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron.continual.regularizers import Regularizers
from megatron.objectives.registry import OBJECTIVES
from tests.helpers import engine_train_loss


class _Penalty:
    def __init__(self, value: float):
        self.value = torch.tensor(value)

    def penalty(self, module):  # noqa: ARG002
        return self.value


class _Regularized(Regularizers):
    """The regularizers callback plus ``loss(batch, meter)``: the engine's training loss."""

    def loss(self, batch, meter):  # noqa: ANN001, ANN201
        return engine_train_loss(self.engine.objective, self.losses, batch, [self], ctx=self.ctx, meter=meter)


def _regularizers(objective: str, losses: torch.Tensor) -> Regularizers:
    cfg = SimpleNamespace(ewc_log_loss=False, ewc=True, lwf=False)
    plan = SimpleNamespace(config=SimpleNamespace(regularize=cfg))
    engine = SimpleNamespace(objective=OBJECTIVES[objective])
    run = SimpleNamespace(plan=plan, ctx=SimpleNamespace(tp_size=1), engine=engine)
    reg = _Regularized(run)
    reg.losses = losses
    return reg


def _batch(weights: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(tokens=None, labels=None, loss_mask=weights, dataset_ids=None)


def test_mdm_loss_is_the_diffusion_elbo_and_ewc_adds_its_penalty():
    from megatron.objectives.masking import diffusion_loss

    g = torch.Generator().manual_seed(0)
    losses = torch.rand(2, 8, generator=g) * 5
    # MDM weights: 1/t on masked positions, 0 elsewhere (t = 0.25 and 0.5 for the two rows).
    weights = torch.zeros(2, 8)
    weights[0, :3], weights[1, 4:] = 4.0, 2.0
    reg = _regularizers("mdm", losses)
    total, reported = reg.loss(_batch(weights), None)
    expected = diffusion_loss(losses, weights)
    assert torch.equal(total, expected)  # bit for bit: the objective's own reduction
    assert torch.equal(reported, expected)
    reg.ewc = _Penalty(0.125)
    total, reported = reg.loss(_batch(weights), None)
    assert torch.equal(total, expected + 0.125)
    assert torch.equal(reported, expected)  # --ewc-log-loss off: the penalty is not reported


def test_ar_loss_is_the_masked_mean():
    from megatron.model.gpt import masked_mean

    losses = torch.arange(6.0).reshape(1, 6)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0, 0.0]])
    total, _ = _regularizers("ar", losses).loss(_batch(mask), None)
    assert torch.equal(total, masked_mean(losses, mask))
