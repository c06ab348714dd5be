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
