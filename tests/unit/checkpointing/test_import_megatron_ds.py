"""Importing Megatron-DeepSpeed checkpoints: a random HF Llama written in the fork's layouts
(``mds_fixtures``) reads back as our GPT with the Llama's logits, at TP=1, TP=2, PP=2 x TP=2 and
from a universal checkpoint.

The Llama uses ``initializer_range=0.2`` (logits of several units, sharp attention), so a wrong
QKV grouping, [gate; up] order, TP merge or RoPE theta moves the logits by far more than 1e-5.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron.checkpointing.importing.megatron_ds import FORMAT, MegatronDeepSpeedSource
from megatron.checkpointing.importing.megatron_ds_files import flat_name
from megatron.checkpointing.importing.source import SOURCE_FORMATS, detect_format
from megatron.checkpointing.metadata import CheckpointError
from megatron.config import ConfigError, DistEnv, parse_args
from megatron.model.gpt import GPTModel
from megatron.model.spec import GPTSpec
from megatron.plan import resolve
from tests.helpers import run_distributed, tiny_plan
from tests.unit.checkpointing import mds_fixtures as fx

pytest.importorskip("transformers")
TOL = 1e-5


@pytest.fixture(scope="module")
def llama():  # noqa: ANN201
    return fx.tiny_llama()


@pytest.fixture(scope="module")
def moments(llama) -> dict:  # noqa: ANN001
    return fx.random_moments(fx.fork_full(llama))


def _write(kind: str, root: str, llama, moments) -> str:  # noqa: ANN001
    if kind == "tp1":
        return fx.write_dense(root, llama, 1)
    if kind == "tp2-zero":
        return fx.write_dense(root, llama, 2, moments=moments, dp=2)
    if kind == "pp2-tp2":
        return fx.write_pipe(root, llama, tp=2, pp=2)
    if kind == "pp2-tp2-zero":
        return fx.write_pipe(root, llama, tp=2, pp=2, moments=moments)
    return fx.write_universal(root, llama, moments=moments, pipe=kind == "universal-pipe")


def _logits_gap(source: MegatronDeepSpeedSource, llama) -> float:  # noqa: ANN001
    model = GPTModel(source.spec).eval()
    tensors = {name: load() for name, load in source.tensors()}
    assert set(tensors) == {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[name])
        tokens = torch.randint(0, fx.VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
        ours = model(tokens)[..., : fx.VOCAB]
        theirs = llama(tokens).logits
    assert theirs.abs().max() > 1.0  # sharp enough for the comparison to mean something
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("kind", ["tp1", "tp2-zero", "pp2-tp2", "pp2-tp2-zero", "universal-pipe", "universal-dense"])
def test_logits_equal_the_hf_model(dist_world1, llama, moments, kind, tmp_path):
    root = _write(kind, str(tmp_path / "ckpt"), llama, moments)
    assert detect_format(root) == FORMAT and FORMAT in SOURCE_FORMATS
    source = SOURCE_FORMATS[FORMAT].open(root)
    assert source.kind == {"tp1": "dense", "tp2": "dense", "pp2": "pipe"}.get(kind[:3].rstrip("-"), "universal")
    assert _logits_gap(source, llama) < TOL


def test_model_flags_build_the_same_model(llama, tmp_path):
    """The flags, given to our config as a file, resolve to the checkpoint's shape and padding."""
    source = MegatronDeepSpeedSource(fx.write_dense(str(tmp_path / "ckpt"), llama, 2))
    flags = source.model_flags()
    assert flags["--make-vocab-size-divisible-by"] == fx.MULTIPLE  # theirs x their TP
    assert flags["--tokenizer-type"] == "sentencepiece" and "--tokenizer-model" not in flags
    config = tmp_path / "model.json"
    config.write_text(json.dumps({k.removeprefix("--"): v for k, v in flags.items()
                                  if k not in ("--tokenizer-type",)}))
    argv = ["--config", str(config), "--mock-data", "--vocab-size", str(fx.VOCAB), "--train-iters", "1",
            "--micro-batch-size", "1"]
    spec = resolve(parse_args(argv).config, DistEnv()).model
    for field in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "vocab_size", "position_embedding", "rotary_base", "normalization",
                  "norm_epsilon", "swiglu", "bias", "tie_embeddings", "seq_length", "max_position_embeddings"):
        assert getattr(spec, field) == getattr(source.spec, field), field
    assert spec.vocab_size == fx.PADDED


@pytest.mark.parametrize("kind", ["tp2-zero", "pp2-tp2-zero", "universal-pipe"])
def test_adam_moments_round_trip(llama, moments, kind, tmp_path):
    source = MegatronDeepSpeedSource(_write(kind, str(tmp_path / "ckpt"), llama, moments))
    states = {(name, key): load() for name, key, load in source.optimizer_states()}
    assert {k for _, k in states} == {"exp_avg", "exp_avg_sq"} and len(states) == 2 * len(source.shapes)
    for (name, key), got in states.items():
        want = moments[key][flat_name(name, source.spec, None)]
        assert got.shape == want.shape, name
        if kind == "universal-pipe" and name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert torch.equal(got[: fx.VOCAB], want[: fx.VOCAB]) and not got[fx.VOCAB :].any(), name
        else:
            assert torch.equal(got, want), (name, key)
    assert source.optimizer_step() == fx.STEP
    skipped = MegatronDeepSpeedSource(source.path, optimizer_state=False)
    assert list(skipped.optimizer_states()) == [] and skipped.optimizer_step() is None


def test_latest_files_are_honoured(llama, tmp_path):
    root = fx.write_dense(str(tmp_path / "ckpt"), llama, 1)
    step = os.path.join(root, f"global_step{fx.STEP}")
    assert MegatronDeepSpeedSource(root).directory == MegatronDeepSpeedSource(step).directory == step
    os.remove(os.path.join(root, "latest"))  # the fork's own tracker file alone
    assert MegatronDeepSpeedSource(root).directory == step
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("99")
    with pytest.raises(CheckpointError, match=r"latest_checkpointed_iteration.txt names '99'.*global_step99"):
        MegatronDeepSpeedSource(root)
    assert detect_format(str(tmp_path)) is None


@pytest.mark.parametrize(("override", "key"), [
    ({"hidden_size": 48}, "hidden_size"), ({"num_key_value_heads": 4}, "num_key_value_heads"),
    ({"ffn_hidden_size": 64}, "ffn_hidden_size"), ({"padded_vocab_size": 128}, "padded_vocab_size"),
])
def test_args_that_disagree_with_the_tensors_are_refused(llama, tmp_path, override, key):
    """The error names the file, the tensor and both shapes, before any tensor data is read."""
    root = fx.write_dense(str(tmp_path / "ckpt"), llama, 2, args=fx.fork_args(llama, 2, **override))
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: .* has shape \(\d+, \d+\), but the "
                                              rf"checkpoint's args give \(\d+, \d+\) .*{key.split('_')[0]}"):
        MegatronDeepSpeedSource(root)


@pytest.mark.parametrize(("override", "key"), [
    ({"num_experts": [4]}, "num_experts"), ({"rotary_percent": 0.5}, "rotary_percent"),
    ({"apply_layernorm_1p": True}, "apply_layernorm_1p"), ({"normalization": "scalenorm"}, "normalization"),
])
def test_options_without_a_faithful_mapping_are_refused(llama, tmp_path, override, key):
    root = fx.write_dense(str(tmp_path / "ckpt"), llama, 1, args=fx.fork_args(llama, 1, **override))
    with pytest.raises(CheckpointError, match=rf"mp_rank_00_model_states.pt: args.{key}=.*not importable"):
        MegatronDeepSpeedSource(root)


def test_a_missing_layer_file_is_named(llama, tmp_path):
    root = fx.write_pipe(str(tmp_path / "ckpt"), llama, tp=2, pp=2)
    os.remove(os.path.join(root, f"global_step{fx.STEP}", "layer_03-model_01-model_states.pt"))
    with pytest.raises(CheckpointError, match="layer_03-model_01-model_states.pt is missing"):
        MegatronDeepSpeedSource(root)


class _Payload:
    """Unpickling this would create a file (what a malicious checkpoint would do instead)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def test_a_pickled_payload_is_refused_and_never_run(llama, tmp_path):
    root = fx.write_dense(str(tmp_path / "ckpt"), llama, 1)
    file = os.path.join(root, f"global_step{fx.STEP}", "mp_rank_00_model_states.pt")
    state = torch.load(file, weights_only=False)
    marker = str(tmp_path / "pwned")
    state["payload"] = _Payload(marker)
    torch.save(state, file)
    assert not os.path.exists(marker)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt: refused: it pickles the global "
                                              r"(io|builtins).open.*not unpickled"):
        MegatronDeepSpeedSource(root)
    assert not os.path.exists(marker)
    assert detect_format(root) == FORMAT  # detection reads no pickle


def test_tokenizer_is_named_and_a_local_copy_is_used(llama, tmp_path):
    root = fx.write_dense(str(tmp_path / "ckpt"), llama, 1)
    named = MegatronDeepSpeedSource(root).tokenizer()
    assert (named.tokenizer_type, named.files, named.name) == ("sentencepiece", (), "meta-llama/Llama-2-7b-hf")
    local = tmp_path / "llama2"
    with pytest.raises(CheckpointError, match=r"llama2 holds no tokenizer.model"):
        MegatronDeepSpeedSource(root, tokenizer_model=str(local))
    local.mkdir()
    (local / "tokenizer.model").write_bytes(b"sp")
    source = SOURCE_FORMATS[FORMAT].open(root, tokenizer_model=str(local))
    assert source.tokenizer().files == (str(local / "tokenizer.model"),)
    # The flags read the local copy (its vocabulary must pad to the rows): this one is no model.
    with pytest.raises(ConfigError, match=r"--tokenizer-model: cannot read .*llama2/tokenizer.model"):
        source.model_flags()
    assert os.path.join(root, f"global_step{fx.STEP}", "mp_rank_00_model_states.pt") in source.input_files()


def test_a_tokenizer_path_that_exists_here_is_used(llama, tmp_path):
    model = tmp_path / "tokenizer.model"
    model.write_bytes(b"sp")
    args = fx.fork_args(llama, 1, tokenizer_model=str(model))
    source = MegatronDeepSpeedSource(fx.write_dense(str(tmp_path / "ckpt"), llama, 1, args=args))
    assert source.tokenizer().files == (str(model),)


GELU_SPEC = GPTSpec(  # LayerNorm, GeLU, biases, learned positions, tied embeddings, MHA
    num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
    head_dim=8, vocab_size=fx.PADDED, original_vocab_size=fx.PADDED, seq_length=16, max_position_embeddings=32,
    position_embedding="learned", normalization="layernorm", norm_epsilon=1e-5, swiglu=False, bias=True,
    tie_embeddings=True,
)


@pytest.mark.parametrize("kind", ["dense-tp2", "pipe-tp2-pp2", "universal-pipe"])
def test_layernorm_gelu_biased_tied_model_reads_back_exactly(dist_world1, kind, tmp_path):
    """Our own GPT written in the fork's layouts reads back bit for bit: biases (row-parallel
    ones replicated), learned positions, LayerNorm and a tied embedding (``tied_modules``)."""
    torch.manual_seed(4)
    model = GPTModel(GELU_SPEC)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    full = fx.ours_full(model)
    tp, pp = 2, 2 if kind.startswith(("pipe", "universal")) else 1
    args = fx.ours_args(GELU_SPEC, tp, pp)
    root = str(tmp_path / "ckpt")
    if kind == "dense-tp2":
        fx.write_dense(root, None, tp, args=args, full=full)
    elif kind == "pipe-tp2-pp2":
        fx.write_pipe(root, None, tp, pp, args=args, full=full)
    else:
        fx.write_universal(root, None, args=args, full=full)
    source = MegatronDeepSpeedSource(root)
    assert source.spec == GELU_SPEC
    assert source.tokenizer().name == "gpt2-vocab.json" and source.tokenizer().tokenizer_type is None
    ours = dict(model.named_parameters())
    rows = fx.VOCAB if kind.startswith("universal") else fx.PADDED  # DeepSpeed strips the padding
    for name, load in source.tensors():
        got = load()
        assert torch.equal(got[:rows], ours[name][:rows]), name
        assert got.shape == ours[name].shape


def _train_zero1_bf16_dp2(env: DistEnv, save: str) -> None:
    from megatron.trainer.loop import train

    train(tiny_plan("--zero-stage", "1", "--bf16", "--train-iters", "2", "--save", save, env=env), env)


@pytest.mark.slow  # two processes train for ~20 s
def test_zero_partitions_read_real_deepspeed_files(tmp_path):
    """``ZeroPartitions`` against DeepSpeed's own bf16 ZeRO-1 files at DP=2 (written by our
    trainer, which uses the same engine), checked with our checkpoint reader."""
    from megatron.checkpointing.importing.megatron_ds_files import find_optimizer_files
    from megatron.checkpointing.importing.megatron_ds_optim import ZeroPartitions
    from megatron.checkpointing.importing.safe_pickle import load_pt
    from megatron.checkpointing.reader import SavedCheckpoint

    save = str(tmp_path / "ckpt")
    run_distributed(_train_zero1_bf16_dp2, save)
    step = os.path.join(save, "global_step2")
    ours = SavedCheckpoint(step)
    assert ours.dp == 2
    zero = ZeroPartitions(find_optimizer_files(step), load_pt)
    assert zero.step() == 2
    for name, slots in ours.slots.items():
        slot = slots[0]
        assert zero.keys(slot.name) == ["exp_avg", "exp_avg_sq"]
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            assert torch.equal(zero.local(slot.name, [0], key, slot.shape), ours.full(name, key)), (name, key)


def test_their_universal_checkpoint_given_to_the_trainer_points_at_the_import(llama, moments, tmp_path):
    """``--universal-checkpoint --load`` on the fork's own universal directory: no unsafe
    unpickling, and the error says how to import it."""
    from megatron.checkpointing.universal import UniversalCheckpoint

    root = fx.write_universal(str(tmp_path / "ckpt"), llama, moments=moments)
    step = os.path.join(root, f"global_step{fx.STEP}_universal")
    with pytest.raises(CheckpointError, match=r"Megatron-DeepSpeed checkpoint: import it with python "
                                              r"tools/import_checkpoint.py .* --format megatron-deepspeed"):
        UniversalCheckpoint(step)
    file = os.path.join(step, "mp_rank_00_model_states.pt")
    state = torch.load(file, weights_only=False)
    marker = str(tmp_path / "pwned")
    torch.save({**state, "payload": _Payload(marker)}, file)
    with pytest.raises(CheckpointError, match="refused"):
        UniversalCheckpoint(step)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("kind", ["tp1", "pp2-tp2"])
def test_a_tensor_the_args_do_not_describe_is_refused(llama, moments, kind, tmp_path):
    """A QKV bias the args do not mention would be dropped silently: refused, naming it."""
    root = _write(kind, str(tmp_path / "ckpt"), llama, moments)
    step = os.path.join(root, f"global_step{fx.STEP}")
    if kind == "tp1":
        file = os.path.join(step, "mp_rank_00_model_states.pt")
        state = torch.load(file, weights_only=False)
        state["module"]["language_model"]["encoder"]["layers.1.self_attention.query_key_value.bias"] = torch.zeros(64)
        key = "module/language_model/encoder/layers.1.self_attention.query_key_value.bias"
    else:
        file = os.path.join(step, "layer_03-model_01-model_states.pt")
        state = torch.load(file, weights_only=False)
        state["self_attention.query_key_value.bias"] = torch.zeros(32)
        key = "self_attention.query_key_value.bias"
    torch.save(state, file)
    with pytest.raises(CheckpointError, match=rf"{os.path.basename(file)}: {key} is a tensor the checkpoint's "
                                              r"args do not describe \(add_bias_linear=False"):
        MegatronDeepSpeedSource(root)
