#!/usr/bin/env python3
"""Mix data file lists with mixture weights into one list (docs/design.md §6).

    python tools/mix_datasets.py --inputs 0.9 papers.txt 0.1 dolma.txt > mixed.txt
    python tools/mix_datasets.py --inputs 0.9 papers.txt 0.1 dolma.txt --output mixed.txt

Every entry of list k, weight w, becomes ``(w / sum w in list k) * (W_k / sum W)``; prefixes and
corpus names are kept, so per-corpus loss still works on the mix. ``--input`` is accepted as well
(the spelling of the ALCF instructions). Weights are written with ``--precision`` decimals; an
entry that rounds to zero is dropped with a warning (the trainer rejects zero weights). The
``.bin``/``.idx`` files need not exist here unless ``--check-files`` is given; the trainer checks
them before it starts. Errors exit with status 2 and one line naming the argument or file:line.
"""

from __future__ import annotations

import argparse
import shlex
import sys

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.fields import ConfigError  # noqa: E402
from megatron.data.mixing import (  # noqa: E402
    DEFAULT_PRECISION,
    describe_inputs,
    mix_data_lists,
    parse_mix_pairs,
    render_mix,
    write_atomic,
)

PROG = "mix_datasets.py"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--inputs",
        "--input",
        dest="inputs",
        nargs="+",
        required=True,
        metavar="W LIST",
        help="pairs of mixture weight and data file list: W1 list1 W2 list2 ...",
    )
    p.add_argument("--output", default=None, help="write here (atomically) instead of stdout")
    p.add_argument(
        "--precision",
        type=int,
        default=DEFAULT_PRECISION,
        help=f"decimals per written weight (default {DEFAULT_PRECISION})",
    )
    p.add_argument(
        "--check-files", action="store_true", help="require every .bin/.idx pair to exist"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        inputs = parse_mix_pairs(args.inputs)
        entries = mix_data_lists(inputs, check_files=args.check_files)
        header = [f"written by: tools/{PROG} {shlex.join(argv)}", *describe_inputs(inputs)]
        rendered = render_mix(entries, precision=args.precision, header=header)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for entry in rendered.dropped:
        print(
            f"{PROG}: warning: {entry.source}: {entry.prefix} ({entry.corpus}) has weight "
            f"{entry.weight:.3g}, which rounds to 0 at --precision {args.precision}; dropped "
            "(raise --precision to keep it)",
            file=sys.stderr,
        )
    if args.output is None:
        sys.stdout.write(rendered.text)
        return 0
    try:
        write_atomic(args.output, rendered.text)
    except OSError as e:
        print(f"{PROG}: error: --output: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"{PROG}: wrote {len(rendered.kept)} entries to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
