#!/usr/bin/env python3
"""GPT pretraining entry point: parse, resolve, train.

    python pretrain_gpt.py --data-file-list LIST --train-iters 100 ...   (one process)
    torchrun --nproc-per-node 2 pretrain_gpt.py --tensor-model-parallel-size 2 ...
    python pretrain_gpt.py ... --dry-run    (print the plan and DeepSpeed config, start nothing)

Most users start it through ``train_alcf.sh``, which turns environment variables into flags.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 done, 2 configuration error, 1 a
    checkpoint or data error, 75 stopped early with work left (a job script requeues)."""
    from megatron.config import ConfigError, DistEnv, parse_args
    from megatron.data.data_list import check_data_inputs
    from megatron.plan import resolve

    try:
        args = parse_args(argv)
        env = DistEnv.from_environ()
        plan = resolve(args.config, env, args.sources())
        check_data_inputs(plan.config)
    except ConfigError as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 2
    paths = {"save": plan.config.checkpoint.save, "tensorboard_dir": plan.config.logging.tensorboard_dir}
    if args.dry_run:
        from megatron.data.integrity import check_data_files

        try:
            check_data_files(plan)  # headers, sizes, sampled ids, tokenizer sidecars
        except ConfigError as e:
            print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
            return 2

        text = json.dumps({"plan": plan.summary(), "paths": paths, "schedule": plan.schedule_state,
                           "sources": plan.sources, "deepspeed": plan.deepspeed}, indent=2, default=str)
        print(text)
        if args.dry_run_file is not None:  # complete or absent: written aside, then renamed
            import os

            tmp = f"{args.dry_run_file}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, args.dry_run_file)
        return 0
    if env.rank == 0:
        write_run_record(plan, sys.argv if argv is None else ["pretrain_gpt.py", *argv])
    import time

    from megatron.checkpointing.lifecycle import EXIT_STOPPED
    from megatron.checkpointing.metadata import CheckpointError
    from megatron.trainer.loop import train
    from megatron.trainer.nonfinite import NonFiniteLoss

    started = time.perf_counter()
    try:
        result = train(plan, env)
    except ConfigError as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLoss) as e:  # a sentence, not a traceback
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 1
    if env.rank == 0:
        write_run_result(plan, result, time.perf_counter() - started)
    # Stopped early (SIGTERM, kill switch, exit duration): 75 tells a job script "more to do".
    return EXIT_STOPPED if result.stop_reason is not None else 0


def write_run_result(plan, result, seconds: float) -> None:  # noqa: ANN001
    """``run_result.json`` (megatron/trainer/run_result.py) beside the run record."""
    from megatron.trainer import run_result

    save = None if plan.config.train.skip_train else plan.config.checkpoint.save  # never into a checkpoint
    where = run_result.result_dir(save, plan.config.logging.tensorboard_dir)
    if where is None or plan.config.schedule.lr_finder:
        return
    if not result.losses and not plan.config.train.skip_train:
        return  # a relaunch of a finished run trained nothing: its directory stays untouched
    record = run_result.build_result(
        plan.summary(), iteration=result.iteration, stop_reason=result.stop_reason,
        train_loss=result.train_loss, test_loss=result.test_loss,
        valid_history=list(result.valid_history), seconds=seconds,
        earlier=run_result.read_result(where))
    run_result.write_result(where, record)


def write_run_record(plan, argv: list[str]) -> None:  # noqa: ANN001
    """The command line, resolved plan and relevant environment, next to the checkpoints/logs."""
    import os
    import time

    from megatron.checkpointing.metadata import flat_config
    from megatron.config.env import launch_environment

    where = plan.config.checkpoint.save or plan.config.logging.tensorboard_dir
    if plan.config.train.skip_train:  # evaluation only: nothing goes into a checkpoint directory
        where = plan.config.logging.tensorboard_dir
    if where is None:
        return
    os.makedirs(where, exist_ok=True)
    record = {"argv": argv, "plan": plan.summary(), "sources": plan.sources,
              "config": flat_config(plan), "deepspeed": plan.deepspeed,
              "environment": launch_environment()}
    path = os.path.join(where, f"run-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
