"""What the evaluation matrix reads of a stage plan and of the stage runner's output.

Only these keys, so the matrix does not depend on the runner's code (its contract):

- plan YAML: ``name``, ``output_dir`` (default ``outputs/cpt``), ``stages: [{key, eval_data}]``
  (other keys are the runner's and are ignored here);
- run root ``<output_dir>/<name>/``; a finished stage has ``<root>/<key>/STAGE_DONE.json`` whose
  ``checkpoint`` field is the stage's save directory (its ``latest`` is the final checkpoint).

Relative ``eval_data`` paths are taken from the working directory, then from the plan's folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from megatron.config.fields import ConfigError
from megatron.config.yaml_file import read_yaml

DEFAULT_OUTPUT_DIR = "outputs/cpt"
STAGE_DONE = "STAGE_DONE.json"


@dataclass(frozen=True, slots=True)
class EvalStage:
    """One stage as the matrix sees it: its key and its held-out data file list."""

    key: str
    eval_data: str


@dataclass(frozen=True, slots=True)
class EvalPlan:
    """The plan's name, run root and stages (in order)."""

    path: str
    name: str
    root: str
    stages: tuple[EvalStage, ...]

    @property
    def keys(self) -> list[str]:
        """Stage keys in order."""
        return [s.key for s in self.stages]


def _resolve_path(path: str, plan_dir: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    beside = os.path.join(plan_dir, path)
    return beside if os.path.exists(beside) else path


def read_eval_plan(path: str, output_dir: str | None = None) -> EvalPlan:
    """Read the keys the matrix needs; check every stage's evaluation list exists.

    ``output_dir`` overrides the plan's ``output_dir`` (the parent of the run root), as
    ``tools/continual_run.py --output-dir`` does.

    Raises:
        ConfigError: Unreadable plan, missing ``name``/``stages``/``key``/``eval_data``, duplicate
            keys, or an evaluation list that does not exist (naming the stage).
    """
    _, doc = read_yaml(path, "--plan")
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ConfigError(f"--plan: {path} needs a 'name' (the run's name)")
    stages = doc.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"--plan: {path} needs a non-empty 'stages' list")
    plan_dir = os.path.dirname(os.path.abspath(path))
    out: list[EvalStage] = []
    for number, stage in enumerate(stages):
        if not isinstance(stage, dict) or "key" not in stage:
            raise ConfigError(f"--plan: {path}: stage #{number} has no 'key'")
        key = str(stage["key"])
        if key in [s.key for s in out]:
            raise ConfigError(f"--plan: {path}: stage key {key!r} appears twice")
        if not stage.get("eval_data"):
            raise ConfigError(f"--plan: {path}: stage {key!r} has no 'eval_data' (its held-out "
                              "data file list); the evaluation matrix needs one per stage")
        eval_data = _resolve_path(str(stage["eval_data"]), plan_dir)
        if not os.path.isfile(eval_data):
            raise ConfigError(f"--plan: {path}: stage {key!r}: eval_data {stage['eval_data']} does "
                              "not exist (relative paths: from the working directory or the plan's "
                              "folder)")
        out.append(EvalStage(key, eval_data))
    root = os.path.join(str(output_dir or doc.get("output_dir") or DEFAULT_OUTPUT_DIR), doc["name"])
    return EvalPlan(path=path, name=doc["name"], root=root, stages=tuple(out))


def finished_stages(plan: EvalPlan) -> list[tuple[str, str]]:
    """(key, final checkpoint's save directory) of every stage with a ``STAGE_DONE.json``, in
    plan order.

    Raises:
        ConfigError: A marker without a ``checkpoint`` field or naming a missing directory.
    """
    done = []
    for stage in plan.stages:
        marker = os.path.join(plan.root, stage.key, STAGE_DONE)
        if not os.path.isfile(marker):
            continue
        with open(marker) as f:
            checkpoint = json.load(f).get("checkpoint")
        if not checkpoint or not os.path.isdir(checkpoint):
            raise ConfigError(f"{marker}: 'checkpoint' is {checkpoint!r}, not an existing directory")
        done.append((stage.key, checkpoint))
    return done
