"""The continual-pretraining plan: a YAML file of stages and the method they share.

::

    name: tic-demo                 # run root <output_dir>/<name>/ (output_dir: outputs/cpt)
    init_checkpoint: PATH          # a --save directory; absent: random init for stage 0
    config: ALCF/presets/demo.yaml # pretrain_gpt.py --config file for every stage (optional)
    args: {micro_batch_size: 4}    # more trainer flags for every stage (a stage may add its own)
    stages:
      - {key: "0", data: lists/a.txt, eval_data: lists/eval_a.txt}
      - {key: "1", data: lists/b.txt, eval_data: lists/eval_b.txt, method: {lr: 1.0e-4}}
    train_iters_per_stage: 100     # or tokens_per_stage
    method: {lr: 3.0e-4, min_lr: 3.0e-5, warmup_iters: 10, schedule: cosine,
             carry_optimizer: false, replay: {ratio: 0.5, pool: uniform-stages}}
    eval_after_each_stage: true    # the forgetting-matrix row after each stage (stage_eval.py)
    eval_max_sequences: 256        # cap per evaluation dataset (optional)

Unknown keys are an error naming ``file:line``; every check runs before any stage starts.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from megatron.config.fields import ConfigError
from megatron.config.yaml_file import read_yaml
from megatron.continual.replay import ReplayConfig, parse_replay


class PlanError(ConfigError):
    """A plan that cannot run; the message names the file, line or field and the fix."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Method:
    """How every stage trains (a stage's ``method:`` overrides single fields).

    Attributes:
        lr: Peak LR eta_0 (the AR schedule's stage-0 peak).
        min_lr: eta_min, the floor of every decay (TiC ``--lr-cooldown-end``).
        warmup_iters: Warmup length W in iterations.
        warmup_usage: all (every stage), first (stage 0 only), none; default: all for restarting
            schedules, first for continuing ones.
        schedule: The meta-schedule (megatron.continual.meta_schedules).
        ar_schedule_mode: closed_form (default) or anchor (the reference loop's bookkeeping).
        lr_rsqrt_cooldown: rsqrt: linear cooldown iterations at the end of each stage.
        constant_lr: Infinite schedules: eta_const.
        lr_cooldown_fraction: Infinite schedules: eta_max -> eta_const cooldown, share of the plan.
        cooldown_fraction: wsd: the final cooldown's share of the plan's iterations.
        optimizer: The trainer's --optimizer.
        carry_optimizer: False: fresh optimizer and schedule per stage (TiC-LM, --finetune);
            true: continue them and restart only the data stream (AuroraGPT / MeCo).
        replay: The replay policy.
        ewc: EWC settings passed to the trainer as --ewc-* flags when ``weight`` > 0.
        lwf: LwF settings passed to the trainer as --lwf-* flags when ``weight`` > 0.
    """

    lr: float = 3.0e-4
    min_lr: float = 3.0e-5
    warmup_iters: int = 0
    warmup_usage: str | None = None
    schedule: str = "cosine"
    ar_schedule_mode: str = "closed_form"
    lr_rsqrt_cooldown: int | None = None
    constant_lr: float | None = None
    lr_cooldown_fraction: float = 0.1
    cooldown_fraction: float = 0.2
    optimizer: str = "adamw"
    carry_optimizer: bool = False
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    ewc: dict[str, Any] = field(default_factory=dict)
    lwf: dict[str, Any] = field(default_factory=dict)


METHOD_KEYS = tuple(f.name for f in dataclasses.fields(Method))
# The spec's TiC-LM spellings, accepted in a plan's method block.
METHOD_ALIASES = {"lr_cooldown_end": "min_lr", "warmup": "warmup_iters", "lr_scheduler": "schedule"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Stage:
    """One stage of the plan.

    Attributes:
        key: Unique name (directory, marker and evaluation-matrix label).
        data: Its new data (a data file list).
        eval_data: Its held-out evaluation list (trainer --valid-data-file-list).
        train_iters: Iterations (from the stage, ``train_iters_per_stage`` or tokens).
        tokens: Token budget, when given in tokens.
        method: The plan's method with this stage's overrides.
        args: Extra trainer flags of this stage (on top of the plan's).
        nproc: Processes per node for a local launch (the launcher's NPROC), if set.
    """

    key: str
    data: str
    eval_data: str | None
    train_iters: int | None
    tokens: float | None
    method: Method
    args: dict[str, Any]
    nproc: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """A parsed, checked plan.

    Attributes:
        path: The plan file.
        name: Run name; the run root is ``<output_dir>/<name>``.
        output_dir: Parent of the run root.
        init_checkpoint: A --save directory to start stage 0 from, or None (random init).
        config: A pretrain_gpt.py --config file for every stage, or None.
        args: Trainer flags for every stage.
        stages: The stages, in order.
        base_data: The pretraining data D_0 (replay) when stage 0 continues a base run.
        launcher: train_alcf (bash train_alcf.sh, the default) or python (pretrain_gpt.py).
        eval_after_each_stage: After each stage, evaluate its final checkpoint on every stage's
            ``eval_data`` (tools/continual_eval.py: cells, matrix.json/png, TensorBoard row).
        eval_max_sequences: Cap on the sequences per evaluation dataset (None: all).
        delete_previous_checkpoints: After a stage finishes, delete the intermediate
            checkpoints of the stage before it (its final checkpoint is kept).
        prepare: A Python script run (with the runner's interpreter) before anything else, e.g.
            the demo's data preparation.
    """

    path: str
    name: str
    output_dir: str
    init_checkpoint: str | None
    config: str | None
    args: dict[str, Any]
    stages: tuple[Stage, ...]
    base_data: str | None
    launcher: str
    eval_after_each_stage: bool
    delete_previous_checkpoints: bool
    prepare: str | None
    eval_max_sequences: int | None = None

    @property
    def root(self) -> str:
        """``<output_dir>/<name>``: stage k saves to ``<root>/<key>``."""
        return os.path.join(self.output_dir, self.name)

    def stage_dir(self, key: str) -> str:
        """Where stage ``key`` saves its checkpoints, data list and marker."""
        return os.path.join(self.root, key)


PLAN_KEYS = ("name", "init_checkpoint", "config", "args", "stages", "tokens_per_stage",
             "train_iters_per_stage", "method", "output_dir", "base_data", "launcher",
             "eval_after_each_stage", "eval_max_sequences", "delete_previous_checkpoints",
             "delete_previous_logs", "prepare", "periods_from", "periods_manifest",
             "try_balanced_manifest", "periods_heldout_every", "periods_cache")
STAGE_KEYS = ("key", "data", "eval_data", "tokens", "train_iters", "method", "args", "nproc")
LAUNCHERS = ("train_alcf", "python")


def _check_keys(node: Any, allowed: tuple[str, ...], path: str, where: str) -> None:
    """Unknown keys of a YAML mapping node -> PlanError naming file:line."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, _ in node.value:
        if key_node.value not in allowed:
            raise PlanError(
                f"{path}:{key_node.start_mark.line + 1}: unknown key {key_node.value!r} in "
                f"{where}; known: {', '.join(allowed)}"
            )


def _child(node: Any, key: str) -> Any:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _check_yaml_keys(root: Any, path: str) -> None:
    import yaml

    _check_keys(root, PLAN_KEYS, path, "the plan")
    method_keys = METHOD_KEYS + tuple(METHOD_ALIASES)
    _check_keys(_child(root, "method"), method_keys, path, "method")
    stages = _child(root, "stages")
    if isinstance(stages, yaml.SequenceNode):
        for item in stages.value:
            _check_keys(item, STAGE_KEYS, path, "a stage")
            _check_keys(_child(item, "method"), method_keys, path, "a stage's method")


def _merge_values(raw: dict[str, Any], values: dict[str, Any], path: str) -> dict[str, Any]:
    """``raw`` with command-line plan ``values``; a key the file sets to another value is an error."""
    for key, value in values.items():
        if key in raw and raw[key] != value:
            raise PlanError(f"{path}: {key}: {raw[key]!r} in the plan, {value!r} on the command "
                            "line; give it once")
    return {**raw, **values}


def load_plan(path: str, overrides: dict[str, Any] | None = None,
              values: dict[str, Any] | None = None) -> Plan:
    """Read, check and resolve a plan file.

    Args:
        path: The YAML file.
        overrides: Command-line values (``overrides.py``: flag dest -> value), applied before
            the plan is resolved.
        values: Plan keys given on the command line (``--parent-dataset-manifest`` ->
            ``periods_from``); the file may not disagree.

    Raises:
        PlanError: Unreadable file, unknown keys (file:line), missing or inconsistent fields,
            data lists that do not exist.
    """
    node, raw = read_yaml(path, "--plan", error=PlanError)
    raw = raw or {}
    if not isinstance(raw, dict):
        raise PlanError(f"--plan: {path} must be a mapping of plan keys ({', '.join(PLAN_KEYS)})")
    _check_yaml_keys(node, path)
    raw = _merge_values(raw, values or {}, path)
    overrides, selection = dict(overrides or {}), {}
    if raw.get("periods_from"):
        from megatron.continual.overrides import OVERRIDES
        from megatron.continual.periods import SELECTION_KEYS

        # Periods are picked in period order (numbers compare as numbers), not stage-key order.
        for flag in [f for f in overrides if f in OVERRIDES and OVERRIDES[f][0] in SELECTION_KEYS]:
            selection[OVERRIDES[flag][0]] = overrides.pop(flag)
    if overrides:
        from megatron.continual.overrides import apply_overrides

        raw = apply_overrides(raw, overrides, path)
    if raw.get("periods_from"):
        from megatron.continual.periods import expand_periods

        raw = expand_periods(raw, selection, path)
    return build_plan(raw, path)


def _method(raw: dict[str, Any], base: Method, where: str) -> Method:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[METHOD_ALIASES.get(key, key)] = value
    if "replay" in values:
        values["replay"] = parse_replay(values["replay"], f"{where}.replay")
    for key in ("ewc", "lwf"):
        if key in values and not isinstance(values[key], dict):
            raise PlanError(f"{where}.{key}: expected a mapping like {{weight: 0.0}}")
    try:
        return dataclasses.replace(base, **values)
    except TypeError as e:
        raise PlanError(f"{where}: {e}") from None


def _abs(path: str | None) -> str | None:
    # Stages may run from another directory (the launcher's repo root): pin paths to this one.
    return None if path is None else os.path.abspath(str(path))


def _require_file(path: str | None, where: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise PlanError(f"{where}: no such data file list {path} (relative paths are taken from "
                        f"{os.getcwd()})")


def _stage(raw: Any, i: int, plan_raw: dict[str, Any], method: Method, path: str) -> Stage:
    where = f"{path}: stages[{i}]"
    if not isinstance(raw, dict) or "key" not in raw or "data" not in raw:
        raise PlanError(f"{where}: a stage needs at least 'key' and 'data'")
    key = str(raw["key"])
    if not key or "/" in key or key.startswith("."):
        raise PlanError(f"{where}: key {key!r} must be a plain directory name")
    _require_file(raw["data"], f"{where}.data")
    _require_file(raw.get("eval_data"), f"{where}.eval_data")
    iters = raw.get("train_iters", plan_raw.get("train_iters_per_stage"))
    tokens = raw.get("tokens", plan_raw.get("tokens_per_stage"))
    if (iters is None) == (tokens is None):
        raise PlanError(f"{where}: give the stage length once: train_iters(_per_stage) or "
                        "tokens(_per_stage)")
    if iters is not None and (not isinstance(iters, int) or iters <= 0):
        raise PlanError(f"{where}: train_iters must be a positive integer, got {iters!r}")
    return Stage(key=key, data=_abs(raw["data"]), eval_data=_abs(raw.get("eval_data")),
                 train_iters=iters, tokens=None if tokens is None else float(tokens),
                 method=_method(raw.get("method") or {}, method, f"{where}.method"),
                 args=dict(raw.get("args") or {}), nproc=raw.get("nproc"))


def build_plan(raw: dict[str, Any], path: str = "<plan>") -> Plan:
    """Resolve a plan given as a dict (what ``load_plan`` reads from YAML).

    Raises:
        PlanError: Missing or inconsistent fields.
    """
    for required in ("name", "stages"):
        if required not in raw:
            raise PlanError(f"{path}: missing required key {required!r}")
    if not isinstance(raw["stages"], list) or not raw["stages"]:
        raise PlanError(f"{path}: stages must be a non-empty list")
    method = _method(raw.get("method") or {}, Method(), f"{path}: method")
    stages = tuple(_stage(s, i, raw, method, path) for i, s in enumerate(raw["stages"]))
    keys = [s.key for s in stages]
    if len(set(keys)) != len(keys):
        raise PlanError(f"{path}: stage keys must be unique, got {keys}")
    launcher = raw.get("launcher", "train_alcf")
    if launcher not in LAUNCHERS:
        raise PlanError(f"{path}: launcher {launcher!r}; known: {', '.join(LAUNCHERS)}")
    if launcher == "python" and any((s.nproc or 1) > 1 for s in stages):
        raise PlanError(f"{path}: launcher python starts one process; stages with nproc > 1 need "
                        "launcher: train_alcf")
    _require_file(raw.get("base_data"), f"{path}: base_data")
    if raw.get("eval_after_each_stage"):
        missing = [s.key for s in stages if s.eval_data is None]
        if missing:
            raise PlanError(f"{path}: eval_after_each_stage: stages {missing} have no eval_data (their "
                            "held-out data file list); the forgetting matrix needs one per stage")
    cap = raw.get("eval_max_sequences")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
        raise PlanError(f"{path}: eval_max_sequences must be a positive integer, got {cap!r}")
    if raw.get("config") is not None and not os.path.isfile(raw["config"]):
        raise PlanError(f"{path}: config: no such file {raw['config']}")
    return Plan(
        path=path, name=str(raw["name"]), output_dir=_abs(raw.get("output_dir", "outputs/cpt")),
        init_checkpoint=_abs(raw.get("init_checkpoint")), config=_abs(raw.get("config")),
        args=dict(raw.get("args") or {}), stages=stages, base_data=_abs(raw.get("base_data")),
        launcher=launcher, eval_after_each_stage=bool(raw.get("eval_after_each_stage", False)),
        delete_previous_checkpoints=bool(raw.get("delete_previous_checkpoints",
                                                 raw.get("delete_previous_logs", False))),
        prepare=_abs(raw.get("prepare")), eval_max_sequences=raw.get("eval_max_sequences"),
    )
