"""Scaling recipes: the spec's group-table oracles (mup.md section 4), flag consistency, bad input."""

from __future__ import annotations

import pytest
import torch

from megatron.config import ConfigError, parse_args
from megatron.scaling.groups import GROUPS, classify, group_rules, scaled_param_groups
from tests.helpers import tiny_plan

# m_N = 4 (base 64 -> 256), m_L = 4 (base 2 -> 8), eta 1e-3, lambda 0.1, eps 1e-8.
ORACLE = (
    "--hidden-size", "256", "--num-attention-heads", "16", "--num-layers", "8",
    "--mup-base-hidden-size", "64", "--lr", "1e-3", "--weight-decay", "0.1", "--adam-eps", "1e-8",
    "--train-iters", "1",
)  # fmt: skip
DEPTH = ("--mup-base-num-layers", "2")


def _table(plan):
    """group -> (lr, wd, eps) from the real ParamGroups built on a model's parameter names."""
    names = [
        ("embedding.word_embeddings.weight", 2), ("layers.0.input_layernorm.weight", 1),
        ("layers.0.self_attention.query_key_value.weight", 2),
        ("layers.0.self_attention.query_key_value.bias", 1), ("layers.0.mlp.dense_4h_to_h.weight", 2),
        ("final_norm.final_layernorm.weight", 1), ("output.output_layer.weight", 2),
    ]  # fmt: skip
    params = [(n, torch.nn.Parameter(torch.zeros((2,) * nd))) for n, nd in names]
    o = plan.config.optim
    groups = scaled_param_groups(params, plan.scaling, weight_decay=o.weight_decay, eps=o.adam_eps)
    return {g.name: (o.lr * g.lr_scale, g.weight_decay, g.eps) for g in groups}


def test_completep_alpha_1_table():
    plan = tiny_plan(*ORACLE, *DEPTH, "--scaling-recipe", "completep")
    t = _table(plan)
    assert t["hidden_matrix"] == (2.5e-4, 0.4, 6.25e-10)
    assert t["hidden_vector"] == (1e-3, 0.0, 6.25e-10)
    assert t["embedding"] == (1e-3, 0.1, 1e-8)
    assert t["final_norm"] == (1e-3, 0.0, 1e-8)
    assert t["output_head"] == (1e-3, 0.1, 1e-8)
    assert plan.scaling.residual_mult == 0.25
    assert plan.model.residual_mult == 0.25 and plan.model.logit_mult == 0.25


def test_depth_mup_alpha_half_table():
    plan = tiny_plan(*ORACLE, *DEPTH, "--scaling-recipe", "depth_mup", "--depth-alpha", "0.5")
    t = _table(plan)
    assert plan.model.residual_mult == 0.5
    assert t["hidden_matrix"] == (1.25e-4, 0.4, 1.25e-9)
    assert t["hidden_vector"] == (5e-4, 0.0, 1.25e-9)
    assert t["embedding"] == (1e-3, 0.1, 1e-8)


def test_mup_alone_table():
    plan = tiny_plan(*ORACLE, "--scaling-recipe", "mup")
    t = _table(plan)
    assert t["hidden_matrix"] == (2.5e-4, 0.4, 2.5e-9)
    assert t["hidden_vector"] == (1e-3, 0.0, 2.5e-9)
    assert t["embedding"] == t["output_head"] == (1e-3, 0.1, 1e-8)
    assert t["final_norm"] == (1e-3, 0.0, 1e-8)
    assert plan.model.residual_mult == 1.0 and plan.model.logit_mult == 0.25


def test_switches_coupled_wd_scaled_head_eps_scope():
    plan = tiny_plan(*ORACLE, "--scaling-recipe", "mup", "--mup-weight-decay", "coupled",
                     "--mup-output-lr", "scaled", "--mup-eps-scope", "all")  # fmt: skip
    t = _table(plan)
    assert t["hidden_matrix"][1] == 0.1
    assert t["output_head"] == (2.5e-4, 0.1, 2.5e-9)
    assert t["embedding"][2] == t["final_norm"][2] == 2.5e-9
    rules = group_rules(tiny_plan(*ORACLE, "--scaling-recipe", "mup", "--mup-eps-scope", "matrices").scaling)
    assert rules["hidden_vector"].eps_mult == 1.0 and rules["hidden_matrix"].eps_mult == 0.25


@pytest.mark.parametrize(
    "flags",
    [
        (),
        ("--untie-embeddings-and-output-weights", "--no-use-rotary-position-embeddings"),
        ("--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear"),
    ],
)
def test_every_parameter_in_exactly_one_group(dist_world1, flags):
    from megatron.model.gpt import GPTModel

    plan = tiny_plan("--train-iters", "1", "--scaling-recipe", "mup", "--mup-base-hidden-size", "8", *flags)
    model = GPTModel(plan.model)
    groups = scaled_param_groups(model.named_parameters(), plan.scaling, weight_decay=0.1, eps=1e-8)
    ids = [id(p) for g in groups for p in g.params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert [g.name for g in groups] == [n for n in GROUPS if n in {g.name for g in groups}]
    by_group = {g.name: g.names for g in groups}
    assert all(("layers." in n) for n in by_group["hidden_matrix"] + by_group.get("hidden_vector", []))
    assert ("output_head" in by_group) == ("--untie-embeddings-and-output-weights" in flags)


def test_classify_pipeline_names_and_unknown():
    assert classify("tied_modules.embed.word_embeddings.weight", 2) == "embedding"
    assert classify("3.self_attention.dense.weight", 2) == "hidden_matrix"
    assert classify("3.post_attention_layernorm.bias", 1) == "hidden_vector"
    assert classify("6.final_layernorm.weight", 1) == "final_norm"
    assert classify("7.output_layer.weight", 2) == "output_head"
    with pytest.raises(ValueError, match="no muP group"):
        classify("adapter.lora_A", 2)


def test_no_recipe_keeps_standard_model():
    plan = tiny_plan("--train-iters", "1")
    assert not plan.scaling.active and plan.model.hidden_init_std is None
    assert plan.model.attention_scale is None and plan.model.logit_mult == 1.0
    assert plan.summary()["scaling"]["recipe"] == "none"


# --- flag consistency (spec section 4.5) and aliases -------------------------------------------


def test_width_mult_contradicting_derived_value_names_both():
    with pytest.raises(ConfigError, match=r"--mup-width-mult: given 3, but the base shapes give 4"):
        tiny_plan("--train-iters", "1", "--hidden-size", "1024", "--num-attention-heads", "16",
                  "--scaling-recipe", "mup", "--mup-base-hidden-size", "256", "--mup-width-mult", "3")


def test_argonne_spellings_accepted_when_consistent():
    plan = tiny_plan("--train-iters", "1", "--hidden-size", "64", "--enable-mup",
                     "--mup-base-hidden-size", "16", "--mup-hidden-lr-scale", "4",
                     "--mup-width-mult", "4", "--mup-hidden-weights-scale", "4",
                     "--mup-input-lr-scale", "1", "--mup-output-weights-scale", "4")  # fmt: skip
    assert plan.scaling.recipe == "mup" and plan.scaling.width_mult == 4.0
    with pytest.raises(ConfigError, match="--mup-hidden-lr-scale: given 2, but .* give 4"):
        tiny_plan("--train-iters", "1", "--hidden-size", "64", "--enable-mup",
                  "--mup-base-hidden-size", "16", "--mup-hidden-lr-scale", "2")


def test_depth_aliases_and_multiplier():
    plan = tiny_plan("--train-iters", "1", "--num-layers", "4", "--use-mup", "--enable-depth-scale",
                     "--depth-base", "2", "--depth-alpha", "0.5", "--depth-multiplier", "2",
                     "--scaling-base-hidden-size", "8")  # fmt: skip
    assert (plan.scaling.recipe, plan.scaling.depth_mult, plan.scaling.alpha) == ("depth_mup", 2.0, 0.5)
    with pytest.raises(ConfigError, match="--depth-multiplier: given 3, but"):
        tiny_plan("--train-iters", "1", "--num-layers", "4", "--scaling-recipe", "completep",
                  "--mup-base-num-layers", "2", "--mup-base-hidden-size", "8", "--depth-multiplier", "3")


def test_bool_switches_parse_their_value():
    assert parse_args(["--mock-data", "--mup-coord-check=False"]).config.scaling.mup_coord_check is False
    assert parse_args(["--mock-data", "--mup-coord-check=True"]).config.scaling.mup_coord_check is True
    assert parse_args(["--mock-data", "--mup-coord-check"]).config.scaling.mup_coord_check is True
    with pytest.raises(ConfigError, match="--mup-coord-check: invalid bool value 'maybe'"):
        parse_args(["--mock-data", "--mup-coord-check=maybe"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--scaling-recipe", "mup"), "--mup-base-hidden-size: --scaling-recipe mup needs"),
        (("--scaling-recipe", "completep", "--mup-base-hidden-size", "8"),
         "--mup-base-num-layers: --scaling-recipe completep needs"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "32"),
         "--mup-base-hidden-size: 32 is larger than --hidden-size 16"),
        (("--scaling-recipe", "completep", "--mup-base-hidden-size", "8", "--mup-base-num-layers", "4"),
         "--mup-base-num-layers: 4 is larger than --num-layers 2"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8.5"),
         "--mup-base-hidden-size: invalid int value"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "0"), "--mup-base-hidden-size: must be > 0"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--mup-output-mult", "-1"),
         "--mup-output-mult: must be > 0"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--mup-width-mult", "0"),
         "--mup-width-mult: must be > 0"),
        (("--mup-base-hidden-size", "8",), "--mup-base-hidden-size: has no effect without a scaling recipe"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--depth-alpha", "0.5"),
         "--depth-alpha: only used by --scaling-recipe completep/depth_mup"),
        (("--scaling-recipe", "completep", "--mup-base-hidden-size", "8", "--mup-base-num-layers", "1",
          "--depth-alpha", "0.5"), "--depth-alpha: 0.5 contradicts --scaling-recipe completep"),
        (("--scaling-recipe", "depth_mup", "--mup-base-hidden-size", "8", "--mup-base-num-layers", "1"),
         "--depth-alpha: --scaling-recipe depth_mup needs alpha in"),
        (("--scaling-recipe", "depth_mup", "--mup-base-hidden-size", "8", "--mup-base-num-layers", "1",
          "--depth-alpha", "2"), r"--depth-alpha: must be in \[0.5, 1\]"),
        (("--scaling-recipe", "mup", "--enable-depth-scale", "--mup-base-hidden-size", "8"),
         "--enable-depth-scale: contradicts --scaling-recipe mup"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--optimizer", "muon"),
         "--optimizer: muon with --scaling-recipe mup is refused: its orthogonalized"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--optimizer", "sophia"),
         "--optimizer: sophia with --scaling-recipe mup is refused"),
        (("--scaling-recipe", "mup", "--mup-base-hidden-size", "8", "--optimizer", "dshampoo"),
         "--optimizer: dshampoo with --scaling-recipe mup is refused"),
    ],
)
def test_bad_input_is_one_line_error_naming_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message) as info:
        tiny_plan("--train-iters", "1", *flags)
    assert "\n" not in str(info.value)
