"""The continual stage runner: run a plan's stages in order, resumably (spec section 7).

For each stage: its LR flags (meta-schedule), its blended data list (replay), then one
``pretrain_gpt.py`` run through the launcher with ``--save <root>/<key>`` and

* ``--load <previous final> --finetune`` (fresh optimizer and schedule: TiC-LM), or
* ``--load <previous final> --reset-data-state`` (optimizer and schedule continue, the data
  stream restarts on the new list: AuroraGPT / MeCo), or
* ``--load <root>/<key>`` (normal resume) when the stage already has checkpoints.

A stage whose layout (TP/PP, or DP/ZeRO with partitioned optimizer states) differs from the
checkpoint it loads gets that checkpoint converted to universal first. After the final save the
runner writes ``STAGE_DONE.json`` (``markers.py``). SIGTERM, the kill switch ``<root>/STOP`` and
a time limit stop the running stage at its next step (it saves) and the runner exits with
``EXIT_STOPPED`` (the kill switch stays: the next run, e.g. a requeued job, finds it at start,
removes it and exits ``EXIT_DONE`` without running, so a job chain ends); rerunning the plan
continues inside that stage. One runner per plan root (``<root>/.lock``). With ``eval_after_each_stage``
each finished stage's row of the forgetting matrix is evaluated before the next stage starts
(``stage_eval.py``).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from megatron.checkpointing.lifecycle import EXIT_STOPPED, consume_kill_switch
from megatron.checkpointing.lock import DirectoryLock
from megatron.config.fields import ConfigError
from megatron.continual.launch import Launch, Runner, convert_to_universal, to_argv
from megatron.continual.markers import (
    STARTED_FILE,
    check_marker,
    config_hash,
    read_marker,
    write_marker,
)
from megatron.continual.plan import Plan, PlanError
from megatron.continual.stages import StageSpec, build_stage_specs
from megatron.continual.lr_check import predicted_lrs, started_lrs
from megatron.trainer.events import EventLogError

log = logging.getLogger(__name__)

EXIT_DONE = 0
KILL_SWITCH = "STOP"


class StageFailed(ConfigError):
    """A stage's trainer failed, or did something the plan did not ask for."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Checkpoint:
    """A finished checkpoint a stage can start from.

    Attributes:
        load_dir: The --save directory (``latest`` names the checkpoint).
        tag: ``global_step<N>``.
        metadata: Its run metadata.
        universal: A universal checkpoint (``tools/import_checkpoint.py``): ``load_dir`` is it.
    """

    load_dir: str
    tag: str
    metadata: dict[str, Any]
    universal: bool = False

    @property
    def iteration(self) -> int:
        """Steps the checkpoint has seen."""
        return int(self.metadata["iteration"])


def read_checkpoint(load_dir: str, where: str, tag: str | None = None) -> Checkpoint | None:
    """The checkpoint ``latest`` (or ``tag``) names in ``load_dir``; None when there is none yet.

    Raises:
        PlanError: ``latest`` names a missing directory, or its metadata is missing (half-written).
    """
    import json

    if tag is None:
        pointer = os.path.join(load_dir, "latest")
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            tag = f.read().strip()
    path = os.path.join(load_dir, tag, "run_metadata.json")
    try:
        with open(path) as f:
            return Checkpoint(load_dir=load_dir, tag=tag, metadata=json.load(f))
    except (OSError, ValueError):
        raise PlanError(f"{where}: {os.path.join(load_dir, tag)} is missing or half-written (no readable "
                        "run_metadata.json); point at a complete checkpoint") from None


def resolve_init(plan: Plan) -> Checkpoint | None:
    """The checkpoint stage 0 starts from: the base run's pre-cooldown one, else its latest.

    A pre-cooldown checkpoint that is not ``latest`` is exposed through ``<root>/_init`` (a
    ``latest`` file and a link), so the trainer's ``--load`` picks it.

    Raises:
        PlanError: Missing directory, no checkpoint, or a half-written one.
    """
    path = plan.init_checkpoint
    if path is None:
        return None
    where = f"{plan.path}: init_checkpoint"
    if not os.path.isdir(path):
        raise PlanError(f"{where}: no such directory {path}")
    if os.path.isdir(os.path.join(path, "zero")):  # an imported (or converted) universal checkpoint
        return Checkpoint(load_dir=path, tag="", universal=True,
                          metadata=read_checkpoint(os.path.dirname(path), where, os.path.basename(path)).metadata)
    latest = read_checkpoint(path, where)
    if latest is None:
        raise PlanError(f"{where}: {path} holds no checkpoint (no 'latest' file)")
    pre = os.path.join(path, "pre_cooldown_checkpoint.txt")
    if not os.path.isfile(pre):
        return latest
    with open(pre) as f:
        tag = f.read().strip()
    chosen = read_checkpoint(path, where, tag)
    if tag == latest.tag:
        return chosen
    link_dir = os.path.join(plan.root, "_init")
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, tag)
    if not os.path.islink(link):
        os.symlink(os.path.abspath(os.path.join(path, tag)), link)
    with open(os.path.join(link_dir, "latest"), "w") as f:
        f.write(tag)
    log.info("init_checkpoint: starting from the pre-cooldown checkpoint %s/%s", path, tag)
    return Checkpoint(load_dir=link_dir, tag=tag, metadata=chosen.metadata)


def layout(summary: dict[str, Any], zero_stage: int) -> tuple[int, int, int, int]:
    """(TP, PP, DP, ZeRO stage)."""
    return (summary["tp"], summary["pp"], summary["dp"], zero_stage)


def needs_universal(saved: tuple, now: tuple) -> bool:
    """The trainer's rule: TP and PP must match; with ZeRO >= 1 DP and the stage must too."""
    return saved[:2] != now[:2] or (max(saved[3] or 0, now[3]) > 0 and saved != now)


def stage_iterations(plan: Plan, launch: Launch) -> tuple[int, ...]:
    """Iterations per stage; stages given in tokens are resolved by a dry run of the trainer."""
    iters = []
    for stage in plan.stages:
        if stage.train_iters is not None:
            iters.append(stage.train_iters)
            continue
        flags = {**({"config": plan.config} if plan.config else {}), **plan.args, **stage.args,
                 "data_file_list": stage.data, "train_tokens": int(stage.tokens)}
        dry = launch.dry_run(flags, stage.nproc, f"{plan.path}: stage {stage.key!r}")
        iters.append(int(dry["plan"]["train_iters"]))
    return tuple(iters)


class PlanRunner:
    """Runs one plan. ``run()`` returns ``EXIT_DONE`` or ``EXIT_STOPPED``.

    Args:
        plan: The checked plan.
        launch: How stage processes start.
        time_limit_mins: Stop (saving) this long after start; stages get the remaining time.
    """

    def __init__(self, plan: Plan, launch: Launch, time_limit_mins: float | None = None):
        self.plan = plan
        self.launch = launch
        self.deadline = None if time_limit_mins is None else time.monotonic() + 60 * time_limit_mins
        self.kill_switch = os.path.join(plan.root, KILL_SWITCH)
        self.checks_s = 0.0  # the plan-wide checks at start (dry runs of every stage)

    def prepare(self) -> tuple[list[StageSpec], dict[str, dict], dict[str, dict], Checkpoint | None]:
        """Every check, before any stage starts: plan, init checkpoint, markers, dry runs."""
        plan = self.plan
        if plan.prepare:
            if subprocess.run([self.launch.python, plan.prepare], check=False).returncode != 0:
                raise PlanError(f"{plan.path}: prepare: {plan.prepare} failed")
        os.makedirs(plan.root, exist_ok=True)
        init = resolve_init(plan)
        specs = build_stage_specs(plan, stage_iterations(plan, self.launch))
        markers = {s.key: m for s in specs if (m := read_marker(s.directory)) is not None}
        for i, spec in enumerate(specs):
            if spec.key in markers:
                check_marker(spec.key, markers[spec.key], spec.definition())
                if i > 0 and specs[i - 1].key not in markers:
                    raise PlanError(f"stage {spec.key!r} is marked finished but the stage before it, "
                                    f"{specs[i - 1].key!r}, is not; the stage order changed")
        dry = {}
        for spec in specs:
            if spec.key in markers:
                continue
            started = read_marker(spec.directory, STARTED_FILE)
            if started is not None and read_checkpoint(spec.directory, f"stage {spec.key!r}") is not None:
                check_marker(spec.key, started, spec.definition(), "started")  # resume: same definition
            os.makedirs(spec.directory, exist_ok=True)
            from megatron.data.mixing import write_atomic

            for path, text in ((spec.data_list_path, spec.data_list), (spec.eval_list_path, spec.eval_list)):
                if text is not None and not _same_text(path, text):
                    write_atomic(path, text)
            first = _universal_init(init) if spec.index == 0 and init is not None and init.universal else {}
            dry[spec.key] = self.launch.dry_run({**spec.flags, **_dry_load(specs, spec, init), **first,
                                                 "data_file_list": spec.data_list_path},
                                                spec.stage.nproc, f"{plan.path}: stage {spec.key!r}")
        return specs, markers, dry, init

    def run(self) -> int:
        """Run every unfinished stage in order (holding the plan root's lock)."""
        with DirectoryLock(self.plan.root, f"{self.plan.path}: plan root"):
            if consume_kill_switch(self.kill_switch):
                return EXIT_DONE  # a stopped job chain ends here
            return self._run()

    def _run(self) -> int:
        began = time.monotonic()
        specs, markers, dry, prev = self.prepare()
        self.checks_s = time.monotonic() - began
        log.info("plan %s: checked %d stages in %.1f s (data lists, dry runs)", self.plan.name,
                 len(specs), self.checks_s)
        with Runner() as runner:
            for spec in specs:
                if spec.key in markers:
                    marker = markers[spec.key]
                    log.info("stage %s: finished (%s), skipped", spec.key, marker["finished"])
                    prev = read_checkpoint(spec.directory, f"stage {spec.key!r}", marker["tag"])
                    continue
                if self._should_stop(runner):
                    return EXIT_STOPPED
                prev = self.run_stage(runner, spec, dry[spec.key], prev)
                if prev is None:
                    return EXIT_STOPPED
                self._after_stage(specs, spec)
        self._evaluate_pending(specs)  # rows a crash left unevaluated; nothing when none
        log.info("plan %s: every stage finished", self.plan.name)
        return EXIT_DONE

    def _evaluate_pending(self, specs: list[StageSpec]) -> None:
        """``eval_after_each_stage``: the matrix rows of finished stages not evaluated yet."""
        if not self.plan.eval_after_each_stage:
            return
        from megatron.continual.stage_eval import pending, run_eval_tool

        rows = pending(self.plan.root, [s.key for s in specs], [s.directory for s in specs])
        if rows:
            run_eval_tool(self.plan, self.launch.python, rows)

    def _should_stop(self, runner: Runner) -> bool:
        if runner.stop_requested or os.path.exists(self.kill_switch):
            log.info("stopping before the next stage (signal or kill switch); rerun the plan to continue")
            return True
        if self.deadline is not None and self.deadline - time.monotonic() < 60:
            log.info("stopping before the next stage: the time limit is reached")
            return True
        return False

    def _start_flags(self, spec: StageSpec, dry: dict, prev: Checkpoint | None) -> tuple[dict, int, str]:
        """Flags of this start, the first step it runs, and how it starts."""
        flags = {**spec.flags, "data_file_list": spec.data_list_path, "kill_switch_file": self.kill_switch}
        if self.deadline is not None:
            flags["exit_duration_in_mins"] = max((self.deadline - time.monotonic()) / 60 - 0.5, 0.1)
        own = read_checkpoint(spec.directory, f"stage {spec.key!r}")
        if own is not None:
            return {**flags, "load": spec.directory}, own.iteration, f"resume at iteration {own.iteration}"
        if prev is None:
            return flags, 0, "random init"
        flags["load"] = prev.load_dir
        if prev.universal:  # an import: weights only, at any layout
            return {**flags, **_universal_init(prev)}, 0, f"--finetune from the universal checkpoint {prev.load_dir}"
        now = layout(dry["plan"], dry["deepspeed"]["zero_optimization"]["stage"])
        saved = layout(prev.metadata["plan"], prev.metadata.get("zero_stage", 0))
        if needs_universal(saved, now):
            convert_to_universal(self.launch, prev.load_dir, prev.tag)
            flags["universal_checkpoint"] = True
        how = "reset_data_state" if spec.continues else "finetune"
        flags[how] = True
        start = prev.iteration if spec.continues else 0
        return flags, start, f"--{how.replace('_', '-')} from {prev.load_dir}/{prev.tag}"

    def run_stage(self, runner: Runner, spec: StageSpec, dry: dict, prev: Checkpoint | None) -> Checkpoint | None:
        """Run (or resume) one stage; its final checkpoint, or None when it was stopped."""
        began, started_at = time.monotonic(), _now()
        flags, start, how = self._start_flags(spec, dry, prev)
        end = int(dry["plan"]["train_iters"])
        if "load" not in flags or flags["load"] != spec.directory:
            definition = spec.definition()
            write_marker(spec.directory, {"key": spec.key, "started": started_at, "config": definition,
                                          "config_hash": config_hash(definition)}, STARTED_FILE)
        elif start >= end:  # the final save happened, the marker did not (a crash in between)
            log.info("stage %s: its final checkpoint exists; writing the marker", spec.key)
            final = read_checkpoint(spec.directory, f"stage {spec.key!r}")
            self._write_marker(spec, dry, final, [], {}, started_at, {"runner": 0.0}, [])
            return final
        lrs = predicted_lrs(dry["schedule"], start)
        log.info("stage %s (%d/%d): %s; LR of steps %d-%d: %s; replay %s", spec.key, spec.index + 1,
                 len(self.plan.stages), how, start, start + 2, ", ".join(lrs),
                 dict(zip([k for k, _ in spec.sources], spec.weights, strict=True)))
        argv, env = self.launch.command(flags, spec.stage.nproc)
        before = time.monotonic() - began
        proc = runner.run(argv, env, os.path.join(spec.directory, "stage.log"))
        after_began = time.monotonic()
        if proc.returncode == EXIT_STOPPED or (proc.returncode != 0 and runner.stop_requested):
            log.info("stage %s ended by the stop signal (status %d); rerun the plan to resume it from its "
                     "last checkpoint", spec.key, proc.returncode)
            return None
        if proc.returncode != 0:
            raise StageFailed(f"stage {spec.key!r}: the trainer exited with status {proc.returncode}; "
                              f"see {os.path.join(spec.directory, 'stage.log')}")
        try:
            seen, events = started_lrs(spec.directory)
        except EventLogError as e:
            raise StageFailed(f"stage {spec.key!r}: {e}; the runner checks the stage's first LRs "
                              "against the plan from it") from None
        if seen != lrs:
            raise StageFailed(f"stage {spec.key!r}: the trainer's first LRs {seen} differ from the plan's "
                              f"{lrs}; the schedule did not start where the plan asked")
        final = read_checkpoint(spec.directory, f"stage {spec.key!r}")
        if final is None or final.iteration < end:
            log.info("stage %s stopped at iteration %s of %d; rerun the plan to resume inside it",
                     spec.key, None if final is None else final.iteration, end)
            return None
        seconds = {**proc.timing(events), "runner": round(before + time.monotonic() - after_began, 3),
                   "plan_checks_at_start": round(self.checks_s, 3)}
        self._write_marker(spec, dry, final, argv, env, started_at, seconds, lrs)
        return final

    def _write_marker(self, spec: StageSpec, dry: dict, final: Checkpoint, argv: list[str], env: dict,
                      started_at: str, seconds: dict, lrs: list[str]) -> None:
        definition = spec.definition()
        marker = {
            "key": spec.key, "checkpoint": spec.directory, "tag": final.tag, "iteration": final.iteration,
            "tokens": int(final.metadata["consumed_samples"]) * int(dry["plan"]["seq_length"]),
            "command": " ".join([*(f"{k}={v}" for k, v in env.items()), *argv]),
            "config_hash": config_hash(definition), "config": definition, "started": started_at,
            "finished": _now(), "data_list": spec.data_list_path, "eval_data": spec.stage.eval_data,
            "replay": {"sources": [k for k, _ in spec.sources], "weights": list(spec.weights)},
            "first_lrs": lrs, "end_iteration": int(dry["plan"]["train_iters"]),
            "seconds": seconds,
        }
        write_marker(spec.directory, marker)
        log.info("stage %s finished at iteration %d: %s", spec.key, final.iteration, spec.directory)

    def _after_stage(self, specs: list[StageSpec], spec: StageSpec) -> None:
        self._evaluate_pending(specs)
        if self.plan.delete_previous_checkpoints and spec.index > 0:
            previous = specs[spec.index - 1]
            keep = read_marker(previous.directory)["tag"]
            for entry in sorted(os.listdir(previous.directory)):
                if entry.startswith("global_step") and entry != keep:
                    shutil.rmtree(os.path.join(previous.directory, entry))
                    log.info("delete_previous_checkpoints: deleted %s", os.path.join(previous.directory, entry))


def _dry_load(specs: list[StageSpec], spec: StageSpec, init: Checkpoint | None) -> dict[str, Any]:
    """The load flags a stage with EWC/LwF starts with (its dry run checks them): they anchor on
    the previous stage (or ``init_checkpoint``); the first stage without one is refused."""
    if not (spec.flags.get("ewc_weight") or spec.flags.get("lwf_weight")):
        return {}
    load = specs[spec.index - 1].directory if spec.index > 0 else init.load_dir if init else None
    if load is None:
        flag = "ewc" if spec.flags.get("ewc_weight") else "lwf"
        raise PlanError(f"stage {spec.key!r}: method.{flag}.weight > 0 (--{flag}-weight) anchors on the "
                        "stage before it, and the first stage has no init_checkpoint; set "
                        f"init_checkpoint or method: {{{flag}: {{weight: 0}}}} for this stage")
    return {"load": load, "reset_data_state" if spec.continues else "finetune": True}


def _universal_init(init: Checkpoint) -> dict[str, Any]:
    """Flags of a first stage (and its dry run) from a universal ``init_checkpoint``."""
    return {"load": init.load_dir, "universal_checkpoint": True, "finetune": True}


def _same_text(path: str, text: str) -> bool:
    try:
        with open(path) as f:
            return f.read() == text
    except OSError:
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


__all__ = ["EXIT_DONE", "EXIT_STOPPED", "PlanRunner", "StageFailed", "to_argv"]
