"""The SDPA kernel the attention runs on is reported; ``--use-flash-attn`` restricts it to flash
and is refused where flash cannot run (issue 22)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron.config import ConfigError, DistEnv
from megatron.model.attention_kernel import attention_context, sdpa_choice
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--attention-dropout", "--use-flash-attn", "--train-iters")

CPU = torch.device("cpu")


def test_cpu_fp32_without_dropout_picks_flash_and_dropout_rules_it_out():
    spec = tiny_plan("--train-iters", "1").model
    assert sdpa_choice(spec, 1, CPU, "fp32", flash_only=False)[0] == 1  # SDPBackend.FLASH_ATTENTION
    dropout = dataclasses.replace(spec, attention_dropout=0.1)
    assert sdpa_choice(dropout, 1, CPU, "fp32", flash_only=False)[0] == 0  # math
    choice, reasons = sdpa_choice(dropout, 1, CPU, "fp32", flash_only=True)
    assert choice == -1 and any("dropout" in r for r in reasons)
    with pytest.raises(ConfigError, match=r"--use-flash-attn: SDPA's flash kernel cannot run on cpu .*dropout"):
        attention_context(dropout, 1, CPU, "fp32", use_flash_attn=True)


def test_use_flash_attn_trains_identically_where_flash_is_already_chosen(capsys):
    plain = train(tiny_plan("--train-iters", "3"), DistEnv())
    assert "attention: SDPA flash kernel on cpu (fp32)" in capsys.readouterr().out
    flash = train(tiny_plan("--train-iters", "3", "--use-flash-attn"), DistEnv())
    assert "attention: SDPA flash kernel on cpu (fp32, restricted by --use-flash-attn)" in capsys.readouterr().out
    assert flash.losses == plain.losses


def test_use_flash_attn_with_attention_dropout_is_refused_at_start():
    with pytest.raises(ConfigError, match=r"--use-flash-attn: .*attention dropout 0.1"):
        train(tiny_plan("--train-iters", "1", "--use-flash-attn", "--attention-dropout", "0.1"), DistEnv())
