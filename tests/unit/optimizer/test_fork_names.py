"""The argonne fork's optimizer names (issue 29, item 5): each trains the tiny GPT 3 steps as the
update it names, or is refused naming itself and the reason."""

from __future__ import annotations

import math
import re

import pytest
import torch

from megatron.config import ConfigError, DistEnv, parse_args
from megatron.config.compat import REFUSED_VALUES, VALUE_ALIASES
from megatron.trainer.loop import train
from tests.helpers import tiny_args, tiny_plan

FORK_NAMES = ("sophiag", "adamwschedulefree", "sgdschedulefree", "ipex.lamb", "ipex.fusedlamb", "ds.fusedlamb",
              "dshampooadamw", "muonclip", "galoreadamw", "adam8bit")
TRAINS = {  # fork name -> (our optimizer, flags it needs)
    "sophiag": ("sophia", ["--sophia-hessian-interval", "2"]),
    "adamwschedulefree": ("schedulefree", ["--lr-decay-style", "constant"]),
    "sgdschedulefree": ("sgdschedulefree", ["--lr-decay-style", "constant", "--lr", "0.5"]),
    "dshampooadamw": ("dshampoo", ["--dshampoo-precondition-frequency", "2"]),
}


def test_every_fork_name_is_handled():
    assert sorted(FORK_NAMES) == sorted([*TRAINS, *(n for n in REFUSED_VALUES["--optimizer"] if n != "galore_adamw")])


@pytest.mark.parametrize("name", sorted(TRAINS))
def test_fork_name_trains_three_steps_as_our_update(name):
    ours, flags = TRAINS[name]
    torch.manual_seed(0)
    plan = tiny_plan("--optimizer", name, "--train-iters", "3", *flags)
    assert plan.config.optim.optimizer == ours
    assert VALUE_ALIASES["--optimizer"].get(name, name) == ours
    losses = train(plan, DistEnv()).losses
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    if name != ours:  # the alias is the same run, loss for loss
        torch.manual_seed(0)
        assert train(tiny_plan("--optimizer", ours, "--train-iters", "3", *flags), DistEnv()).losses == losses


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES["--optimizer"]))
def test_refused_fork_name_names_itself_and_the_reason(name):
    reason = REFUSED_VALUES["--optimizer"][name]
    with pytest.raises(ConfigError, match=rf"^--optimizer {re.escape(name)}: not supported: {re.escape(reason)}$"):
        parse_args(tiny_args("--optimizer", name))
    with pytest.raises(ConfigError, match=rf"^--optimizer {re.escape(name)}: not supported"):
        parse_args(tiny_args(f"--optimizer={name}"))
