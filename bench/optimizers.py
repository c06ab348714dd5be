"""Optimizers against AdamW, measured in the same run.

1. Step cost: seconds of ``optimizer.step()`` per parameter, as a ratio to AdamW's, on the same
   GPT (hidden 512 by default) with the same random gradients.
2. State: optimizer-state bytes per parameter after a few steps.
3. Quality: validation loss after a fixed number of steps on the bundled Shakespeare corpus
   (each optimizer at its own LR, same data, model and schedule shape).

    .venv/bin/python bench/optimizers.py                       # every registered optimizer
    .venv/bin/python bench/optimizers.py --optimizers adamw,muon --quality-steps 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from megatron.config import DistEnv, parse_args, resolve  # noqa: E402
from megatron.dist import destroy_distributed, init_distributed  # noqa: E402
from megatron.model.gpt import GPTModel  # noqa: E402
from megatron.optimizer import OPTIMIZERS, get_optimizer_spec  # noqa: E402
from megatron.optimizer.param_groups import split_param_groups  # noqa: E402

# Peak LRs for the quality run (tuned coarsely on the demo corpus; schedule-free uses a constant LR).
QUALITY_LR = {"adamw": 2e-3, "adam": 2e-3, "muon": 2e-2, "schedulefree": 2e-3, "dshampoo": 2e-3,
              "sgd": 0.3, "lion": 3e-4, "lamb": 1e-2, "adopt": 2e-3, "soap": 2e-3, "sophia": 1e-3}
CONSTANT_LR = {"schedulefree"}


def model_flags(hidden: int, layers: int, micro_batch: int = 4) -> list[str]:
    return ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", "8",
            "--seq-length", "128", "--micro-batch-size", str(micro_batch), "--normalization", "rmsnorm",
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


def quality(name: str, steps: int) -> float | None:
    from megatron.trainer.loop import train
    from tools.prepare_default_corpus import main as prepare

    prepare()
    decay = "constant" if name in CONSTANT_LR else "cosine"
    flags = [*model_flags(128, 2, micro_batch=16), "--data-file-list", "ALCF/data-lists/shakespeare.txt",
             "--split", "90,5,5", "--optimizer", name, "--lr", str(QUALITY_LR.get(name, 1e-3)),
             "--lr-decay-style", decay, "--lr-warmup-iters", str(steps // 10),
             "--train-iters", str(steps), "--log-interval", str(steps), "--eval-iters", "10"]
    plan = resolve(parse_args(flags).config, DistEnv())
    return train(plan, DistEnv()).valid_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default=",".join(sorted(OPTIMIZERS)))
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--quality-steps", type=int, default=150)
    parser.add_argument("--quality-optimizers", default="adamw,muon,schedulefree,dshampoo")
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
    if args.quality_steps:
        print(f"\nvalidation loss after {args.quality_steps} steps (hidden 128, 2 layers, Shakespeare bytes)")
        for name in args.quality_optimizers.split(","):
            if name in OPTIMIZERS:
                loss = quality(name, args.quality_steps)
                print(f"{name:<14} lr {QUALITY_LR.get(name, 1e-3):<8g} valid loss {loss:.4f}")


if __name__ == "__main__":
    main()
