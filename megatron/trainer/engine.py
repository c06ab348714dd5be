"""Model + optimizer + DeepSpeed engine + LR scheduler, and one training/eval step on them.

Two step implementations share one interface: the dense engine (ZeRO 0-3, TP through
megatron-core) runs forward/backward per micro-batch; the pipeline engine (PP > 1, ZeRO 0-1)
runs DeepSpeed's 1F1B schedule over the step's micro-batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import deepspeed
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.checkpointing.async_save import use_async_save
from megatron.checkpointing.safe_load import safe_checkpoint_engine
from megatron.data.loader import Batch
from megatron.distributed import ParallelContext, deepspeed_mpu
from megatron.model.attention_kernel import attention_context
from megatron.model.gpt import GPTModel, token_losses
from megatron.model.ulysses import sequence_shard
from megatron.optimizer.registry import OptimizerSpec
from megatron.plan.run import RunPlan
from megatron.scaling.groups import build_param_groups
from megatron.schedules.registry import schedule_from_state
from megatron.schedules.scheduler import LRScheduler
from megatron.trainer.callbacks import Callbacks, MicroBatchOutput
from megatron.trainer.corpus_loss import CorpusLoss
from megatron.trainer.grad_norm import clip_grads_
from megatron.trainer.nonfinite import NonFiniteGuard
from megatron.trainer.timers import PhaseTimers

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one optimizer step reports.

    Attributes:
        loss: Mean loss over the step's tokens, averaged over data-parallel ranks (a 0-d device
            tensor: read it on the host only when needed; each read waits for the device).
        grad_norm: Global gradient norm before clipping, as DeepSpeed keeps it (tensor or float;
            None if DeepSpeed skipped the step).
        skipped: True when the update was skipped (fp16 overflow, or a non-finite step).
        nonfinite: True when the non-finite guard skipped it (``nonfinite.py``).
    """

    loss: torch.Tensor | float
    grad_norm: torch.Tensor | float | None
    skipped: bool
    nonfinite: bool = False


def _record_grad_norm_at_zero0(engine: deepspeed.DeepSpeedEngine) -> None:
    # DeepSpeed reports the norm through its ZeRO/bf16/fp16 optimizer wrappers; plain fp32
    # ZeRO-0 clips with a helper that discards it (and miscounts under PP): see grad_norm.py.
    def clip_and_record() -> None:
        engine._global_grad_norm = clip_grads_(engine.module.parameters(), engine.gradient_clipping())

    engine.clip_fp32_gradients = clip_and_record


class TrainEngine:
    """The DeepSpeed engine of a run and the client objects it wraps.

    Args:
        plan: The resolved run.
        ctx: This rank's parallel placement.
    """

    def __init__(
        self,
        plan: RunPlan,
        ctx: ParallelContext,
        before_initialize: Callable[[torch.nn.Module], None] | None = None,
    ):
        cfg = plan.config
        self.plan = plan
        self.ctx = ctx
        self.pipeline = plan.pp > 1
        # Which SDPA kernel attention runs on (reported; --use-flash-attn restricts it to flash).
        self.attention = attention_context(
            plan.model, plan.tp * plan.sp, ctx.device, plan.dtype, cfg.model.use_flash_attn
        )
        self.timers = PhaseTimers(cfg.logging.log_timers_to_tensorboard, ctx.device)
        self.objective = plan.objective  # batch transform, loss reduction
        model = self._build_model()
        if before_initialize is not None:
            before_initialize(model)  # e.g. universal-checkpoint weights, before DeepSpeed copies them
        self.optimizer_spec: OptimizerSpec = plan.optimizer
        # Standard policy, or the muP/CompleteP per-group table (logged either way).
        groups = build_param_groups(model.named_parameters(), plan, self.optimizer_spec.param_policy)
        self.optimizer = self.optimizer_spec.build(
            groups, cfg.optim, cfg.optim.options.get(cfg.optim.optimizer)
        )
        names = {id(p): n for n, p in model.named_parameters()}
        # What a converter needs to name the optimizer's tensors (saved with every checkpoint).
        self.param_names = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        self.param_shapes = {n: list(p.shape) for n, p in model.named_parameters()}
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=self.optimizer,
            config=plan.deepspeed,
            mpu=None if self.pipeline else deepspeed_mpu(ctx),
        )
        if (
            not self.engine.zero_optimization()
            and not self.engine.bfloat16_enabled()
            and not self.engine.fp16_enabled()
        ):
            _record_grad_norm_at_zero0(self.engine)
        safe_checkpoint_engine(self.engine)  # --load unpickles with weights_only=True
        if cfg.checkpoint.async_save:
            use_async_save(self.engine)  # saves copy the states; a background thread writes them
        if self.optimizer_spec.after_initialize is not None:
            self.optimizer_spec.after_initialize(self)  # e.g. Muon binds to the TP/ZeRO layout
        self.guard = (  # skips the update of a non-finite step (fp16: DeepSpeed's own skipping)
            NonFiniteGuard(self.optimizer, self._fresh_grad_norm, ctx.device)
            if cfg.train.max_nonfinite_steps and not cfg.train.fp16 else None
        )
        fn, fingerprint = schedule_from_state(plan.schedule_state)
        self.scheduler = LRScheduler(self.optimizer, fn, fingerprint, cfg.optim.lr, plan.schedule_state)
        self.callbacks = Callbacks()  # the run's callbacks: extra loss terms (loop.Trainer sets them)
        self.train_mode()

    def _build_model(self) -> torch.nn.Module:
        if self.pipeline:
            from megatron.model.pipeline import build_pipeline_model

            model = build_pipeline_model(
                self.plan.model, self.plan.tp, self.plan.pp, self.plan.dp, objective=self.objective
            )
        else:
            model = GPTModel(self.plan.model)
        train = self.plan.config.train
        if train.compile:  # regional: each transformer layer, before DeepSpeed wraps the model
            from megatron.model.compile import compile_layers

            compile_layers(model, mode=train.compile_mode, backend=train.compile_backend)
        return model.to(self.ctx.device)

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (dense GPT or this rank's pipeline stage)."""
        return self.engine.module

    def train_mode(self) -> None:
        """Model in train mode; optimizers with a train/eval switch (schedule-free) to train."""
        self.engine.train()
        if self.optimizer_spec.train_mode is not None:
            self.optimizer_spec.train_mode(self.optimizer)

    def eval_mode(self) -> None:
        """Model in eval mode; schedule-free optimizers swap in their averaged weights."""
        self.engine.eval()
        if self.optimizer_spec.eval_mode is not None:
            self.optimizer_spec.eval_mode(self.optimizer)

    def _fresh_grad_norm(self) -> torch.Tensor | float | None:
        # Inside the optimizer step: DeepSpeed's ZeRO/bf16 wrappers hold this step's norm (the
        # engine copies it after the step); plain ZeRO-0 has it from clip_and_record.
        wrapper = self.engine.optimizer
        if wrapper is not self.optimizer and hasattr(wrapper, "_global_grad_norm"):
            return wrapper._global_grad_norm
        return self.engine._global_grad_norm

    def _grad_norm(self) -> torch.Tensor | float | None:
        return self.engine.get_global_grad_norm()  # not float(): that would sync every step

    def _set_pipeline_meter(self, meter: CorpusLoss | None) -> None:
        if self.pipeline:
            self.engine.module.loss_fn.meter = meter

    def _forward(self, batch: Batch, meter: CorpusLoss | None, *,
                 keep_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The objective's loss of one micro-batch, and its logits when ``keep_logits``."""
        batch = sequence_shard(batch)  # Ulysses: this rank's positions (identity otherwise)
        if keep_logits:
            logits = self.engine(batch.tokens)
            # vocab_parallel_cross_entropy writes into its input: give it a copy at TP > 1.
            losses = token_losses(logits.clone() if self.ctx.tp_size > 1 else logits, batch.labels)
        else:
            logits, losses = None, self.engine(batch.tokens, batch.labels)
        if meter is not None:
            self.objective.meter_add(meter, losses, batch.loss_mask, batch.dataset_ids)
        return self.objective.reduce(losses, batch.loss_mask), logits

    def _losses(self, batch: Batch, meter: CorpusLoss | None) -> torch.Tensor:
        return self._forward(batch, meter)[0]

    def _train_loss(self, batch: Batch, meter: CorpusLoss | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to differentiate, loss to report): ``objective.reduce(...) + sum(extra terms)``
        of the callbacks (``callbacks.py``; EWC, LwF), added in callback order."""
        if not self.callbacks.loss_terms:
            loss = self._losses(batch, meter)
            return loss, loss
        started = time.perf_counter()
        loss, logits = self._forward(batch, meter, keep_logits=self.callbacks.needs_logits)
        out = MicroBatchOutput(batch, self.module, logits, time.perf_counter() - started)
        return self.callbacks.loss(loss, out)

    def train_step(
        self, batches: list[Batch], meter: CorpusLoss | None = None, *, iteration: int
    ) -> StepResult:
        """Forward/backward over the step's micro-batches and one optimizer update.

        ``meter`` (optional) receives the per-token losses by dataset; ``iteration`` is the
        number of steps done before this one (optimizers with a ``before_step`` hook use it).
        """
        if self.optimizer_spec.before_step is not None:
            with self.attention():
                self.optimizer_spec.before_step(self, batches, iteration)
        skipped_before = self.engine.skipped_steps
        if self.guard is not None:
            self.guard.begin_step()
        timed = self.timers.phase
        if self.pipeline:
            self._set_pipeline_meter(meter)
            with self.attention(), timed("step"):
                loss = self.engine.train_batch(data_iter=_pipeline_items(batches))
            mean = loss.detach() if isinstance(loss, torch.Tensor) else loss
        else:
            losses = []
            for batch in batches:
                with self.attention():
                    with timed("forward"):
                        loss, reported = self._train_loss(batch, meter)
                    if self.guard is not None:
                        self.guard.watch_loss(reported)
                    # DeepSpeed divides by the accumulation steps and steps at the boundary.
                    with timed("backward"):
                        self.engine.backward(loss)
                with timed("optimizer"):
                    self.engine.step()
                losses.append(reported.detach())
            mean = _dp_mean_tensor(torch.stack(losses).mean())
        self.timers.step_done()
        overflow = self.engine.skipped_steps > skipped_before
        # ZeRO and bf16 skip a non-finite step themselves (fp16 also skips to calibrate its loss
        # scale: that is not a non-finite step).
        nonfinite = self.guard is not None and (self.guard.skipped or overflow)
        skipped = overflow or nonfinite
        return StepResult(loss=mean, grad_norm=self._grad_norm(), skipped=skipped, nonfinite=nonfinite)

    @torch.no_grad()
    def eval_loss(self, batches: list[Batch], meter: CorpusLoss | None = None) -> float:
        """Mean loss over ``batches`` (one global eval batch), averaged over DP ranks."""
        if self.pipeline:
            self._set_pipeline_meter(meter)
            with self.attention():
                return float(self.engine.eval_batch(data_iter=_pipeline_items(batches)))
        with self.attention():
            losses = [self._losses(b, meter) for b in batches]
        return _dp_mean(torch.stack(losses).mean())


def _pipeline_items(batches: list[Batch]):  # noqa: ANN202
    return iter([(b.tokens, (b.labels, b.loss_mask, b.dataset_ids)) for b in batches])


def _dp_mean_tensor(value: torch.Tensor) -> torch.Tensor:
    # Under Ulysses each SP rank's loss is its share of the group's token mean: summed over the
    # DP x SP group, divided by DP (the same group and divisor as without Ulysses).
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    size = parallel_state.get_data_parallel_world_size()
    if dist.get_world_size(group) > 1:
        value = value.clone()
        dist.all_reduce(value, group=group)
        value /= size
    return value


def _dp_mean(value: torch.Tensor) -> float:
    return float(_dp_mean_tensor(value))
