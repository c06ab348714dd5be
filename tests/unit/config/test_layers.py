"""Layered configuration: several --config files, launcher defaults, the loaded checkpoint's shape,
and the provenance of every value."""

from __future__ import annotations

import json

import pytest

from megatron.config import ConfigError, parse_args
from megatron.config.env import FLAG_SOURCES_VAR

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
    "--normalization", "--swiglu", "--disable-bias-linear", "--hidden-dropout", "--tokenizer-type", "--lr",
    "--save", "--load", "--finetune", "--universal-checkpoint")


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_config_files_merge_key_by_key_in_order(tmp_path):
    arch = _write(tmp_path / "arch.yaml", "num_layers: 32\nhidden_size: 512\nnum_attention_heads: 8\n")
    user = _write(tmp_path / "user.yaml", "# mine\nnum_layers: 3\n")
    args = parse_args(["--config", arch, "--config", user])
    assert args.config.model.num_layers == 3  # the later file's key
    assert args.config.model.hidden_size == 512  # the earlier file's other keys survive
    sources = args.sources()
    assert sources["--num-layers"] == {"value": 3, "source": f"{user}:2"}
    assert sources["--hidden-size"] == {"value": 512, "source": f"{arch}:2"}
    assert args.config_files == (arch, user)


def test_a_flag_beats_every_file_and_names_itself(tmp_path):
    user = _write(tmp_path / "user.yaml", "lr: 0.01\n")
    args = parse_args(["--config", user, "--lr", "0.02"])
    assert args.config.optim.lr == 0.02
    assert args.sources()["--lr"] == {"value": 0.02, "source": "--lr"}


def test_environment_variables_are_named_as_the_source(monkeypatch):
    monkeypatch.setenv(FLAG_SOURCES_VAR, "--lr=LR --seq-length=SEQ_LEN")
    sources = parse_args(["--lr", "0.02", "--seq-length", "64", "--hidden-size", "64",
                          "--num-attention-heads", "4"]).sources()
    assert sources["--lr"]["source"] == "LR"
    assert sources["--seq-length"]["source"] == "SEQ_LEN"
    assert sources["--hidden-size"]["source"] == "--hidden-size"


def test_unknown_key_names_file_and_line(tmp_path):
    user = _write(tmp_path / "user.yaml", "num_layers: 3\n\nhidden_sise: 64\n")
    with pytest.raises(ConfigError, match=rf"unknown key 'hidden_sise' at {user}:3; did you mean --hidden-size"):
        parse_args(["--config", user])


def test_bad_value_and_repeated_key_name_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "lr: 0.1\nnum_layers: many\n")
    with pytest.raises(ConfigError, match=rf"--num-layers: invalid int value 'many' \(at {bad}:2\)"):
        parse_args(["--config", bad])
    twice = _write(tmp_path / "twice.yaml", "lr: 0.1\nlr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"--lr: given twice in {twice} \({twice}:1 and line 2\)"):
        parse_args(["--config", twice])


def test_launcher_default_applies_only_when_nothing_sets_the_value(tmp_path):
    args = parse_args(["--launcher-default", "save=auto"])
    assert args.config.checkpoint.save == "auto"
    assert args.sources()["--save"]["source"] == "train_alcf.sh default"
    user = _write(tmp_path / "user.yaml", "save: mine/ckpt\n")
    args = parse_args(["--launcher-default", "save=auto", "--config", user])
    assert args.config.checkpoint.save == "mine/ckpt"  # SAVE in a file is not replaced
    args = parse_args(["--launcher-default", "save=auto", "--save", "flag/ckpt"])
    assert args.config.checkpoint.save == "flag/ckpt"
    with pytest.raises(ConfigError, match="--launcher-default: expected key=value"):
        parse_args(["--launcher-default", "save"])


def _fake_checkpoint(root, config, universal=False):
    step = root / "global_step40"
    step.mkdir(parents=True)
    (step / "run_metadata.json").write_text(json.dumps({"config": config}))
    if universal:
        (root / "latest_universal").write_text("global_step40")
    else:
        (root / "latest").write_text("global_step40")
    return str(root)


SAVED = {"--num-layers": 4, "--hidden-size": 256, "--num-attention-heads": 4, "--seq-length": 128,
         "--normalization": "rmsnorm", "--swiglu": True, "--disable-bias-linear": True,
         "--tokenizer-type": "byte", "--lr": 0.002, "--hidden-dropout": 0.1}


@pytest.mark.parametrize("universal", [False, True])
def test_loading_takes_shape_and_tokenizer_from_the_checkpoint(tmp_path, universal):
    load = _fake_checkpoint(tmp_path / "ckpt", SAVED, universal)
    argv = ["--load", load, "--finetune"] + (["--universal-checkpoint"] if universal else [])
    args = parse_args(argv)
    m = args.config.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length) == (4, 256, 4, 128)
    assert (m.normalization, m.swiglu, m.disable_bias_linear) == ("rmsnorm", True, True)
    assert args.config.optim.lr != 0.002  # only shape and tokenizer are inherited
    assert args.config.model.hidden_dropout == 0.0
    assert args.sources()["--num-layers"]["source"] == f"checkpoint {tmp_path / 'ckpt' / 'global_step40'}"


def test_a_given_shape_value_that_differs_from_the_checkpoint_is_an_error(tmp_path):
    load = _fake_checkpoint(tmp_path / "ckpt", SAVED)
    user = _write(tmp_path / "user.yaml", "num_layers: 12\n")
    with pytest.raises(ConfigError, match=rf"--num-layers: 12 \(from {user}:1\) differs from the 4 of the checkpoint"):
        parse_args(["--load", load, "--config", user])
    # the same value is fine, and the sequence length may change (context extension)
    args = parse_args(["--load", load, "--num-layers", "4", "--seq-length", "256"])
    assert (args.config.model.num_layers, args.config.model.seq_length) == (4, 256)


def test_a_load_directory_without_checkpoint_inherits_nothing(tmp_path):
    args = parse_args(["--load", str(tmp_path), "--num-layers", "2"])
    assert args.config.model.num_layers == 2
    assert "--hidden-size" not in args.sources()


def test_load_auto_is_the_runs_own_save_directory():
    # train_alcf.sh's launcher default: a relaunch of the same command resumes its own run.
    from megatron.config import DistEnv, parse_args
    from megatron.plan import resolve

    flags = ["--mock-data", "--train-iters", "2", "--launcher-default", "load=auto"]
    assert resolve(parse_args([*flags, "--save", "ckpt/run"]).config, DistEnv()).config.checkpoint.load == "ckpt/run"
    named = resolve(parse_args([*flags, "--save", "ckpt/run", "--load", "base"]).config, DistEnv())
    assert named.config.checkpoint.load == "base"  # LOAD / --load still name another checkpoint
    assert resolve(parse_args(flags).config, DistEnv()).config.checkpoint.load is None  # nothing to resume
