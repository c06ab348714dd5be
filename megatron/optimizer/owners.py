"""Which rank does each matrix's work: greedy cost balancing shared by the matrix optimizers
(Muon's Newton-Schulz, dshampoo's preconditioners). Torch-free at import."""

from __future__ import annotations


def balance(costs: list[float], ranks: int) -> list[int]:
    """The rank of each item: largest cost first, to the least-loaded rank (ties: lowest index).

    Deterministic: every rank computes the same assignment from the same costs.
    """
    load = [0.0] * ranks
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner = min(range(ranks), key=lambda r: (load[r], r))
        owners[i] = owner
        load[owner] += costs[i]
    return owners


OWNED_PREFIX = "m"
"""A ZeRO-1/2 flat partition's state holds the owned matrices' whole-matrix states (dshampoo's
blocks) as ``m<i>.<key>``, ``i`` the matrix's position in its param group."""


def owned_key(index: int, key: str) -> str:
    """The flat-partition state key of matrix ``index``'s state ``key``."""
    return f"{OWNED_PREFIX}{index}.{key}"


def split_owned_key(key: str) -> tuple[int, str] | None:
    """``(matrix index, key)`` of an ``owned_key``, or None for an element-wise key."""
    head, dot, rest = key.partition(".")
    if not dot or not head.startswith(OWNED_PREFIX) or not head[len(OWNED_PREFIX):].isdigit():
        return None
    return int(head[len(OWNED_PREFIX):]), rest
