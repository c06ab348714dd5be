#!/usr/bin/env python3
"""Write the two-stage plan of a metadata run with a plain-text cooldown (MeCo) for the stage
runner (``tools/continual_run.py --plan``).

    python tools/metadata_cooldown_plan.py --name meco --output-dir outputs \
        --metadata-data-file-list lists/meta.txt --plain-data-file-list lists/plain.txt \
        --metadata-cooldown-fraction 0.1 --train-iters 1000 --output meco.yaml

Stage 1 trains on the metadata lists for (1 - f) of the iterations (with the warmup), stage 2
on the plain lists for the rest, carrying optimizer and LR schedule (one schedule over both) and
restarting the data position.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.metadata.cooldown import CooldownRequest, cooldown_plan  # noqa: E402


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--lr-decay-style", default="cosine", help="one schedule over both stages")
    p.add_argument("--init-checkpoint", default=None, help="weights to start from")
    p.add_argument("--eval-data", default=None, help="evaluation list of both stages")
    p.add_argument("--output", default="-", help="plan file (default: stdout)")
    args = p.parse_args(argv)
    try:
        plan = cooldown_plan(
            CooldownRequest(
                name=args.name,
                output_dir=args.output_dir,
                metadata_data_file_list=args.metadata_data_file_list,
                plain_data_file_list=args.plain_data_file_list,
                cooldown_fraction=args.metadata_cooldown_fraction,
                train_iters=args.train_iters,
                lr=args.lr,
                min_lr=args.min_lr,
                warmup_iters=args.lr_warmup_iters,
                lr_decay_style=args.lr_decay_style,
                init_checkpoint=args.init_checkpoint,
                eval_data=args.eval_data,
            )
        )
    except ConfigError as e:
        print(f"metadata_cooldown_plan.py: error: {e}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(plan, sort_keys=False)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
