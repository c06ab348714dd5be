"""tools/export_hf.py: a trained checkpoint exported to Hugging Face Llama gives our logits.

Each case trains a tiny Llama-shaped GPT (RMSNorm, SwiGLU, RoPE; hidden 16, 4 heads, vocab 64
padded to 128) for 2 steps, exports it, loads it with ``transformers`` and compares its logits
with our ``GPTModel`` built from the same checkpoint, in fp32 on CPU.

The models use ``--init-method-std 0.2`` (logits of about 7, sharp attention): at the default
0.02 attention is nearly uniform and a wrong RoPE theta or q/k layout would hide under 1e-5.
The measured differences (about 1.5e-6) come from the RoPE tables (ours from fp64 angles, HF's
fp32) and from the SDPA GQA kernel against HF's repeated key/value heads.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.convert import convert
from megatron.checkpointing.hf_export import check_llama_shaped, export_llama, open_checkpoint
from megatron.checkpointing.universal import load_weights
from megatron.config import ConfigError, DistEnv
from megatron.model.gpt import GPTModel
from megatron.trainer.loop import train
from tests.helpers import run_distributed, tiny_plan
from tools import export_hf

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

LLAMA = ["--swiglu", "--normalization", "rmsnorm", "--init-method-std", "0.2"]
VARIANTS = {
    "tied-gqa": ["--num-key-value-heads", "2"],
    "untied-mha": [
        "--untie-embeddings-and-output-weights",
        "--rotary-base",
        "500",
        "--norm-epsilon",
        "1e-3",
    ],
    "untied-gqa-nobias": [
        "--untie-embeddings-and-output-weights",
        "--num-key-value-heads",
        "2",
        "--disable-bias-linear",
    ],
}
TOL = 1e-5


def _train(save: str, *flags: str, mock: bool = True, env: DistEnv | None = None) -> str:
    env = env or DistEnv()
    train(tiny_plan(*flags, "--train-iters", "2", "--save", save, env=env, mock=mock), env)
    return save


def _save_tp2(env: DistEnv, save: str) -> None:
    _train(save, *LLAMA, *VARIANTS["tied-gqa"], "--tensor-model-parallel-size", "2", env=env)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, tmp_path_factory) -> tuple[str, str]:
    """``(name, SAVE)`` of a trained Llama-shaped checkpoint."""
    save = str(tmp_path_factory.mktemp(request.param) / "ckpt")
    return request.param, _train(save, *LLAMA, *VARIANTS[request.param])


@pytest.fixture(scope="module")
def llama_save(tmp_path_factory) -> str:
    """SAVE of the tied GQA model with biases."""
    return _train(str(tmp_path_factory.mktemp("llama") / "ckpt"), *LLAMA, *VARIANTS["tied-gqa"])


def our_logits(source: str, tokens: torch.Tensor) -> torch.Tensor:
    """Full padded-vocabulary logits of our dense GPT with the checkpoint's weights (TP=1)."""
    ckpt = open_checkpoint(source)
    model = GPTModel(ckpt.spec).eval()
    load_weights(model, ckpt, ckpt.spec, tp_rank=0, tp=1)
    with torch.no_grad():
        return model(tokens)


def hf_logits(directory: str, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the exported model loaded by transformers; no weight may be missing or unused."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32  # the config's dtype
    with torch.no_grad():
        return model.eval()(tokens).logits


def test_logits_match_transformers(dist_world1, variant, tmp_path):
    name, save = variant
    out = str(tmp_path / "hf")
    summary = export_llama(save, out)
    spec = open_checkpoint(save).spec
    assert spec.vocab_size == 128 and spec.original_vocab_size == 64
    assert (
        summary["parameters"] == spec.num_parameters() - (64 if spec.tie_embeddings else 128) * 16
    )
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["vocab_size"] == 64 and config["num_key_value_heads"] == spec.num_key_value_heads
    assert config["tie_word_embeddings"] == ("untied" not in name)
    assert config["attention_bias"] == config["mlp_bias"] == ("nobias" not in name)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    ours, theirs = our_logits(save, tokens), hf_logits(out, tokens)
    assert theirs.shape == (2, 16, 64)
    assert (ours[..., :64] - theirs).abs().max().item() < TOL


def test_universal_checkpoint_exports_the_same_tensors(llama_save, tmp_path):
    universal = convert(llama_save, str(tmp_path / "universal")).output
    export_llama(llama_save, str(tmp_path / "a"))
    export_llama(universal, str(tmp_path / "b"))
    a = safetensors_torch.load_file(str(tmp_path / "a" / "model.safetensors"))
    b = safetensors_torch.load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def dist_world1_after_tp2(tmp_path, request):
    """SAVE trained at TP=2 on two processes, then a one-process world for our reference model."""
    save, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    run_distributed(_save_tp2, save)
    assert open_checkpoint(save).tp == 2
    request.getfixturevalue("dist_world1")
    return save, out


def test_tp2_checkpoint_exports_the_full_model(dist_world1_after_tp2):
    save, out = dist_world1_after_tp2
    export_llama(save, out)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    assert (our_logits(save, tokens)[..., :64] - hf_logits(out, tokens)).abs().max().item() < TOL


def test_bfloat16_export(llama_save, tmp_path):
    out = str(tmp_path / "hf")
    export_llama(llama_save, out, dtype="bfloat16")
    tensors = safetensors_torch.load_file(os.path.join(out, "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
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
    save = _train(
        str(tmp_path / "ckpt"),
        *LLAMA,
        "--mock-data",
        "--tokenizer-type",
        "hf",
        "--tokenizer-model",
        path,
        mock=False,
    )
    out = str(tmp_path / "hf")
    assert export_llama(save, out)["tokenizer"] == path
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert (config["vocab_size"], config["eos_token_id"]) == (40, 39)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("w3 w7 <|endoftext|>")["input_ids"] == [4, 8, 39]
    assert hf_tok.eos_token_id == 39


def test_cli_exports_and_refuses_an_existing_output(llama_save, tmp_path, capsys):
    out = str(tmp_path / "hf")
    assert export_hf.main(["--input", llama_save, "--output", out, "--dtype", "float16"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert export_hf.main(["--input", llama_save, "--output", out]) == 2
    assert "--output" in capsys.readouterr().err
    assert export_hf.main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "x")]) == 2
    assert "--input" in capsys.readouterr().err


def test_layernorm_gelu_model_is_refused(tmp_path, capsys):
    save = _train(str(tmp_path / "ckpt"))
    out = str(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"--normalization rmsnorm.*--swiglu"):
        export_llama(save, out)
    assert export_hf.main(["--input", save, "--output", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--normalization" in err and "--swiglu" in err
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_learned_positions_and_bidirectional_attention_are_refused(llama_save):
    spec = open_checkpoint(llama_save).spec
    check_llama_shaped(spec)
    with pytest.raises(ConfigError, match="--use-rotary-position-embeddings"):
        check_llama_shaped(replace(spec, position_embedding="learned"))
    with pytest.raises(ConfigError, match="causal attention"):
        check_llama_shaped(replace(spec, causal=False))


def test_unknown_dtype_and_foreign_directory_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="--dtype"):
        export_llama(str(tmp_path), str(tmp_path / "hf"), dtype="int8")
    with pytest.raises(CheckpointError):
        export_llama(str(tmp_path), str(tmp_path / "hf"))
