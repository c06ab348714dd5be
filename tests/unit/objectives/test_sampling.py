"""The samplers (spec section 4.5: one token per step at steps = length, temperature 0 is
deterministic, no mask remains) and ``tools/generate.py`` on real checkpoints of both
objectives."""

from __future__ import annotations

import pytest
import torch

from megatron.config import DistEnv
from megatron.objectives.sampling import ar_sample, gumbel_argmax, mdm_sample, reveal_counts
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools import generate

V, MASK, LIMIT = 16, 12, 12  # ids 12..15: the mask and padding rows


class FakeModel:
    """Random but input-dependent logits; records the inputs it was called with."""

    def __init__(self, favour: int | None = None):
        self.calls: list[torch.Tensor] = []
        self.favour = favour

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls.append(tokens.clone())
        g = torch.Generator().manual_seed(int(tokens.sum()) * 31 + tokens.shape[1])
        logits = torch.randn(*tokens.shape, V, generator=g)
        if self.favour is not None:
            logits[..., self.favour] += 100.0
        return logits


def _masks_per_call(model: FakeModel, prompt_len: int) -> list[int]:
    return [int((x[:, prompt_len:] == MASK).sum()) for x in model.calls]


def test_confidence_reveals_exactly_one_token_per_step_when_steps_equal_length():
    model = FakeModel()
    prompt = torch.tensor([[1, 2, 3]])
    out = mdm_sample(model, prompt, gen_length=10, steps=10, mask_id=MASK, vocab_limit=LIMIT,
                     alg="confidence", temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert _masks_per_call(model, 3) == list(range(10, 0, -1))
    assert torch.equal(out[:, :3], prompt) and not (out == MASK).any()
    assert (out < LIMIT).all()


def test_temperature_zero_is_deterministic_and_origin_leaves_no_mask():
    runs = [
        mdm_sample(FakeModel(), torch.tensor([[4, 5]]), gen_length=8, steps=4, mask_id=MASK, vocab_limit=LIMIT,
                   alg="confidence", temperature=0.0, generator=torch.Generator().manual_seed(seed))
        for seed in (0, 1)
    ]
    assert torch.equal(runs[0], runs[1])
    model = FakeModel()
    out = mdm_sample(model, torch.tensor([[4, 5], [6, 7]]), gen_length=12, steps=5, mask_id=MASK,
                     vocab_limit=LIMIT, alg="origin", generator=torch.Generator().manual_seed(3))
    assert not (out == MASK).any() and out[:, :2].tolist() == [[4, 5], [6, 7]]
    counts = _masks_per_call(model, 2)
    assert counts[0] == 24 and all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def test_mask_and_padding_rows_are_never_sampled():
    out = mdm_sample(FakeModel(favour=MASK), torch.zeros(1, 0, dtype=torch.long), gen_length=6, steps=6,
                     mask_id=MASK, vocab_limit=LIMIT, alg="confidence")
    assert not (out == MASK).any() and (out < LIMIT).all()


def test_classifier_free_guidance_also_scores_the_prompt_masked_input():
    model = FakeModel()
    mdm_sample(model, torch.tensor([[1, 2]]), gen_length=3, steps=3, mask_id=MASK, vocab_limit=LIMIT,
               alg="confidence", cfg_scale=0.6)
    assert len(model.calls) == 6
    assert model.calls[0][0, :2].tolist() == [1, 2] and model.calls[1][0, :2].tolist() == [MASK, MASK]


def test_reveal_counts_split_evenly():
    assert reveal_counts(10, 4) == [3, 3, 2, 2] and sum(reveal_counts(7, 7)) == 7


def test_gumbel_argmax_samples_the_softmax():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).expand(40_000, 4)
    draws = gumbel_argmax(logits, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / 40_000
    assert freq.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.01)
    assert (gumbel_argmax(logits[:3], 0.0, None) == 3).all()


def test_ar_sample_continues_left_to_right():
    def counting(tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, V)
        logits.scatter_(-1, ((tokens + 1) % LIMIT)[..., None], 10.0)
        return logits

    out = ar_sample(counting, torch.tensor([[3]]), gen_length=5, vocab_limit=LIMIT, temperature=0.0)
    assert out.tolist() == [[3, 4, 5, 6, 7, 8]]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    saves = {}
    for objective in ("ar", "mdm"):
        save = str(tmp_path_factory.mktemp(objective) / "ckpt")
        train(tiny_plan("--objective", objective, "--train-iters", "2", "--save", save), DistEnv())
        saves[objective] = save
    return saves


def test_generate_tool_samples_both_objectives(checkpoints, capsys):
    assert generate.main(["--load", checkpoints["mdm"], "--gen-length", "8", "--alg", "confidence",
                              "--temperature", "0", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2
    assert generate.main(["--load", checkpoints["ar"], "--gen-length", "8", "--objective", "ar"]) == 0
    assert "--- sample 0 ---" in capsys.readouterr().out


def test_generate_tool_refuses_an_objective_the_checkpoint_was_not_trained_with(checkpoints, capsys):
    assert generate.main(["--load", checkpoints["ar"], "--objective", "mdm"]) == 2
    err = capsys.readouterr().err
    assert "--objective: " in err and "was trained with --objective ar, not mdm" in err
    assert generate.main(["--load", checkpoints["mdm"], "--gen-length", "100"]) == 2
    assert "--gen-length: prompt (0 tokens) + 100 exceeds the model's 16 positions" in capsys.readouterr().err
