#!/usr/bin/env python3
"""Export a checkpoint to a Hugging Face ``transformers`` model directory.

    python tools/export_hf.py --input SAVE --output hf-model                  # SAVE's latest
    python tools/export_hf.py --input SAVE/global_step1000 --output hf-model --dtype bf16 \\
        --max-shard-size 2GB
    python tools/export_hf.py --input SAVE/global_step1000_universal --output hf-model

The target class follows the model's shape: RMSNorm + SwiGLU + RoPE -> LlamaForCausalLM;
LayerNorm + GeLU + RoPE -> GPTNeoXForCausalLM (Starcoder2ForCausalLM with GQA or without
biases); LayerNorm + GeLU + learned positions -> GPT2LMHeadModel. A shape none of them
represents exactly is refused naming the flags (``--architecture`` forces one target).

Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` (or
``model-0000k-of-0000n.safetensors`` shards of at most ``--max-shard-size`` and their
``model.safetensors.index.json``), streamed tensor by tensor, and the run's tokenizer as a
``tokenizer.json`` (hf, sentencepiece, gpt2bpe, byte). Load the result with
``AutoModelForCausalLM.from_pretrained(OUTPUT)`` and ``AutoTokenizer.from_pretrained(OUTPUT)``.
The padded vocabulary rows are dropped. The output is written under a temporary name and renamed
when complete. Errors exit with status 2 and one line naming the argument.
"""

from __future__ import annotations

import argparse
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.checkpointing.hf_export import (  # noqa: E402
    DEFAULT_MAX_SHARD_SIZE,
    DTYPE_ALIASES,
    DTYPES,
    EXPORTERS,
    export_hf,
)
from megatron.config.fields import ConfigError  # noqa: E402

PROG = "export_hf.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--input",
        required=True,
        help="SAVE directory (its latest), SAVE/global_stepN or a universal checkpoint",
    )
    p.add_argument("--output", required=True, help="target directory (must not exist)")
    p.add_argument(
        "--dtype",
        choices=sorted([*DTYPES, *DTYPE_ALIASES]),
        default="float32",
        help="dtype of the saved tensors (default float32)",
    )
    p.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest safetensors file, e.g. 500MB or 2GiB (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    p.add_argument(
        "--architecture",
        choices=sorted(EXPORTERS),
        default=None,
        help="force a target class (default: the first that represents the model exactly)",
    )
    p.add_argument("--no-tokenizer", action="store_true", help="do not export the run's tokenizer")
    return p.parse_args(argv)


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every 10% otherwise)."""

    def __init__(self, stream=None):  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = -1

    def __call__(self, done: int, total: int, name: str) -> None:
        percent = 100 * done // max(total, 1)
        if not self.tty and percent // 10 == self.last // 10 and percent < 100:
            return
        if percent == self.last:
            return
        self.last = percent
        bar = "#" * (percent // 5)
        end = "\n" if percent == 100 or not self.tty else ""
        start = "\r" if self.tty else ""
        mib = f"{done / 2**20:.1f}/{total / 2**20:.1f} MiB"
        self.stream.write(f"{start}{PROG}: [{bar:<20}] {percent:3d}% {mib}{end}")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = export_hf(
            args.input,
            args.output,
            architecture=args.architecture,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            progress=ProgressBar(),
            tokenizer=not args.no_tokenizer,
        )
    except (CheckpointError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    tokenizer = f", tokenizer {summary['tokenizer']}" if summary["tokenizer"] else ", no tokenizer"
    print(
        f"{PROG}: wrote {summary['output']}: {summary['hf_class']}, {summary['parameters']:,} "
        f"parameters in {summary['dtype']}, vocabulary {summary['vocab_size']}{tokenizer}, "
        f"{summary['bytes'] / 2**20:.1f} MiB in {len(summary['files'])} file(s), "
        f"{summary['seconds']:.1f} s, peak RSS {summary['peak_rss_bytes'] / 2**20:.0f} MiB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
