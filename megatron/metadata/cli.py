"""The metadata flags of ``tools/preprocess_data.py`` (BigScience, MeCo and our spellings)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from megatron.config.data import DataConfig
from megatron.metadata.preprocess import MetadataOptions, MetadataStats, tokenize_with_metadata
from megatron.metadata.render import TEMPLATES, PrefixFormat


def _key_list(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def add_metadata_args(p: argparse.ArgumentParser) -> None:
    """Add the metadata options (the seed's hydra keys and MeCo's flags as spellings)."""
    g = p.add_argument_group("metadata prefixes (docs/metadata.md)")
    g.add_argument(
        "--metadata-keys",
        "--metadata-list",
        "--metadata-column-list",
        dest="metadata_keys",
        nargs="+",
        default=None,
        help="jsonl fields rendered into the prefix, in prefix order (comma- or space-separated)",
    )
    g.add_argument(
        "--metadata-template",
        choices=sorted(TEMPLATES),
        default="bigscience",
        help="bigscience: 'url: ... | Year: 2019 | Month: April |||'; meco: 'URL: domain\\n\\n'",
    )
    g.add_argument(
        "--metadata-probability",
        type=float,
        default=0.5,
        help="chance that a document gets its prefix (seeded by document index)",
    )
    g.add_argument("--metadata-seed", type=int, default=1234, help="seeds the per-document choice")
    g.add_argument("--metadata-sep", default=" | ", help="between two keys (bigscience)")
    g.add_argument(
        "--metadata-key-value-sep", default=": ", help="between key and value (bigscience)"
    )
    g.add_argument("--metadata-prefix-sep", default=" |||", help="ends the prefix (bigscience)")
    g.add_argument("--metadata-prefix-start-seq", default="", help="starts the prefix (bigscience)")
    g.add_argument("--add-metadata-prefix", default="URL: ", help="before the domain (meco)")
    g.add_argument("--add-metadata-suffix", default="\n\n", help="after the domain (meco)")
    g.add_argument(
        "--use-short-url",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="meco: the URL's domain only (default); --no-use-short-url keeps it whole",
    )


def metadata_options(args: argparse.Namespace) -> MetadataOptions:
    """Options from parsed flags (raises ConfigError on bad values)."""
    keys = tuple(k for value in args.metadata_keys for k in _key_list(value))
    fmt = PrefixFormat(
        sep=args.metadata_sep,
        key_value_sep=args.metadata_key_value_sep,
        prefix_sep=args.metadata_prefix_sep,
        start_seq=args.metadata_prefix_start_seq,
        meco_prefix=args.add_metadata_prefix,
        meco_suffix=args.add_metadata_suffix,
        short_url=args.use_short_url,
    )
    return MetadataOptions(
        keys=keys,
        template=args.metadata_template,
        probability=args.metadata_probability,
        seed=args.metadata_seed,
        fmt=fmt,
    )


def tokenize_from_args(
    args: argparse.Namespace, tokenizer_cfg: DataConfig, progress: Callable
) -> MetadataStats:
    """Run ``tokenize_with_metadata`` for ``tools/preprocess_data.py``'s arguments."""
    if len(args.json_keys) != 1:
        from megatron.config.fields import ConfigError

        raise ConfigError(f"--json-keys: metadata needs exactly one text key, got {args.json_keys}")
    return tokenize_with_metadata(
        args.input,
        args.output_prefix,
        tokenizer_cfg,
        metadata_options(args),
        text_key=args.json_keys[0],
        workers=args.workers,
        append_eod=args.append_eod,
        progress_every=progress.every_seconds,
        on_progress=progress,
    )


def describe(stats: MetadataStats) -> str:
    """The summary lines the tool prints."""
    r = stats.report
    lines = [
        f"text: {stats.text_prefix}.bin / .idx",
        f"loss mask: {stats.lossmask_prefix}.bin / .idx",
        f"summary: {stats.json_path}",
        f"{r.prefixed:,} of {r.documents:,} documents prefixed ({r.fraction_prefixed:.4f}); "
        f"{stats.prefix_tokens:,} of {stats.tokens:,} tokens are metadata",
    ]
    lines += [
        f"key {k!r}: missing in {n:,} documents (skipped there)" for k, n in r.missing.items() if n
    ]
    lines += [
        f"key {k!r}: malformed in {n:,} documents (kept as text)"
        for k, n in r.malformed.items()
        if n
    ]
    return "\n".join(lines)
