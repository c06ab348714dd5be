"""Real-text data for continual-runner tests: two Shakespeare plays per stage and Python
standard-library source code, each stage with its own held-out evaluation dataset."""

from __future__ import annotations

import glob
import os
import sysconfig

import pytest


def stdlib_sources(count: int, skip: int = 0) -> list[str]:
    """Python files of the running interpreter's standard library (sorted, small ones)."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    small = [f for f in files if 2_000 < os.path.getsize(f) < 20_000]
    return small[skip : skip + count]


@pytest.fixture(scope="session")
def cpt_lists(tmp_path_factory) -> dict[str, str]:
    """Data lists ``{a, eval_a, b, eval_b, code, eval_code}`` (byte tokens)."""
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    from tools.prepare_default_corpus import play_files

    root = tmp_path_factory.mktemp("cpt")
    plays = play_files()
    inputs = {"a": plays[0:2], "eval_a": plays[2:3], "b": plays[10:12], "eval_b": plays[12:13],
              "code": stdlib_sources(8), "eval_code": stdlib_sources(2, skip=8)}
    lists = {}
    for name, files in inputs.items():
        stats = tokenize_to_indexed(files, str(root / name), DataConfig(tokenizer_type="byte"), on_progress=lambda p: None)
        lists[name] = str(root / f"{name}.txt")
        with open(lists[name], "w") as f:
            f.write(f"1.0 {stats.prefixes['text']} {name.removeprefix('eval_')}\n")
    return lists
