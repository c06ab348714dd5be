"""Optimizers against AdamW, measured in the same run.

1. Step cost: seconds of ``optimizer.step()`` per parameter, as a ratio to AdamW's, on the same
   GPT (hidden 512 by default) with the same random gradients.
2. State: optimizer-state bytes per parameter after a few steps.
3. Whole training step: forward + backward + optimizer (+ Sophia's Hessian pass, amortized
   over its interval) per step at a stated tokens/step, as a ratio to AdamW's. Muon's
   Newton-Schulz cost does not depend on the batch, so this ratio falls as tokens/step grow.
4. Quality: validation loss after a fixed number of steps on the bundled Shakespeare corpus
   (each optimizer at its own LR, same data, model and schedule shape).
5. Layouts (``bench/optimizer_layouts.py``): Muon's and dshampoo's whole step against AdamW's at
   one process, DP=2 ZeRO-0/1 and TP=2 (gloo processes), and the optimizer-state bytes per
   parameter per rank.

    .venv/bin/python bench/optimizers.py                       # every registered optimizer
    .venv/bin/python bench/optimizers.py --optimizers adamw,muon --quality-steps 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
os.environ.setdefault("DS_ACCELERATOR", "cpu")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.distributed import destroy_distributed, init_distributed  # noqa: E402
from megatron.model.gpt import GPTModel  # noqa: E402
from megatron.optimizer import OPTIMIZERS, get_optimizer_spec  # noqa: E402
from megatron.optimizer.param_groups import split_param_groups  # noqa: E402
from megatron.plan import resolve  # noqa: E402

# Peak LRs for the quality run (tuned coarsely on the demo corpus; schedule-free uses a constant LR).
QUALITY_LR = {"adamw": 2e-3, "adam": 2e-3, "muon": 2e-2, "schedulefree": 2e-3, "dshampoo": 2e-3,
              "sgd": 0.3, "lion": 3e-4, "lamb": 1e-2, "adopt": 2e-3, "soap": 2e-3, "sophia": 3e-3}
# Sophia's rho: 0.04 (the paper's, at 125M+ parameters and ~0.5M tokens/step) clips 98% of the
# coordinates here (sign momentum); 20 leaves ~86% unclipped and trains best at this size.
QUALITY_FLAGS = {"sophia": ["--sophia-rho", "20"]}
CONSTANT_LR = {"schedulefree"}


def model_flags(hidden: int, layers: int, micro_batch: int = 4, seq: int = 128) -> list[str]:
    return ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", "8",
            "--seq-length", str(seq), "--micro-batch-size", str(micro_batch), "--normalization", "rmsnorm",
            "--swiglu", "--disable-bias-linear", "--tokenizer-type", "byte"]


def step_cost(names: list[str], hidden: int, layers: int, steps: int) -> dict[str, tuple[float, float]]:
    """name -> (seconds per step per parameter, state bytes per parameter)."""
    flags = [*model_flags(hidden, layers), "--mock-data", "--vocab-size", "258", "--train-iters", "10"]
    plan = resolve(parse_args(flags).config, DistEnv())
    init_distributed(plan, DistEnv())
    out = {}
    try:
        model = GPTModel(plan.model)
        params = list(model.parameters())
        n = sum(p.numel() for p in params)
        gen = torch.Generator().manual_seed(0)
        grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
        for name in names:
            spec = get_optimizer_spec(name)
            cfg = parse_args([*flags, "--optimizer", name]).config.optim
            groups = split_param_groups(model.named_parameters(), policy=spec.param_policy,
                                        weight_decay=cfg.weight_decay)
            opt = spec.build(groups, cfg, cfg.options.get(name))
            if spec.train_mode is not None:
                spec.train_mode(opt)  # schedule-free steps in train mode
            times = []
            for k in range(steps + 2):
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.clone()
                start = time.perf_counter()
                opt.step()
                if k >= 2:
                    times.append(time.perf_counter() - start)
            state = sum(t.numel() * t.element_size() for s in opt.state.values()
                        for t in s.values() if torch.is_tensor(t))
            out[name] = (statistics.median(times) / n, state / n)
    finally:
        destroy_distributed()
    return out


def train_step_cost(names: list[str], hidden: int, layers: int, seq: int, micro_batch: int,
                    steps: int) -> dict[str, float]:
    """name -> mean seconds of a whole training step (forward, backward, optimizer, and any
    ``before_step`` work such as Sophia's Hessian pass) over ``steps`` consecutive iterations
    starting at iteration 10 (Sophia's default interval puts one Hessian pass in every 10),
    timed in interleaved blocks."""
    from megatron.data.loader import Batch
    from megatron.trainer.engine import TrainEngine

    base = [*model_flags(hidden, layers, micro_batch, seq), "--mock-data",
            "--vocab-size", "258", "--train-iters", "1000", "--lr", "1e-3"]
    plan = resolve(parse_args(base).config, DistEnv())
    ctx = init_distributed(plan, DistEnv())
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 258, (micro_batch, seq + 1), generator=gen)
    batch = Batch(data[:, :-1], data[:, 1:], torch.ones(micro_batch, seq),
                  torch.zeros(micro_batch, dtype=torch.long))
    try:
        engines = {name: TrainEngine(resolve(parse_args([*base, "--optimizer", name]).config,
                                             DistEnv()), ctx) for name in names}
        for engine in engines.values():
            engine.train_step([batch], iteration=1)  # warm-up
        # Interleaved blocks of 2 steps, so machine noise hits every optimizer alike.
        spent = dict.fromkeys(names, 0.0)
        for first in range(0, steps, 2):
            for name, engine in engines.items():
                start = time.perf_counter()
                for i in range(first, min(first + 2, steps)):
                    engine.train_step([batch], iteration=10 + i)
                spent[name] += time.perf_counter() - start
    finally:
        destroy_distributed()
    return {name: total / steps for name, total in spent.items()}


def quality(name: str, steps: int) -> float | None:
    from megatron.trainer.loop import train
    from tools.prepare_default_corpus import main as prepare

    prepare()
    decay = "constant" if name in CONSTANT_LR else "cosine"
    flags = [*model_flags(128, 2, micro_batch=16), "--data-file-list", "ALCF/data-lists/shakespeare.txt",
             "--split", "90,5,5", "--optimizer", name, "--lr", str(QUALITY_LR.get(name, 1e-3)),
             "--lr-decay-style", decay, "--lr-warmup-iters", str(steps // 10),
             "--train-iters", str(steps), "--log-interval", str(steps), "--eval-iters", "10",
             *QUALITY_FLAGS.get(name, [])]
    plan = resolve(parse_args(flags).config, DistEnv())
    return train(plan, DistEnv()).valid_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default=",".join(sorted(OPTIMIZERS)))
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--train-step-optimizers", default="adamw,muon,sophia",
                        help="optimizers timed over whole training steps ('' to skip)")
    parser.add_argument("--train-seq-length", type=int, default=512)
    parser.add_argument("--train-micro-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--quality-steps", type=int, default=150)
    parser.add_argument("--quality-optimizers", default="adamw,muon,schedulefree,dshampoo,sophia")
    parser.add_argument("--layout-steps", type=int, default=6,
                        help="steps per layout of the muon/dshampoo-vs-adamw layout table (0 to skip)")
    args = parser.parse_args()
    names = [n for n in args.optimizers.split(",") if n in OPTIMIZERS]
    if "adamw" not in names:
        names.insert(0, "adamw")
    cost = step_cost(names, args.hidden_size, args.num_layers, args.steps)
    base = cost["adamw"][0]
    print(f"optimizer step at hidden {args.hidden_size}, {args.num_layers} layers, CPU, "
          f"{torch.get_num_threads()} threads (baseline: adamw)")
    print(f"{'optimizer':<14}{'ns/param/step':>15}{'ratio to adamw':>16}{'state bytes/param':>19}")
    for name in names:
        per_param, state = cost[name]
        print(f"{name:<14}{per_param * 1e9:>15.2f}{per_param / base:>16.2f}{state:>19.1f}")
    timed = [n for n in args.train_step_optimizers.split(",") if n in OPTIMIZERS]
    if timed:
        if "adamw" not in timed:
            timed.insert(0, "adamw")
        tokens = args.train_seq_length * args.train_micro_batch
        full = train_step_cost(timed, args.hidden_size, args.num_layers, args.train_seq_length,
                               args.train_micro_batch, args.train_steps)
        print(f"\nwhole training step (forward + backward + optimizer) at hidden {args.hidden_size}, "
              f"{args.num_layers} layers, {tokens} tokens/step, mean of {args.train_steps} steps "
              "(baseline: adamw)")
        print(f"{'optimizer':<14}{'s/step':>10}{'ratio to adamw':>16}")
        for name in timed:
            print(f"{name:<14}{full[name]:>10.3f}{full[name] / full['adamw']:>16.2f}")
    if args.layout_steps:
        from bench.optimizer_layouts import layout_table

        print(f"\nmuon and dshampoo vs adamw by layout (hidden 256, 2 layers, 2048 tokens/step, gloo, "
              f"1 thread/rank, mean of {args.layout_steps} steps)")
        for row in layout_table(256, 2, 256, 8, args.layout_steps, ("muon", "dshampoo")):
            print(row)
    if args.quality_steps:
        print(f"\nvalidation loss after {args.quality_steps} steps (hidden 128, 2 layers, Shakespeare bytes)")
        for name in args.quality_optimizers.split(","):
            if name in OPTIMIZERS:
                loss = quality(name, args.quality_steps)
                extra = " ".join(QUALITY_FLAGS.get(name, []))
                print(f"{name:<14} lr {QUALITY_LR.get(name, 1e-3):<8g} valid loss {loss:.4f}  {extra}")


if __name__ == "__main__":
    main()
