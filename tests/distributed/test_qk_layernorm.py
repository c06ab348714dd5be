"""--qk-layernorm (per head, and OLMo-2's over the projection with --norm-placement output) at
TP=2 (with and without --sequence-parallel) and PP=2 against one process.

The per-head query/key norm weights are shared by all heads, and each TP rank normalizes only
its own heads: their gradients must be summed over the TP group. Without that sum the two ranks'
copies drift apart and the gradient norm differs, so each step's loss, the global gradient norm
and every updated full weight are compared with the single-process run (1e-5 relative on losses
and norms, 1e-4 on weights, as in ``test_sequence_parallel.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from megatron.config import DistEnv
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan, tp_full_weights, train_recording

pytestmark = [pytest.mark.deepspeed, pytest.mark.compat("--qk-layernorm")]

STEPS = ["--train-iters", "3", "--lr", "1e-2"]
# RMSNorm: a LayerNorm's key bias would shift every key of a query alike, which softmax ignores,
# so its gradient is rounding noise that Adam scales up to the learning rate.
QWEN3 = ["--qk-layernorm", "--swiglu", "--num-key-value-heads", "2", "--untie-embeddings-and-output-weights",
         "--normalization", "rmsnorm", "--disable-bias-linear"]  # fmt: skip


def _trained(env: DistEnv, flags: list[str]) -> tuple[list[float], list[float], dict[str, np.ndarray]]:
    """(losses + final validation loss, per-step grad norms, this rank's full weights)."""
    return train_recording(tiny_plan(*STEPS, *QWEN3, *flags, env=env), env, tp_full_weights)


def _compared(env: DistEnv, flags: list[str], reference) -> tuple[list[float], list[float], list[str], list[str]]:  # noqa: ANN001
    """This rank's losses, grad norms, the weights it holds and those that differ from the reference."""
    losses, norms, weights = _trained(env, flags)
    bad = [f"{name}: relative error {np.linalg.norm(w - reference[2][name]) / np.linalg.norm(reference[2][name]):.1e}"
           for name, w in weights.items()
           if np.linalg.norm(w - reference[2][name]) > 1e-4 * np.linalg.norm(reference[2][name])]
    return losses, norms, sorted(weights), bad


# OLMo-2: the norm over the whole q/k projections (split over TP with the heads, its statistic
# summed over TP) and the norms on the branch outputs.
OLMO2 = ["--qk-layernorm-scope", "projection", "--norm-placement", "output"]


@pytest.mark.parametrize("model", [[], OLMO2], ids=["qwen3", "olmo2"])
@pytest.mark.parametrize(
    "flags",
    [["--tensor-model-parallel-size", "2"],
     ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
     ["--pipeline-model-parallel-size", "2"]],
    ids=["tp2", "tp2-sp", "pp2"],
)
def test_qk_layernorm_matches_single_process(flags, model):
    reference = _trained(DistEnv(), model)
    flags = [*flags, *model]
    assert any(name.endswith("k_layernorm.weight") for name in reference[2])
    held = set()
    for losses, norms, names, bad in run_distributed(_compared, flags, reference):
        assert losses == pytest.approx(reference[0], rel=1e-5)
        assert norms == pytest.approx(reference[1], rel=1e-5)
        assert bad == []
        held.update(names)
    assert held == set(reference[2])


def _run(env: DistEnv, flags: list[str]) -> tuple[tuple[float, ...], float | None]:
    result = train(tiny_plan(*QWEN3, *flags, env=env), env)
    return result.losses, result.valid_loss


def _save(env: DistEnv, save: str, model: list[str]) -> None:
    _run(env, ["--train-iters", "4", "--exit-interval", "2", "--save", save, "--tensor-model-parallel-size", "2",
               *model])


@pytest.mark.parametrize("model", [[], OLMO2], ids=["qwen3", "olmo2"])
def test_qk_layernorm_universal_checkpoint_continues_on_one_process(tmp_path, model):
    from megatron.checkpointing.convert import convert

    save = str(tmp_path / "ckpt")
    run_distributed(_save, save, model)
    convert(save)  # olmo2: the q/k norm weights are split over TP with the heads (dim0)
    losses, valid = _run(DistEnv(), ["--train-iters", "4", "--load", save, "--universal-checkpoint", *model])
    reference = _run(DistEnv(), ["--train-iters", "4", *model])
    assert losses == pytest.approx(reference[0][2:], rel=1e-5)
    assert valid == pytest.approx(reference[1], rel=1e-5)
