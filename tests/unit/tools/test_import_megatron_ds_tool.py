"""``tools/import_checkpoint.py`` on the argonne fork's checkpoints (fixtures written in the fork's
layouts from a random HF Llama): the format is detected, the universal checkpoint's weights give the
Llama's logits, Adam's moments and step travel, ``--no-optimizer-state`` leaves them out, and a
tokenizer that does not pad to the checkpoint's rows is refused with nothing left behind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron.checkpointing.importing.megatron_ds import MegatronDeepSpeedSource
from megatron.checkpointing.universal import UniversalCheckpoint, load_weights
from megatron.model.gpt import GPTModel
from tests.unit.checkpointing import mds_fixtures as fx
from tools import import_checkpoint

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():  # noqa: ANN201
    return fx.tiny_llama()


def _logits_gap(out: str, llama) -> float:  # noqa: ANN001
    uc = UniversalCheckpoint(out)
    model = GPTModel(uc.spec).eval()
    load_weights(model, uc, uc.spec, tp_rank=0, tp=1)
    tokens = torch.randint(0, fx.VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return (model(tokens)[..., : fx.VOCAB] - llama(tokens).logits).abs().max().item()


def test_tool_imports_a_pipeline_checkpoint_with_its_moments(dist_world1, llama, tmp_path):
    moments = fx.random_moments(fx.fork_full(llama))
    root = fx.write_pipe(str(tmp_path / "fork"), llama, tp=2, pp=2, moments=moments)
    out = str(tmp_path / "ours")
    assert import_checkpoint.main(["--input", root, "--output", out]) == 0
    assert _logits_gap(out, llama) < 1e-5
    with open(os.path.join(out, "run_metadata.json")) as f:
        meta = json.load(f)
    assert meta["import"]["format"] == "megatron-deepspeed"
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(meta["import"]["optimizer_states"])
    uc = UniversalCheckpoint(out)
    source = MegatronDeepSpeedSource(root)
    read = {(n, k): load for n, k, load in source.optimizer_states()}
    name = "layers.0.self_attention.query_key_value.weight"
    for key in ("exp_avg", "exp_avg_sq"):  # fp32, bit for bit, whatever the weights' dtype
        assert torch.equal(uc.full(name, key), read[(name, key)]())
    assert float(uc.full(name, "step")) == source.optimizer_step() > 0  # for Adam's bias correction

    bare = str(tmp_path / "weights_only")
    assert import_checkpoint.main(["--input", root, "--output", bare, "--no-optimizer-state"]) == 0
    assert os.listdir(os.path.join(bare, "zero", name)) == ["fp32.pt"]


def _word_level(path, size: int) -> None:
    from tokenizers import Tokenizer, models

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(path))


def test_a_local_tokenizer_is_bundled_with_its_vocabulary(llama, tmp_path):
    root = fx.write_dense(str(tmp_path / "fork"), llama, 1, args=fx.fork_args(llama, 1, tokenizer_type="HFTokenizer"))
    _word_level(tmp_path / "tokenizer.json", fx.VOCAB)
    out = str(tmp_path / "ours")
    assert import_checkpoint.main(["--input", root, "--output", out, "--tokenizer-model",
                                   str(tmp_path / "tokenizer.json")]) == 0
    with open(os.path.join(out, "run_metadata.json")) as f:
        config = json.load(f)["config"]
    assert config["--vocab-size"] == fx.VOCAB and config["--tokenizer-type"] == "hf"
    assert config["--tokenizer-model"] == os.path.join(os.path.abspath(out), "tokenizer.json")
    assert os.path.isfile(config["--tokenizer-model"])
    assert UniversalCheckpoint(out).spec.vocab_size == fx.PADDED


def test_a_tokenizer_that_does_not_pad_to_the_rows_is_refused(llama, tmp_path, capsys):
    root = fx.write_dense(str(tmp_path / "fork"), llama, 1, args=fx.fork_args(llama, 1, tokenizer_type="HFTokenizer"))
    out = str(tmp_path / "ours")
    # A word-level tokenizer with ten times the tiny Llama's rows: not the model's tokenizer.
    wrong = tmp_path / "tokenizer.json"
    _word_level(wrong, 10 * fx.VOCAB)
    assert import_checkpoint.main(["--input", root, "--output", out, "--tokenizer-model", str(wrong)]) == 2
    assert "not the tokenizer this model was trained with" in capsys.readouterr().err
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_hf_format_refuses_the_fork_only_options(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    src = str(tmp_path / "hf")
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(src)
    assert import_checkpoint.main(["--input", src, "--output", str(tmp_path / "o"), "--no-optimizer-state"]) == 2
    assert "--optimizer-state: the hf format does not take it" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
