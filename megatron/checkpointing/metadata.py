"""Run metadata: the JSON every checkpoint carries about its run, and the checks a resuming run
makes against it. Torch-free (``--dry-run`` reads a checkpoint's shape through it).

``SAVE/global_step{N}/run_metadata.json`` holds the resolved config (``{flag: value}``), the plan,
the schedule state, the data position, the tokenizer's identity (type, files, SHA-256) and the
code version. Its presence marks a complete checkpoint; it is written after every rank saved.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from typing import TYPE_CHECKING, Any, Protocol

from megatron.config.checkpoint_files import METADATA_FILE
from megatron.config.fields import ConfigError
from megatron.config.schema import config_values, iter_knobs
from megatron.data.tokenizers import file_sha256
from megatron.plan.run import RunPlan

if TYPE_CHECKING:  # torch-free at run time (--dry-run and --help import this module)
    from megatron.distributed.context import ParallelContext

log = logging.getLogger(__name__)

METADATA_VERSION = 1


class Progress(Protocol):
    """Where a run is (the trainer's ``TrainState``)."""

    iteration: int
    consumed_samples: int


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message says why and what to do."""


def read_metadata(load_dir: str, tag: str) -> dict[str, Any]:
    """The run metadata of checkpoint ``tag``.

    Raises:
        CheckpointError: Missing or unreadable (an incomplete or foreign checkpoint).
    """
    path = os.path.join(load_dir, tag, METADATA_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"--load: {path} is missing or unreadable ({e}); the checkpoint is incomplete or "
            "was not written by this framework"
        ) from None


def flat_config(plan: RunPlan) -> dict[str, Any]:
    """The config as ``{flag: value}`` (JSON-friendly, diffable)."""
    values = config_values(plan.config)
    return {k.flag: values[k.path] for k in iter_knobs()}


def run_metadata(
    plan: RunPlan,
    state: Progress,
    scheduler_state: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON metadata stored in every checkpoint."""
    return {
        "data": data,
        "tokenizer": tokenizer_identity(plan),
        "code_version": code_version(),
        "zero_stage": plan.config.parallel.zero_stage,
        "metadata_version": METADATA_VERSION,
        "iteration": state.iteration,
        "consumed_samples": state.consumed_samples,
        "scheduler": scheduler_state,
        "config": flat_config(plan),
        "plan": plan.summary(),
        "model": {k: v for k, v in _model_fields(plan).items()},
    }


# Hashed once per process: run_metadata is built at every save.
_cached_sha256 = functools.cache(file_sha256)


def tokenizer_identity(plan: RunPlan) -> dict[str, Any]:
    """The tokenizer type, its files and their SHA-256 (so a resumed run can tell a changed one)."""
    d = plan.config.data
    files = [f for f in (d.tokenizer_model, d.vocab_file, d.merge_file) if f]
    return {"type": d.tokenizer_type, "files": files, "sha256": [_cached_sha256(f) for f in files],
            "vocab_size": plan.model.original_vocab_size}


@functools.cache
def code_version() -> str:
    """Package version plus the git commit of the source tree, when it is a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"megatron-ds-cpt {_package_version()} ({commit})"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("megatron-ds-cpt")
    except Exception:  # noqa: BLE001  (not installed: a source checkout)
        return "source"


def check_tokenizer(plan: RunPlan, saved: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint trained with another tokenizer (same files compare by content).

    Raises:
        ConfigError: Type or file contents differ.
    """
    before, now = saved.get("tokenizer"), tokenizer_identity(plan)
    if before is None or plan.config.data.mock_data:
        return
    if before["type"] != now["type"] or (
        any(before["sha256"]) and any(now["sha256"]) and before["sha256"] != now["sha256"]
    ):
        raise ConfigError(
            f"--tokenizer-type/--tokenizer-model: {where} was trained with tokenizer {before['type']} "
            f"{before['files']} (sha256 {before['sha256']}); this run uses {now['type']} {now['files']}. "
            "Token ids would mean other text: use the checkpoint's tokenizer"
        )


def check_topology(plan: RunPlan, saved: dict[str, Any], where: str) -> None:
    """Refuse a (non-universal) checkpoint of another parallel layout, naming both.

    TP and PP must match; with ZeRO >= 1 so must DP (counted as DP x SP: Ulysses ranks share ZeRO's
    partitions) and the stage (the optimizer is partitioned).
    """
    before = saved.get("plan", {})
    if not before:
        return
    # Ulysses is data-like: ZeRO partitions over DP x SP, so that product must match.
    then_dp = before.get("dp") * before.get("sp", 1) if before.get("dp") else before.get("dp")
    then = (before.get("tp"), before.get("pp"), then_dp, saved.get("zero_stage", 0))
    now = (plan.tp, plan.pp, plan.dp * plan.sp, plan.config.parallel.zero_stage)
    zero = max(then[3] or 0, now[3])
    if then[:2] != now[:2] or (zero > 0 and then != now):
        raise ConfigError(
            f"--load: {where} was saved at TP={then[0]} PP={then[1]} DP={then[2]} ZeRO-{then[3]}; this "
            f"run is TP={now[0]} PP={now[1]} DP={now[2]} ZeRO-{now[3]}. Convert it once with "
            f"python tools/convert_checkpoint.py --input {where}, then load with --universal-checkpoint"
        )


def _model_fields(plan: RunPlan) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(plan.model)


# Shape-defining fields of the model: a checkpoint with other values cannot be loaded.
SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "position_embedding",
    "normalization",
    "swiglu",
    "bias",
    "tie_embeddings",
    "add_qkv_bias",
    "rotary_percent",
    "rope_scaling_factor",
    "rotary_interpolation",
    "parallel_residual",
    "openai_gelu",
    "qk_layernorm",
    "qk_layernorm_scope",
    "norm_placement",
)


def check_model_shape(plan: RunPlan, saved: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint whose model differs in shape, listing every difference.

    Raises:
        ConfigError: Shapes differ.
    """
    saved_model = saved.get("model", {})
    now = _model_fields(plan)
    diffs = [
        f"{name}: checkpoint {saved_model[name]!r}, this run {now[name]!r}"
        for name in SHAPE_FIELDS
        if name in saved_model and saved_model[name] != now[name]
    ]
    if diffs:
        raise ConfigError(
            f"--load: {where} holds a model of another shape ({'; '.join(diffs)}); set the model "
            "flags to the checkpoint's values"
        )


def log_config_diff(plan: RunPlan, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Log and return the flags whose value changed since the checkpoint: flag -> (old, new)."""
    before = saved.get("config", {})
    now = flat_config(plan)
    diff = {f: (before[f], v) for f, v in now.items() if f in before and before[f] != v}
    for flag, (old, new) in sorted(diff.items()):
        log.info("resume: %s was %r in the checkpoint, now %r", flag, old, new)
    return diff


class _NamedEngine(Protocol):
    """What ``client_info`` reads of the trainer's engine (``trainer.protocols.EngineView`` plus
    the parameter names and shapes it records for converters)."""

    engine: object
    param_names: list[list[str]]
    param_shapes: dict[str, list[int]]


def client_info(engine: _NamedEngine, ctx: ParallelContext, metadata: dict[str, Any]) -> dict[str, Any]:
    """Our client state in every model-state file: what a converter needs to read the rank's files.

    Args:
        engine: Our ``TrainEngine``.
        ctx: This rank's ``ParallelContext``.
        metadata: The run metadata (also in ``run_metadata.json``).
    """
    ds = engine.engine
    return {
        # dp: the ranks that hold the same parameters and share ZeRO's partitions (DP x SP).
        "pp_rank": ctx.pp_rank, "tp_rank": ctx.tp_rank, "dp_rank": ctx.zero_dp_rank,
        "pp": ctx.pp_size, "tp": ctx.tp_size, "dp": ctx.zero_dp_size, "sp": ctx.sp_size,
        "mp_rank": int(getattr(ds, "checkpoint_mp_rank", 0)),
        "zero_stage": metadata["zero_stage"],
        "param_names": engine.param_names,
        "param_shapes": engine.param_shapes,
        "run_metadata": metadata,
    }
