"""The metadata cooldown as a two-stage plan of the continual stage runner.

MeCo (Gao et al. 2025, arXiv 2501.01956; princeton-pli/MeCo run_configs stage1/stage2) trains
the first ``1 - f`` of the steps on documents with metadata prefixes and the last ``f`` (10%) on
plain documents, resuming optimizer and LR scheduler and deleting only the data-loader state,
so the model needs no metadata at inference. Here that is a plan for ``tools/continual_run.py``
(``shared/specs/continual.md`` section 7, plus ``output_dir``):

- stage 1 reads the metadata lists for ``round((1 - f) * N)`` iterations, stage 2 the plain lists
  for the rest;
- ``carry_optimizer: true`` (stage 2 loads stage 1's final checkpoint with
  ``--reset-data-state``: optimizer and scheduler kept, data position restarted on its list);
- one LR schedule over both stages (``lr_schedule_iters: N``): both stages run with the same
  schedule flags (``stage_flags``), so the checkpoint's schedule fingerprint matches and stage 2
  continues the decay at iteration ``round((1 - f) * N)``; the warmup lies in stage 1 only
  (``warmup_usage: first``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron.config.fields import ConfigError


@dataclass(frozen=True, slots=True)
class CooldownRequest:
    """What ``tools/metadata_cooldown_plan.py`` asks for.

    Attributes:
        name: Plan name (the output root is ``output_dir/name``).
        output_dir: Where the runner writes stages.
        metadata_data_file_list: Lists of the metadata-prefixed datasets (stage 1).
        plain_data_file_list: Lists of the same documents without prefixes (stage 2).
        cooldown_fraction: ``--metadata-cooldown-fraction`` (MeCo: 0.1).
        train_iters: Iterations of both stages together (one LR schedule).
        lr: Peak LR.
        min_lr: Final LR.
        warmup_iters: Warmup iterations (inside stage 1).
        lr_decay_style: Our ``--lr-decay-style`` (MeCo: cosine).
        init_checkpoint: Weights to start from (None: random init).
        eval_data: Evaluation list of both stages (optional).
    """

    name: str
    output_dir: str
    metadata_data_file_list: str
    plain_data_file_list: str
    cooldown_fraction: float = 0.1
    train_iters: int = 100
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_iters: int = 5
    lr_decay_style: str = "cosine"
    init_checkpoint: str | None = None
    eval_data: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.cooldown_fraction < 1.0:
            raise ConfigError(
                f"--metadata-cooldown-fraction: must be in (0, 1), got {self.cooldown_fraction} "
                "(MeCo cools down on plain text for the last 0.1)"
            )
        if self.metadata_data_file_list == self.plain_data_file_list:
            raise ConfigError(
                "--plain-data-file-list: the cooldown must read other lists than stage 1 "
                f"({self.plain_data_file_list}); preprocess the documents without --metadata-keys"
            )
        stage1 = self.stage1_iters
        if stage1 < 1 or self.train_iters - stage1 < 1:
            raise ConfigError(
                f"--train-iters: {self.train_iters} iterations leave no room for two stages at "
                f"--metadata-cooldown-fraction {self.cooldown_fraction}"
            )
        if self.warmup_iters >= stage1:
            raise ConfigError(
                f"--lr-warmup-iters: {self.warmup_iters} does not fit in stage 1 ({stage1} "
                "iterations); the warmup belongs to the metadata stage only"
            )

    @property
    def stage1_iters(self) -> int:
        """Iterations on metadata lists: ``round((1 - f) * N)``."""
        return round((1.0 - self.cooldown_fraction) * self.train_iters)


def cooldown_plan(req: CooldownRequest) -> dict[str, Any]:
    """The runner plan (a YAML-ready dict) for a metadata run with a plain-text cooldown."""
    stage1 = req.stage1_iters
    stages = [
        {
            "key": "metadata",
            "data": req.metadata_data_file_list,
            "train_iters": stage1,
            "iterations": [0, stage1],
        },
        {
            "key": "cooldown",
            "data": req.plain_data_file_list,
            "train_iters": req.train_iters - stage1,
            "iterations": [stage1, req.train_iters],
            "reset_data_state": True,
        },
    ]
    if req.eval_data:
        for stage in stages:
            stage["eval_data"] = req.eval_data
    plan: dict[str, Any] = {
        "name": req.name,
        "output_dir": req.output_dir,
        "stages": stages,
        "method": {
            "lr": req.lr,
            "min_lr": req.min_lr,
            "warmup_iters": req.warmup_iters,
            "warmup_usage": "first",
            "schedule": req.lr_decay_style,
            "lr_schedule_iters": req.train_iters,
            "carry_optimizer": True,
            "replay": {"ratio": "none"},
        },
        "metadata_cooldown_fraction": req.cooldown_fraction,
    }
    if req.init_checkpoint:
        plan["init_checkpoint"] = req.init_checkpoint
    return plan


def stage_flags(plan: dict[str, Any], index: int) -> list[str]:
    """Data and LR-schedule flags of stage ``index`` for ``pretrain_gpt.py``.

    Both stages get the same schedule flags (one schedule over ``lr_schedule_iters``); stage 1
    stops at its last iteration with ``--exit-interval`` (and saves), stage 2 runs to the end.
    Loading, saving and ``--reset-data-state`` are the runner's.
    """
    method, stage = plan["method"], plan["stages"][index]
    flags = [
        "--data-file-list", stage["data"],
        "--train-iters", str(method["lr_schedule_iters"]),
        "--lr", str(method["lr"]),
        "--min-lr", str(method["min_lr"]),
        "--lr-decay-style", method["schedule"],
        "--lr-warmup-iters", str(method["warmup_iters"]),
    ]  # fmt: skip
    end = stage["iterations"][1]
    if end < method["lr_schedule_iters"]:
        flags += ["--exit-interval", str(end)]
    return flags
