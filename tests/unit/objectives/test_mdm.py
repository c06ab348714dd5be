"""``--objective mdm`` end to end on one process: bidirectional attention, the loss and its
gradient, K-draw evaluation, resume, metric names, and the configuration errors."""

from __future__ import annotations

import glob
import os

import pytest
import torch

from megatron.config import ConfigError, DistEnv
from megatron.data.loader import BatchReader, MockStream
from megatron.model.gpt import GPTModel, token_losses
from megatron.objectives.registry import eval_batches, get_objective
from megatron.trainer.loop import train
from tests.helpers import tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--hidden-size", "--seq-length", "--init-method-std",
    "--make-vocab-size-divisible-by", "--split", "--vocab-size", "--data-file-list", "--micro-batch-size",
    "--train-iters", "--lr", "--save", "--load", "--exit-interval", "--eval-iters", "--tensorboard-dir")

MDM = ["--objective", "mdm", "--train-iters", "2"]
OBJ = ["--objective", "mdm"]


def _reader(plan, stream=None) -> BatchReader:
    return BatchReader(stream or MockStream(64, plan.seq_length, 9), micro_batch_size=plan.micro_batch_size,
                       dp_size=1, dp_rank=0, grad_accum_steps=plan.grad_accum_steps,
                       device=torch.device("cpu"))


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_attention_is_bidirectional_only_under_mdm(dist_world1, objective):
    plan = tiny_plan("--objective", objective, "--init-method-std", "0.2", "--train-iters", "2")
    assert plan.model.causal == (objective == "ar")
    model = GPTModel(plan.model).eval()
    tokens = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[0, 10] = (tokens[0, 10] + 1) % 64
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    earlier = (before[0, :10] - after[0, :10]).abs().amax(dim=-1)
    if objective == "ar":
        assert torch.equal(before[0, :10], after[0, :10])
    else:
        assert (earlier > 1e-4).all()


def test_unmasked_positions_get_zero_gradient(dist_world1):
    plan = tiny_plan(*MDM)
    objective = get_objective("mdm")
    (batch,) = objective.batches(plan, _reader(plan), 0, iteration=0, split="train", draw=0)
    masked = batch.loss_mask > 0
    assert masked.any() and (~masked).any()
    logits = GPTModel(plan.model)(batch.tokens).detach().requires_grad_()
    objective.reduce(token_losses(logits, batch.labels), batch.loss_mask).backward()
    row_norm = logits.grad.abs().sum(-1)
    assert (row_norm[~masked] == 0).all() and (row_norm[masked] > 0).all()


def test_k_draw_evaluation_masks_the_same_samples_k_times():
    plan = tiny_plan(*MDM, "--num-mc", "4", "--eval-iters", "2")
    steps = list(eval_batches(get_objective("mdm"), plan, _reader(plan), split="valid", iteration=3))
    assert len(steps) == 8  # K draws x eval-iters, in draw-major order
    for k in range(2):
        same = [steps[d * 2 + k][0] for d in range(4)]
        assert all(torch.equal(b.labels, same[0].labels) for b in same)  # the same samples...
        masks = {tuple((b.loss_mask > 0).flatten().tolist()) for b in same}
        assert len(masks) == 4  # ...with four different maskings
    assert not torch.equal(steps[0][0].labels, steps[1][0].labels)
    ar = list(eval_batches(get_objective("ar"), tiny_plan("--eval-iters", "2", "--train-iters", "2"), _reader(plan),
                           split="valid", iteration=3))
    assert len(ar) == 2 and torch.equal(ar[0][0].labels[:, :-1], ar[0][0].tokens[:, 1:])


def test_low_noise_start_halves_t_until_its_iteration():
    plan = tiny_plan(*MDM, "--low-noise-start", "--low-noise-iter", "5", "--low-noise-ratio", "0.5")
    plain = tiny_plan(*MDM)
    objective, reader = get_objective("mdm"), _reader(plan)

    def t(p, iteration):
        return objective.batches(p, reader, 0, iteration=iteration, split="train", draw=0)[0].noise_t

    assert t(plan, 4).tolist() == pytest.approx((t(plain, 4) * 0.5).tolist())
    assert torch.equal(t(plan, 5), t(plain, 5))


def test_resume_reproduces_noise_and_losses(tmp_path):
    flags = [*OBJ, "--train-iters", "6", "--hidden-size", "32", "--ar-ratio", "0.3"]
    full = train(tiny_plan(*flags), DistEnv())
    save = str(tmp_path / "ckpt")
    first = train(tiny_plan(*flags, "--save", save, "--exit-interval", "3"), DistEnv())
    second = train(tiny_plan(*flags, "--save", save, "--load", save), DistEnv())
    assert first.losses + second.losses == full.losses  # same t and masks after resume, bit for bit


def test_bound_goes_down_on_real_text_and_is_named_as_a_bound(tmp_path, shakespeare_prefix):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data_list = tmp_path / "list.txt"
    data_list.write_text(f"1 {shakespeare_prefix} plays\n")
    tb = str(tmp_path / "tb")
    result = train(tiny_plan(
        *OBJ, "--train-iters", "40", "--hidden-size", "64", "--seq-length", "64", "--micro-batch-size", "8",
        "--lr", "1e-2", "--data-file-list", str(data_list), "--split", "90,10,0", "--eval-iters", "2",
        "--num-mc", "4", "--tensorboard-dir", tb, mock=False), DistEnv())
    # Byte-level text: uniform logits score ln(384) = 5.95 nats per token (the bound's expectation);
    # 40 steps learn at least the byte statistics (about 3.3 nats).
    assert sum(result.losses[:3]) / 3 > 5.0
    assert sum(result.losses[-10:]) / 10 < 4.0
    assert result.valid_loss is not None and result.valid_loss < 4.0
    acc = EventAccumulator(glob.glob(os.path.join(tb, "events.*"))[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/mdm_nelbo", "train/mdm_mean_t", "train/mdm_masked_fraction",
            "valid/mdm_nelbo", "valid/ppl_bound"} <= tags
    assert not {"train/loss", "valid/loss", "valid/ppl"} & tags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--vocab-size", "128"], "--objective: mdm needs a mask token that no real token uses"),
        (["--vocab-size", "128"], "--make-vocab-size-divisible-by 256"),
        (["--mdm-mask-token-id", "5"], "--mdm-mask-token-id: 5 is not a spare row"),
        (["--mdm-mask-token-id", "500"], "use a value in [64, 128)"),
        (["--ar-ratio", "1.5"], "--ar-ratio: must be in [0, 1], got 1.5"),
        (["--ar-ratio", "-0.1"], "--ar-ratio: must be in [0, 1]"),
        (["--num-mc", "0"], "--num-mc: must be > 0, got 0"),
        (["--mdm-mask-token-id", "x"], "--mdm-mask-token-id: expected 'auto' or a non-negative integer"),
    ],
)
def test_bad_mdm_input_is_refused(flags, message):
    with pytest.raises(ConfigError, match=None) as e:
        tiny_plan(*MDM, *flags)
    assert message in str(e.value)


def test_mdm_flags_without_mdm_objective_are_refused():
    with pytest.raises(ConfigError, match="--num-mc: only used with --objective mdm"):
        tiny_plan("--num-mc", "4", "--train-iters", "2")
    with pytest.raises(ConfigError, match="^--objective 'bert': unknown objective; known: ar, mdm$"):
        tiny_plan("--objective", "bert", "--train-iters", "2")


def test_plan_names_the_objective_and_its_attention_flops():
    summary = tiny_plan(*MDM).summary()
    assert summary["objective"] == "mdm" and summary["attention_flops"].startswith("full (non-causal)")
    assert tiny_plan("--train-iters", "2").summary()["attention_flops"].startswith("causal attention counted as full")
    # 6N + 12 L d s per token for both: the same FLOPs budget means the same tokens.
    assert tiny_plan(*MDM).summary()["flops_per_step"] == tiny_plan("--train-iters", "2").summary()["flops_per_step"]


def test_per_corpus_values_are_the_bound_restricted_to_each_corpus():
    from megatron.trainer.corpus_loss import CorpusLoss

    objective = get_objective("mdm")
    losses = torch.rand(4, 8)
    weights = torch.where(torch.rand(4, 8) < 0.5, 2.0, 0.0)
    ids = torch.tensor([0, 1, 0, 1])
    meter = CorpusLoss(2, torch.device("cpu"))
    objective.meter_add(meter, losses, weights, ids)
    got = meter.collect(["a", "b"])
    for name, rows in (("a", [0, 2]), ("b", [1, 3])):
        expected = objective.reduce(losses[rows], weights[rows]).item()
        assert got[name] == pytest.approx(expected, rel=1e-6)  # fp64 sums vs fp32
