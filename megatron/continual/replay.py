"""Replay: which share of a stage's fixed token budget goes to earlier data (spec section 3).

Sources are numbered in plan order: source 0 is the pretraining data D_0 (the plan's
``base_data``, else the first stage's data), and a stage trains on source t with replay from
sources 0..t-1. The budget per stage is fixed, so replay displaces new tokens. Policies
(registered in ``REPLAY_POLICIES``):

* ``none``: only the new data;
* ``ratio: a``: a on the new data, 1 - a over the earlier sources, uniformly per source
  (``pool: uniform-stages``, TiC-LM) or in proportion to their tokens (``pool: tokens``);
* ``ratio: equal``: 1 / (t + 1) on every source seen so far;
* ``weights: [alpha_0, alpha_D, alpha_B]`` (AuroraGPT): alpha_0 on D_0, alpha_D on the new data,
  alpha_B over the buffer B of earlier continual stages D_1..D_{t-1} (split by ``pool``); the
  buffer grows only once a stage has completed.

A stage's data list is the mix ``(w / sum of its list) * W_k`` (``megatron.data.mixing``) of
the source lists, with each entry's corpus set to its source's key: the blend's first level
(by corpus) is then exactly by source, and the per-corpus loss lines show every source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from megatron.config.fields import ConfigError
from megatron.registry import Registry

POOLS = ("uniform-stages", "tokens")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayConfig:
    """A replay policy as the plan gives it.

    Attributes:
        policy: none, ratio, equal or weights.
        ratio: ``ratio`` policy: the new data's share a.
        weights: ``weights`` policy: (alpha_0, alpha_D, alpha_B).
        pool: How replay is split over earlier sources: uniform-stages or tokens.
    """

    policy: str = "none"
    ratio: float | None = None
    weights: tuple[float, float, float] | None = None
    pool: str = "uniform-stages"


def parse_replay(raw: object, where: str) -> ReplayConfig:
    """``none`` | ``{ratio: a|equal, pool}`` | ``{weights: [a0, aD, aB], pool}`` -> ReplayConfig.

    Raises:
        ConfigError: Unknown form, a ratio outside (0, 1], weights that are not three
            non-negative numbers summing to 1, an unknown pool.
    """
    if raw in (None, "none", False):
        return ReplayConfig()
    if raw == "equal":
        return ReplayConfig(policy="equal")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected none, equal, {{ratio: A}} or {{weights: [a0, aD, aB]}}, got {raw!r}")
    unknown = set(raw) - {"ratio", "weights", "pool"}
    if unknown or ("ratio" in raw) == ("weights" in raw):
        raise ConfigError(f"{where}: give exactly one of ratio / weights (and optionally pool), got {sorted(raw)}")
    pool = raw.get("pool", "uniform-stages")
    if pool not in POOLS:
        raise ConfigError(f"{where}.pool: unknown pool {pool!r}; known: {', '.join(POOLS)}")
    if "ratio" in raw:
        if raw["ratio"] == "equal":
            return ReplayConfig(policy="equal", pool=pool)
        ratio = raw["ratio"]
        if not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(f"{where}.ratio: the new data's share must be in (0, 1] or 'equal', got {ratio!r}")
        return ReplayConfig(policy="ratio", ratio=float(ratio), pool=pool)
    weights = raw["weights"]
    if (not isinstance(weights, list | tuple) or len(weights) != 3
            or not all(isinstance(w, int | float) and w >= 0 for w in weights)):
        raise ConfigError(f"{where}.weights: expected three non-negative numbers "
                          f"[alpha_0, alpha_D, alpha_B], got {weights!r}")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-9):
        raise ConfigError(f"{where}.weights: alpha_0 + alpha_D + alpha_B must be 1, got {weights} "
                          f"(sum {sum(weights):.6g})")
    return ReplayConfig(policy="weights", weights=tuple(float(w) for w in weights), pool=pool)


Policy = Callable[[ReplayConfig, int, Sequence[float]], list[float]]
REPLAY_POLICIES: Registry[Policy] = Registry("replay policy (the plan's method.replay)", "--replay-ratio")
"""Policy name (``parse_replay`` picks it from the plan's ``method.replay``) -> weights function."""


def register_replay_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator: ``fn(cfg, t, tokens) -> weights of sources 0..t`` becomes policy ``name``."""
    return REPLAY_POLICIES.register(name)


def _split(share: float, sources: range, tokens: Sequence[float], pool: str) -> dict[int, float]:
    """``share`` over ``sources``, uniformly or by tokens."""
    if not sources:
        return {}
    if pool == "tokens":
        total = sum(tokens[j] for j in sources)
        return {j: share * tokens[j] / total for j in sources}
    return {j: share / len(sources) for j in sources}


@register_replay_policy("none")
def _none(cfg: ReplayConfig, t: int, tokens: Sequence[float]) -> list[float]:
    return [0.0] * t + [1.0]


@register_replay_policy("ratio")
def _ratio(cfg: ReplayConfig, t: int, tokens: Sequence[float]) -> list[float]:
    if t == 0:
        return [1.0]
    shares = _split(1.0 - cfg.ratio, range(t), tokens, cfg.pool)
    return [shares[j] for j in range(t)] + [cfg.ratio]


@register_replay_policy("equal")
def _equal(cfg: ReplayConfig, t: int, tokens: Sequence[float]) -> list[float]:
    return [1.0 / (t + 1)] * (t + 1)


@register_replay_policy("weights")
def _weights(cfg: ReplayConfig, t: int, tokens: Sequence[float]) -> list[float]:
    a0, a_new, a_buffer = cfg.weights
    if t == 0:
        return [1.0]
    if a_buffer > 0 and t < 2:
        raise ConfigError(
            f"replay.weights: alpha_B = {a_buffer} but the buffer of earlier continual stages is "
            "still empty at the first continual stage; give this stage weights with alpha_B 0, "
            "e.g. [0.05, 0.95, 0]"
        )
    shares = _split(a_buffer, range(1, t), tokens, cfg.pool)
    return [a0] + [shares[j] for j in range(1, t)] + [a_new]


def replay_weights(cfg: ReplayConfig, t: int, tokens: Sequence[float] | None = None) -> list[float]:
    """Weights of sources 0..t for the stage that trains on source ``t``.

    Args:
        cfg: The policy.
        t: The new source's index (0 = the pretraining data itself).
        tokens: Tokens of every source 0..t (``pool: tokens`` only).

    Returns:
        t + 1 weights summing to 1.
    """
    if cfg.pool == "tokens" and cfg.policy != "none" and tokens is None:
        raise ConfigError("replay.pool: tokens needs the token counts of the sources")
    return REPLAY_POLICIES.get(cfg.policy)(cfg, t, tokens or [1.0] * (t + 1))


def list_tokens(path: str) -> float:
    """Tokens of a data file list (its datasets' sizes, read from their ``.idx``)."""
    from megatron.data.data_list import parse_data_file_list
    from megatron.data.indexed import open_indexed

    return float(sum(int(open_indexed(e.prefix).sequence_lengths.sum())
                     for e in parse_data_file_list(path, flag="replay.pool")))


def blended_list(sources: Sequence[tuple[str, str]], weights: Sequence[float], header: Sequence[str] = ()) -> str:
    """The stage's data file list: the mix of the source lists with ``weights``.

    Args:
        sources: ``(key, list path)`` of sources 0..t.
        weights: Their weights (zeros are left out).
        header: Comment lines.

    Returns:
        The list's text (``weight prefix <source key>`` lines).
    """
    from megatron.data.mixing import MixInput, mix_data_lists, render_mix

    kept = [(key, path, w) for (key, path), w in zip(sources, weights, strict=True) if w > 0]
    entries = []
    for key, path, w in kept:
        for e in mix_data_lists([MixInput(weight=1.0, path=path)], check_files=True, flag="replay"):
            # Absolute: the trainer may run from another directory (the launcher's repo root).
            entries.append(type(e)(weight=e.weight * w, prefix=os.path.abspath(e.prefix), corpus=key,
                                   source=e.source))
    lines = [*header, *(f"source {key} ({path}): weight {w:.6g}" for key, path, w in kept)]
    return render_mix(entries, header=lines).text
