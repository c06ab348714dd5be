"""The metadata cooldown as a two-stage plan of the continual stage runner.

MeCo (Gao et al. 2025, arXiv 2501.01956; princeton-pli/MeCo run_configs stage1/stage2) trains
the first ``1 - f`` of the steps on documents with metadata prefixes and the last ``f`` (10%) on
plain documents, resuming optimizer and LR scheduler and deleting only the data-loader state,
so the model needs no metadata at inference. Here that is an ordinary plan of
``tools/continual_run.py`` (``megatron/continual/plan.py``; ``docs/continual.md``):

- stage ``metadata`` reads the metadata lists for ``round((1 - f) * N)`` iterations, stage
  ``cooldown`` the plain lists for the rest (no replay: the metadata lists are not in its blend);
- ``carry_optimizer: true`` with a continuing meta-schedule (``cosine-continued`` by default,
  MeCo's single cosine; ``wsd`` anneals exactly over the cooldown): one warmup at the start, one
  decay over all N iterations, and the runner starts stage 2 from stage 1's final checkpoint with
  ``--reset-data-state`` (optimizer, step and schedule kept; data position restarted on the
  plain list). Nothing rewarms: stage 2's first LR is the single schedule's LR at step
  ``round((1 - f) * N)``, which the runner checks against the trainer's log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from megatron.config.fields import ConfigError

STAGE_KEYS = ("metadata", "cooldown")


@dataclass(frozen=True, slots=True)
class CooldownRequest:
    """What ``tools/metadata_cooldown_plan.py`` asks for.

    Attributes:
        name: Plan name (the run root is ``output_dir/name``).
        output_dir: Where the runner writes stages.
        metadata_data_file_list: Lists of the metadata-prefixed datasets (stage 1).
        plain_data_file_list: Lists of the same documents without prefixes (stage 2).
        cooldown_fraction: ``--metadata-cooldown-fraction`` (MeCo: 0.1).
        train_iters: Iterations of both stages together (one LR schedule).
        lr: Peak LR.
        min_lr: Final LR.
        warmup_iters: Warmup iterations (inside stage 1).
        schedule: A continuing meta-schedule of the runner (cosine-continued, wsd, inf-cosine,
            inf-rsqrt).
        constant_lr: inf-cosine / inf-rsqrt: eta_const.
        init_checkpoint: Weights to start from (None: random init).
        eval_data: Evaluation list of both stages (optional).
        config: A ``pretrain_gpt.py --config`` preset for both stages (model, batch, ...).
        args: More trainer flags for both stages (config field -> value).
        launcher: How stages start: train_alcf (``bash train_alcf.sh``) or python.
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
    schedule: str = "cosine-continued"
    constant_lr: float | None = None
    init_checkpoint: str | None = None
    eval_data: str | None = None
    config: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    launcher: str = "train_alcf"

    def __post_init__(self) -> None:
        from megatron.continual.meta_schedules import META_SCHEDULES

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
        if self.schedule not in META_SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r}: unknown meta-schedule; known: "
                              f"{', '.join(META_SCHEDULES.names())}")
        if not META_SCHEDULES[self.schedule].continues:
            raise ConfigError(
                f"--schedule: {self.schedule} restarts its LR schedule (and rewarms) every stage; "
                "the cooldown continues one schedule: use cosine-continued, wsd, inf-cosine or "
                "inf-rsqrt"
            )

    @property
    def stage1_iters(self) -> int:
        """Iterations on metadata lists: ``round((1 - f) * N)``."""
        return round((1.0 - self.cooldown_fraction) * self.train_iters)


def _method(req: CooldownRequest) -> dict[str, Any]:
    method: dict[str, Any] = {
        "lr": req.lr,
        "min_lr": req.min_lr,
        "warmup_iters": req.warmup_iters,
        "warmup_usage": "first",
        "schedule": req.schedule,
        "carry_optimizer": True,
        "replay": "none",
    }
    if req.schedule == "wsd":  # the decay is the plain-text stage
        method["cooldown_fraction"] = (req.train_iters - req.stage1_iters) / req.train_iters
    if req.constant_lr is not None:
        method["constant_lr"] = req.constant_lr
    return method


def cooldown_plan(req: CooldownRequest) -> dict[str, Any]:
    """The runner plan (a YAML-ready dict) of a metadata run with a plain-text cooldown."""
    stage1 = req.stage1_iters
    stages: list[dict[str, Any]] = [
        {"key": STAGE_KEYS[0], "data": req.metadata_data_file_list, "train_iters": stage1},
        {"key": STAGE_KEYS[1], "data": req.plain_data_file_list, "train_iters": req.train_iters - stage1},
    ]
    if req.eval_data:
        for stage in stages:
            stage["eval_data"] = req.eval_data
    plan: dict[str, Any] = {"name": req.name, "output_dir": req.output_dir, "launcher": req.launcher}
    if req.init_checkpoint:
        plan["init_checkpoint"] = req.init_checkpoint
    if req.config:
        plan["config"] = req.config
    if req.args:
        plan["args"] = dict(req.args)
    plan["method"] = _method(req)
    plan["stages"] = stages
    return plan


def plan_header(req: CooldownRequest) -> str:
    """Comment lines on top of the written plan: what it is and how to run it."""
    return (
        f"# Metadata cooldown (--metadata-cooldown-fraction {req.cooldown_fraction}): "
        f"{req.stage1_iters} iterations on {req.metadata_data_file_list}, then "
        f"{req.train_iters - req.stage1_iters} on {req.plain_data_file_list}\n"
        f"# with optimizer and one {req.schedule} LR schedule carried (--reset-data-state). Run:\n"
        "#   python tools/continual_run.py --plan THIS_FILE   (or CPT_PLAN=THIS_FILE bash train_alcf.sh)\n"
    )
