#!/usr/bin/env python3
"""The continual-pretraining demo's numbers: a 3 x 3 table of final losses (each stage's final
checkpoint on every stage's held-out data) and the runner's overhead per stage.

    python tools/continual_run.py --plan ALCF/presets/cpt-demo.yaml   # first (or it runs it)
    python bench/cpt_demo.py [--plan ALCF/presets/cpt-demo.yaml] [--eval-iters 40]

Each cell loads the checkpoint weights (``--finetune``) into the trainer and evaluates
``--eval-iters`` global batches of the held-out list, the same batches for every checkpoint.
Overhead = the stage process's wall time + the runner's own bookkeeping - the training steps'
time (from the step log lines' rate): start-up, final evaluation and save, exit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401


def held_out_loss(plan, ckpt_spec, eval_spec, eval_iters: int) -> float:
    """Mean loss of ``ckpt_spec``'s final checkpoint on ``eval_spec``'s held-out list."""
    from megatron.config import DistEnv, parse_args
    from megatron.continual.launch import to_argv
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.plan import resolve
    from megatron.trainer.loop import Trainer

    # Evaluation only: the stage's LR schedule does not apply (and would not fit one step).
    schedule = {"lr_warmup_iters", "lr_decay_style", "lr_decay_iters", "lr_rsqrt_cooldown", "min_lr",
                "lr_constant_plus_cooldown", "lr_constant_plus_cooldown_frac", "constant_lr",
                "lr_cooldown_fraction", "lr_constant_fraction"}
    flags = {**{k: v for k, v in ckpt_spec.flags.items() if k not in schedule},
             "lr_decay_style": "constant", "data_file_list": ckpt_spec.data_list_path,
             "valid_data_file_list": eval_spec.eval_list_path, "load": ckpt_spec.directory,
             "finetune": True, "save": None, "save_interval": None, "tensorboard_dir": None, "train_iters": 1,
             "eval_iters": eval_iters, "kill_switch_file": None}
    run = resolve(parse_args(to_argv(flags)).config, DistEnv())
    ctx = init_distributed(run, DistEnv())
    try:
        trainer = Trainer(run, ctx)
        state = trainer.restore()
        return trainer.evaluate(state, "valid")
    finally:
        trainer.reporter.close()
        trainer.stop.close()
        destroy_distributed()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", default=os.path.join(ROOT, "ALCF", "presets", "cpt-demo.yaml"))
    p.add_argument("--eval-iters", type=int, default=40)
    args = p.parse_args()
    from megatron.continual.launch import Launch
    from megatron.continual.markers import read_marker
    from megatron.continual.plan import load_plan
    from megatron.continual.runner import PlanRunner

    plan = load_plan(args.plan)
    specs = PlanRunner(plan, Launch(launcher="python")).prepare()[0]
    if any(read_marker(s.directory) is None for s in specs):
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "continual_run.py"), "--plan", args.plan],
                       check=True)
    keys = [s.key for s in specs]
    table = {c.key: {e.key: held_out_loss(plan, c, e, args.eval_iters) for e in specs} for c in specs}
    print("\nfinal loss (rows: checkpoint after stage; columns: held-out data of stage)")
    print("| after \\ on | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for c in keys:
        print(f"| {c} | " + " | ".join(f"{table[c][e]:.3f}" for e in keys) + " |")
    print("\nseconds per stage")
    print("| stage | iterations | stage process | training steps | outside training | runner bookkeeping |")
    print("|---|---|---|---|---|---|")
    for s in specs:
        m = read_marker(s.directory)
        sec = m["seconds"]
        outside = (sec["outside_training"] or 0) + sec["runner"]
        print(f"| {s.key} | {m['end_iteration']} | {sec['process']:.1f} | {sec['training']:.1f} | "
              f"{outside:.1f} | {sec['runner']:.2f} |")
    with open(os.path.join(plan.root, "demo_table.json"), "w") as f:
        json.dump({"losses": table, "seconds": {s.key: read_marker(s.directory)["seconds"] for s in specs}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
