"""Input formats: the same .bin/.idx bytes from every format and worker count; the sidecar;
one-line errors naming file and line/row; bounded memory on a corpus larger than a batch."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.preprocess import tokenize_to_indexed
from megatron.data.readers import InputError, hf_dataset_files, read_records, resolve_inputs
from megatron.data.sidecar import read_sidecar, sidecar_path
from tools import preprocess_data
from tools.prepare_default_corpus import play_files

BYTE = DataConfig(tokenizer_type="byte")
QUIET = {"on_progress": lambda p: None}


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """~300 real paragraphs (with non-ASCII punctuation where the play has it)."""
    with open(play_files()[5], encoding="utf-8") as f:
        text = f.read()[:80_000]
    return [p for p in text.split("\n\n") if p.strip()][:300] + ["caf\u00e9 \u2014 \u00fcber"]


def write_jsonl(path, docs, opener=open) -> str:
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def copies(docs, tmp_path_factory) -> dict[str, str]:
    """One corpus in every format: name -> the path given to --input."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root = tmp_path_factory.mktemp("formats")
    out = {"jsonl": write_jsonl(root / "c.jsonl", docs),
           "gz": write_jsonl(root / "c.jsonl.gz", docs, gzip.open)}
    with open(out["jsonl"], "rb") as f:
        (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(f.read()))
    out["zst"] = str(root / "c.jsonl.zst")
    (root / "array.json").write_text(json.dumps([{"text": d} for d in docs]))
    out["json-array"] = str(root / "array.json")
    table = pa.table({"id": list(range(len(docs))), "text": docs})
    # Two files (a glob and a directory must keep their sorted order) with small row groups.
    (root / "pq").mkdir()
    pq.write_table(table.slice(0, 100), root / "pq" / "part-0.parquet", row_group_size=33)
    pq.write_table(table.slice(100), root / "pq" / "part-1.parquet", row_group_size=50)
    out["parquet-glob"] = str(root / "pq" / "part-*.parquet")
    out["parquet-dir"] = str(root / "pq")
    with pa.OSFile(str(root / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=70)
    out["arrow-file"] = str(root / "file.arrow")
    with pa.OSFile(str(root / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=90)
    out["arrow-stream"] = str(root / "stream.arrow")
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "saved"))
    out["save_to_disk"] = str(root / "saved")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(
        str(root / "saved_dict"))
    out["save_to_disk-dict"] = str(root / "saved_dict")
    return out


def read_bytes(prefix: str) -> tuple[bytes, bytes]:
    with open(prefix + ".bin", "rb") as b, open(prefix + ".idx", "rb") as i:
        return b.read(), i.read()


def test_every_format_gives_the_same_bytes(docs, copies, tmp_path):
    reference = tokenize_to_indexed([copies["jsonl"]], str(tmp_path / "ref"), BYTE, **QUIET)
    assert reference.documents == len(docs)
    expected = read_bytes(reference.prefixes["text"])
    ids = [i for d in docs for i in [*d.encode(), 256]]  # byte ids, EOD 256, uint16 on disk
    assert expected[0] == np.array(ids, dtype=np.uint16).tobytes()
    for name, path in copies.items():
        stats = tokenize_to_indexed([path], str(tmp_path / name), BYTE, chunk_size=37, **QUIET)
        assert read_bytes(stats.prefixes["text"]) == expected, name


@pytest.mark.parametrize("name", ["zst", "parquet-dir", "save_to_disk"])
def test_two_workers_same_bytes_as_one(copies, tmp_path, name, hf_tokenizer_cfg):
    outputs = []
    for workers in (1, 2):
        stats = tokenize_to_indexed([copies[name]], str(tmp_path / f"w{workers}"), hf_tokenizer_cfg,
                                    workers=workers, chunk_size=16, **QUIET)
        outputs.append(read_bytes(stats.prefixes["text"]))
    reference = tokenize_to_indexed([copies["jsonl"]], str(tmp_path / "ref"), hf_tokenizer_cfg, **QUIET)
    assert outputs[0] == outputs[1] == read_bytes(reference.prefixes["text"])


@pytest.fixture(scope="module")
def hf_tokenizer_cfg(docs, tmp_path_factory) -> DataConfig:
    from megatron.data.train_tokenizer import TrainOptions, train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    (root / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    trained = train_tokenizer([str(root / "corpus.txt")], str(root / "tokenizer.json"), kind="bpe",
                              options=TrainOptions(vocab_size=300))
    return DataConfig(tokenizer_type="hf", tokenizer_model=trained.path)


def test_sidecar_records_inputs_tokenizer_and_command(copies, tmp_path, hf_tokenizer_cfg, capsys):
    prefix = str(tmp_path / "cli")
    argv = ["--input", copies["parquet-glob"], "--output-prefix", prefix, "--tokenizer-type", "hf",
            "--tokenizer-model", hf_tokenizer_cfg.tokenizer_model, "--append-eod"]
    assert preprocess_data.main(argv) == 0
    meta = read_sidecar(prefix + "_text_document")
    assert meta == json.load(open(sidecar_path(prefix)))
    paths = [i["path"] for i in meta["inputs"]]
    assert [os.path.basename(p) for p in paths] == ["part-0.parquet", "part-1.parquet"]
    assert [i["rows"] for i in meta["inputs"]] == [100, 201]
    assert [i["sha256"] for i in meta["inputs"]] == [
        hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    model = hf_tokenizer_cfg.tokenizer_model
    assert meta["tokenizer"] == {
        "type": "hf", "files": [model],
        "sha256": [hashlib.sha256(open(model, "rb").read()).hexdigest()],
        "vocab_size": 300}
    assert meta["command"] == ["tools/preprocess_data.py", *argv]
    assert meta["documents"] == 301 and "ETA" not in capsys.readouterr().out


def write_bad(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a"}\n{"text": null}\n', r":2: field 'text' is null"),
    (b'{"text": "a"}\n\n{"text": 7}\n', r":3: field 'text' is a int, not a string"),
    (b'{"text": "a"}\n{"body": "b"}\n', r":2: no field 'text' \(fields: body\); name the text"),
    (b'{"text": "a"}\n{"text": "caf\xe9"}\n', r":2: not UTF-8 \(byte 13 of the line"),
    (b'{"text": "a"}\n{"text": \n', r":2: bad record"),
])
def test_bad_jsonl_rows_name_file_and_line(tmp_path, content, message):
    path = write_bad(tmp_path, "bad.jsonl", content)
    with pytest.raises(InputError, match=f"^{path}{message}"):
        tokenize_to_indexed([path], str(tmp_path / "out" / "x"), BYTE, **QUIET)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_bad_tables_name_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": ["a", "b", None]}), tmp_path / "null.parquet", row_group_size=2)
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff"], pa.binary())}), tmp_path / "bin.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "int.parquet")
    garbage = write_bad(tmp_path, "garbage.parquet", b"PAR1 this is not parquet")
    cases = {
        "nocol.parquet": r": no column 'text' \(columns: body\); name the text columns with --json-keys",
        "null.parquet": r": row 2: field 'text' is null",
        "bin.parquet": r": row 1: field 'text' is not UTF-8",
        "int.parquet": r": column 'text' has type int64, not strings",
        "garbage.parquet": r": not a readable Parquet file",
    }
    for name, message in cases.items():
        path = str(tmp_path / name)
        with pytest.raises(InputError, match=f"^{path}{message}"):
            list(read_records(resolve_inputs([path]), ["text"]))
    assert garbage.endswith("garbage.parquet")


def test_cli_one_line_errors(tmp_path, capsys):
    bad = write_bad(tmp_path, "bad.jsonl", b'{"text": null}\n')
    out = ["--output-prefix", str(tmp_path / "o")]
    assert preprocess_data.main(["--input", bad, *out]) == 2
    assert capsys.readouterr().err == f"preprocess_data.py: error: {bad}:1: field 'text' is null\n"
    assert preprocess_data.main(["--input", str(tmp_path / "none-*.parquet"), *out]) == 2
    assert "--input: " in capsys.readouterr().err


def test_uncached_hf_dataset_is_a_clear_error_offline(tmp_path):
    with pytest.raises(ConfigError, match=r"^--hf-dataset nobody/no-such-corpus --split train: not "
                                          r"in the local Hugging Face cache"):
        hf_dataset_files("nobody/no-such-corpus", cache_dir=str(tmp_path))
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_cached_hf_dataset_by_name_same_bytes(copies, tmp_path):
    """A Hub dataset in the local cache (laid out as the library caches one), read offline."""
    import glob
    import shutil

    import datasets

    cache = tmp_path / "cache"
    datasets.load_dataset("json", data_files=copies["jsonl"], split="train", cache_dir=str(cache))
    built = glob.glob(str(cache / "json" / "*" / "*" / "*"))[0]
    named = cache / "nobody___corpus" / "default" / "0.0.0" / os.path.basename(built)
    shutil.copytree(built, named)
    os.rename(named / "json-train.arrow", named / "corpus-train.arrow")
    out = str(tmp_path / "hf")
    argv = ["--hf-dataset", "nobody/corpus", "--hf-cache-dir", str(cache), "--output-prefix", out,
            "--append-eod"]
    assert preprocess_data.main(argv) == 0
    reference = tokenize_to_indexed([copies["jsonl"]], str(tmp_path / "ref"), BYTE, **QUIET)
    assert read_bytes(out + "_text_document") == read_bytes(reference.prefixes["text"])
    assert read_sidecar(out)["inputs"][0]["format"] == "arrow"


RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    tokenize_to_indexed([sys.argv[1]], sys.argv[2], DataConfig(tokenizer_type="byte"),
                        chunk_size=64, on_progress=lambda p: None)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_peak_memory_does_not_grow_with_the_corpus(docs, tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    block = "\n\n".join(docs)  # ~80 kB of real text per document

    def peak_kib(copies: int) -> int:
        path = tmp_path / f"c{copies}.{fmt}"
        if fmt == "jsonl":
            write_jsonl(path, [block] * copies)
        else:
            pq.write_table(pa.table({"text": [block] * copies}), path, row_group_size=64)
        out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(tmp_path / "o")],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    small, large = peak_kib(200), peak_kib(1600)  # ~16 MB and ~130 MB of text
    assert large < small + 40 * 1024, (small, large)


def test_progress_eta_and_bar(capsys, monkeypatch):
    from megatron.data.preprocess import PreprocessProgress

    progress = PreprocessProgress(100, 5000, 10.0, fraction=0.25)
    assert progress.eta_seconds == pytest.approx(30.0)
    assert progress.describe().endswith("in 10.0 s, ETA 0m30s")
    assert PreprocessProgress(100, 5000, 10.0, done=True, fraction=1.0).eta_seconds is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    preprocess_data.StderrProgress()(progress)
    assert capsys.readouterr().err.startswith("[#####...............]  25% 100 docs (10.0 docs/s)")
