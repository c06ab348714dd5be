"""Corrupt or mismatched data is refused at open time (also under --dry-run), in one line that
names the file: .idx header and sizes, .bin length, token ids, empty datasets, tokenizer sidecar,
truncated blend cache."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import pretrain_gpt
from megatron.config.data import DataConfig
from megatron.data.indexed import IndexedWriter
from megatron.data.integrity import DataError, check_dataset
from tests.helpers import tiny_args


@pytest.fixture
def prefix(shakespeare_prefix, tmp_path):
    out = str(tmp_path / "plays")
    for ext in (".bin", ".idx"):
        shutil.copy(shakespeare_prefix + ext, out + ext)
    return out


def dry_run(tmp_path, prefix, capsys, *flags):
    lst = tmp_path / "list.txt"
    lst.write_text(f"1.0 {prefix} plays\n")
    capsys.readouterr()
    code = pretrain_gpt.main(tiny_args("--data-file-list", str(lst), "--train-iters", "2",
                                       "--tokenizer-type", "byte", *flags, "--dry-run", mock=False))
    return code, capsys.readouterr().err


def _cut(path, nbytes):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - nbytes)


@pytest.mark.parametrize("damage, message", [
    (lambda p: _cut(p + ".bin", 20), r"plays\.bin: \d+ bytes, but .*plays\.idx describes \d+ tokens"),
    (lambda p: _cut(p + ".idx", 8), r"plays\.idx: \d+ bytes, but its header .* needs \d+; the index is truncated"),
    (lambda p: open(p + ".idx", "r+b").write(b"NOTANIDX!"), r"plays\.idx: not a megatron indexed-dataset index"),
    (lambda p: open(p + ".idx", "wb").close(), r"plays\.idx: not a megatron indexed-dataset index"),
])
def test_damaged_files_are_named_in_one_line(tmp_path, prefix, capsys, damage, message):
    damage(prefix)
    code, err = dry_run(tmp_path, prefix, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(message, err), err


def test_empty_dataset_is_refused(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    with IndexedWriter(empty, 256):
        pass
    with pytest.raises(DataError, match=r"empty\.idx: the dataset is empty"):
        check_dataset(empty, None, 256)


def test_ids_beyond_the_vocabulary_are_refused(tmp_path, capsys):
    wide = str(tmp_path / "wide")
    with IndexedWriter(wide, 70000) as w:
        for k in range(50):
            w.add_document(np.arange(100) + (60000 if k == 37 else 0))
    code, err = dry_run(tmp_path, wide, capsys)
    assert code == 2 and "wide.bin: token id 60000 at position 3700 is outside the tokenizer's vocabulary" in err


def _sidecar(prefix, **tokenizer):
    base = {"type": "byte", "files": [], "sha256": [], "vocab_size": 256}
    with open(prefix + "_meta.json", "w") as f:
        json.dump({"tokenizer": {**base, **tokenizer}}, f)


def test_a_sidecar_of_another_tokenizer_is_refused_naming_both(tmp_path, prefix, capsys):
    from megatron.checkpointing.metadata import tokenizer_identity
    from megatron.config import DistEnv, parse_args
    from megatron.plan import resolve

    lst = tmp_path / "l.txt"
    lst.write_text(f"1.0 {prefix} plays\n")
    ours = tokenizer_identity(resolve(parse_args(tiny_args("--data-file-list", str(lst), "--train-iters", "1",
                                                           mock=False)).config, DistEnv()))
    _sidecar(prefix, **ours)
    assert dry_run(tmp_path, prefix, capsys)[0] == 0  # the same tokenizer: accepted
    _sidecar(prefix, type="gpt2", files=["gpt2-vocab.json"], sha256=["ab" * 32], vocab_size=50257)
    code, err = dry_run(tmp_path, prefix, capsys)
    assert code == 2 and "plays_meta.json: the data was tokenized with gpt2 ['gpt2-vocab.json'] (vocab 50257" in err
    assert f"this run uses byte [] (vocab {ours['vocab_size']}" in err and "type, vocab_size differ" in err
    os.remove(prefix + "_meta.json")  # datasets made before sidecars: accepted
    assert dry_run(tmp_path, prefix, capsys)[0] == 0


def test_check_data_reads_every_token(tmp_path, monkeypatch):
    wide = str(tmp_path / "wide")
    with IndexedWriter(wide, 70000) as w:
        w.add_document(np.arange(6000) % 200)
        w.add_document([300])  # one bad id, between two sampled windows
        w.add_document(np.arange(194_000) % 200)
    from megatron.data import integrity

    dtype = integrity.read_index_header(wide)[0]
    integrity.check_token_ids(wide, dtype, 256, full=False)  # the sample misses it
    with pytest.raises(DataError, match="token id 300 at position 6000"):
        integrity.check_token_ids(wide, dtype, 256, full=True)


def test_a_truncated_blend_cache_is_named(tmp_path):
    from megatron.data.blend import cached_blend

    args = ([0.5, 0.5], ["a", "b"], ["x", "y"], 1000)
    cached_blend(str(tmp_path), *args, build=True)
    (path,) = [p for p in tmp_path.iterdir() if p.name.startswith("blend-")]
    _cut(path / "sample_index.npy", 100)
    with pytest.raises(DataError, match=r"--data-cache-path: .*sample_index\.npy is truncated or corrupt"):
        cached_blend(str(tmp_path), *args, build=False)


def test_a_byte_dataset_of_ours_passes(prefix):
    check_dataset(prefix, None, 258, full=True)  # bytes and the two special ids
    assert DataConfig().check_data is False
