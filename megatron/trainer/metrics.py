"""Progress reporting: console lines, TensorBoard scalars, throughput, TFLOP/s and MFU.

FLOPs per step use docs/design.md §10: ``6 * N * tokens + 12 * L * d * s * tokens`` with N the
parameters taking part in matmuls (see ``GPTSpec.flops_per_token``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from megatron.distributed import ParallelContext
from megatron.distributed.backend import device_name, synchronize
from megatron.plan.run import RunPlan
from megatron.trainer.events import EventLog

log = logging.getLogger(__name__)

# Dense bf16/fp16 peak FLOP/s per device, by device-name substring.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "V100": 125e12,
}


def device_peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of ``device`` for half-precision math, when known (None on CPU or fp32)."""
    if device.type == "cpu" or dtype == "fp32":
        return None
    name = device_name(device)
    for key, peak in PEAK_FLOPS.items():
        if key in name:
            return peak
    return None


def format_duration(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class _Window:
    steps: int = 0
    loss_sum: float | torch.Tensor = 0.0  # a device tensor between log lines: no host sync per step
    skipped: int = 0
    start: float = 0.0
    untimed_steps: int = 0  # steps left out of throughput (the --compile steps that compiled)
    losses: list = field(default_factory=list)  # per-step losses (device tensors) for the event log
    lrs: list = field(default_factory=list)


class Reporter:
    """Prints a line per log interval and writes TensorBoard scalars (on the logging rank).

    Args:
        plan: The resolved run.
        ctx: This rank's placement.
    """

    def __init__(self, plan: RunPlan, ctx: ParallelContext):
        self.plan = plan
        self.ctx = ctx
        self.active = ctx.is_logging_rank
        self.interval = plan.config.logging.log_interval
        self.flops_per_step = plan.model.flops_per_token() * plan.tokens_per_step
        self.objective = plan.objective  # metric names
        self.peak = device_peak_flops(ctx.device, plan.dtype)
        self.started = time.perf_counter()
        self.window = _Window(start=self.started)
        self.last_train_loss = math.nan
        self.log_batch_size = plan.config.logging.log_batch_size_to_tensorboard
        self.writer = None
        self.wandb = None
        logs = plan.config.logging
        self.events = EventLog(logs.event_log if self.active else None)  # megatron/trainer/events.py
        if self.active and logs.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=logs.tensorboard_dir, max_queue=logs.tensorboard_queue_size)
        if self.active and logs.wandb_project:
            from megatron.trainer.wandb_writer import WandbWriter

            self.wandb = WandbWriter(plan)

    def scalar(self, name: str, value: float, step: int) -> None:
        """One scalar to TensorBoard and W&B (each only when configured)."""
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.scalar(name, value, step)

    def on_step(
        self,
        iteration: int,
        loss: float | torch.Tensor,
        lr: float,
        grad_norm: float | torch.Tensor | None,
        skipped: bool,
    ) -> None:
        """Account one step; report when ``iteration`` ends a log interval.

        ``loss`` and ``grad_norm`` may be device tensors: they are read on the host only at a
        log line (one sync per interval instead of one per step).
        """
        w = self.window
        w.steps += 1
        # float64 on the device: the same sum as adding the per-step Python floats.
        w.loss_sum = w.loss_sum + (loss.detach().double() if isinstance(loss, torch.Tensor) else loss)
        w.skipped += int(skipped)
        if self.events.active:
            w.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            w.lrs.append(lr)
        if not self.due(iteration):
            return
        synchronize(self.ctx.device)
        now = time.perf_counter()
        elapsed = max(now - w.start, 1e-9)
        mean_loss = float(w.loss_sum) / w.steps
        grad_norm = None if grad_norm is None else float(grad_norm)
        self.last_train_loss = mean_loss
        timed = w.steps - w.untimed_steps
        tokens_per_s = timed * self.plan.tokens_per_step / elapsed if timed else None
        samples_per_s = timed * self.plan.global_batch_size / elapsed if timed else None
        tflops = timed * self.flops_per_step / elapsed / self.plan.world_size / 1e12 if timed else None
        if self.active:
            parts = [
                f"iter {iteration:>6d}/{self.plan.train_iters}",
                f"{self.objective.train_metric} {mean_loss:.4f}",
                f"lr {lr:.3e}",
                f"grad norm {grad_norm:.3f}" if grad_norm is not None else "grad norm n/a",
            ]
            if timed:
                parts += [
                    f"{tokens_per_s:,.0f} tok/s",
                    f"{samples_per_s:.1f} samples/s",
                    f"{tflops:.3f} TFLOP/s/device",
                ]
            else:
                parts.append("tok/s n/a (compiling steps only)")
            if self.peak and timed:
                parts.append(f"MFU {100 * tflops * 1e12 / self.peak:.1f}%")
            parts += [f"skipped {w.skipped}", f"elapsed {format_duration(now - self.started)}"]
            log.info(" | ".join(parts))
            for name, value in (
                (f"train/{self.objective.train_metric}", mean_loss),
                ("train/lr", lr),
                ("train/grad_norm", grad_norm),
                ("throughput/tokens_per_sec", tokens_per_s),
                ("throughput/samples_per_sec", samples_per_s),
                ("throughput/tflops_per_device", tflops),
                ("train/consumed_samples", iteration * self.plan.global_batch_size),
                ("train/batch_size", self.plan.global_batch_size if self.log_batch_size else None),
            ):
                if value is not None:
                    self.scalar(name, value, iteration)
            self._train_event(iteration, mean_loss, grad_norm, tokens_per_s, samples_per_s, tflops,
                              now - self.started)
        self.window = _Window(start=time.perf_counter())

    def _train_event(self, iteration: int, mean_loss: float, grad_norm: float | None,
                     tokens_per_s: float | None, samples_per_s: float | None, tflops: float | None,
                     elapsed_s: float) -> None:
        w = self.window
        if not self.events.active:
            return
        if w.losses and all(isinstance(v, torch.Tensor) for v in w.losses):
            losses = torch.stack([v.double() for v in w.losses]).tolist()  # one copy to the host
        else:
            losses = [float(v) for v in w.losses]
        self.events.write("train", iteration=iteration, steps=w.steps, losses=losses, lrs=w.lrs,
                          loss=mean_loss, grad_norm=grad_norm, skipped=w.skipped,
                          tokens_per_s=tokens_per_s, samples_per_s=samples_per_s,
                          tflops_per_device=tflops,
                          consumed_samples=iteration * self.plan.global_batch_size,
                          elapsed_s=round(elapsed_s, 3))

    def due(self, iteration: int) -> bool:
        """Whether ``iteration`` ends a log interval."""
        return iteration % self.interval == 0 or iteration == self.plan.train_iters

    def on_corpus_losses(self, split: str, iteration: int, losses: dict[str, float]) -> None:
        """Report the loss of each corpus of ``split``."""
        if not self.active or not losses:
            return
        log.info("%s loss by corpus: %s", split, " | ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        for corpus, loss in losses.items():
            self.scalar(f"{split}/loss_by_corpus/{corpus}", loss, iteration)

    def on_optimizer_states(self, iteration: int, stats: dict[str, float]) -> None:
        """Report optimizer-state norms (``optimizer_states.optimizer_state_stats``)."""
        if not self.active or not stats:
            return
        log.info("optimizer states: %s", " | ".join(f"{k} {v:.4e}" for k, v in stats.items()))
        for name, value in stats.items():
            self.scalar(f"optimizer_state/{name}", value, iteration)

    def on_timers(self, iteration: int, ms_per_step: dict[str, float]) -> None:
        """Report per-phase step timings (``--log-timers-to-tensorboard``) as timers/<phase>_ms."""
        if not self.active or not ms_per_step:
            return
        log.info("timers (ms/step): %s", " | ".join(f"{k} {v:.1f}" for k, v in ms_per_step.items()))
        for phase, ms in ms_per_step.items():
            self.scalar(f"timers/{phase}_ms", ms, iteration)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (evaluation, saving) out of the current throughput window."""
        self.window.start += seconds

    def exclude_step(self, seconds: float) -> None:
        """Leave one whole step of ``seconds`` (a step that compiled) out of throughput; its loss
        still counts in the interval's mean."""
        self.window.start += seconds
        self.window.untimed_steps += 1

    def on_train_stats(self, iteration: int, stats: dict[str, float]) -> None:
        """Objective statistics of the last step (mdm: mean t, masked fraction)."""
        if not self.active:
            return
        log.info("train stats: %s", " | ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        for name, value in stats.items():
            self.scalar(f"train/{name}", value, iteration)

    def on_eval(self, split: str, iteration: int, loss: float) -> None:
        """Report an evaluation under the objective's names (mdm: negative ELBO, ppl bound)."""
        if not self.active:
            return
        ppl = math.exp(min(loss, 50.0))
        o = self.objective
        log.info("%s %s at iteration %d: %.4f | %s %.3f", split, o.eval_label, iteration, loss,
                 o.ppl_metric.replace("_", " "), ppl)
        self.scalar(f"{split}/{o.eval_metric}", loss, iteration)
        self.scalar(f"{split}/{o.ppl_metric}", ppl, iteration)
        self.events.write("eval", split=split, iteration=iteration, loss=loss, ppl=ppl)

    def close(self) -> None:
        """Flush TensorBoard, finish the W&B run, close the event log."""
        self.events.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
