"""Matrix optimizers (Muon, dshampoo) against AdamW at parallel layouts, measured in the same run
(CPU, gloo, 1 thread/rank).

Per layout (one process, DP=2 ZeRO-0, DP=2 ZeRO-1, TP=2): the mean seconds of a whole training
step (forward, backward, optimizer) of AdamW and of each optimizer on the same model and batch,
the ratio to AdamW's, and the optimizer-state bytes per model parameter held by one rank (at
ZeRO-1 they fall with DP: each rank keeps one partition of the momentum / Adam moments, and
dshampoo's block statistics live on each matrix's owner rank only). dshampoo preconditions from
step 1 and recomputes its inverse roots every 5 steps (``DSHAMPOO``): one measured step in six
pays for the eigendecompositions.

    .venv/bin/python bench/optimizer_layouts.py
    .venv/bin/python bench/optimizer_layouts.py --hidden-size 256 --steps 6 --optimizers muon,dshampoo
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
os.environ.setdefault("DS_ACCELERATOR", "cpu")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from tests.helpers import run_distributed  # noqa: E402

LAYOUTS = {
    "1 process": (1, []),
    "DP=2 ZeRO-0": (2, ["--zero-stage", "0"]),
    "DP=2 ZeRO-1": (2, ["--zero-stage", "1"]),
    "TP=2": (2, ["--tensor-model-parallel-size", "2"]),
}


def _flags(hidden: int, layers: int, seq: int, micro: int) -> list[str]:
    return ["--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", "8",
            "--seq-length", str(seq), "--micro-batch-size", str(micro), "--normalization", "rmsnorm",
            "--swiglu", "--disable-bias-linear", "--mock-data", "--vocab-size", "258",
            "--train-iters", "1000", "--lr", "1e-3", "--log-interval", "1000"]


DSHAMPOO = ["--dshampoo-start-preconditioning-step", "1", "--dshampoo-precondition-frequency", "5"]
EXTRA = {"dshampoo": DSHAMPOO}


def _measure(env: DistEnv, flags: list[str], steps: int, names: list[str]) -> dict[str, tuple[float, float]]:
    """optimizer -> (seconds per whole step, this rank's optimizer-state bytes per parameter)."""
    from megatron.data.loader import Batch
    from megatron.distributed import destroy_distributed, init_distributed
    from megatron.trainer.engine import TrainEngine

    plan = resolve(parse_args(flags).config, env)
    ctx = init_distributed(plan, env)
    micro, seq = plan.micro_batch_size, plan.seq_length
    data = torch.randint(0, 258, (micro, seq + 1), generator=torch.Generator().manual_seed(env.rank))
    batch = Batch(data[:, :-1], data[:, 1:], torch.ones(micro, seq), torch.zeros(micro, dtype=torch.long))
    try:
        engines = {name: TrainEngine(resolve(parse_args([*flags, "--optimizer", name, *EXTRA.get(name, [])])
                                             .config, env), ctx)
                   for name in ("adamw", *names)}
        spent = dict.fromkeys(engines, 0.0)
        for engine in engines.values():
            engine.train_step([batch], iteration=0)  # warm-up; creates the states
        for _ in range(steps):  # interleaved, so machine noise hits both alike
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.train_step([batch], iteration=1)
                spent[name] += time.perf_counter() - start
        out = {}
        for name, engine in engines.items():
            state = sum(t.numel() * t.element_size() for s in engine.optimizer.state.values()
                        for t in s.values() if torch.is_tensor(t))
            out[name] = (spent[name] / steps, state / plan.model.num_parameters())
        return out
    finally:
        destroy_distributed()


def layout_table(hidden: int, layers: int, seq: int, micro: int, steps: int,
                 names: tuple[str, ...] = ("muon",)) -> list[str]:
    """The printed rows: per layout, the step time of AdamW and of each of ``names``, their ratio
    to AdamW's, and each one's optimizer-state bytes per parameter per rank."""
    head = f"{'layout':<14}{'adamw s/step':>13}{'B/param/rank':>13}"
    for name in names:
        head += f"{name + ' s/step':>16}{'/adamw':>8}{'B/param/rank':>13}"
    rows = [head]
    for label, (world, extra) in LAYOUTS.items():
        mb = micro // world if "--tensor-model-parallel-size" not in extra else micro
        flags = [*_flags(hidden, layers, seq, mb), *extra]
        ranks = run_distributed(_measure, flags, steps, list(names), world_size=world, timeout_s=1800)
        # The slowest rank's time; the most state any rank holds.
        measured = {n: (max(r[n][0] for r in ranks), max(r[n][1] for r in ranks)) for n in ("adamw", *names)}
        adamw = measured["adamw"]
        row = f"{label:<14}{adamw[0]:>13.3f}{adamw[1]:>13.2f}"
        for name in names:
            seconds, state = measured[name]
            row += f"{seconds:>16.3f}{seconds / adamw[0]:>8.2f}{state:>13.2f}"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--global-micro-batch", type=int, default=8,
                        help="samples per step (split over DP ranks)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--optimizers", default="muon,dshampoo", help="compared with adamw")
    args = parser.parse_args()
    print(f"whole training step at hidden {args.hidden_size}, {args.num_layers} layers, "
          f"{args.seq_length * args.global_micro_batch} tokens/step, CPU gloo, 1 thread per rank, "
          f"mean of {args.steps} steps (baseline: adamw at the same layout)")
    for row in layout_table(args.hidden_size, args.num_layers, args.seq_length,
                            args.global_micro_batch, args.steps, tuple(args.optimizers.split(","))):
        print(row)


if __name__ == "__main__":
    main()
