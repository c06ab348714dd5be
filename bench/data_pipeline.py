"""Data-pipeline benchmarks, each a ratio against a baseline measured in the same run.

1. preprocess: ``tokenize_to_indexed`` tokens/s per worker against the bare loop (the
   tokenizer's batch encode + numpy arrays written to one file): the plays' paragraphs as
   jsonl, a byte-level BPE (vocab 4096) trained on them.
2. blend build: our train/valid/test streams for 200 small files (two-level blend, cached
   index) against megatron-core's ``BlendedMegatronDatasetBuilder`` + ``GPTDataset`` on the same
   list and sizes, both with a cold cache.
3. loader: samples/s and tokens/s that ``BatchReader`` delivers from the blended stream.
4. resume: continuing at sample 1,000,000 from the checkpointed blend counts against rebuilding
   the blend prefix (what a resume without the data state would cost).

    .venv/bin/python bench/data_pipeline.py [--files 200] [--samples 200000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import types
import warnings

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from megatron.config import DistEnv, parse_args  # noqa: E402
from megatron.config.data import DataConfig  # noqa: E402
from megatron.data.blend import BlendedStream  # noqa: E402
from megatron.data.builder import build_streams  # noqa: E402
from megatron.data.indexed import IndexedWriter  # noqa: E402
from megatron.data.loader import BatchReader  # noqa: E402
from megatron.data.preprocess import iter_documents, tokenize_to_indexed  # noqa: E402
from megatron.data.tokenizers import build_tokenizer  # noqa: E402
from megatron.plan import resolve  # noqa: E402
from tools.prepare_default_corpus import play_files  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def bench_preprocess(tmp: str, workers: int) -> None:
    import json

    from megatron.data.train_tokenizer import TrainOptions, train_tokenizer

    # Paragraphs of the plays as jsonl documents, tokenized by a byte-level BPE trained on them.
    corpus = os.path.join(tmp, "paragraphs.jsonl")
    with open(corpus, "w") as f:
        for doc in iter_documents(play_files()[:12], ["text"]):
            for paragraph in doc["text"].split("\n\n"):
                if paragraph.strip():
                    f.write(json.dumps({"text": paragraph}) + "\n")
    trained = train_tokenizer([corpus], os.path.join(tmp, "bpe.json"), kind="bpe",
                              options=TrainOptions(vocab_size=4096))
    cfg = DataConfig(tokenizer_type=trained.tokenizer_type, tokenizer_model=trained.path)
    tokenizer = build_tokenizer(cfg)
    tokenize_to_indexed([corpus], os.path.join(tmp, "warmup"), cfg)  # imports, page cache

    def baseline() -> int:
        texts = [doc["text"] for doc in iter_documents([corpus], ["text"])]
        arrays = [np.asarray(ids + [tokenizer.eod], dtype=np.uint16) for ids in tokenizer.encode_batch(texts)]
        with open(os.path.join(tmp, "baseline.bin"), "wb") as f:
            for a in arrays:
                f.write(a.tobytes())
        return sum(a.size for a in arrays)

    base_s, tokens = timed(baseline)
    print(f"[preprocess] {trained.documents:,} paragraphs, {tokens:,} BPE tokens (vocab 4096)")
    print(f"  baseline encode_batch + numpy write : {tokens / base_s:12,.0f} tokens/s")
    for w in sorted({1, workers}):
        s, stats = timed(lambda w=w: tokenize_to_indexed(
            [corpus], os.path.join(tmp, f"pre{w}"), cfg, workers=w, progress_every=1e9))
        print(f"  tokenize_to_indexed, {w} worker(s)    : {stats.tokens / s:12,.0f} tokens/s "
              f"({stats.tokens / s / w:,.0f} per worker; ratio to baseline {base_s / s:.2f})")


def make_files(tmp: str, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    prefixes = []
    for k in range(count):
        prefix = os.path.join(tmp, f"f{k:03d}")
        with IndexedWriter(prefix, 258) as writer:
            for _ in range(40):
                writer.add_document(rng.integers(0, 256, size=int(rng.integers(200, 600))))
        prefixes.append(prefix)
    return prefixes


def bench_blend(tmp: str, files: int, samples: int) -> None:
    prefixes = make_files(tmp, files)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, size=files)
    list_path = os.path.join(tmp, "list.txt")
    with open(list_path, "w") as f:
        for k, (p, w) in enumerate(zip(prefixes, weights, strict=True)):
            f.write(f"{w:.6f} {p} corpus{k % 10}\n")
    gb, seq = 64, 128
    iters = samples // gb
    flags = ["--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2",
             "--seq-length", str(seq), "--micro-batch-size", str(gb), "--train-iters", str(iters),
             "--eval-iters", "10", "--data-file-list", list_path, "--split", "90,5,5",
             "--data-cache-path", os.path.join(tmp, "ours-cache")]
    plan = resolve(parse_args(flags).config, DistEnv())
    ours_s, streams = timed(lambda: build_streams(plan))

    def megatron() -> None:
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

        config = GPTDatasetConfig(
            random_seed=1234, sequence_length=seq, blend=(prefixes, weights.tolist()), split="90,5,5",
            path_to_cache=os.path.join(tmp, "mcore-cache"),
            tokenizer=types.SimpleNamespace(vocab_size=258, eod=256, pad=257, unique_identifiers={}),
            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        )
        BlendedMegatronDatasetBuilder(GPTDataset, [iters * gb, 10 * gb, 10 * gb], lambda: True, config).build()

    import logging

    import torch.distributed as dist

    logging.disable(logging.INFO)
    if not dist.is_initialized():  # megatron-core's builder asks for the rank
        dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1)
    mcore_s, _ = timed(megatron)
    print(f"[blend build] {files} files, {iters * gb:,} train samples, cold caches")
    print(f"  megatron-core BlendedMegatronDatasetBuilder : {mcore_s:7.2f} s")
    print(f"  ours (build_streams + cached blend index)  : {ours_s:7.2f} s   ratio ours/mcore {ours_s / mcore_s:.3f}")
    return plan, streams


def bench_loader(plan, streams) -> None:  # noqa: ANN001
    import torch

    reader = BatchReader(streams.train.stream, micro_batch_size=8, dp_size=1, dp_rank=0,
                         grad_accum_steps=8, device=torch.device("cpu"))
    steps = 50
    s, _ = timed(lambda: [reader.step_batches(k * 64) for k in range(steps)])
    n = steps * 64
    print(f"[loader] {n / s:,.0f} samples/s, {n * plan.seq_length / s:,.0f} tokens/s "
          f"(micro-batch 8 x 8 accumulation, seq {plan.seq_length})")


def bench_resume(streams) -> None:  # noqa: ANN001
    stream: BlendedStream = streams.train.stream
    position = 1_000_000
    fresh = BlendedStream(stream.datasets, stream.weights, stream.groups)
    replay_s, counts = timed(lambda: (fresh[position], fresh.counts_at(position))[1])
    resumed = BlendedStream(stream.datasets, stream.weights, stream.groups)
    seek_s, _ = timed(lambda: (resumed.seek(position, counts), [resumed[position + i] for i in range(64)]))
    print(f"[resume at sample {position:,}] replaying the blend prefix: {replay_s:.2f} s; "
          f"from checkpointed counts: {seek_s * 1e3:.1f} ms (ratio {seek_s / replay_s:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_preprocess(tmp, args.workers)
        plan, streams = bench_blend(tmp, args.files, args.samples)
        bench_loader(plan, streams)
        bench_resume(streams)


if __name__ == "__main__":
    main()
