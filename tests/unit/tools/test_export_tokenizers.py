"""The exported tokenizer gives our ids, and the exported model our greedy continuation.

Tokenizers are trained on three plays of the bundled corpus and compared on a play none was
trained on (The Winter's Tale, the demo's held-out document), plus non-ASCII text, repeated
spaces, tabs and newlines. Generation: a tiny GPT trained on Shakespeare bytes, exported with
its byte tokenizer, continues a prompt for 20 tokens with ``generate()`` exactly as our own
greedy decoding does, for each architecture family.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from megatron.checkpointing.hf_export import export_hf, open_checkpoint
from megatron.checkpointing.hf_tokenizer import byte_tokenizer, write_tokenizer
from megatron.checkpointing.universal import load_weights
from megatron.config.data import DataConfig
from megatron.data.tokenizers import ByteTokenizer, build_tokenizer, file_sha256
from megatron.data.train_tokenizer import TrainOptions, train_byte_level_bpe, train_sentencepiece
from megatron.model.generate import greedy_generate
from megatron.model.gpt import GPTModel
from megatron.trainer.loop import train
from tests.helpers import tiny_plan
from tools.prepare_default_corpus import play_files

transformers = pytest.importorskip("transformers")

EXTRA = "  Two  spaces,\ttab\nnewline; café, naïve, 漢字, emoji 🙂 — done.  "


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], str]:
    """(training documents from three plays, held-out text)."""
    plays = {os.path.basename(p): p for p in play_files()}
    train_docs = []
    for name in ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"):
        with open(plays[name], encoding="utf-8") as f:
            text = f.read()
        train_docs += [text[i : i + 4000] for i in range(0, 120_000, 4000)]
    with open(plays["winters_tale_gut.txt"], encoding="utf-8") as f:
        held_out = f.read()[20_000:40_000]
    return train_docs, held_out + EXTRA


def _info(kind: str, *files: str) -> dict:
    return {"type": kind, "files": list(files), "sha256": [file_sha256(f) for f in files]}


def _export(info: dict, out: str, vocab_size: int):
    os.makedirs(out)
    kind, eos = write_tokenizer(info, out, 128, vocab_size)
    assert kind == info["type"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token_id == eos
    return tok


def _same_ids(ours, theirs, text: str) -> None:
    ids = ours.encode(text)
    assert theirs(text, add_special_tokens=False)["input_ids"] == ids
    assert theirs.decode(ids) == ours.decode(ids)


def test_byte_tokenizer_loads_in_autotokenizer_and_gives_utf8_bytes(texts, tmp_path):
    ours = ByteTokenizer()
    tok = _export(_info("byte"), str(tmp_path / "hf"), ours.vocab_size)
    _same_ids(ours, tok, texts[1])
    assert tok.decode(ours.encode(texts[1])) == texts[1]  # lossless
    assert tok.eos_token_id == ours.eod == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.convert_tokens_to_ids("<|mask|>") == ours.mask
    assert len(tok) == ours.vocab_size
    assert byte_tokenizer().encode("a<|endoftext|>").ids == [97, 256]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_export_gives_our_ids(texts, tmp_path, model_type):
    path = str(tmp_path / "sp.model")
    train_sentencepiece(texts[0], TrainOptions(vocab_size=600, sentencepiece_model_type=model_type)).save(path)
    ours = build_tokenizer(DataConfig(tokenizer_type="sentencepiece", tokenizer_model=path))
    tok = _export(_info("sentencepiece", path), str(tmp_path / "hf"), ours.vocab_size)
    _same_ids(ours, tok, texts[1])
    assert tok.eos_token_id == ours.eod
    assert os.path.isfile(tmp_path / "hf" / "tokenizer.model")


def test_gpt2bpe_export_gives_our_ids(texts, tmp_path):
    from tokenizers import Tokenizer

    path = str(tmp_path / "bpe.json")
    train_byte_level_bpe(texts[0], TrainOptions(vocab_size=400)).save(path)
    Tokenizer.from_file(path).model.save(str(tmp_path))  # vocab.json, merges.txt
    vocab, merges = str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
    ours = build_tokenizer(DataConfig(tokenizer_type="gpt2bpe", vocab_file=vocab, merge_file=merges))
    tok = _export(_info("gpt2bpe", vocab, merges), str(tmp_path / "hf"), ours.vocab_size)
    _same_ids(ours, tok, texts[1])
    assert tok.eos_token_id == ours.eod
    assert transformers.GPT2Tokenizer.from_pretrained(str(tmp_path / "hf"))(texts[1])["input_ids"] == ours.encode(
        texts[1]
    )


def test_changed_or_mismatched_tokenizer_is_not_exported(tmp_path, caplog):
    path = tmp_path / "sp.model"
    path.write_bytes(b"x")
    info = _info("sentencepiece", str(path))
    path.write_bytes(b"y")
    os.makedirs(tmp_path / "a")
    assert write_tokenizer(info, str(tmp_path / "a"), 128, 258) == (None, None)
    assert "changed since training" in caplog.text
    os.makedirs(tmp_path / "b")
    assert write_tokenizer(_info("byte"), str(tmp_path / "b"), 128, 64) == (None, None)
    assert "258 ids, the model 64" in caplog.text
    assert os.listdir(tmp_path / "a") == os.listdir(tmp_path / "b") == []


ARCHS = {
    "llama": ["--swiglu", "--normalization", "rmsnorm", "--num-key-value-heads", "2"],
    "gpt_neox": [],
    "gpt2": ["--no-use-rotary-position-embeddings", "--untie-embeddings-and-output-weights"],
}


@pytest.mark.parametrize(
    "arch", ["llama", pytest.param("gpt_neox", marks=pytest.mark.slow), pytest.param("gpt2", marks=pytest.mark.slow)]
)
def test_generate_from_the_export_equals_our_greedy_decoding(arch, tmp_path, shakespeare_prefix, request):
    data = tmp_path / "data.txt"
    data.write_text(f"1 {shakespeare_prefix} plays\n")
    save = str(tmp_path / "ckpt")
    flags = [*ARCHS[arch], "--hidden-size", "32", "--seq-length", "64", "--train-iters", "8", "--lr", "1e-2",
             "--data-file-list", str(data), "--split", "1,0,0", "--tokenizer-type", "byte", "--eval-iters", "0",
             "--save", save]
    train(tiny_plan(*flags, mock=False), _env())
    out = str(tmp_path / "hf")
    summary = export_hf(save, out)
    assert (summary["architecture"], summary["tokenizer"]) == (arch, "byte")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = "ROMEO.\nBut soft, what light"
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == list(prompt.encode())
    with torch.no_grad():
        hf_new = model.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.shape[1] :].tolist()
    request.getfixturevalue("dist_world1")  # our model's megatron-core layers need a TP group
    ckpt = open_checkpoint(save)
    ours = GPTModel(ckpt.spec)
    load_weights(ours, ckpt, ckpt.spec, tp_rank=0, tp=1)
    our_new = greedy_generate(ours, ids[0], 20, vocab_size=ckpt.spec.original_vocab_size, eod=256)
    assert len(our_new) == 20 and hf_new == our_new
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == 256


def _env():
    from megatron.config import DistEnv

    return DistEnv()
