"""The generated CLI: one flag per dataclass field, precedence, aliases, and errors that name
the flag."""

from __future__ import annotations

import dataclasses
import os
import typing

import pytest

from megatron.config import ConfigError, parse_args
from megatron.config.cli import build_parser
from megatron.config.root import Config
from megatron.config.schema import OPTIONS_FIELD, iter_knobs
from megatron.optimizer.registry import option_sections

# The Megatron flags these tests run (the compatibility table in docs/megatron_compat.md; see megatron/config/compat_claims.py).
pytestmark = pytest.mark.compat("--hidden-size", "--num-attention-heads", "--rope-theta", "--normalization",
    "--swiglu", "--checkpoint-activations", "--tokenizer-type", "--train-tokens", "--optimizer", "--lr",
    "--lr-decay-style")

SNAPSHOT = os.path.join(os.path.dirname(__file__), "cli_flags.txt")


def _fields_as_flags() -> set[str]:
    """Flags derived independently of the CLI code: walk the dataclasses."""
    flags = set()
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(hints[section.name]):
            if (section.name, f.name) != OPTIONS_FIELD:
                flags.add("--" + f.name.replace("_", "-"))
    for prefix, cls in option_sections().items():
        flags |= {f"--{prefix}-{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)}
    return flags


def _parser_flags() -> set[str]:
    parser = build_parser()
    found = set()
    for action in parser._actions:
        if action.dest in ("help", "config", "launcher_default", "dry_run", "dry_run_file", "deepspeed"):
            continue
        found.add(action.option_strings[0])
    return found


def test_cli_flags_match_dataclass_fields_one_to_one():
    assert _parser_flags() == _fields_as_flags()


def test_cli_flags_match_snapshot():
    # Adding or renaming a knob is a user-visible change: update cli_flags.txt with it.
    with open(SNAPSHOT) as f:
        snapshot = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert sorted(k.flag for k in iter_knobs()) == sorted(snapshot)


def test_every_knob_has_help_text():
    missing = [k.flag for k in iter_knobs() if not k.help]
    assert missing == []


def test_defaults_and_explicit_values():
    args = parse_args(["--hidden-size", "64", "--num-attention-heads", "4", "--swiglu"])
    assert args.config.model.hidden_size == 64
    assert args.config.model.swiglu is True
    assert args.config.model.num_layers == 12  # default
    assert args.explicit == {("model", "hidden_size"): 64, ("model", "num_attention_heads"): 4, ("model", "swiglu"): True}


def test_underscore_spelling_and_aliases():
    cfg = parse_args(["--hidden_size", "64", "--num_attention_heads=4", "--rope-theta", "500000"]).config
    assert cfg.model.hidden_size == 64
    assert cfg.model.rotary_base == 500000.0
    assert parse_args(["--opt", "sgd"]).config.optim.optimizer == "sgd"
    assert parse_args(["--checkpoint-activations"]).config.model.recompute_activations is True


def test_no_prefix_turns_off_boolean():
    assert parse_args(["--no-use-rotary-position-embeddings"]).config.model.use_rotary_position_embeddings is False


def test_integer_flags_accept_scientific_whole_numbers():
    assert parse_args(["--train-tokens", "2.2e10"]).config.train.train_tokens == 22_000_000_000
    with pytest.raises(ConfigError, match="--train-tokens: invalid int"):
        parse_args(["--train-tokens", "1.5"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hiden-size", "64"], r"--hiden-size: unknown flag; did you mean --hidden-size\?"),
        (["--lr", "abc"], r"--lr: invalid float value 'abc'"),
        (["--normalization", "batchnorm"], r"--normalization: 'batchnorm' is not one of"),
        (["--optimizer", "adamx"], r"--optimizer 'adamx': unknown optimizer; known: adam, adamw, "),
        (["--lr", "1e-3", "--lr", "2e-3"], r"--lr: given twice with different values"),
        (["stray"], r"unexpected argument 'stray'"),
        (["--hidden-size", "100", "--num-attention-heads", "3"], r"--num-attention-heads: 3 does not divide --hidden-size 100"),
    ],
)
def test_bad_command_lines_name_the_flag(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_same_value_twice_is_fine():
    assert parse_args(["--lr", "1e-3", "--lr", "0.001"]).config.optim.lr == 1e-3


def test_config_file_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("hidden-size: 64\nnum_attention_heads: 4\nlr: 0.01\nswiglu: true\n")
    cfg = parse_args(["--config", str(path), "--lr", "0.02"]).config
    assert cfg.model.hidden_size == 64  # file over default
    assert cfg.model.swiglu is True
    assert cfg.optim.lr == 0.02  # flag over file


def test_config_file_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("hidden_sise: 64\n")
    with pytest.raises(ConfigError, match=r"--config: unknown key 'hidden_sise'.*did you mean --hidden-size"):
        parse_args(["--config", str(path)])


def test_help_lists_the_registered_choices(capsys):
    from megatron.optimizer.registry import OPTIMIZERS
    from megatron.schedules.functions import COOLDOWN_SHAPES
    from megatron.schedules.registry import SCHEDULES

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--optimizer {" + ",".join(sorted(OPTIMIZERS)) + "}" in text
    styles = sorted(name for name, spec in SCHEDULES.items() if spec.user_facing)
    assert "--lr-decay-style {" + ",".join(styles) + "}" in text
    assert "lr-range" not in styles and "wsd" in styles  # wsd is documented; lr-range is --lr-finder's
    assert "--lr-cooldown-shape {" + ",".join(COOLDOWN_SHAPES) + "}" in text
    assert "--tokenizer-type {byte,gpt2bpe,hf,null,sentencepiece}" in text
    assert "--objective {ar,mdm}" in text


def test_internal_schedule_names_are_refused_as_styles():
    with pytest.raises(ConfigError, match=r"--lr-decay-style: unknown style 'lr-range'; known: .*'wsd'"):
        parse_args(["--lr-decay-style", "lr-range"])
