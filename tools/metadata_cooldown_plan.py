#!/usr/bin/env python3
"""Write (and optionally run) the two-stage plan of a metadata run with a plain-text cooldown
(MeCo) for the stage runner (``tools/continual_run.py --plan``).

    python tools/metadata_cooldown_plan.py --name meco --output-dir outputs \
        --metadata-data-file-list lists/meta.txt --plain-data-file-list lists/plain.txt \
        --metadata-cooldown-fraction 0.1 --train-iters 1000 --config ALCF/presets/demo.yaml \
        --output meco.yaml
    CPT_PLAN=meco.yaml bash train_alcf.sh        # or: python tools/continual_run.py --plan meco.yaml
    python tools/metadata_cooldown_plan.py ... --output meco.yaml --run   # both at once

Stage ``metadata`` trains on the metadata lists for (1 - f) of the iterations (with the
warmup), stage ``cooldown`` on the plain lists for the rest, carrying optimizer and LR schedule
(one continuing schedule over both, no rewarm) and restarting the data position.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

import yaml  # noqa: E402

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.metadata.cooldown import CooldownRequest, cooldown_plan, plan_header  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--name", default="metadata-cooldown", help="plan name")
    p.add_argument("--output-dir", required=True, help="runner output root")
    p.add_argument("--metadata-data-file-list", required=True, help="stage 1 data (with prefixes)")
    p.add_argument("--plain-data-file-list", required=True, help="stage 2 data (plain)")
    p.add_argument("--metadata-cooldown-fraction", type=float, default=0.1, help="share of stage 2")
    p.add_argument("--train-iters", type=int, required=True, help="iterations of both stages")
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR")
    p.add_argument("--min-lr", type=float, default=3e-4, help="final LR")
    p.add_argument("--lr-warmup-iters", type=int, default=5, help="warmup (in stage 1)")
    p.add_argument("--schedule", default="cosine-continued",
                   help="continuing meta-schedule over both stages (cosine-continued, wsd, ...)")
    p.add_argument("--constant-lr", type=float, default=None, help="inf-cosine/inf-rsqrt: eta_const")
    p.add_argument("--init-checkpoint", default=None, help="weights to start from")
    p.add_argument("--eval-data", default=None, help="evaluation list of both stages")
    p.add_argument("--config", default=None, help="pretrain_gpt.py --config preset of both stages")
    p.add_argument("--launcher", choices=("train_alcf", "python"), default="train_alcf",
                   help="how stages start (train_alcf: bash train_alcf.sh)")
    p.add_argument("--output", default="-", help="plan file (default: stdout)")
    p.add_argument("--run", action="store_true", help="run the plan now (needs --output FILE)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.run and args.output == "-":
            raise ConfigError("--run: give --output FILE (the runner reads the plan from a file)")
        req = CooldownRequest(
            name=args.name,
            output_dir=args.output_dir,
            metadata_data_file_list=args.metadata_data_file_list,
            plain_data_file_list=args.plain_data_file_list,
            cooldown_fraction=args.metadata_cooldown_fraction,
            train_iters=args.train_iters,
            lr=args.lr,
            min_lr=args.min_lr,
            warmup_iters=args.lr_warmup_iters,
            schedule=args.schedule,
            constant_lr=args.constant_lr,
            init_checkpoint=args.init_checkpoint,
            eval_data=args.eval_data,
            config=args.config,
            launcher=args.launcher,
        )
    except ConfigError as e:
        print(f"metadata_cooldown_plan.py: error: {e}", file=sys.stderr)
        return 2
    text = plan_header(req) + yaml.safe_dump(cooldown_plan(req), sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    with open(args.output, "w") as f:
        f.write(text)
    if not args.run:
        return 0
    from tools.continual_run import main as run_plan

    return run_plan(["--plan", args.output])


if __name__ == "__main__":
    sys.exit(main())
