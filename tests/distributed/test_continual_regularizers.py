"""EWC and LwF at 2 processes reproduce one process (relative 1e-5 on every loss): EWC at TP=2
and at DP=2 under ZeRO-1/2 (theta* and F sharded like the fp32 master partitions), LwF at TP=2
(vocab-parallel log-softmax normalizers and KL sums reduced over TP). Universal conversion carries
theta*, F and the teacher: DP=2 ZeRO-1 or TP=2 -> universal -> one process (or TP=2 -> DP=2
ZeRO-2) restores them bit for bit and continues like the unconverted resume (rel 1e-5)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

EWC = ["--ewc-weight", "1e6", "--ewc-num-iterations", "2"]
LWF = ["--lwf-weight", "20", "--lwf-kl", "--lwf-temperature", "2", "--lwf-reduction", "batchmean"]


def _stage(env: DistEnv, root: str, flags: list[str], stage1: list[str] | None) -> list[float]:
    """Stage 0 (one step, saved) when ``stage1`` is None, else stage 1 from it (one train() per
    process: a second rendezvous in the same forked child can hang)."""
    s0 = os.path.join(root, "s0")
    if stage1 is None:
        argv = ["--train-iters", "1", "--save", s0, *flags]
    else:
        argv = ["--train-iters", "4", "--load", s0, "--finetune", *flags, *stage1]
    return list(train(tiny_plan(*argv, env=env), env).losses)


def _run(flags: list[str], stage1: list[str], world_size: int) -> list[list[float]]:
    root = tempfile.mkdtemp()
    if world_size == 1:
        _stage(DistEnv(), root, flags, None)
        return [_stage(DistEnv(), root, flags, stage1)]
    run_distributed(_stage, root, flags, None)
    return run_distributed(_stage, root, flags, stage1)


@pytest.mark.parametrize("zero", ["1", "2"])
def test_ewc_at_dp2_zero_matches_one_process(zero):
    reference = _run(["--micro-batch-size", "4"], EWC, 1)[0]
    plain = _run(["--micro-batch-size", "4"], [], 1)[0]
    assert abs(reference[-1] - plain[-1]) > 1e-4  # the penalty matters in these steps
    ranks = _run(["--micro-batch-size", "2", "--zero-stage", zero], EWC, 2)
    assert ranks[0] == ranks[1]
    assert ranks[0] == pytest.approx(reference, rel=1e-5)


def test_ewc_at_tp2_matches_one_process():
    reference = _run([], EWC, 1)[0]
    ranks = _run(["--tensor-model-parallel-size", "2"], EWC, 2)
    assert ranks[0] == pytest.approx(reference, rel=1e-5)


def test_lwf_at_tp2_matches_one_process():
    reference = _run([], LWF, 1)[0]
    plain = _run([], [], 1)[0]
    assert abs(reference[-1] - plain[-1]) > 1e-4
    ranks = _run(["--tensor-model-parallel-size", "2"], LWF, 2)
    assert ranks[0] == pytest.approx(reference, rel=1e-5)
    hard = _run([], ["--lwf-weight", "1"], 1)[0]
    ranks = _run(["--tensor-model-parallel-size", "2"], ["--lwf-weight", "1"], 2)
    assert ranks[0] == pytest.approx(hard, rel=1e-5)


# ---- universal conversion carries theta*, F and the teacher ---------------------------------------

LAYOUT_2 = {"zero1-dp2": ["--zero-stage", "1", "--micro-batch-size", "2"],
            "tp2": ["--tensor-model-parallel-size", "2", "--micro-batch-size", "4"]}
BOTH = [*EWC, *LWF]


def _stage1_cut(env: DistEnv, root: str, flags: list[str]) -> list[float]:
    """Stage 1 from s0, saving at step 2 and stopping there."""
    argv = ["--train-iters", "4", "--load", os.path.join(root, "s0"), "--finetune", "--save",
            os.path.join(root, "s1"), "--save-interval", "2", "--exit-interval", "2", *flags]
    return list(train(tiny_plan(*argv, env=env), env).losses)


def _resume(env: DistEnv, save: str, flags: list[str]) -> list[float]:
    """A resume inside stage 1 (``--load`` is the stage's own ``--save``)."""
    argv = ["--train-iters", "4", "--load", save, "--save", save, *flags]
    return list(train(tiny_plan(*argv, env=env), env).losses)


def _gathered(step_dir: str, spec) -> dict[str, dict[str, torch.Tensor]]:
    """theta*/F of every rank file: each TP rank's flat slices gathered over DP, merged over TP."""
    from megatron.checkpointing.layout import full_shapes, merge, split, tp_layout

    pieces: dict[tuple[str, str], dict[int, list]] = {}
    for name in sorted(os.listdir(os.path.join(step_dir, "continual"))):
        tp = int(name.split("_")[0][2:])
        ewc = torch.load(os.path.join(step_dir, "continual", name), weights_only=True)["ewc"]
        for (param, start, _, _), a, f in zip(ewc["shards"], ewc["anchor"], ewc["fisher"], strict=True):
            for key, value in (("anchor", a), ("fisher", f)):
                pieces.setdefault((param, key), {}).setdefault(tp, []).append((start, value))
    shapes = full_shapes(spec)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for (param, key), by_tp in pieces.items():
        layout = tp_layout(param, spec)
        local_shape = split(torch.empty(shapes[param]), layout, 0, len(by_tp)).shape
        local = [torch.cat([v for _, v in sorted(by_tp[t], key=lambda x: x[0])]).view(local_shape)
                 for t in sorted(by_tp)]
        out.setdefault(param, {})[key] = merge(local, layout).reshape(-1)
    return out


def _teacher(step_dir: str, spec) -> dict[str, torch.Tensor]:
    """The teacher's full weights: the DP-rank-0 files merged over TP."""
    from megatron.checkpointing.layout import merge, tp_layout

    files = sorted(f for f in os.listdir(os.path.join(step_dir, "continual")) if f.endswith("_dp0.pt"))
    parts = [torch.load(os.path.join(step_dir, "continual", f), weights_only=True)["teacher"] for f in files]
    return {k: merge([p[k] for p in parts], tp_layout(k, spec)) for k in parts[0]}


@pytest.mark.parametrize(("source", "target"), [("zero1-dp2", "one"), ("tp2", "one"), ("tp2", "zero2-dp2")])
def test_universal_conversion_carries_ewc_and_lwf(source, target):
    import shutil

    from megatron.checkpointing.convert import convert

    root = tempfile.mkdtemp()
    flags = LAYOUT_2[source]
    run_distributed(_stage, root, flags, None)
    run_distributed(_stage1_cut, root, [*flags, *BOTH])
    s1, moved = os.path.join(root, "s1"), os.path.join(root, "s1_universal")
    shutil.copytree(s1, moved)
    # The reference: an unconverted resume at the saved layout.
    reference = run_distributed(_resume, s1, [*flags, *BOTH])[0]
    report = convert(os.path.join(moved, "global_step2"))
    assert report.regularizers == ("ewc", "teacher")
    if target == "one":
        losses = _resume(DistEnv(), moved, ["--micro-batch-size", "4", "--universal-checkpoint", *BOTH])
    else:
        ranks = run_distributed(_resume, moved, ["--zero-stage", "2", "--micro-batch-size", "2",
                                                 "--universal-checkpoint", *BOTH])
        assert ranks[0] == ranks[1]
        losses = ranks[0]
    assert losses == pytest.approx(reference, rel=1e-5)
    # theta*/F after the resume (saved again at step 4 at the new layout) are the unconverted
    # step-2 values (gathered over DP, merged over TP), bit for bit; so is the teacher.
    spec = tiny_plan("--train-iters", "1").model
    saved = _gathered(os.path.join(s1, "global_step2"), spec)
    after = _gathered(os.path.join(moved, "global_step4"), spec)
    assert sorted(after) == sorted(saved) and sum(float(v["fisher"].sum()) for v in saved.values()) > 0
    for param, values in saved.items():
        assert torch.equal(after[param]["anchor"], values["anchor"]), param
        assert torch.equal(after[param]["fisher"], values["fisher"]), param
    teacher, expected = (_teacher(os.path.join(d, step), spec)
                         for d, step in ((moved, "global_step4"), (s1, "global_step2")))
    assert teacher.keys() == expected.keys()
    assert all(torch.equal(teacher[k], expected[k]) for k in teacher)
