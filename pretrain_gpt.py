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
import warnings

# megatron-core warns on import that the optional Transformer Engine/Apex kernels are absent; we
# use neither (our layers and optimizers are plain torch), so the warnings only add noise.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for configuration errors)."""
    from megatron.config import ConfigError, DistEnv, parse_args, resolve
    from megatron.config.deepspeed import to_deepspeed_config
    from megatron.data.data_list import check_data_inputs

    try:
        args = parse_args(argv)
        env = DistEnv.from_environ()
        plan = resolve(args.config, env)
        ds_config = to_deepspeed_config(plan)
        check_data_inputs(plan.config)
    except ConfigError as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"plan": plan.summary(), "deepspeed": ds_config}, indent=2))
        return 0
    from megatron.trainer.loop import train

    try:
        train(plan, env)
    except ConfigError as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
