#!/usr/bin/env python3
"""Sample text from a checkpoint: masked-diffusion reveal for ``--objective mdm`` runs, plain
left-to-right sampling for ``ar`` runs (the objective is read from the checkpoint).

    python tools/generate.py --load SAVE --prompt "ROMEO:" --gen-length 128 \
        --steps 128 --alg confidence --temperature 0.7
    python tools/generate.py --load AR_SAVE --prompt "ROMEO:" --gen-length 128

mdm options: ``--steps`` (default: the generation length, one token per step with
``--alg confidence``), ``--alg origin`` (random reveal, the reverse of the forward process) or
``confidence``, ``--temperature`` (0: deterministic argmax), ``--cfg-scale`` (classifier-free
guidance against the prompt-masked input), ``--eps``. Errors exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402

PROG = "generate.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="SAVE (its latest), SAVE/global_stepN or a universal checkpoint")
    p.add_argument("--objective", choices=["ar", "mdm"], help="expected objective (checked against the checkpoint)")
    p.add_argument("--prompt", default="", help="text the samples continue (never changed)")
    p.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    p.add_argument("--steps", type=int, help="mdm: reverse-process steps (default: --gen-length)")
    p.add_argument("--alg", choices=["origin", "confidence"], default="origin", help="mdm: reveal order")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: argmax)")
    p.add_argument("--cfg-scale", type=float, default=0.0, help="mdm: classifier-free guidance scale w")
    p.add_argument("--eps", type=float, default=1e-5, help="mdm: final time of the reverse process")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    for flag, value in (("--gen-length", args.gen_length), ("--steps", args.steps), ("--num-samples", args.num_samples)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {value}")
    if args.temperature < 0 or args.cfg_scale < 0 or not 0 <= args.eps < 1:
        raise ConfigError("--temperature/--cfg-scale: must be >= 0 (and --eps in [0, 1))")
    return args


def generate(args: argparse.Namespace) -> list[str]:
    """The decoded samples of ``args``."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron.distributed import destroy_distributed
    from megatron.objectives.generate import load_generator

    with tempfile.TemporaryDirectory() as rdzv:
        dist.init_process_group("gloo", init_method=f"file://{rdzv}/rdzv", rank=0, world_size=1)
        parallel_state.initialize_model_parallel(1, 1, create_gloo_process_groups=False)
        try:
            gen = load_generator(args.load, args.objective)
            options = {"temperature": args.temperature}
            if gen.objective == "mdm":
                options.update(steps=args.steps or args.gen_length, alg=args.alg,
                               cfg_scale=args.cfg_scale, eps=args.eps)
            ids = gen.sample(gen.tokenizer.encode(args.prompt), gen_length=args.gen_length,
                             num_samples=args.num_samples, seed=args.seed, **options)
            return [gen.tokenizer.decode(row) for row in ids]
        finally:
            destroy_distributed()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        samples = generate(args)
    except (ConfigError, CheckpointError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for i, text in enumerate(samples):
        print(f"--- sample {i} ---\n{args.prompt}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
