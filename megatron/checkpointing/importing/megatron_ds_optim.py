"""The fp32 master weights and Adam moments in DeepSpeed's ZeRO-1/2 (and bf16) optimizer files.

``[bf16_]zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt`` holds data-parallel rank d's slice of
model-parallel rank m's flat fp32 groups: ``single_partition_of_fp32_groups[g]`` (the master
weights) and ``base_optimizer_state["state"][g]`` (``exp_avg``, ``exp_avg_sq``, ``step``).
``param_slice_mappings[g][name]`` says which ``numel`` elements from ``start`` of that slice are
parameter ``name``'s; a parameter's TP-local tensor is its fragments of all data-parallel ranks
in rank order. Model-parallel rank m is TP rank t of pipeline stage p at ``m = p * tp + t``
(``m = t`` without a pipeline); we look names up in every stage rather than rely on that.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from megatron.checkpointing.metadata import CheckpointError

if TYPE_CHECKING:
    import torch

MASTER = "fp32"


class ZeroPartitions:
    """Lazy reader of one step directory's ZeRO optimizer files.

    Args:
        files: ``mp rank -> [file of DP rank 0, 1, ...]`` (``find_optimizer_files``).
        opener: Loads (and caches) one ``.pt`` file safely.
    """

    def __init__(self, files: dict[int, list[str]], opener: Callable[[str], Any]):
        self.files = files
        self._open = opener
        self._index: dict[str, dict[int, int]] | None = None
        self._lock = threading.Lock()

    def _state(self, path: str) -> dict[str, Any]:
        sd = self._open(path).get("optimizer_state_dict")
        if not isinstance(sd, dict) or "param_slice_mappings" not in sd:
            raise CheckpointError(f"{path}: not a ZeRO-1/2 optimizer partition (no param_slice_mappings); "
                                  "import without the optimizer state (--no-optimizer-state)")
        return sd

    def index(self) -> dict[str, dict[int, int]]:
        """``flat name -> {mp rank: group}`` over every model-parallel rank."""
        # The writer reads tensors from worker threads while it lists the moments: the index is
        # built once, under a lock, and published only when complete.
        with self._lock:
            if self._index is None:
                index: dict[str, dict[int, int]] = {}
                for mp, paths in self.files.items():
                    for path in paths:  # a data-parallel rank maps only the parameters in its slice
                        for group, mapping in enumerate(self._state(path)["param_slice_mappings"]):
                            for name in mapping:
                                index.setdefault(name, {})[mp] = group
                self._index = index
        return self._index

    def has(self, flat: str) -> bool:
        """Whether the optimizer files hold parameter ``flat``."""
        return flat in self.index()

    def keys(self, flat: str) -> list[str]:
        """The per-element state keys of ``flat`` (``exp_avg``, ``exp_avg_sq``)."""
        mp, group = next(iter(self.index()[flat].items()))
        state = self._groups_state(self.files[mp][0]).get(group, {})
        return sorted(k for k in ("exp_avg", "exp_avg_sq") if k in state)

    def _groups_state(self, path: str) -> dict[int, Any]:
        base = self._state(path).get("base_optimizer_state")
        if not isinstance(base, dict) or not isinstance(base.get("state"), dict):
            raise CheckpointError(f"{path}: base_optimizer_state is not a torch optimizer state dict "
                                  "(an elastic checkpoint?); import with --no-optimizer-state")
        return base["state"]

    def local(self, flat: str, candidates: list[int], key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """TP-local ``key`` (``fp32`` master or a moment) of ``flat``, from the first of the
        model-parallel ranks ``candidates`` that holds it.

        Raises:
            CheckpointError: No candidate holds it, or its fragments do not add up to ``shape``.
        """
        import torch

        owners = self.index().get(flat, {})
        mp = next((m for m in candidates if m in owners), None)
        if mp is None:
            raise CheckpointError(f"optimizer files of mp ranks {candidates} hold no {flat!r}")
        group = owners[mp]
        pieces = []
        for path in self.files[mp]:
            sd = self._state(path)
            flat_group = (sd["single_partition_of_fp32_groups"][group] if key == MASTER
                          else self._groups_state(path)[group][key])
            fragment = sd["param_slice_mappings"][group].get(flat)
            if fragment is not None:
                pieces.append(flat_group.narrow(0, int(fragment.start), int(fragment.numel)))
        numel = sum(p.numel() for p in pieces)
        if numel != math.prod(shape):
            raise CheckpointError(f"{self.files[mp][0]}: {flat} {key} has {numel} elements over "
                                  f"{len(self.files[mp])} data-parallel files, not {math.prod(shape)} {shape}")
        return torch.cat(pieces).view(shape).float()

    def step(self) -> int | None:
        """The optimizer step of the first group (Adam's bias correction), if recorded."""
        for paths in self.files.values():
            for state in self._groups_state(paths[0]).values():
                if "step" in state:
                    step = state["step"]
                    return int(step.item() if hasattr(step, "item") else step)
        return None
