"""tools/export_hf.py: every architecture we train exports to a transformers class with our logits.

Each case trains a tiny GPT (hidden 16, 4 heads, vocab 64 padded to 128) for 2 steps, exports
it, loads it with ``transformers`` and compares its logits with our ``GPTModel`` built from the
same checkpoint, in fp32 on CPU.

The models use ``--init-method-std 0.2`` (logits of about 7, sharp attention): at the default
0.02 attention is nearly uniform and a wrong RoPE theta, rotary width or q/k layout would hide
under 1e-5. The measured differences (about 1.5e-6) come from the RoPE tables (ours from fp64
angles, HF's fp32) and from the SDPA GQA kernel against HF's repeated key/value heads.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import convert
from megatron.checkpointing.hf_arch import EXPORTERS, select_exporter
from megatron.checkpointing.hf_export import (
    check_llama_shaped,
    export_hf,
    export_llama,
    open_checkpoint,
)
from megatron.checkpointing.hf_shards import INDEX_FILE, parse_size
from megatron.checkpointing.universal import load_weights
from megatron.config import ConfigError, DistEnv
from megatron.model.gpt import GPTModel
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan
from tools import export_hf as export_tool

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SHARP = ["--init-method-std", "0.2"]
LLAMA = ["--swiglu", "--normalization", "rmsnorm", *SHARP]
LEARNED = ["--no-use-rotary-position-embeddings", *SHARP]
UNTIED = "--untie-embeddings-and-output-weights"
GQA = ["--num-key-value-heads", "2"]
# name -> (flags, expected target). LayerNorm + GeLU + RoPE is our default architecture.
VARIANTS = {
    "llama-tied-gqa": ([*LLAMA, *GQA], "llama"),
    "llama-untied-mha": ([*LLAMA, UNTIED, "--rotary-base", "500", "--norm-epsilon", "1e-3"], "llama"),
    "llama-untied-gqa-nobias": ([*LLAMA, UNTIED, *GQA, "--disable-bias-linear"], "llama"),
    "neox-tied": ([*SHARP, "--rotary-base", "500"], "gpt_neox"),
    "neox-untied": ([*SHARP, UNTIED, "--norm-epsilon", "1e-3"], "gpt_neox"),
    "starcoder2-gqa": ([*SHARP, *GQA, UNTIED], "starcoder2"),
    "starcoder2-nobias": ([*SHARP, "--disable-bias-linear"], "starcoder2"),
    "gpt2-tied": (LEARNED, "gpt2"),
    "gpt2-untied": ([*LEARNED, UNTIED, "--max-position-embeddings", "32"], "gpt2"),
}
TOL = 1e-5


def _train(save: str, *flags: str, mock: bool = True, env: DistEnv | None = None) -> str:
    env = env or DistEnv()
    train(tiny_plan(*flags, "--train-iters", "2", "--save", save, env=env, mock=mock), env)
    return save


def _save_tp2(env: DistEnv, save: str, name: str) -> None:
    _train(save, *VARIANTS[name][0], "--tensor-model-parallel-size", "2", env=env)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory) -> tuple[str, str]:
    """``(name, SAVE)`` of a trained checkpoint of each variant."""
    save = str(tmp_path_factory.mktemp(request.param) / "ckpt")
    return request.param, _train(save, *VARIANTS[request.param][0])


@pytest.fixture(scope="module")
def llama_save(tmp_path_factory) -> str:
    """SAVE of the tied GQA Llama with biases."""
    return _train(str(tmp_path_factory.mktemp("llama") / "ckpt"), *VARIANTS["llama-tied-gqa"][0])


def our_logits(source: str, tokens: torch.Tensor) -> torch.Tensor:
    """Full padded-vocabulary logits of our dense GPT with the checkpoint's weights (TP=1)."""
    ckpt = open_checkpoint(source)
    model = GPTModel(ckpt.spec).eval()
    load_weights(model, ckpt, ckpt.spec, tp_rank=0, tp=1)
    with torch.no_grad():
        return model(tokens)


def hf_logits(directory: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the exported model loaded by transformers; no weight may be missing or unused."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32  # the config's dtype
    with torch.no_grad():
        return model.eval()(tokens).logits


def _tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))


def _max_diff(save: str, out: str, seed: int = 0) -> float:
    tokens = _tokens(seed)
    theirs = hf_logits(out, tokens)
    assert theirs.shape == (2, 16, 64)
    return (our_logits(save, tokens)[..., :64] - theirs).abs().max().item()


def test_logits_match_transformers(dist_world1, variant, tmp_path):
    name, save = variant
    flags, target = VARIANTS[name]
    out = str(tmp_path / "hf")
    summary = export_hf(save, out)
    spec = open_checkpoint(save).spec
    assert (summary["architecture"], summary["files"]) == (target, ["model.safetensors"])
    assert spec.vocab_size == 128 and spec.original_vocab_size == 64
    padded_rows = (64 if spec.tie_embeddings else 128) * 16
    assert summary["parameters"] == spec.num_parameters() - padded_rows
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == [EXPORTERS[target].hf_class]
    assert config["vocab_size"] == 64 and config["tie_word_embeddings"] == (UNTIED not in flags)
    loaded = transformers.AutoConfig.from_pretrained(out)
    if target == "gpt_neox":  # the sequential residual and full rotary width actually in effect
        assert not loaded.use_parallel_residual
        assert loaded.rope_parameters["partial_rotary_factor"] == 1.0
    assert _max_diff(save, out) < TOL


def test_universal_checkpoint_exports_the_same_tensors(variant, tmp_path):
    name, save = variant
    universal = convert(save, str(tmp_path / "universal")).output
    export_hf(save, str(tmp_path / "a"))
    export_hf(universal, str(tmp_path / "b"))
    a = safetensors_torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors_torch.load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name", ["llama-tied-gqa", pytest.param("neox-untied", marks=pytest.mark.slow),
             pytest.param("gpt2-tied", marks=pytest.mark.slow)]
)
def test_tp2_checkpoint_exports_the_full_model(name, tmp_path, request):
    save, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    run_distributed(_save_tp2, save, name)
    assert open_checkpoint(save).tp == 2
    request.getfixturevalue("dist_world1")
    assert export_hf(save, out)["architecture"] == VARIANTS[name][1]
    assert _max_diff(save, out, seed=1) < TOL


def test_sharded_export_equals_unsharded_and_loads(dist_world1, llama_save, tmp_path):
    whole, sharded = str(tmp_path / "whole"), str(tmp_path / "sharded")
    export_hf(llama_save, whole)
    seen = []
    summary = export_hf(llama_save, sharded, max_shard_size="4KB",
                        progress=lambda done, total, name: seen.append((done, total)))
    files = summary["files"]
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(os.listdir(sharded)) == sorted([*files, INDEX_FILE, "config.json", "generation_config.json"])
    a = safetensors_torch.load_file(os.path.join(whole, "model.safetensors"))
    b = {}
    for file in files:
        part = safetensors_torch.load_file(os.path.join(sharded, file))
        # each shard within the limit unless a single tensor is larger
        assert len(part) == 1 or sum(t.numel() * 4 for t in part.values()) <= 4000
        b.update(part)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    with open(os.path.join(sharded, INDEX_FILE)) as f:
        index = json.load(f)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in a.values()) == summary["bytes"]
    assert set(index["weight_map"]) == set(a)
    assert seen[-1][0] == seen[-1][1] == summary["bytes"] and len(seen) == len(a)
    assert summary["peak_rss_bytes"] > 0
    assert _max_diff(llama_save, sharded) < TOL


def test_bfloat16_export(llama_save, tmp_path):
    out = str(tmp_path / "hf")
    export_hf(llama_save, out, dtype="bf16", max_shard_size="8KB")
    with open(os.path.join(out, INDEX_FILE)) as f:
        files = set(json.load(f)["weight_map"].values())
    dtypes = {t.dtype for file in files for t in safetensors_torch.load_file(os.path.join(out, file)).values()}
    assert dtypes == {torch.bfloat16}
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"


def test_hf_tokenizer_is_copied_with_its_eos_id(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", *(f"w{i}" for i in range(38))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    save = _train(str(tmp_path / "ckpt"), *LLAMA, "--mock-data", "--tokenizer-type", "hf",
                  "--tokenizer-model", path, mock=False)
    out = str(tmp_path / "hf")
    assert export_llama(save, out)["tokenizer"] == "hf"
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert (config["vocab_size"], config["eos_token_id"]) == (40, 39)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("w3 w7 <|endoftext|>")["input_ids"] == [4, 8, 39]
    assert hf_tok.eos_token_id == 39


def test_cli_exports_and_refuses_an_existing_output(llama_save, tmp_path, capsys):
    out = str(tmp_path / "hf")
    argv = ["--input", llama_save, "--output", out, "--dtype", "fp16", "--max-shard-size", "10KB"]
    assert export_tool.main(argv) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "LlamaForCausalLM" in err and "peak RSS" in err and "100%" in err
    assert os.path.isfile(os.path.join(out, INDEX_FILE))
    assert export_tool.main(["--input", llama_save, "--output", out]) == 2
    assert "--output" in capsys.readouterr().err
    assert export_tool.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "x")]) == 2
    assert "--input" in capsys.readouterr().err
    assert export_tool.main(["--input", llama_save, "--output", str(tmp_path / "y"), "--max-shard-size", "lots"]) == 2
    assert "--max-shard-size" in capsys.readouterr().err


def test_forcing_a_target_that_does_not_fit_is_refused_by_name(tmp_path, capsys):
    save = _train(str(tmp_path / "ckpt"))  # LayerNorm + GeLU + RoPE
    out = str(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"--normalization rmsnorm.*--swiglu"):
        export_llama(save, out)
    assert export_tool.main(["--input", save, "--output", out, "--architecture", "gpt2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--architecture gpt2" in err and "--no-use-rotary-position-embeddings" in err
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_shapes_without_a_faithful_target_are_refused_naming_the_flags(llama_save):
    spec = open_checkpoint(llama_save).spec
    check_llama_shaped(spec)
    neox = replace(spec, normalization="layernorm", swiglu=False, num_key_value_heads=4)
    assert select_exporter(neox).name == "gpt_neox"
    assert select_exporter(replace(neox, num_key_value_heads=2)).name == "starcoder2"
    assert select_exporter(replace(neox, position_embedding="learned")).name == "gpt2"
    cases = {
        # RMSNorm + GeLU: no class has it
        "--swiglu": replace(spec, swiglu=False),
        # LayerNorm + SwiGLU
        "--normalization rmsnorm": replace(spec, normalization="layernorm"),
        # learned positions with SwiGLU (GPT-2 has a GeLU MLP, Llama rotary positions)
        "a GeLU MLP (this model: --swiglu)": replace(spec, position_embedding="learned"),
        "--num-key-value-heads": replace(neox, position_embedding="learned", num_key_value_heads=2),
        "--disable-bias-linear": replace(neox, position_embedding="learned", bias=False),
        "--kv-channels": replace(neox, head_dim=8),
        "causal attention": replace(spec, causal=False),
    }
    for flag, bad in cases.items():
        with pytest.raises(ConfigError, match="no transformers class") as e:
            select_exporter(bad)
        assert flag in str(e.value), (flag, str(e.value))
    with pytest.raises(ConfigError, match="^--architecture 'bloom': unknown export target; known: gpt2, "):
        select_exporter(spec, "bloom")


def test_bad_dtype_size_and_foreign_directory_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="--dtype"):
        export_hf(str(tmp_path), str(tmp_path / "hf"), dtype="int8")
    with pytest.raises(ConfigError, match="--max-shard-size"):
        export_hf(str(tmp_path), str(tmp_path / "hf"), max_shard_size="0MB")
    with pytest.raises(CheckpointError):
        export_hf(str(tmp_path), str(tmp_path / "hf"))
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
