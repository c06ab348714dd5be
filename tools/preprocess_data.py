#!/usr/bin/env python3
"""Tokenize text where users keep it into megatron-core indexed datasets.

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --json-keys text --tokenizer-type byte --append-eod --workers 8

writes ``data/corpus_text_document.bin/.idx`` (one dataset per JSON key) and
``data/corpus_meta.json`` (inputs and their sha256 and row counts, tokenizer, command). Outputs
appear only when complete, and are the same bytes whatever the input format and --workers.

--input takes files, globs and directories of .jsonl, .jsonl.gz, .jsonl.zst, .json, .parquet,
.arrow, a datasets ``save_to_disk`` directory (--split picks a DatasetDict's split), or plain
text (one document per file). A dataset in the local Hugging Face cache, read offline:

    --hf-dataset allenai/c4 --hf-config en --split train --json-keys text

See docs/data_formats.md. Other tokenizers:

    --tokenizer-type hf --tokenizer-model tokenizer.json          (tools/train_tokenizer.py --type bpe)
    --tokenizer-type sentencepiece --tokenizer-model m.model      (tools/train_tokenizer.py --type sentencepiece)
    --tokenizer-type gpt2bpe --vocab-file vocab.json --merge-file merges.txt

With metadata (docs/metadata.md), each document gets, with probability p (seeded by
its index), a prefix rendered from its jsonl fields that is loss-masked in training:

    --metadata-keys url,timestamp --metadata-template bigscience --metadata-probability 0.5

also writes ``data/corpus_lossmask_document.bin/.idx`` (uint8, 1 = trainable) and
``data/corpus_metadata.json``. Records inputs (BigScience's format: a ``metadata`` list or
``metadata_<key>`` columns of ``{key, type, value, char_start_idx, ...}``) also get local
metadata inline (html tags, entities) and per-example sampling (docs/metadata_local.md):

    --metadata-list html,entity,url,title --random-sample-metadata \
        --random-sample-metadata-weights html=1,title=1 --metadata-variants 4

Progress (docs/s, tokens/s) goes to stderr; the summary to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.data import DataConfig  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402
from megatron.data.preprocess import PreprocessProgress, tokenize_to_indexed  # noqa: E402
from megatron.data.readers import hf_dataset_files, resolve_inputs  # noqa: E402
from megatron.metadata.cli import add_metadata_args, describe, tokenize_from_args  # noqa: E402
from megatron.metadata.local_cli import (  # noqa: E402
    add_local_args,
    describe_local,
    is_records_input,
    tokenize_records_from_args,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", nargs="+", default=[],
                   help="files, globs or directories: jsonl(.gz/.zst), json, parquet, arrow, "
                        "datasets save_to_disk directories, .txt")
    p.add_argument("--hf-dataset", default=None,
                   help="a dataset in the local Hugging Face cache (read offline)")
    p.add_argument("--hf-config", default=None, help="--hf-dataset: its configuration name")
    p.add_argument("--hf-cache-dir", default=None,
                   help="--hf-dataset: the datasets cache to look in (default: the library's)")
    p.add_argument("--split", default=None,
                   help="split of --hf-dataset (default train) or of a save_to_disk DatasetDict")
    p.add_argument("--output-prefix", required=True, help="output path prefix")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="text fields of jsonl records")
    p.add_argument("--tokenizer-type", default=None,
                   help="tokenizer registry name (default: from --tokenizer-model's file, else byte)")
    p.add_argument("--tokenizer-model", default=None,
                   help="tokenizer.json, sentencepiece .model, or a directory holding one (an HF model, an import)")
    p.add_argument("--vocab-file", default=None, help="gpt2bpe: vocab.json")
    p.add_argument("--merge-file", default=None, help="gpt2bpe: merges.txt")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    p.add_argument("--append-eod", action="store_true", help="end each document with EOD")
    add_metadata_args(p)
    add_local_args(p)
    args = p.parse_args(argv)
    if args.tokenizer_type is None:
        args.tokenizer_type = infer_tokenizer_type(args.tokenizer_model)
    return args


def infer_tokenizer_type(model: str | None) -> str:
    """``hf`` for a tokenizer.json (or a directory holding one), ``sentencepiece`` for a .model,
    else ``byte``."""
    from megatron.data.tokenizers import DIRECTORY_FILES

    if model is not None:
        for kind, name in DIRECTORY_FILES.items():
            if model.endswith(os.path.splitext(name)[1]) or os.path.isfile(os.path.join(model, name)):
                return kind
    return "byte"


class StderrProgress:
    """Progress on stderr: one line rewritten in place on a terminal, else a line per report."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.every_seconds = 0.5 if self.interactive else 10.0

    def __call__(self, progress: PreprocessProgress) -> None:
        line = ("done: " if progress.done else "") + progress.describe()
        if progress.fraction is not None and not progress.done:
            filled = int(20 * min(progress.fraction, 1.0))
            line = f"[{'#' * filled}{'.' * (20 - filled)}] {100 * progress.fraction:3.0f}% {line}"
        if self.interactive:
            end = "\n" if progress.done else ""
            sys.stderr.write(f"\r\033[K{line}{end}")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Tokenize and print where the datasets went, with counts and rates."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    progress = StderrProgress()
    try:
        tokenizer_cfg = DataConfig(
            tokenizer_type=args.tokenizer_type,
            tokenizer_model=args.tokenizer_model,
            vocab_file=args.vocab_file,
            merge_file=args.merge_file,
        )
        if args.metadata_keys and is_records_input(args.input):
            print(describe_local(tokenize_records_from_args(args, tokenizer_cfg)))
            return 0
        if args.metadata_keys:
            print(describe(tokenize_from_args(args, tokenizer_cfg, progress)))
            return 0
        if not args.input and not args.hf_dataset:
            raise ConfigError("--input or --hf-dataset: name what to tokenize")
        inputs = resolve_inputs(args.input, args.split)
        if args.hf_dataset:
            inputs += hf_dataset_files(args.hf_dataset, args.hf_config, args.split,
                                      args.hf_cache_dir)
        stats = tokenize_to_indexed(
            inputs,
            args.output_prefix,
            tokenizer_cfg,
            json_keys=args.json_keys,
            workers=args.workers,
            append_eod=args.append_eod,
            progress_every=progress.every_seconds,
            on_progress=progress,
            command=["tools/preprocess_data.py", *(sys.argv[1:] if argv is None else argv)],
        )
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"preprocess_data.py: error: {e}", file=sys.stderr)
        return 2
    for key, prefix in stats.prefixes.items():
        print(f"{key}: {prefix}.bin / .idx")
    summary = PreprocessProgress(stats.documents, stats.tokens, stats.seconds, done=True)
    print(summary.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
