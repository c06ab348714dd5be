#!/usr/bin/env python3
"""Perplexity of held-out documents with and without their metadata prefix (paired, same tokens).

    python tools/eval_metadata_ppl.py --load outputs/meta/checkpoints --data eval.jsonl \
        --metadata-keys url,title --metadata-template bigscience [--prefix "URL: github.com\\n\\n"]

prints a Markdown table per metadata type (each key, all keys, the fixed prefix): documents,
scored tokens, ppl plain, ppl with prefix and their ratio; ``--output scores.json`` keeps it.
An evaluation file that was an input of the checkpoint's training data is refused.

A records file (``metadata`` / ``metadata_<key>`` columns, docs/metadata_local.md) is scored per
type of ``--metadata-list`` the BigScience way: plain vs with that type only (local metadata
inline and masked, the first non-metadata token not scored, wrapper tokens' logits at -inf).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.config.fields import ConfigError  # noqa: E402
from megatron.metadata.cli import add_metadata_args, metadata_options  # noqa: E402
from megatron.metadata.eval_run import (  # noqa: E402
    CheckpointModel,
    check_not_trained_on,
    checkpoint_metadata,
    checkpoint_tokenizer,
    load_records,
    training_lists,
)
from megatron.metadata.evaluate import default_conditions, evaluate_pairs, format_table  # noqa: E402
from megatron.metadata.local_cli import add_local_args, is_records_input, local_options  # noqa: E402
from megatron.metadata.local_eval import evaluate_types, format_type_table  # noqa: E402
from megatron.metadata.local_preprocess import iter_documents  # noqa: E402

PROG = "eval_metadata_ppl.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", required=True, help="checkpoint: SAVE, SAVE/global_stepN or universal")
    p.add_argument("--data", required=True, help="held-out jsonl with text and metadata fields")
    p.add_argument("--json-key", default="text", help="the text field")
    p.add_argument(
        "--prefix",
        default=None,
        help="also score every document after this fixed prefix "
        "(\\n is a newline), e.g. 'URL: en.wikipedia.org\\n\\n'",
    )
    p.add_argument(
        "--train-data-file-list",
        nargs="*",
        default=[],
        help="more training lists to check --data against (the checkpoint's own are always checked)",
    )
    p.add_argument("--max-documents", type=int, default=None, help="evaluate the first N documents")
    p.add_argument("--output", default=None, help="also write the scores as JSON")
    add_metadata_args(p)
    add_local_args(p)
    return p.parse_args(argv)


def score_records(args: argparse.Namespace, model: CheckpointModel) -> tuple[list, str]:
    """Per-type scores of a records file (local metadata inline, masked): rows and table."""
    opts = local_options(args)
    docs = [doc for doc, _ in iter_documents([args.data], args.json_key)][: args.max_documents]
    scores = evaluate_types(
        model.logits, checkpoint_tokenizer(model.metadata), docs, opts.order,
        model.spec.seq_length, opts.fmt, opts.local,
    )  # fmt: skip
    return [s.as_dict() for s in scores], format_type_table(scores)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.metadata_keys:
        print(
            f"{PROG}: error: --metadata-keys: name the metadata fields to evaluate", file=sys.stderr
        )
        return 2
    try:
        if not os.path.isfile(args.data):
            raise FileNotFoundError(f"--data: no such file {args.data}")
        records_input = is_records_input([args.data])
        options = metadata_options(args)
        if not records_input:
            records = load_records(args.data, options.keys, args.json_key)[: args.max_documents]
        metadata = checkpoint_metadata(args.load)
        check_not_trained_on(args.data, [*training_lists(metadata), *args.train_data_file_list])
        model = CheckpointModel(args.load)
        try:
            if records_input:
                rows, table = score_records(args, model)
                print(table)
                if args.output:
                    with open(args.output, "w") as f:
                        json.dump(rows, f, indent=2)
                return 0
            prefix = (
                None
                if args.prefix is None
                else args.prefix.replace("\\n", "\n").replace("\\t", "\t")
            )
            scores = evaluate_pairs(
                model.logits,
                checkpoint_tokenizer(model.metadata),
                records,
                default_conditions(options.keys, prefix),
                model.spec.seq_length,
                options.template,
                options.fmt,
            )
        finally:
            model.close()
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(scores))
    if args.output:
        with open(args.output, "w") as f:
            json.dump([s.as_dict() for s in scores], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
