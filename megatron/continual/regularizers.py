"""EWC and LwF in a training run: anchor at the stage's start, extra loss terms, save/restore.

A training callback (``megatron/trainer/callbacks.py``) with three hooks:

- ``on_restore`` after the weights are loaded: at a stage start (``--finetune``, or a load from
  another directory than ``--save``; iteration 0 only) EWC computes ``theta*`` and ``F`` and LwF
  copies the teacher; on a resume inside the stage both are restored, bit for bit, from the
  checkpoint (never re-anchored on drifted weights, TiC-LM's bug);
- ``extra_loss_terms`` per training micro-batch: EWC's penalty and LwF's weighted distillation
  term, which the engine adds to the objective's own loss (AR masked mean, MDM's 1/t-weighted
  ELBO): the regularizers never replace the objective;
- ``on_save`` before a checkpoint's completion marker (the ``latest`` pointer moves last, so a
  checkpoint is complete with its anchor or not at all).

Files: ``global_stepN/continual/tp{t}_pp{p}_dp{d}.pt`` per rank (EWC shards; the teacher's
weights from DP rank 0 only). A universal conversion carries both (``universal_state.py``), so a
mid-stage resume from a universal checkpoint at another TP/DP/ZeRO layout restores them bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import torch

from megatron.config.fields import ConfigError
from megatron.continual.ewc import EWCAnchor, fisher_sum, owned_shards
from megatron.continual.lwf import Teacher, lwf_loss
from megatron.data.loader import Batch
from megatron.distributed import ParallelContext
from megatron.trainer.callbacks import Callback, LossTerm, MicroBatchOutput, Restored
from megatron.trainer.protocols import RunView

log = logging.getLogger(__name__)

STATE_DIR = "continual"


def _state_file(step_dir: str, ctx: ParallelContext, dp_rank: int | None = None) -> str:
    dp = ctx.dp_rank if dp_rank is None else dp_rank
    return os.path.join(step_dir, STATE_DIR, f"tp{ctx.tp_rank}_pp{ctx.pp_rank}_dp{dp}.pt")


class Regularizers(Callback):
    """The stage's EWC anchor and LwF teacher (either may be off).

    Args:
        run: The run (plan, parallel context, engine, data streams).
    """

    name = "regularizers"

    def __init__(self, run: RunView):
        self.run = run
        self.plan, self.ctx, self.engine = run.plan, run.ctx, run.engine
        self.cfg = self.plan.config.regularize
        self.needs_logits = bool(self.cfg.lwf)  # the distillation term reads the student's logits
        self.ewc: EWCAnchor | None = None
        self.teacher: Teacher | None = None
        self.teacher_seconds = 0.0
        self.student_seconds = 0.0

    # ---- stage start / resume ---------------------------------------------------------------

    def on_restore(self, run: RunView, restored: Restored) -> None:
        """Anchor (stage start) or restore the anchor (mid-stage resume).

        Raises:
            ConfigError: ``--load`` holds no checkpoint (no previous stage to anchor on).
        """
        where, metadata = restored.where, restored.metadata
        if where is None:
            flag = "--ewc-weight" if self.cfg.ewc else "--lwf-weight"
            raise ConfigError(f"{flag}: --load {self.plan.config.checkpoint.load} holds no checkpoint; "
                              "EWC/LwF anchor on the previous stage's weights (give its save directory)")
        if restored.stage_start:
            started = time.perf_counter()
            if self.cfg.ewc:
                self._anchor_ewc(metadata, where)
            if self.cfg.lwf:
                self._copy_teacher()
            log.info("continual regularizers anchored on %s in %.1f s", where, time.perf_counter() - started)
        else:
            self._restore(where)

    def _anchor_ewc(self, metadata: dict, where: str) -> None:
        cfg = self.cfg
        batches = self._fisher_batches(metadata, where)
        fisher = fisher_sum(self.engine.module, batches)
        self.ewc = EWCAnchor.capture(self.engine.module, owned_shards(self.engine), fisher,
                                     cfg.ewc_weight, cfg.ewc_num_iterations)
        total = sum(float(f.sum()) for f in self.ewc.fisher)
        log.info("EWC: anchored on %s; Fisher over %d batches of %s data (this rank's sum %.3e, "
                 "%d elements); lambda/N = %.3e", where, cfg.fisher_batches, cfg.ewc_fisher_data, total,
                 sum(a.numel() for a in self.ewc.anchor), self.ewc.coefficient)

    def _fisher_batches(self, metadata: dict, where: str) -> list[list[Batch]]:
        cfg = self.cfg
        stream = self.run.streams.train.stream
        if cfg.ewc_fisher_data == "previous":
            stream = self._previous_stream(metadata, where)
        reader = self.run.reader(stream)
        gbs = self.plan.global_batch_size
        return [reader.step_batches(k * gbs) for k in range(cfg.fisher_batches)]

    def _previous_stream(self, metadata: dict, where: str) -> object:
        from megatron.data.builder import build_streams

        saved = metadata.get("config", {})
        data_list, mock = saved.get("--data-file-list"), bool(saved.get("--mock-data"))
        if data_list is None and not mock:
            raise ConfigError(f"--ewc-fisher-data: previous: {where} records no training data list")
        cfg = self.plan.config
        data = dataclasses.replace(cfg.data, data_file_list=data_list, mock_data=mock,
                                   valid_data_file_list=None, test_data_file_list=None,
                                   split=saved.get("--split", cfg.data.split))
        plan = dataclasses.replace(self.plan, config=dataclasses.replace(cfg, data=data))
        try:
            return build_streams(plan, is_builder=self.ctx.env.rank == 0).train.stream
        except ConfigError as e:
            raise ConfigError(f"--ewc-fisher-data: previous ({data_list} from {where}): {e}") from None

    def _copy_teacher(self) -> None:
        from megatron.model.gpt import GPTModel

        self.teacher = Teacher(lambda: GPTModel(self.plan.model), self.engine.module)
        log.info("LwF: teacher = the stage's initial weights, %.2f MiB (%s); one extra forward per "
                 "micro-batch", self.teacher.bytes / 2**20, next(self.teacher.model.parameters()).dtype)

    def _restore(self, where: str) -> None:
        if self.run.universal is not None:
            self._restore_universal(where)
            return
        path = _state_file(where, self.ctx)
        if not os.path.isfile(path):
            raise ConfigError(
                f"--ewc-weight/--lwf-weight: {where} holds no EWC/LwF anchor ({path} is missing): a "
                "resume inside a stage must not re-anchor on drifted weights. Resume from a "
                "checkpoint of this run saved with EWC/LwF, or start the stage again from the "
                "previous stage with --finetune")
        state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        if self.cfg.ewc:
            if state.get("ewc") is None:
                raise ConfigError(f"--ewc-weight: {path} holds no EWC anchor (saved without EWC)")
            self.ewc = EWCAnchor.from_state_dict(state["ewc"])
            self.ewc.coefficient = self.cfg.ewc_weight / self.cfg.ewc_num_iterations
        if self.cfg.lwf:
            teacher = torch.load(_state_file(where, self.ctx, dp_rank=0), map_location=self.ctx.device,
                                 weights_only=True).get("teacher")
            if teacher is None:
                raise ConfigError(f"--lwf-weight: {where} holds no LwF teacher (saved without LwF)")
            from megatron.model.gpt import GPTModel

            self.teacher = Teacher(lambda: GPTModel(self.plan.model), self.engine.module)
            self.teacher.model.load_state_dict(teacher)
        log.info("continual regularizers restored from %s", where)

    def _restore_universal(self, where: str) -> None:
        from megatron.continual import universal_state as us

        has = us.has_regularizers(where)
        for on, key, flag in ((self.cfg.ewc, "ewc", "--ewc-weight"), (self.cfg.lwf, "teacher", "--lwf-weight")):
            if on and not has[key]:
                raise ConfigError(
                    f"{flag}: the universal checkpoint {where} carries no {'EWC anchor' if key == 'ewc' else 'LwF teacher'} "
                    "(converted from a checkpoint saved without it, or by a tool that drops it); a resume "
                    "inside a stage must not re-anchor on drifted weights. Convert a checkpoint of this "
                    "run with tools/convert_checkpoint.py, or restart the stage with --finetune")
        spec, ctx = self.plan.model, self.ctx
        if self.cfg.ewc:
            shards = owned_shards(self.engine)
            anchor, fisher, _ = us.load_ewc(where, shards, spec, ctx.tp_rank, ctx.tp_size)
            self.ewc = EWCAnchor([*shards], [a.to(ctx.device) for a in anchor],
                                 [f.to(ctx.device) for f in fisher], self.cfg.ewc_weight,
                                 self.cfg.ewc_num_iterations)
        if self.cfg.lwf:
            from megatron.model.gpt import GPTModel

            self.teacher = Teacher(lambda: GPTModel(self.plan.model), self.engine.module)
            names = list(self.teacher.model.state_dict())
            self.teacher.model.load_state_dict(us.load_teacher(where, names, spec, ctx.tp_rank, ctx.tp_size))
        log.info("continual regularizers restored from the universal checkpoint %s", where)

    # ---- per step -----------------------------------------------------------------------------

    def extra_loss_terms(self, out: MicroBatchOutput) -> list[LossTerm]:
        """EWC's penalty (reported with ``--ewc-log-loss``) and LwF's weighted distillation term."""
        terms = []
        if self.ewc is not None:
            started = time.perf_counter()
            terms.append(LossTerm("ewc", self.ewc.penalty(out.module), reported=self.cfg.ewc_log_loss))
            self.student_seconds += time.perf_counter() - started
        self.student_seconds += out.forward_seconds
        if self.teacher is not None:
            started = time.perf_counter()
            teacher_logits = self.teacher.logits(out.batch.tokens)
            self.teacher_seconds += time.perf_counter() - started
            c = self.cfg
            term = lwf_loss(teacher_logits, out.logits, out.batch.loss_mask, kl=c.lwf_kl,
                            temperature=c.lwf_temperature, reduction=c.lwf_reduction)
            terms.append(LossTerm("lwf", c.lwf_weight * term))
        return terms

    # ---- checkpoints --------------------------------------------------------------------------

    def on_save(self, step_dir: str) -> None:
        """Write this rank's anchor (and, on DP rank 0, the teacher) into ``step_dir``."""
        os.makedirs(os.path.join(step_dir, STATE_DIR), exist_ok=True)
        state = {"ewc": None if self.ewc is None else self.ewc.state_dict(), "teacher": None}
        if self.teacher is not None and self.ctx.dp_rank == 0:
            state["teacher"] = self.teacher.model.state_dict()
        path = _state_file(step_dir, self.ctx)
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
        if self.teacher is not None and self.student_seconds > 0:
            log.info("LwF: teacher forward %.1f%% of the student's forward+loss time (%.3f s vs %.3f s)",
                     100 * self.teacher_seconds / self.student_seconds, self.teacher_seconds,
                     self.student_seconds)


def regularizer_callback(run: RunView) -> Regularizers | None:
    """EWC/LwF (``--ewc-weight``, ``--lwf-weight``) as a training callback, or None when off."""
    reg = run.plan.config.regularize
    return Regularizers(run) if reg.ewc or reg.lwf else None
