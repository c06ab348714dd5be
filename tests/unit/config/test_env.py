"""DistEnv: ranks from whichever launcher started the process; env reads live only there."""

from __future__ import annotations

import os
import re

import pytest

from megatron.config.env import DistEnv


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (0, 0, 1, "none")),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}, (5, 1, 8, "torchrun")),
        ({"PMI_RANK": "3", "PMI_SIZE": "24", "PALS_LOCAL_RANKID": "3", "PALS_LOCAL_SIZE": "12"}, (3, 3, 24, "pmi")),
        ({"PMI_RANK": "7", "PMI_SIZE": "8", "MPI_LOCALRANKID": "3"}, (7, 3, 8, "pmi")),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}, (2, 0, 4, "openmpi")),
        ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x4)"}, (9, 1, 16, "slurm")),
    ],
)
def test_launcher_variables(environ, expected):
    env = DistEnv.from_environ(environ)
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == expected


def test_slurm_local_size_parses_compressed_form():
    env = DistEnv.from_environ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)"})
    assert env.local_world_size == 4


def test_no_environment_reads_outside_config_env(repo_root):
    pattern = re.compile(r"os\.environ|os\.getenv|environ\.get")
    offenders = []
    for base, _, files in os.walk(os.path.join(repo_root, "megatron")):
        for name in files:
            path = os.path.join(base, name)
            if not name.endswith(".py") or path.endswith(os.path.join("config", "env.py")):
                continue
            with open(path) as f:
                offenders += [f"{path}:{i}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert offenders == []
