"""The local-metadata and sampling flags of ``tools/preprocess_data.py`` (BigScience spellings)."""

from __future__ import annotations

import argparse
import gzip
import json

from megatron.config.data import DataConfig
from megatron.config.fields import ConfigError
from megatron.data.preprocess import JSON_SUFFIXES
from megatron.metadata.cli import _key_list
from megatron.metadata.local import TABLE_PARTS, LocalFormat
from megatron.metadata.local_preprocess import LocalOptions, LocalStats, tokenize_records
from megatron.metadata.records import has_records
from megatron.metadata.render import PrefixFormat
from megatron.metadata.sampling import SamplingOptions, parse_mapping, parse_weights


def add_local_args(p: argparse.ArgumentParser) -> None:
    """Flags for inputs in the metadata-records format (``metadata`` or ``metadata_<key>``)."""
    g = p.add_argument_group("local metadata and per-example sampling (records inputs)")
    g.add_argument("--random-sample-metadata", action="store_true",
                   help="keep k ~ U{1..n} of an example's weighted types, chosen by weight")
    g.add_argument("--random-sample-metadata-weights", default="",
                   help="key=weight,... for --random-sample-metadata")
    g.add_argument("--html-overall-sample-rate", type=float, default=1.0,
                   help="chance html is a candidate at all (with --random-sample-metadata)")
    g.add_argument("--treat-local-metadata-as-regular-text", action="store_true",
                   help="train on inline metadata (default: masked like the prefix)")
    g.add_argument("--add-local-metadata-special-tokens-in-prefix", action="store_true",
                   help="name the local types present in the prefix")
    g.add_argument("--local-metadata-special-tokens", default="",
                   help="key=word,...: the prefix word of a local type (default: its name)")
    g.add_argument("--local-metadata-special-token-start", default="",
                   help="key=text,...: written before each collated insertion, e.g. html=<HTML>")
    g.add_argument("--local-metadata-special-token-end", default="",
                   help="key=text,...: written after it, e.g. html=</HTML>")
    g.add_argument("--entity-setting", choices=("beg", "end"), default="beg",
                   help="entity_paragraph names at the start or the end of the paragraph")
    g.add_argument("--html-attributes-to-keep", default="class,id",
                   help="html attributes written ('*': all)")
    g.add_argument("--metadata-variants", type=int, default=1,
                   help="K pre-drawn variants; epoch e trains on variant e mod K")
    # fmt: skip


def is_records_input(paths: list[str]) -> bool:
    """Whether the first record of the first jsonl input carries metadata records."""
    path = paths[0]
    if not path.endswith(JSON_SUFFIXES):
        return False
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return has_records(json.loads(line))
                except json.JSONDecodeError:
                    return False
    return False


def local_options(args: argparse.Namespace) -> LocalOptions:
    """Options from parsed flags (raises ConfigError on bad values)."""
    attrs = args.html_attributes_to_keep.strip()
    local = LocalFormat(
        attributes_to_keep=None if attrs == "*" else tuple(_key_list(attrs)),
        keep_empty_tags=TABLE_PARTS,
        entity_setting=args.entity_setting,
        special_start=parse_mapping(args.local_metadata_special_token_start,
                                    "--local-metadata-special-token-start"),
        special_end=parse_mapping(args.local_metadata_special_token_end,
                                  "--local-metadata-special-token-end"),
        prefix_tokens=parse_mapping(args.local_metadata_special_tokens,
                                    "--local-metadata-special-tokens"),
        local_in_prefix=args.add_local_metadata_special_tokens_in_prefix,
    )  # fmt: skip
    sampling = SamplingOptions(
        probability=args.metadata_probability,
        random_sample=args.random_sample_metadata,
        weights=parse_weights(args.random_sample_metadata_weights),
        html_rate=args.html_overall_sample_rate,
        seed=args.metadata_seed,
    )
    fmt = PrefixFormat(
        sep=args.metadata_sep,
        key_value_sep=args.metadata_key_value_sep,
        prefix_sep=args.metadata_prefix_sep,
        start_seq=args.metadata_prefix_start_seq,
    )
    if args.metadata_template != "bigscience":
        raise ConfigError("--metadata-template: records inputs render with 'bigscience' only")
    keys = tuple(k for value in args.metadata_keys for k in _key_list(value))
    return LocalOptions(keys, sampling, fmt, local, args.treat_local_metadata_as_regular_text,
                        args.metadata_variants)  # fmt: skip


def tokenize_records_from_args(args: argparse.Namespace, tokenizer_cfg: DataConfig) -> LocalStats:
    """Run ``tokenize_records`` for ``tools/preprocess_data.py``'s arguments."""
    if len(args.json_keys) != 1:
        raise ConfigError(f"--json-keys: metadata needs exactly one text key, got {args.json_keys}")
    return tokenize_records(
        args.input, args.output_prefix, tokenizer_cfg, local_options(args),
        text_key=args.json_keys[0], workers=args.workers, append_eod=args.append_eod,
    )  # fmt: skip


def describe_local(stats: LocalStats) -> str:
    """The summary lines the tool prints."""
    lines = [f"summary: {stats.json_path}"]
    for k, (t, m, c) in enumerate(zip(stats.text_prefixes, stats.lossmask_prefixes, stats.counts)):
        lines.append(
            f"variant {k} (epochs {k} mod {len(stats.counts)}): {t}.bin/.idx, {m}.bin/.idx; "
            f"{c.with_metadata:,} of {stats.documents:,} documents with metadata; "
            f"{c.metadata_tokens:,} of {c.tokens:,} tokens masked; kept {dict(c.kept)}"
        )
    return "\n".join(lines)
