#!/usr/bin/env python3
"""Export a checkpoint to Hugging Face Llama format (``LlamaForCausalLM``).

    python tools/export_hf.py --input SAVE --output hf-model                  # SAVE's latest
    python tools/export_hf.py --input SAVE/global_step1000 --output hf-model --dtype bfloat16
    python tools/export_hf.py --input SAVE/global_step1000_universal --output hf-model

Writes ``config.json``, ``model.safetensors`` and, for runs with ``--tokenizer-type hf``, the
run's ``tokenizer.json``; load the result with ``AutoModelForCausalLM.from_pretrained(OUTPUT)``.
Only Llama-shaped models export (``--normalization rmsnorm --swiglu`` with rotary positions).
The padded vocabulary rows are dropped. The output is written under a temporary name and renamed
when complete. Errors exit with status 2 and one line naming the argument.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.checkpointing.checkpoint import CheckpointError  # noqa: E402
from megatron.checkpointing.hf_export import DTYPES, export_llama  # noqa: E402
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
        choices=sorted(DTYPES),
        default="float32",
        help="dtype of the saved tensors (default float32)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = export_llama(args.input, args.output, args.dtype)
    except (CheckpointError, ConfigError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    tokenizer = f", tokenizer {summary['tokenizer']}" if summary["tokenizer"] else ", no tokenizer"
    print(
        f"{PROG}: wrote {summary['output']}: {summary['parameters']:,} parameters in "
        f"{summary['dtype']}, vocabulary {summary['vocab_size']}{tokenizer}, "
        f"{summary['bytes'] / 2**20:.1f} MiB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
