"""tools/import_checkpoint.py on Hugging Face directories: tiny random models written by
``transformers`` itself (``hf_fixtures``), in both config schemas.

Oracles: our logits after the import equal ``transformers``' on the same ids (fp32, 1e-5; the
measured gap, ~4e-6, is the RoPE tables: ours from fp64 angles, HF's fp32); greedy generation
of 32 tokens is identical; import -> export gives every tensor back bit for bit with the same
``config.json`` semantics; bad inputs are refused in one line naming the file or key, with
nothing left behind.
"""

from __future__ import annotations

import glob
import json
import os
import pickle

import pytest
import torch

from megatron.checkpointing.importing.formats import open_source
from megatron.checkpointing.importing.writer import import_checkpoint
from megatron.checkpointing.metadata import CheckpointError
from megatron.checkpointing.universal import UniversalCheckpoint, load_weights
from megatron.config import ConfigError
from megatron.model.generate import greedy_generate
from megatron.model.gpt import GPTModel
from tests.unit.tools.hf_fixtures import FAMILIES, VOCAB, build_model, save_bin, save_model, write_tokenizer
from tools import import_checkpoint as import_tool

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-5


def _ours(out: str) -> GPTModel:
    uc = UniversalCheckpoint(out)
    model = GPTModel(uc.spec).eval()
    load_weights(model, uc, uc.spec, tp_rank=0, tp=1)
    return model


def _import(src: str, out: str, **kw) -> str:
    import_checkpoint(open_source(src), out, **kw)
    return out


def _ids(seed: int = 1, length: int = 40) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


# The 4.x schema's own keys (rope_scaling, rotary_pct, rotary_emb_base) are Llama 3's and Pythia's;
# the other families' 4.x files only move rope_theta (slow).
SCHEMAS = [pytest.param(f, False, id=f"{f}-schema5") for f in sorted(FAMILIES)] + [
    pytest.param(f, True, id=f"{f}-schema4",
                 marks=() if f in ("llama3-gqa-bias-tied", "pythia") else pytest.mark.slow)
    for f in sorted(FAMILIES)]


@pytest.mark.parametrize("family, legacy", SCHEMAS)
def test_logits_and_generation_match_transformers(dist_world1, family, legacy, tmp_path):
    hf = build_model(family)
    src = save_model(hf, str(tmp_path / "hf"), legacy=legacy)
    out = _import(src, str(tmp_path / "ours"))
    ours = _ours(out)
    ids = _ids()
    with torch.no_grad():
        diff = (ours(ids)[..., :VOCAB] - hf(ids).logits).abs().max().item()
    assert diff < TOL, f"{family}: max |logit diff| {diff}"
    prompt = ids[0, :8]
    theirs = hf.generate(prompt[None], max_new_tokens=32, min_new_tokens=32, do_sample=False,
                         pad_token_id=0)[0, 8:].tolist()
    assert greedy_generate(ours, prompt, 32, vocab_size=VOCAB) == theirs
    meta = json.load(open(os.path.join(out, "run_metadata.json")))
    assert meta["config"]["--tokenizer-type"] == "hf"
    assert meta["config"]["--tokenizer-model"] == os.path.join(os.path.abspath(out), "tokenizer.json")
    assert meta["import"]["hf_class"] == type(hf).__name__
    assert {os.path.basename(i["file"]) for i in meta["import"]["inputs"]} >= {"config.json", "model.safetensors"}


SEMANTIC_IGNORED = {"transformers_version", "dtype", "torch_dtype", "bos_token_id", "eos_token_id",
                    "pad_token_id", "initializer_range", "max_window_layers", "_name_or_path", "architectures"}


def _semantics(config: dict) -> dict:
    """What decides the function: without ids, init and (training-only) dropout; defaults spelled."""
    if config.get("model_type") == "gpt2" and config.get("n_inner") is None:
        config["n_inner"] = 4 * config["n_embd"]
    if "hidden_size" in config and config.get("head_dim") is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    if "rope_theta" in (config.get("rope_parameters") or {}):
        config.pop("rope_theta", None)  # the legacy spelling of the same value
    return {k: v for k, v in config.items()
            if k not in SEMANTIC_IGNORED and not k.endswith(("dropout", "pdrop"))}


def test_import_then_export_gives_every_tensor_back(dist_world1, family, tmp_path):
    from megatron.checkpointing.hf_export import export_hf

    hf = build_model(family)
    src = save_model(hf, str(tmp_path / "hf"))
    out = _import(src, str(tmp_path / "ours"))
    back = str(tmp_path / "back")
    summary = export_hf(out, back)
    assert summary["hf_class"] == type(hf).__name__
    before = safetensors_torch.load_file(os.path.join(src, "model.safetensors"))
    after = safetensors_torch.load_file(os.path.join(back, "model.safetensors"))
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    a, b = (_semantics(transformers.AutoConfig.from_pretrained(d).to_dict()) for d in (src, back))
    diffs = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    assert diffs == {}


def test_sharded_bin_bf16_and_workers_give_the_same_tensors(tmp_path):
    hf = build_model("llama3-gqa-bias-tied")
    src = save_model(hf, str(tmp_path / "single"))
    single = _import(src, str(tmp_path / "a"))
    sharded = save_model(hf, str(tmp_path / "sharded"), max_shard_size="20KB")
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    binary = save_bin(hf, str(tmp_path / "bin"))
    assert glob.glob(os.path.join(binary, "pytorch_model*.bin"))
    for other in (_import(sharded, str(tmp_path / "b"), workers=2), _import(binary, str(tmp_path / "c"))):
        for d in glob.glob(os.path.join(single, "zero", "*")):
            name = os.path.basename(d)
            assert torch.equal(torch.load(f"{d}/fp32.pt")["param"], torch.load(f"{other}/zero/{name}/fp32.pt")["param"])
    bf16 = _import(src, str(tmp_path / "d"), dtype="bf16")
    w = torch.load(f"{bf16}/zero/embedding.word_embeddings.weight/fp32.pt")["param"]
    assert w.dtype == torch.bfloat16


def test_vocabulary_rows_beyond_the_tokenizer_are_kept(tmp_path):
    src = save_model(build_model("qwen2-gqa-tied"), str(tmp_path / "hf"), tokenizer=False)
    write_tokenizer(src, size=90)  # 96 embedding rows, 90 tokenizer ids (Qwen2 and Pythia ship so)
    uc = UniversalCheckpoint(_import(src, str(tmp_path / "ours")))
    assert (uc.spec.original_vocab_size, uc.spec.vocab_size) == (90, 96)
    assert uc.metadata["config"]["--make-vocab-size-divisible-by"] == 32


def test_tool_and_tokenizer_directory(tmp_path, capsys):
    from megatron.config.data import DataConfig
    from megatron.data.tokenizers import build_tokenizer

    src = save_model(build_model("gpt2"), str(tmp_path / "hf"))
    out = str(tmp_path / "ours")
    assert import_tool.main(["--input", src, "--output", out, "--workers", "2"]) == 0
    assert "Continue with: LOAD=" in capsys.readouterr().err
    tok = build_tokenizer(DataConfig(tokenizer_type="hf", tokenizer_model=out))
    assert tok.vocab_size == VOCAB and tok.encode("w3 w5") == [3, 5]
    from tools.preprocess_data import infer_tokenizer_type

    assert infer_tokenizer_type(out) == "hf"


def test_run_inherits_shape_and_tokenizer(tmp_path):
    from megatron.config import parse_args

    src = save_model(build_model("pythia"), str(tmp_path / "hf"))
    out = _import(src, str(tmp_path / "ours"))
    m = parse_args(["--load", out, "--universal-checkpoint", "--finetune"]).config.model
    assert (m.num_layers, m.hidden_size, m.rotary_percent, m.use_parallel_residual) == (2, 64, 0.25, True)
    with pytest.raises(ConfigError, match="--hidden-size"):
        parse_args(["--load", out, "--universal-checkpoint", "--hidden-size", "32"])


# ---- bad input -----------------------------------------------------------------------------------


def _refused(src: str, out: str, match: str, error=(CheckpointError, ConfigError)) -> None:
    with pytest.raises(error, match=match) as info:
        import_checkpoint(open_source(src), out)
    assert "\n" not in str(info.value)
    assert not glob.glob(out + "*"), "something was left behind"


def _edit_config(src: str, **values) -> None:
    path = os.path.join(src, "config.json")
    config = json.load(open(path))
    config.update(values)
    json.dump(config, open(path, "w"))


@pytest.fixture
def llama_dir(tmp_path) -> str:
    return save_model(build_model("llama-linear-untied"), str(tmp_path / "hf"))


def test_refuses_missing_config(llama_dir, tmp_path):
    os.remove(os.path.join(llama_dir, "config.json"))
    with pytest.raises(CheckpointError, match="config.json"):
        open_source(llama_dir, "hf")


def test_refuses_truncated_shard_and_missing_file(tmp_path):
    src = save_model(build_model("llama-linear-untied"), str(tmp_path / "hf"), max_shard_size="20KB")
    shards = sorted(glob.glob(os.path.join(src, "model-*.safetensors")))
    with open(shards[1], "r+b") as f:
        f.truncate(os.path.getsize(shards[1]) - 100)
    _refused(src, str(tmp_path / "out"), f"{os.path.basename(shards[1])} is truncated")
    os.remove(shards[1])
    _refused(src, str(tmp_path / "out"), f"names {os.path.basename(shards[1])}, which is not in")


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refuses_a_bin_that_needs_arbitrary_unpickling(tmp_path):
    src = save_bin(build_model("llama-linear-untied"), str(tmp_path / "hf"))
    marker = str(tmp_path / "was_run")
    bins = glob.glob(os.path.join(src, "pytorch_model*.bin"))
    with open(bins[0], "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Exploit(marker)}, f)
    _refused(src, str(tmp_path / "out"), "needs arbitrary unpickling, refused")
    assert not os.path.exists(marker)


@pytest.mark.parametrize("values, match", [
    ({"model_type": "mixtral"}, "model_type='mixtral' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "rope_parameters.rope_type='yarn' has no faithful mapping"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type='dynamic'"),
    ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
])
def test_refuses_config_without_a_faithful_mapping(llama_dir, tmp_path, values, match):
    _edit_config(llama_dir, **values)
    _refused(llama_dir, str(tmp_path / "out"), match)


def test_refuses_existing_output_and_missing_tensor(llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        import_checkpoint(open_source(llama_dir), str(out))
    assert import_tool.main(["--input", llama_dir, "--output", str(out)]) == 2
    weights = safetensors_torch.load_file(os.path.join(llama_dir, "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    safetensors_torch.save_file(weights, os.path.join(llama_dir, "model.safetensors"))
    _refused(llama_dir, str(tmp_path / "other"), "no tensor 'model.layers.1.mlp.up_proj.weight'")


def test_mistral_sliding_window_caps_the_sequence(tmp_path):
    from megatron.config import parse_args

    src = save_model(build_model("mistral-gqa", sliding_window=32), str(tmp_path / "hf"))
    out = _import(src, str(tmp_path / "ours"))
    assert UniversalCheckpoint(out).spec.max_position_embeddings == 32
    load = ["--load", out, "--universal-checkpoint", "--finetune"]
    assert parse_args([*load, "--seq-length", "32"]).config.model.seq_length == 32
    # Longer than the window: refused naming the config key, its value and the file, and the fix.
    with pytest.raises(ConfigError) as info:
        parse_args([*load, "--seq-length", "64"])
    config = os.path.join(src, "config.json")
    assert str(info.value).startswith("--seq-length: 64 (from --seq-length) is longer than the 32 the checkpoint")
    assert f"sliding_window=32 in {config}" in str(info.value) and str(info.value).endswith("--seq-length 32 or less")


def test_hf_source_has_no_optimizer_state(llama_dir, tmp_path):
    from megatron.checkpointing.importing.megatron_ds import MegatronDeepSpeedSource
    from megatron.checkpointing.importing.source import ImportSource

    members = [m for m in vars(ImportSource) if not m.startswith("_")]
    assert {"optimizer_step", "optimizer_states", "limits"} <= set(members)
    for cls in (type(open_source(llama_dir)), MegatronDeepSpeedSource):
        assert all(callable(getattr(cls, m, None)) or m in ("format", "path") for m in members), cls
    source = open_source(llama_dir)
    assert list(source.optimizer_states()) == [] and source.optimizer_step() is None
    meta = json.load(open(os.path.join(_import(llama_dir, str(tmp_path / "ours")), "run_metadata.json")))
    assert meta["import"]["optimizer_states"] == [] and meta["limits"] == {}
    assert not glob.glob(os.path.join(tmp_path, "ours", "zero", "*", "step.pt"))


def test_tensor_disagreeing_with_config_stops_the_import_and_leaves_nothing(llama_dir, tmp_path):
    _edit_config(llama_dir, intermediate_size=40)  # the files hold 48-wide MLPs
    _refused(llama_dir, str(tmp_path / "out"), r"mlp.dense_h_to_4h.weight \(fp32\) is \(96, 32\), the model in the "
             r"source's config needs \(80, 32\)")
