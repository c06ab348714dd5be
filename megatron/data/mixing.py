"""Mix several data file lists into one (docs/design.md §6, ``tools/mix_datasets.py``).

Continual pretraining replays a little of the old corpus next to the new one: "0.9 of papers,
0.1 of dolma". Each input list k gets a mixture weight W_k, and every entry of it, with weight w
in its own list, becomes one line of the mixed list with weight

    (w / sum of the weights in list k) * (W_k / sum of all W)

so the mixed weights sum to 1 and list k contributes exactly W_k / sum W of the samples, however
many datasets it holds and however its own weights were scaled.

Weights are written in fixed-point notation with a given number of decimals. An entry whose
weight rounds to zero is *dropped* (with a warning naming the prefix and its ``file:line``): our
list parser rejects a zero weight, so keeping it would produce a list the trainer refuses. If
every entry rounds to zero the mix is an error (raise the precision).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from megatron.config.fields import ConfigError
from megatron.data.data_list import parse_data_file_list

DEFAULT_PRECISION = 12
"""Decimals written per weight: a 1e-9 share of the mix keeps three significant digits."""


class MixError(ConfigError):
    """Bad mixing arguments, or a mix that leaves no entry."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MixInput:
    """One input of a mix: a data file list and its share of the mixture.

    Attributes:
        weight: Mixture weight W_k as given (any positive scale; normalized over the inputs).
        path: The data file list.
    """

    weight: float
    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MixedEntry:
    """One dataset of the mixed list.

    Attributes:
        weight: Final weight (w / sum w in its list) * (W_k / sum W); all entries sum to 1.
        prefix: Path prefix of the ``.bin``/``.idx`` pair, as written in the input list.
        corpus: Corpus name, kept from the input list.
        source: ``file:line`` of the entry in its input list.
    """

    weight: float
    prefix: str
    corpus: str
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RenderedMix:
    """A mixed list as text, plus the entries that rounding removed.

    Attributes:
        text: The ``weight prefix corpus`` lines (and header comments), newline-terminated.
        kept: Entries written to ``text``.
        dropped: Entries whose weight rounded to zero at the chosen precision (not written).
    """

    text: str
    kept: list[MixedEntry]
    dropped: list[MixedEntry]


def parse_mix_pairs(tokens: Sequence[str], *, flag: str = "--inputs") -> list[MixInput]:
    """Turn ``W1 list1 W2 list2 ...`` into mix inputs.

    Args:
        tokens: The alternating weights and list paths, as typed.
        flag: The flag they came from (for messages).

    Returns:
        One ``MixInput`` per pair, in order.

    Raises:
        MixError: No pairs, an odd count, or a weight that is not a positive finite number.
    """
    if not tokens or len(tokens) % 2:
        raise MixError(
            f"{flag}: expected pairs 'WEIGHT LIST [WEIGHT LIST ...]', got {len(tokens)} "
            f"argument(s): {' '.join(tokens)}"
        )
    inputs = []
    for i in range(0, len(tokens), 2):
        text, path = tokens[i], tokens[i + 1]
        try:
            weight = float(text)
        except ValueError:
            raise MixError(
                f"{flag}: weight {text!r} (argument {i + 1}, for {path}) is not a number"
            ) from None
        if not (weight > 0 and math.isfinite(weight)):
            raise MixError(
                f"{flag}: weight {text!r} (argument {i + 1}, for {path}) must be a positive number"
            )
        inputs.append(MixInput(weight=weight, path=path))
    return inputs


def mix_data_lists(
    inputs: Sequence[MixInput], *, check_files: bool = False, flag: str = "--inputs"
) -> list[MixedEntry]:
    """Combine data file lists with mixture weights.

    Args:
        inputs: The lists and their mixture weights W_k.
        check_files: Also require every ``.bin``/``.idx`` pair to exist.
        flag: The flag that named the lists (for messages).

    Returns:
        The entries of all lists in input order, weighted (w / sum w) * (W_k / sum W).

    Raises:
        MixError: No inputs.
        DataListError: An unreadable or malformed list, or missing data files with ``check_files``.
    """
    if not inputs:
        raise MixError(f"{flag}: no data file lists to mix")
    total = sum(i.weight for i in inputs)
    mixed = []
    for item in inputs:
        share = item.weight / total
        # parse_data_file_list already divides every w by the sum of its list.
        for entry in parse_data_file_list(item.path, flag=flag, check_files=check_files):
            mixed.append(
                MixedEntry(
                    weight=entry.weight * share,
                    prefix=entry.prefix,
                    corpus=entry.corpus,
                    source=entry.source,
                )
            )
    return mixed


def format_weight(weight: float, precision: int) -> str:
    """A weight in fixed-point notation with ``precision`` decimals (``0.000123000000``)."""
    return f"{weight:.{precision}f}"


def render_mix(
    entries: Sequence[MixedEntry],
    *,
    precision: int = DEFAULT_PRECISION,
    header: Sequence[str] = (),
) -> RenderedMix:
    """Write mixed entries as a data file list, dropping those that round to zero.

    Args:
        entries: The mixed entries (e.g. from ``mix_data_lists``).
        precision: Decimals per weight (at least 1).
        header: Comment lines to put first (a ``# `` is prepended to each).

    Returns:
        The text and the kept and dropped entries.

    Raises:
        MixError: ``precision`` below 1, or every entry rounds to zero.
    """
    if precision < 1:
        raise MixError(f"--precision: must be at least 1, got {precision}")
    kept, dropped, lines = [], [], [f"# {h}" for h in header]
    for entry in entries:
        text = format_weight(entry.weight, precision)
        # Compare the written value, not the float: only it reaches the parser.
        if float(text) == 0.0:
            dropped.append(entry)
            continue
        kept.append(entry)
        lines.append(f"{text} {entry.prefix} {entry.corpus}")
    if not kept:
        raise MixError(
            f"--precision: every weight rounds to zero at {precision} decimals; raise --precision"
        )
    return RenderedMix(text="\n".join(lines) + "\n", kept=kept, dropped=dropped)


def describe_inputs(inputs: Sequence[MixInput]) -> list[str]:
    """Header lines recording each input list with its weight and normalized share."""
    total = sum(i.weight for i in inputs)
    return [
        f"input {item.path}: weight {item.weight:g} -> share {item.weight / total:.6g}"
        for item in inputs
    ]


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename, so a reader
    (or a crash) never sees half a list.

    Raises:
        OSError: The directory is not writable.
    """
    # Same directory, so os.replace is a rename on one filesystem; plain open() keeps the
    # user's umask (mkstemp would make the list private).
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
