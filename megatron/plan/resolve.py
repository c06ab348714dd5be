"""``resolve(cfg, env) -> RunPlan``: every derived value, computed once.

Data-parallel size, gradient accumulation, global batch, train iterations from tokens or
samples, warmup and decay steps, padded vocabulary and precision are derived here and nowhere
else; so are the registry entries the run uses (objective, optimizer, schedule) and the
schedule's arguments. The plan is printed at start, by ``--dry-run``, and stored in every
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Literal

from megatron.config.env import DistEnv
from megatron.config.fields import ConfigError
from megatron.config.root import Config
from megatron.optimizer import get_optimizer_spec
from megatron.optimizer.registry import OptimizerSpec
from megatron.plan.checks import check_fused_loss, check_optimizer, check_regularizers
from megatron.plan.deepspeed import to_deepspeed_config
from megatron.plan.model_spec import build_model_spec, lookup_objective, tokenizer_vocab_size
from megatron.plan.paths import resolve_auto_paths
from megatron.plan.run import RunPlan
from megatron.plan.ulysses_checks import check_ulysses
from megatron.scaling.groups import check_optimizer as check_scaled_optimizer
from megatron.scaling.recipes import derive_scaling
from megatron.schedules.registry import SCHEDULES, schedule_name, schedule_state


def _parallel_sizes(cfg: Config, env: DistEnv, optimizer: OptimizerSpec) -> tuple[int, int, int, int]:
    tp = cfg.parallel.tensor_model_parallel_size
    pp = cfg.parallel.pipeline_model_parallel_size
    if env.world_size % (tp * pp):
        raise ConfigError(
            f"--tensor-model-parallel-size: TP {tp} x PP {pp} = {tp * pp} does not divide the "
            f"world size {env.world_size}"
        )
    m = cfg.model
    checks = (
        (m.num_attention_heads, "--num-attention-heads"),
        (m.kv_heads, "--num-key-value-heads"),
        (m.ffn_size, "--ffn-hidden-size"),
    )
    for value, flag in checks:
        if value % tp:
            raise ConfigError(
                f"--tensor-model-parallel-size: {tp} does not divide {flag} {value}"
            )
    if cfg.parallel.sequence_parallel and m.seq_length % tp:
        raise ConfigError(
            f"--sequence-parallel: --seq-length {m.seq_length} is not divisible by "
            f"--tensor-model-parallel-size {tp} (each TP rank holds seq / TP positions)"
        )
    if pp > m.num_layers:
        raise ConfigError(
            f"--pipeline-model-parallel-size: {pp} stages for --num-layers {m.num_layers}; "
            "every stage needs at least one layer"
        )
    sp = check_ulysses(cfg, env.world_size, optimizer)
    return tp, pp, sp, env.world_size // (tp * pp * sp)


def _batch(cfg: Config, dp: int) -> tuple[int, int]:
    t = cfg.train
    per_step = t.micro_batch_size * dp
    if t.global_batch_size is not None:
        if t.global_batch_size % per_step:
            raise ConfigError(
                f"--global-batch-size: {t.global_batch_size} is not divisible by "
                f"--micro-batch-size {t.micro_batch_size} x data-parallel size {dp} = {per_step}"
            )
        accum = t.global_batch_size // per_step
        if t.gradient_accumulation_steps is not None and t.gradient_accumulation_steps != accum:
            raise ConfigError(
                f"--gradient-accumulation-steps: {t.gradient_accumulation_steps} disagrees with "
                f"--global-batch-size {t.global_batch_size} (which implies {accum} at "
                f"micro batch {t.micro_batch_size} x DP {dp}); give one of them"
            )
        return accum, t.global_batch_size
    accum = t.gradient_accumulation_steps or 1
    return accum, per_step * accum


def _unique_samples(cfg: Config) -> int | None:
    """Samples in the --unique-tokens subset (None when the run is not data-constrained)."""
    if cfg.data.unique_tokens is None:
        return None
    samples = cfg.data.unique_tokens // cfg.model.seq_length
    if samples < 1:
        raise ConfigError(
            f"--unique-tokens: {cfg.data.unique_tokens} tokens hold no sample of "
            f"--seq-length {cfg.model.seq_length}"
        )
    return samples


def epoch_iterations(subset_samples: int, epochs: float, global_batch: int) -> int:
    """Iterations of ``--epochs E`` over a subset of ``subset_samples`` whole samples:
    ``ceil(ceil(E * subset) / global batch)``."""
    return math.ceil(math.ceil(epochs * subset_samples) / global_batch)


def _train_iters(cfg: Config, global_batch: int, tokens_per_step: int, subset: int | None) -> int:
    t = cfg.train
    candidates = {}
    if t.epochs is not None:
        if subset is None:
            raise ConfigError(
                "--epochs: needs --unique-tokens (the size of the subset the epochs repeat); "
                "tools/preprocess_data.py prints a dataset's token count"
            )
        candidates["--epochs"] = epoch_iterations(subset, t.epochs, global_batch)
    if t.train_iters is not None:
        candidates["--train-iters"] = t.train_iters
    if t.train_samples is not None:
        candidates["--train-samples"] = math.ceil(t.train_samples / global_batch)
    if t.train_tokens is not None:
        candidates["--train-tokens"] = math.ceil(t.train_tokens / tokens_per_step)
    if not candidates and t.skip_train:
        return 0  # evaluation only: no run length needed
    if not candidates:
        raise ConfigError(
            "--train-iters: the run length is missing; give --train-iters, --train-samples or "
            "--train-tokens (TRAIN_ITERS / TRAIN_TOKENS for train_alcf.sh)"
        )
    if len(set(candidates.values())) > 1:
        detail = ", ".join(f"{flag} -> {iters} iterations" for flag, iters in candidates.items())
        raise ConfigError(f"{next(iter(candidates))}: run lengths disagree ({detail}); give one")
    return next(iter(candidates.values()))


def _real_steps(x: float) -> int | float:
    """A schedule length in steps as Megatron keeps it: real-valued, an int when whole."""
    return int(x) if float(x).is_integer() else float(x)


def _schedule_steps(cfg: Config, train_iters: int, global_batch: int, seq: int) -> tuple[int | float, int | float]:
    """Warmup W and decay length S in steps, real-valued like Megatron's (which counts samples:
    ``--lr-warmup-fraction 0.0333`` of 1000 steps is 33.3 steps, 100 warmup samples at a batch
    of 64 are 1.5625 steps)."""
    s = cfg.schedule
    if s.lr_decay_iters is not None:
        decay = s.lr_decay_iters
    elif s.lr_decay_samples is not None:
        decay = _real_steps(s.lr_decay_samples / global_batch)
    elif s.lr_decay_tokens is not None:
        decay = _real_steps(s.lr_decay_tokens / (global_batch * seq))
    else:
        decay = train_iters
    if s.lr_warmup_iters is not None:
        warmup = s.lr_warmup_iters
    elif s.lr_warmup_fraction is not None:
        warmup = _real_steps(s.lr_warmup_fraction * decay)
    elif s.lr_warmup_samples is not None:
        warmup = _real_steps(s.lr_warmup_samples / global_batch)
    elif s.lr_warmup_tokens is not None:
        warmup = _real_steps(s.lr_warmup_tokens / (global_batch * seq))
    else:
        warmup = 0
    if warmup > decay:
        raise ConfigError(
            f"--lr-warmup-iters: warmup of {warmup} steps is longer than the decay of {decay} steps"
        )
    return warmup, decay


def _check_paths(cfg: Config) -> None:
    if cfg.train.skip_train and cfg.checkpoint.load is None:
        raise ConfigError("--skip-train: needs --load, the checkpoint to evaluate (LOAD for train_alcf.sh)")
    if cfg.parallel.deepspeed_config and not os.path.isfile(cfg.parallel.deepspeed_config):
        raise ConfigError(f"--deepspeed-config: no such file {cfg.parallel.deepspeed_config}")
    if not cfg.data.mock_data and cfg.data.data_file_list is None:
        raise ConfigError(
            "--data-file-list: no training data; give a data file list (DATA_FILE_LIST) "
            "or --mock-data"
        )


def resolve(cfg: Config, env: DistEnv, sources: dict[str, Any] | None = None) -> RunPlan:
    """Derive the run plan; every cross-section check happens here, before any heavy work.

    Args:
        cfg: The typed config.
        env: The process placement.
        sources: Where each set value came from (``ParsedArgs.sources()``), kept for logs.

    Raises:
        ConfigError: An inconsistent or impossible combination; the message names the flag.
    """
    _check_paths(cfg)
    objective = lookup_objective(cfg)
    optimizer = get_optimizer_spec(cfg.optim.optimizer)
    schedule = SCHEDULES[schedule_name(cfg.schedule)]
    check_optimizer(cfg, optimizer, schedule)
    scaling = derive_scaling(cfg.scaling, cfg.model.hidden_size, cfg.model.num_layers)
    check_scaled_optimizer(scaling.recipe, cfg.optim.optimizer)
    tp, pp, sp, dp = _parallel_sizes(cfg, env, optimizer)
    check_regularizers(cfg, pp)
    check_fused_loss(cfg, pp)
    accum, global_batch = _batch(cfg, dp)
    seq = cfg.model.seq_length
    tokens_per_step = global_batch * seq
    subset = _unique_samples(cfg)
    train_iters = _train_iters(cfg, global_batch, tokens_per_step, subset)
    warmup, decay = _schedule_steps(cfg, train_iters, global_batch, seq)
    if cfg.schedule.min_lr > cfg.optim.lr:
        raise ConfigError(f"--min-lr: {cfg.schedule.min_lr} is above --lr {cfg.optim.lr}")
    dtype: Literal["fp32", "bf16", "fp16"] = (
        "bf16" if cfg.train.bf16 else "fp16" if cfg.train.fp16 else "fp32"
    )
    plan = RunPlan(
        config=cfg,
        world_size=env.world_size,
        tp=tp,
        pp=pp,
        dp=dp,
        sp=sp,
        micro_batch_size=cfg.train.micro_batch_size,
        grad_accum_steps=accum,
        global_batch_size=global_batch,
        seq_length=seq,
        tokens_per_step=tokens_per_step,
        train_iters=train_iters,
        warmup_steps=warmup,
        decay_steps=decay,
        min_lr_ratio=cfg.schedule.min_lr / cfg.optim.lr,
        dtype=dtype,
        model=build_model_spec(cfg, tokenizer_vocab_size(cfg), tp, scaling, objective),
        objective=objective,
        optimizer=optimizer,
        schedule=schedule,
        unique_samples=subset,
        sources=dict(sources or {}),
        scaling=scaling,
    )
    # The schedule's arguments (and its own checks: phase lengths, eta_const), before any work.
    plan = dataclasses.replace(plan, schedule_state=schedule_state(plan))
    objective.check(cfg, plan.model)
    plan = resolve_auto_paths(plan)
    return dataclasses.replace(plan, deepspeed=to_deepspeed_config(plan))
