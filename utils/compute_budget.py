#!/usr/bin/env python3
"""Compute budgets: parameters, FLOPs, tokens, samples and iterations of a GPT run (docs/design.md §6).

    python utils/compute_budget.py --num-layers 32 --hidden-size 4096 --vocab-size 32000 \
        --flops 1e21 --seq-length 4096 --global-batch-size 768
    python utils/compute_budget.py --params 7B --train-tokens 2T --unique-tokens 500B \
        --seq-length 4096 --global-batch-size 1024

Formulas (Kaplan et al. 2020, https://arxiv.org/abs/2001.08361; data-constrained runs as in
Muennighoff et al. 2023, https://arxiv.org/abs/2305.16264):

    N = 4*L*d^2 + 3*L*d*f + 6*L*d + V*d      f = floor((8d/3)/64)*64 (SwiGLU) unless given
    C = 6*N*D                                samples = ceil(D / seq), iterations = ceil(samples / batch)
    epochs = D / U                           (U unique tokens repeated to D total tokens)

The run length is printed as the flags our trainer takes (``--train-tokens``, ``--train-iters``, or
``--unique-tokens U --epochs E``) with the iterations the trainer derives from them. Counts accept
``1e21``, ``7B``, ``2.5T``, ``1_000`` (K, M, B or G, T suffixes). The formulas themselves live in
``megatron/model/spec.py`` and ``megatron/plan/resolve.py`` (one copy each); this tool is torch-free.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.model import swiglu_ffn_size  # noqa: E402
from megatron.model.spec import approx_parameters  # noqa: E402
from megatron.model.spec import training_flops as _training_flops  # noqa: E402
from megatron.plan.resolve import epoch_iterations as _plan_epoch_iterations  # noqa: E402

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
"""Multipliers accepted after a count on the command line (case-insensitive)."""


def param_count(num_layers: int, hidden: int, vocab: int, ffn: int | None = None) -> int:
    """Approximate parameter count ``N = 4*L*d^2 + 3*L*d*f + 6*L*d + V*d``.

    Attention (4 d x d matrices) and a SwiGLU MLP (3 d x f matrices) per layer, norms and biases
    (~6d per layer), and one (tied) embedding table.

    Args:
        num_layers: Transformer layers L.
        hidden: Hidden size d.
        vocab: Vocabulary size V.
        ffn: MLP width f; default ``swiglu_ffn_size(hidden)``.

    Returns:
        N.

    Raises:
        ValueError: A size that is not a positive integer (message names the flag).
    """
    f = swiglu_ffn_size(hidden) if ffn is None else ffn
    for flag, value in (
        ("--num-layers", num_layers),
        ("--hidden-size", hidden),
        ("--vocab-size", vocab),
        ("--ffn-hidden-size", f),
    ):
        _require_positive(flag, value)
    return approx_parameters(num_layers, hidden, f, vocab)


def training_flops(n_params: int, tokens: int) -> int:
    """Training compute ``C = 6*N*D`` (forward 2ND, backward 4ND)."""
    _require_positive("--params", n_params)
    _require_positive("--train-tokens", tokens)
    return _training_flops(n_params, tokens)


def tokens_for_budget(flops: float, n_params: int) -> int:
    """Tokens a compute budget buys: ``D = floor(C / (6*N))`` (the most that fit in C).

    Raises:
        ValueError: A non-positive budget or model, or a budget too small for one token.
    """
    _require_positive("--flops", flops)
    _require_positive("--params", n_params)
    tokens = math.floor(flops / (6 * n_params))
    if tokens < 1:
        raise ValueError(f"--flops: {flops:g} FLOPs buy no token of a {n_params:,}-parameter model")
    return tokens


def epochs_for(unique_tokens: int, total_tokens: int) -> float:
    """Passes over the unique data: ``epochs = D / U``."""
    _require_positive("--unique-tokens", unique_tokens)
    _require_positive("--train-tokens", total_tokens)
    return total_tokens / unique_tokens


def epoch_iterations(
    unique_tokens: int, epochs: float, seq_length: int, global_batch_size: int
) -> int:
    """Iterations the trainer derives from ``--unique-tokens U --epochs E``.

    The trainer's subset holds ``floor(U / seq)`` whole samples and trains
    ``ceil(ceil(E * subset) / batch)`` iterations (``megatron/plan/resolve.py``).

    Raises:
        ValueError: U holds no whole sample of ``seq_length`` tokens.
    """
    subset = unique_tokens // seq_length
    if subset < 1:
        raise ValueError(
            f"--unique-tokens: {unique_tokens} tokens hold no sample of --seq-length {seq_length}"
        )
    return _plan_epoch_iterations(subset, epochs, global_batch_size)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunBudget:
    """Size of a training run, from a FLOPs or token budget.

    Attributes:
        n_params: Model parameters N.
        seq_length: Tokens per sample.
        global_batch_size: Samples per iteration.
        tokens: Requested tokens D (from the budget, or as given).
        flops: ``6*N*D`` for the requested tokens.
        samples: ``ceil(D / seq_length)``.
        iterations: ``ceil(samples / global_batch_size)`` (= ``ceil(D / (batch*seq))``, as the
            trainer derives it from ``--train-tokens``).
        trained_tokens: Tokens actually consumed, ``iterations * batch * seq`` (>= D).
        trained_flops: ``6*N*trained_tokens``.
    """

    n_params: int
    seq_length: int
    global_batch_size: int
    tokens: int
    flops: int
    samples: int
    iterations: int
    trained_tokens: int
    trained_flops: int


def plan_run(
    *,
    n_params: int,
    seq_length: int,
    global_batch_size: int,
    flops: float | None = None,
    tokens: int | None = None,
) -> RunBudget:
    """Tokens, samples and iterations of a run given a FLOPs budget or a token count.

    Args:
        n_params: Model parameters N.
        seq_length: Tokens per sample.
        global_batch_size: Samples per iteration.
        flops: Compute budget C (then D = floor(C / 6N)).
        tokens: Token count D (then C = 6ND). Give exactly one of ``flops`` and ``tokens``.

    Returns:
        The run's budget.

    Raises:
        ValueError: Both or neither budget given, or a non-positive value (message names the flag).
    """
    if (flops is None) == (tokens is None):
        raise ValueError("--flops: give exactly one of --flops, --train-tokens and --epochs")
    _require_positive("--seq-length", seq_length)
    _require_positive("--global-batch-size", global_batch_size)
    if tokens is None:
        tokens = tokens_for_budget(flops, n_params)
    samples = math.ceil(tokens / seq_length)
    iterations = math.ceil(samples / global_batch_size)
    trained = iterations * global_batch_size * seq_length
    return RunBudget(
        n_params=n_params,
        seq_length=seq_length,
        global_batch_size=global_batch_size,
        tokens=tokens,
        flops=training_flops(n_params, tokens),
        samples=samples,
        iterations=iterations,
        trained_tokens=trained,
        trained_flops=training_flops(n_params, trained),
    )


def _require_positive(flag: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{flag}: must be positive, got {value}")


def parse_count(text: str, flag: str, *, integer: bool = True) -> float:
    """A positive count from the command line: ``1e21``, ``7B``, ``2.5T``, ``1_000``.

    Args:
        text: As typed.
        flag: The flag it belongs to (for messages).
        integer: Require a whole number (and return an ``int``).

    Raises:
        ValueError: Not a number, not positive, or not whole when ``integer``.
    """
    body = text.strip().replace("_", "")
    scale = SUFFIXES.get(body[-1:].upper(), 1.0)
    if scale != 1.0:
        body = body[:-1]
    try:
        value = float(body) * scale
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a number (e.g. 1e21, 7B, 2.5T)") from None
    _require_positive(flag, value)
    if integer:
        if not value.is_integer():
            raise ValueError(f"{flag}: {text!r} is not a whole number")
        return int(value)
    return value


def format_epochs(epochs: float) -> str:
    """Epochs as written on the command line (10 significant digits)."""
    return f"{epochs:.10g}"


def report(budget: RunBudget, *, model: str, unique_tokens: int | None = None) -> str:
    """The table and trainer flags the CLI prints.

    Args:
        budget: The run.
        model: One line saying where N came from.
        unique_tokens: U for a data-constrained run.
    """
    b = budget
    rows = [
        ("parameters N", f"{b.n_params:,}", model),
        ("tokens D", f"{b.tokens:,}", ""),
        ("compute C", f"{b.flops:.4e}", "6*N*D FLOPs"),
        ("sequence length", f"{b.seq_length:,}", "tokens per sample"),
        ("global batch", f"{b.global_batch_size:,}", "samples per iteration"),
        ("samples", f"{b.samples:,}", "ceil(D / seq)"),
        ("iterations", f"{b.iterations:,}", "ceil(samples / batch)"),
        ("tokens trained", f"{b.trained_tokens:,}", "iterations * batch * seq"),
        ("compute trained", f"{b.trained_flops:.4e}", "6*N*tokens trained"),
        ("tokens / parameter", f"{b.tokens / b.n_params:.3g}", "Chinchilla-optimal ~20"),
    ]
    flags = [f"  --train-tokens {b.tokens}", f"  --train-iters {b.iterations}"]
    if unique_tokens is not None:
        epochs = format_epochs(epochs_for(unique_tokens, b.tokens))
        rows += [("unique tokens U", f"{unique_tokens:,}", ""), ("epochs", epochs, "D / U")]
        # The printed E is what the trainer will read, so derive its iterations from that text.
        iters = epoch_iterations(unique_tokens, float(epochs), b.seq_length, b.global_batch_size)
        flags = [f"  --unique-tokens {unique_tokens} --epochs {epochs}   # -> {iters:,} iterations"]
        if iters != b.iterations:
            flags.append(
                f"  (the subset holds floor(U / seq) = {unique_tokens // b.seq_length:,} whole "
                f"samples, so this differs from ceil(D / (batch*seq)) = {b.iterations:,})"
            )
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [
        f"{name:<{width}}  {value:>{value_width}}  {note}".rstrip() for name, value, note in rows
    ]
    lines += ["", "trainer flags (give one run length):", *flags]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="compute_budget.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = p.add_argument_group("model (give --params, or the shape)")
    model.add_argument("--params", help="parameter count N, e.g. 7B")
    model.add_argument("--num-layers", help="transformer layers L")
    model.add_argument("--hidden-size", help="hidden size d")
    model.add_argument("--vocab-size", help="vocabulary size V")
    model.add_argument("--ffn-hidden-size", help="MLP width f (default: SwiGLU rule)")
    run = p.add_argument_group("run length (give one of --flops, --train-tokens, --epochs)")
    run.add_argument("--flops", help="compute budget C in FLOPs, e.g. 1e21")
    run.add_argument("--train-tokens", help="total tokens D, e.g. 2T")
    run.add_argument("--epochs", help="passes over --unique-tokens (D = E * U)")
    run.add_argument("--unique-tokens", help="unique tokens U of a data-constrained run")
    run.add_argument("--seq-length", required=True, help="tokens per sample")
    run.add_argument("--global-batch-size", required=True, help="samples per iteration")
    return p.parse_args(argv)


def _model_size(args: argparse.Namespace) -> tuple[int, str]:
    shape = {
        "--num-layers": args.num_layers,
        "--hidden-size": args.hidden_size,
        "--vocab-size": args.vocab_size,
    }
    given = [flag for flag, value in shape.items() if value is not None]
    if args.params is not None:
        if given or args.ffn_hidden_size is not None:
            raise ValueError("--params: give either --params or the model shape, not both")
        return parse_count(args.params, "--params"), "as given"
    if len(given) != len(shape):
        missing = [flag for flag in shape if flag not in given]
        raise ValueError(f"{missing[0]}: missing; give --params, or {', '.join(shape)}")
    L, d, V = (parse_count(value, flag) for flag, value in shape.items())
    f = (
        swiglu_ffn_size(d)
        if args.ffn_hidden_size is None
        else parse_count(args.ffn_hidden_size, "--ffn-hidden-size")
    )
    return param_count(L, d, V, f), f"4Ld^2 + 3Ldf + 6Ld + Vd (L={L}, d={d}, f={f}, V={V})"


def _total_tokens(args: argparse.Namespace, unique: int | None) -> tuple[float | None, int | None]:
    given = [
        flag
        for flag, v in (
            ("--flops", args.flops),
            ("--train-tokens", args.train_tokens),
            ("--epochs", args.epochs),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"{given[1] if given else '--flops'}: give exactly one of --flops, --train-tokens, --epochs"
        )
    if args.flops is not None:
        return parse_count(args.flops, "--flops", integer=False), None
    if args.train_tokens is not None:
        return None, parse_count(args.train_tokens, "--train-tokens")
    if unique is None:
        raise ValueError("--epochs: needs --unique-tokens (D = epochs * U)")
    return None, math.ceil(parse_count(args.epochs, "--epochs", integer=False) * unique)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        n_params, model = _model_size(args)
        unique = (
            None
            if args.unique_tokens is None
            else parse_count(args.unique_tokens, "--unique-tokens")
        )
        flops, tokens = _total_tokens(args, unique)
        budget = plan_run(
            n_params=n_params,
            seq_length=parse_count(args.seq_length, "--seq-length"),
            global_batch_size=parse_count(args.global_batch_size, "--global-batch-size"),
            flops=flops,
            tokens=tokens,
        )
        print(report(budget, model=model, unique_tokens=unique))
    except ValueError as e:
        print(f"compute_budget.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
