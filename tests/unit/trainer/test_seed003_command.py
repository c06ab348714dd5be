"""Seed 003's Megatron-DeepSpeed command line, unchanged but for tiny sizes, trains here (issue 22).

Its GPT-2 BPE files are trained locally from a play, its data lists are our data file lists,
its DeepSpeed JSON repeats five values the flags own (all agreeing), and it logs to TensorBoard
and Weights & Biases (offline: the W&B run directory must hold the same scalars).
"""

from __future__ import annotations

import glob
import json

import pytest

from megatron.config.data import DataConfig
from megatron.data.preprocess import tokenize_to_indexed
from megatron.data.train_tokenizer import TrainOptions, train_tokenizer
from tests.unit.trainer.test_wandb import read_wandb_run
from tools.prepare_default_corpus import play_files

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--num-layers", "--hidden-size", "--num-attention-heads", "--kv-channels",
    "--seq-length", "--max-position-embeddings", "--use-rotary-position-embeddings", "--normalization",
    "--swiglu", "--disable-bias-linear", "--split", "--tokenizer-type", "--vocab-file", "--merge-file",
    "--micro-batch-size", "--global-batch-size", "--train-samples", "--bf16", "--optimizer", "--lr",
    "--min-lr", "--lr-decay-style", "--lr-decay-samples", "--lr-warmup-samples", "--weight-decay",
    "--clip-grad", "--adam-beta1", "--adam-beta2", "--adam-eps", "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size", "--zero-stage", "--deepspeed-config", "--save", "--load",
    "--save-interval", "--kill-switch-file", "--eval-interval", "--eval-iters", "--log-interval",
    "--tensorboard-dir", "--tensorboard-queue-size", "--log-timers-to-tensorboard",
    "--log-batch-size-to-tensorboard", "--wandb-project", "--wandb-exp-name", "--wandb-save-dir",
    "--wandb-group")

MICRO, GLOBAL, SAMPLES = 2, 4, 40  # 10 steps


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory) -> dict[str, str]:
    """GPT-2 vocab/merges trained on a play, train/valid datasets and their data file lists."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("seed003")
    plays = play_files()
    corpus = root / "play.txt"
    with open(plays[0], encoding="utf-8") as f:
        corpus.write_text(f.read()[:30_000], encoding="utf-8")
    hf = train_tokenizer([str(corpus)], str(root / "tok.json"), kind="bpe", options=TrainOptions(vocab_size=400))
    vocab, merges = Tokenizer.from_file(hf.path).model.save(str(root))
    cfg = DataConfig(tokenizer_type="gpt2bpe", vocab_file=vocab, merge_file=merges)
    texts = {}
    for split, play in (("train", plays[1]), ("valid", plays[2])):
        with open(play, encoding="utf-8") as f:
            texts[split] = root / f"{split}.txt"
            texts[split].write_text(f.read()[: 40_000 if split == "train" else 15_000], encoding="utf-8")
    train = tokenize_to_indexed([str(texts["train"])], str(root / "train"), cfg).prefixes["text"]
    valid = tokenize_to_indexed([str(texts["valid"])], str(root / "valid"), cfg).prefixes["text"]
    (root / "train_c4.txt").write_text(f"1.0 {train} c4\n")
    (root / "val_c4.txt").write_text(f"1.0 {valid} c4\n")
    return {"root": str(root), "vocab": vocab, "merges": merges,
            "train": str(root / "train_c4.txt"), "valid": str(root / "val_c4.txt")}


def seed_ds_json(path: str, **override) -> str:
    """The seed's heredoc DeepSpeed JSON, with our tiny batch sizes."""
    ds = {
        "train_micro_batch_size_per_gpu": MICRO,
        "train_batch_size": GLOBAL,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": True},
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
        **override,
    }
    with open(path, "w") as f:
        json.dump(ds, f)
    return path


def seed_command(files: dict[str, str], ds_config: str) -> list[str]:
    """example_training.sh's CMD (GPT_ARGS, OPTIMIZER_ARGS, OUTPUT_ARGS, DATA_ARGS, DEEPSPEED_ARGS)."""
    root = files["root"]
    gpt = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
           "--kv-channels", "8", "--seq-length", "64", "--use-rotary-position-embeddings",
           "--max-position-embeddings", "64", "--micro-batch-size", str(MICRO),
           "--global-batch-size", str(GLOBAL), "--train-samples", str(SAMPLES),
           "--vocab-file", files["vocab"], "--merge-file", files["merges"], "--disable-bias-linear",
           "--kill-switch-file", f"{root}/kill-switch", "--normalization", "rmsnorm", "--swiglu",
           "--bf16"]
    optimizer = ["--optimizer", "adam", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
                 "--adam-eps", "1e-8", "--lr", "2e-3", "--min-lr", "2e-4", "--lr-decay-style",
                 "cosine", "--lr-decay-samples", str(SAMPLES), "--lr-warmup-samples", "4",
                 "--clip-grad", "1.0", "--weight-decay", "1e-1"]
    data = ["--save", f"{root}/ckpt", "--load", f"{root}/ckpt", "--train-data-path-file",
            files["train"], "--valid-data-path-file", files["valid"], "--data-impl", "mmap"]
    output = ["--log-interval", "5", "--save-interval", "1000", "--eval-interval", "5",
              "--eval-iters", "2", "--tensorboard-dir", f"{root}/tb", "--tensorboard-queue-size", "5",
              "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard",
              "--log-validation-ppl-to-tensorboard", "--wandb-project", "P", "--wandb-exp-name", "E",
              "--wandb-save-dir", f"{root}/wandb", "--wandb-group", "G"]
    deepspeed = ["--deepspeed", "--deepspeed_config", ds_config, "--zero-stage", "0"]
    return ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
            *gpt, *optimizer, *output, *data, *deepspeed]


@pytest.mark.slow
def test_seed003_command_trains_and_logs(seed_files, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import pretrain_gpt

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = seed_files["root"]
    argv = seed_command(seed_files, seed_ds_json(f"{root}/ds.json"))
    assert pretrain_gpt.main(argv) == 0
    out = capsys.readouterr().out
    for key, flag in (("train_batch_size=4", "--global-batch-size"), ("bf16.enabled=true", "--bf16"),
                      ("zero_optimization.stage=0", "--zero-stage"), ("gradient_clipping=1.0", "--clip-grad"),
                      ("train_micro_batch_size_per_gpu=2", "--micro-batch-size")):
        assert out.count(f"{root}/ds.json: {key} agrees with {flag}") == 1  # logged once
    assert "attention: SDPA" in out
    with open(glob.glob(f"{root}/ckpt/run-*.json")[0]) as f:
        record = json.load(f)
    assert record["plan"]["train_iters"] == 10
    assert record["config"]["--tokenizer-type"] == "gpt2bpe"  # inferred from --vocab/--merge-file
    assert record["config"]["--split"] == "100,0,0"  # separate train/valid lists, as Megatron
    with open(f"{root}/ckpt/latest_checkpointed_iteration.txt") as f:
        assert f.read() == "10"

    acc = EventAccumulator(glob.glob(f"{root}/tb/events.*")[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    timers = {f"timers/{p}_ms" for p in ("data", "forward", "backward", "optimizer")}
    assert timers | {"train/batch_size", "valid/ppl", "valid/loss", "train/loss"} <= tags
    assert [e.value for e in acc.Scalars("train/batch_size")] == [GLOBAL, GLOBAL]
    assert all(e.value > 0 for t in timers for e in acc.Scalars(t))
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss[-1] < loss[0]  # real text, 10 steps
    valid = acc.Scalars("valid/loss")[-1].value
    assert acc.Scalars("valid/ppl")[-1].value == pytest.approx(2.718281828 ** valid, rel=1e-4)

    # W&B (offline): the run directory holds the same scalars at the same steps.
    run_file = glob.glob(f"{root}/wandb/wandb/offline-run-*/run-*.wandb")[0]
    config, rows = read_wandb_run(run_file)
    assert (config["lr"], config["wandb-group"], config["plan/train_iters"]) == (2e-3, "G", 10)
    by_step = {row["_step"]: row for row in rows}
    assert sorted(by_step) == [5, 10]
    for tag in ("train/loss", "train/batch_size", "valid/ppl", *sorted(timers)):
        assert [by_step[s][tag] for s in (5, 10)] == pytest.approx([e.value for e in acc.Scalars(tag)], rel=1e-5), tag


@pytest.mark.slow  # the module fixture trains a BPE and tokenizes (~7-15 s)
def test_seed003_json_with_one_disagreeing_value_is_refused(seed_files, capsys):
    import pretrain_gpt

    root = seed_files["root"]
    ds = seed_ds_json(f"{root}/ds_bad.json", train_batch_size=8)
    assert pretrain_gpt.main(seed_command(seed_files, ds)) == 2
    err = capsys.readouterr().err
    assert f"--deepspeed-config: {ds} disagrees with the flags: train_batch_size=8 but --global-batch-size gives 4" in err
