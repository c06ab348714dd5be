"""The only place our Python code reads environment variables.

Whichever launcher started the process (torchrun, mpiexec with PMI/PALS, OpenMPI, srun), its
rank, local rank and world size are read here into a ``DistEnv``. Everything else receives
values through the config and the plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# launcher -> (rank var, world-size var, local-rank vars, local-size vars), in order of precedence.
_LAUNCHER_VARS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("torchrun", "RANK", "WORLD_SIZE", ("LOCAL_RANK",), ("LOCAL_WORLD_SIZE",)),
    (
        "pmi",
        "PMI_RANK",
        "PMI_SIZE",
        ("PALS_LOCAL_RANKID", "MPI_LOCALRANKID"),
        ("PALS_LOCAL_SIZE", "MPI_LOCALNRANKS"),
    ),
    (
        "openmpi",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        ("OMPI_COMM_WORLD_LOCAL_RANK",),
        ("OMPI_COMM_WORLD_LOCAL_SIZE",),
    ),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", ("SLURM_LOCALID",), ("SLURM_NTASKS_PER_NODE",)),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class DistEnv:
    """Process placement as the launcher reported it.

    Attributes:
        rank: Global rank.
        local_rank: Rank on this node.
        world_size: Number of processes.
        local_world_size: Processes on this node.
        master_addr: Rendezvous host (None: single process, a local port is picked).
        master_port: Rendezvous port.
        launcher: Which launcher's variables were found (``none`` for a plain ``python``).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "none"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        """Read the launcher's variables (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        for launcher, rank, size, locals_, local_sizes in _LAUNCHER_VARS:
            if rank in env and size in env:
                local_rank = _first_int(env, locals_)
                local_world = _first_int(env, local_sizes)
                return cls(
                    rank=int(env[rank]),
                    world_size=int(env[size]),
                    local_rank=0 if local_rank is None else local_rank,
                    local_world_size=local_world or int(env[size]),
                    master_addr=env.get("MASTER_ADDR"),
                    master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
                    launcher=launcher,
                )
        return cls(
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
        )

    def export(self) -> None:
        """Write RANK/LOCAL_RANK/WORLD_SIZE for libraries that read them (DeepSpeed asserts on
        LOCAL_RANK) when another launcher than torchrun started us."""
        os.environ["RANK"] = str(self.rank)
        os.environ["LOCAL_RANK"] = str(self.local_rank)
        os.environ["WORLD_SIZE"] = str(self.world_size)
        os.environ["LOCAL_WORLD_SIZE"] = str(self.local_world_size)


def ds_accelerator(environ: Mapping[str, str] | None = None) -> str | None:
    """DeepSpeed's accelerator override ``DS_ACCELERATOR`` (``cuda``, ``xpu``, ``cpu``), or None."""
    env = os.environ if environ is None else environ
    return env.get("DS_ACCELERATOR") or None


def _first_int(env: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that is set, as an int."""
    for name in names:
        value = env.get(name)
        if value:
            # SLURM_NTASKS_PER_NODE may read "4(x2)" on heterogeneous allocations.
            digits = value.split("(")[0].split(",")[0]
            if digits.isdigit():
                return int(digits)
    return None


# What a run's record keeps of the environment: the scheduler's, the launcher's and the
# communication libraries' variables (never secrets such as tokens or keys).
_RECORDED_PREFIXES = ("PBS_", "SLURM_", "MASTER_", "NCCL_", "FI_", "CCL_", "CUDA_", "DS_", "OMP_", "TORCH_")
_SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def launch_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables worth recording next to a run's logs."""
    env = os.environ if environ is None else environ
    return {
        k: v
        for k, v in sorted(env.items())
        if k.startswith(_RECORDED_PREFIXES) and not any(m in k for m in _SECRET_MARKERS)
    }


FLAG_SOURCES_VAR = "TRAIN_ALCF_FLAG_SOURCES"
"""Set by train_alcf.sh: ``--flag=VARIABLE`` pairs (space-separated) for the flags it made from
environment variables, so provenance can name the variable instead of the flag."""


def launcher_flag_sources(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"--lr": "LR", ...}``: which launcher variable produced each flag (empty without one)."""
    env = os.environ if environ is None else environ
    pairs = (item.partition("=") for item in env.get(FLAG_SOURCES_VAR, "").split())
    return {flag: name for flag, sep, name in pairs if sep}


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``: what a launched sub-process (a continual stage
    started through the launcher) should see."""
    return {**os.environ, **(extra or {})}


def force_hf_offline() -> None:
    """Put the Hugging Face libraries in offline mode (cache only, never a download that hangs).

    Sets ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` for this process and its children, and the
    libraries' module constants too when they were imported before (they read the variables once).
    """
    import sys

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True
