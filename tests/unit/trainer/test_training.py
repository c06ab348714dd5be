"""End-to-end training on one process: loss falls, accumulation is exact, resume is bit-exact,
stop signals save, TensorBoard gets scalars."""

from __future__ import annotations

import glob
import json
import os

import pytest

from megatron.checkpointing.checkpoint import LATEST_FILE, LATEST_ITERATION_FILE, METADATA_FILE
from megatron.checkpointing.metadata import check_model_shape
from megatron.config import ConfigError, DistEnv, parse_args
from megatron.plan import resolve
from megatron.trainer.loop import train
from tests.helpers import tiny_args, tiny_plan

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--hidden-size", "--seq-length", "--split", "--data-cache-path",
    "--tokenizer-type", "--data-file-list", "--micro-batch-size", "--train-iters", "--lr",
    "--lr-decay-style", "--save", "--load", "--finetune", "--exit-interval", "--kill-switch-file",
    "--eval-interval", "--eval-iters", "--log-interval", "--tensorboard-dir")


def run(*flags: str, mock: bool = True, extra: list[str] | None = None):
    return train(tiny_plan(*flags, *(extra or []), mock=mock), DistEnv())


def test_loss_goes_down_on_synthetic_data():
    result = run("--train-iters", "20", "--hidden-size", "32", "--lr", "1e-2", "--micro-batch-size", "4")
    assert result.iteration == 20
    assert sum(result.losses[-5:]) / 5 < 0.7 * sum(result.losses[:5]) / 5


def test_loss_goes_down_on_real_text(tmp_path, shakespeare_prefix):
    data_list = tmp_path / "list.txt"
    data_list.write_text(f"1 {shakespeare_prefix} plays\n")
    result = run(
        "--train-iters", "40", "--hidden-size", "64", "--seq-length", "64", "--micro-batch-size", "8",
        "--lr", "1e-2", "--data-file-list", str(data_list), "--split", "90,10,0", "--eval-iters", "2",
        mock=False,
    )
    # Byte-level text starts near ln(384) = 5.95 nats; 40 steps learn the character statistics.
    assert result.losses[0] > 5.5
    assert sum(result.losses[-5:]) / 5 < 3.6
    assert result.valid_loss is not None and result.valid_loss < 3.6


def test_gradient_accumulation_4x1_equals_1x4():
    one = run("--train-iters", "3", "--micro-batch-size", "4", "--gradient-accumulation-steps", "1")
    four = run("--train-iters", "3", "--micro-batch-size", "1", "--gradient-accumulation-steps", "4")
    assert one.losses == pytest.approx(four.losses, rel=1e-5, abs=1e-6)


def test_resume_is_bit_exact(tmp_path):
    save = str(tmp_path / "ckpt")
    full = run("--train-iters", "8", "--hidden-size", "32")
    first = run("--train-iters", "8", "--hidden-size", "32", "--save", save, "--exit-interval", "4")
    assert first.stop_reason == "exit interval 4 reached" and first.iteration == 4
    second = run("--train-iters", "8", "--hidden-size", "32", "--save", save, "--load", save)
    assert first.losses + second.losses == full.losses  # bit for bit
    with open(os.path.join(save, LATEST_FILE)) as f:
        assert f.read() == "global_step8"
    with open(os.path.join(save, LATEST_ITERATION_FILE)) as f:
        assert f.read() == "8"
    with open(os.path.join(save, "global_step4", METADATA_FILE)) as f:
        meta = json.load(f)
    assert (meta["iteration"], meta["consumed_samples"]) == (4, 8)
    assert meta["config"]["--hidden-size"] == 32


def test_finetune_loads_weights_and_restarts_progress(tmp_path):
    save = str(tmp_path / "ckpt")
    base = run("--train-iters", "6", "--save", save)
    tuned = run("--train-iters", "3", "--load", save, "--finetune")
    fresh = run("--train-iters", "3")
    assert tuned.iteration == 3
    # Starting from trained weights: the first loss is the trained model's, not a fresh one's.
    assert tuned.losses[0] < fresh.losses[0]
    assert tuned.losses[0] == pytest.approx(base.losses[-1], rel=0.1)


def test_changed_schedule_on_resume_is_an_error(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "6", "--save", save, "--exit-interval", "3")
    with pytest.raises(ConfigError, match=r"--lr-decay-style: the LR schedule differs from the checkpoint's"):
        run("--train-iters", "9", "--load", save)


def test_model_shape_mismatch_is_refused_with_the_differences(tmp_path):
    save = str(tmp_path / "ckpt")
    run("--train-iters", "2", "--save", save)
    with pytest.raises(ConfigError, match=r"--hidden-size: 32 \(from --hidden-size\) differs from the 16 of the checkpoint"):
        run("--train-iters", "2", "--load", save, "--hidden-size", "32")
    # The trainer's own check (for metadata without a config, e.g. older checkpoints) lists them all.

    with open(os.path.join(save, "global_step2", "run_metadata.json")) as f:
        metadata = json.load(f)
    metadata.pop("config")
    with pytest.raises(ConfigError, match=r"holds a model of another shape \(hidden_size: checkpoint 16, this run 32"):
        check_model_shape(tiny_plan("--train-iters", "2", "--hidden-size", "32"), metadata, save)


def test_kill_switch_saves_and_stops(tmp_path):
    kill = tmp_path / "STOP"
    kill.write_text("")
    save = str(tmp_path / "ckpt")
    # Present at start: honoured by not starting, and consumed (a requeued job ends its chain).
    result = run("--train-iters", "10", "--save", save, "--kill-switch-file", str(kill))
    assert result.iteration == 0 and not kill.exists() and not os.path.exists(os.path.join(save, "latest"))
    # Found while running: save at that step and stop (the file stays for the next job).
    from megatron.trainer.stop import StopSignals

    check = StopSignals.check

    def appears_after_first_step(self, iteration):  # noqa: ANN001, ANN202
        if iteration == 1:
            kill.write_text("")
        return check(self, iteration)

    StopSignals.check = appears_after_first_step
    try:
        result = run("--train-iters", "10", "--save", save, "--kill-switch-file", str(kill))
    finally:
        StopSignals.check = check
    assert result.stop_reason == "kill-switch file found"
    assert result.iteration == 1
    assert os.path.isdir(os.path.join(save, "global_step1")) and kill.exists()


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = str(tmp_path / "tb")
    run("--train-iters", "4", "--tensorboard-dir", tb, "--eval-interval", "2")
    acc = EventAccumulator(glob.glob(os.path.join(tb, "events.*"))[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "throughput/tokens_per_sec", "valid/loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_missing_load_directory_starts_fresh(tmp_path):
    # Only as a first launch that loads from its own --save; any other missing --load is a typo
    # (an error: tests/faults/test_committed.py).
    own = str(tmp_path / "nothing-yet")
    result = run("--train-iters", "2", "--load", own, "--save", own)
    assert result.iteration == 2


def test_args_helper_overrides_base():
    cfg = parse_args(tiny_args("--hidden-size", "32")).config
    assert cfg.model.hidden_size == 32
    assert resolve(parse_args(tiny_args("--hidden-size", "32", "--train-iters", "1")).config, DistEnv()).model.hidden_size == 32


def test_blended_resume_continues_the_stream_and_reports_each_corpus(tmp_path, three_corpora, capsys):
    data = tmp_path / "list.txt"
    data.write_text("".join(f"{w} {three_corpora[c]} {c}\n" for w, c in ((5, "comedy"), (3, "history"), (2, "tragedy"))))
    flags = ["--train-iters", "6", "--hidden-size", "32", "--seq-length", "32", "--data-file-list", str(data),
             "--split", "90,10,0", "--tokenizer-type", "byte", "--log-interval", "2", "--eval-iters", "1"]
    save, cache = str(tmp_path / "ckpt"), str(tmp_path / "cache")
    full = run(*flags, mock=False)
    out = capsys.readouterr().out
    assert "train loss by corpus: comedy " in out and "valid loss by corpus: comedy " in out
    # The cached blend index gives the same stream; the resumed run continues it sample for sample.
    first = run(*flags, "--save", save, "--exit-interval", "3", "--data-cache-path", cache, mock=False)
    second = run(*flags, "--load", save, "--data-cache-path", cache, mock=False)
    assert first.losses + second.losses == full.losses
    with open(os.path.join(save, "global_step3", METADATA_FILE)) as f:
        counts = json.load(f)["data"]["blend_counts"]
    assert sum(counts) == 3 * 2 and len(counts) == 3
