"""Command-line overrides of a plan, in the spellings TiC-LM's ``continual_run.py`` users type
(spec continual.md section 7, "Flag names"); ``_`` and ``-`` are interchangeable.

Overrides edit the plan before it is resolved, so they are checked like the file and enter the
stages' hashes: a finished stage run with other values is refused, never silently reused.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from megatron.config.fields import ConfigError

# flag -> (plan location, help). Locations: "name" (top level), "method.lr", "method.replay.ratio".
OVERRIDES: dict[str, tuple[str, type, str]] = {
    "--exp-name": ("name", str, "run name (the plan's name)"),
    "--init-ckpt": ("init_checkpoint", str, "checkpoint directory stage 0 starts from"),
    "--output-dir": ("output_dir", str, "parent of the run root"),
    "--tokens-per-stage": ("tokens_per_stage", float, "token budget of every stage"),
    "--samples-per-timestep": ("tokens_per_stage", float, "TiC-LM spelling of --tokens-per-stage (tokens)"),
    "--train-iters-per-stage": ("train_iters_per_stage", int, "iterations of every stage"),
    "--lr": ("method.lr", float, "peak LR (the AR schedule's stage-0 peak)"),
    "--min-lr": ("method.min_lr", float, "LR floor"),
    "--lr-cooldown-end": ("method.min_lr", float, "TiC-LM spelling of --min-lr"),
    "--warmup": ("method.warmup_iters", int, "warmup iterations"),
    "--warmup-usage": ("method.warmup_usage", str, "all | first | none"),
    "--lr-scheduler": ("method.schedule", str, "meta-schedule (TiC-LM: cosine, const, rsqrt)"),
    "--ar-schedule-mode": ("method.ar_schedule_mode", str, "closed_form | anchor"),
    "--lr-rsqrt-cooldown": ("method.lr_rsqrt_cooldown", int, "rsqrt cooldown iterations"),
    "--optimizer": ("method.optimizer", str, "trainer optimizer"),
    "--replay-ratio": ("method.replay.ratio", str, "the new data's share, or 'equal'"),
    "--replay-pool": ("method.replay.pool", str, "uniform-stages | tokens"),
    "--ewc-weight": ("method.ewc.weight", float, "EWC lambda (0: off)"),
    "--ewc-num-iterations": ("method.ewc.num_iterations", int, "EWC Fisher batches"),
    "--lwf-weight": ("method.lwf.weight", float, "LwF weight (0: off)"),
    "--lwf-temperature": ("method.lwf.temperature", float, "LwF temperature"),
    "--num-timesteps": ("num_timesteps", int, "run only the first N stages"),
    "--starting-timestep": ("starting_timestep", str, "first stage key to run (string order)"),
    "--ending-timestep": ("ending_timestep", str, "last stage key to run (string order)"),
    "--time-range": ("time_range", str, "A:B = --starting-timestep A --ending-timestep B"),
    # TiC-LM's trainer knobs: trainer flags of every stage (the plan's args:).
    "--accum-freq": ("args.gradient_accumulation_steps", int,
                     "gradient accumulation steps of every stage (trainer --gradient-accumulation-steps)"),
    "--wd": ("args.weight_decay", float, "weight decay of every stage (trainer --weight-decay)"),
    "--grad-clip-norm": ("args.clip_grad", float, "gradient clipping of every stage (trainer --clip-grad)"),
    "--seed": ("args.seed", int, "seed of every stage (trainer --seed)"),
}
REFUSED: dict[str, tuple[str, str]] = {
    "--config": ("PATH", "TiC-LM's --config names open_lm's training YAML (e.g. 3b_2x.yaml); here the "
                 "run is one plan: use --plan PLAN.yaml (stages, method; trainer flags under args:, a "
                 "pretrain_gpt.py --config file under config:)"),
    "--scale": ("NAME", "the scale picks open_lm's config and steps per month; here they are the plan's "
                "config:/args: and train_iters_per_stage or tokens_per_stage: use --plan PLAN.yaml"),
    "--remote-sync": ("URL", "checkpoints, logs and markers are written under the plan's output_dir (a "
                      "shared filesystem); there is no built-in S3 sync: sync that directory with your "
                      "own tool, or mount the bucket as output_dir"),
}
"""TiC-LM flags with no counterpart here: flag -> (metavar, the reason and what to use instead)."""
SWITCHES = {
    "--use-ar-schedule": ("method.schedule", "ar-cosine", "the AR meta-schedule"),
    "--carry-optimizer": ("method.carry_optimizer", True, "continue optimizer and schedule across stages"),
    "--lwf-kl": ("method.lwf.kl", True, "LwF as KL(teacher || student)"),
    "--delete-previous-logs": ("delete_previous_checkpoints", True, "delete a stage's intermediate checkpoints once the next one finished"),
}
_TIC_SCHEDULES = {"const": "constant", "const-cooldown": "wsd"}


def add_override_args(parser: argparse.ArgumentParser) -> None:
    """Add every override flag (dashes and underscores both accepted)."""
    group = parser.add_argument_group("plan overrides (TiC-LM spellings)")

    def spellings(flag: str) -> list[str]:
        underscored = "--" + flag[2:].replace("-", "_")
        return [flag] if underscored == flag else [flag, underscored]

    for flag, (_, kind, text) in OVERRIDES.items():
        group.add_argument(*spellings(flag), type=kind, default=None, help=text)
    for flag, (_, _, text) in SWITCHES.items():
        group.add_argument(*spellings(flag), action="store_true", help=text)
    for flag, (metavar, text) in REFUSED.items():
        group.add_argument(*spellings(flag), metavar=metavar, default=None, help=f"refused: {text}")


def refuse_foreign(ns: argparse.Namespace) -> None:
    """Stop on a TiC-LM flag that has no counterpart here, naming what to use instead.

    Raises:
        ConfigError: One of ``REFUSED`` was given.
    """
    for flag, (_, text) in REFUSED.items():
        if getattr(ns, flag[2:].replace("-", "_"), None) is not None:
            raise ConfigError(f"{flag}: not supported: {text}")


def given_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The override flags the user gave: flag -> value."""
    out = {}
    for flag in (*OVERRIDES, *SWITCHES):
        value = getattr(ns, flag[2:].replace("-", "_"))
        if value not in (None, False):
            out[flag] = value
    return out


def _set(raw: dict[str, Any], location: str, value: Any) -> None:
    *parents, leaf = location.split(".")
    node = raw
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) in (None, "none") else node[part]
        node = node[part]
    node[leaf] = value


def _select_stages(raw: dict[str, Any], values: dict[str, Any]) -> None:
    if values.get("time_range"):
        if ":" not in values["time_range"]:
            raise ConfigError(f"--time-range: expected A:B, got {values['time_range']!r}")
        values["starting_timestep"], values["ending_timestep"] = values["time_range"].split(":", 1)
    stages = raw.get("stages") or []
    start, end = values.get("starting_timestep"), values.get("ending_timestep")
    stages = [s for s in stages if (start is None or str(s.get("key")) >= start)
              and (end is None or str(s.get("key")) <= end)]
    if values.get("num_timesteps") is not None:
        stages = stages[: values["num_timesteps"]]
    if not stages:
        raise ConfigError("--starting-timestep/--ending-timestep/--num-timesteps: no stage of the plan is left")
    raw["stages"] = stages


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of the plan ``raw`` with the command-line ``overrides`` (flag -> value) applied."""
    raw = copy.deepcopy(raw)
    selection: dict[str, Any] = {}
    for flag, value in overrides.items():
        location, *_ = OVERRIDES.get(flag) or SWITCHES[flag]
        if flag in SWITCHES:
            value = SWITCHES[flag][1]
        if location in ("num_timesteps", "starting_timestep", "ending_timestep", "time_range"):
            selection[location] = value
            continue
        if flag == "--lr-scheduler":
            value = _TIC_SCHEDULES.get(value, value)
        if flag == "--replay-ratio" and value != "equal":
            value = float(value)
        if location in ("tokens_per_stage", "train_iters_per_stage"):
            raw.pop("train_iters_per_stage" if location == "tokens_per_stage" else "tokens_per_stage", None)
        if location.startswith("method.replay.") and raw.get("method", {}).get("replay") in ("none", "equal", None):
            raw.setdefault("method", {})["replay"] = {}
        _set(raw, location, value)
    if selection:
        _select_stages(raw, selection)
    return raw
