#!/usr/bin/env python3
"""Quick distributed environment check: every rank reports itself and a collective succeeds.

    bash ALCF/env_check.sh            # through the launcher (PBS, Slurm or local; NPROC=2 on CPU)
    torchrun --nproc-per-node 2 tools/env_check.py

Each rank prints host, rank, local rank, world size and device; rank 0 then checks that an
all-reduce of the ranks gives sum(0..world-1) and prints its time.
"""

from __future__ import annotations

import datetime
import socket
import sys
import time

if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from megatron.config.env import DistEnv  # noqa: E402


def main() -> int:
    import torch
    import torch.distributed as dist

    env = DistEnv.from_environ()
    env.export()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    init = f"tcp://{env.master_addr or '127.0.0.1'}:{env.master_port or 29500}"
    dist.init_process_group(backend, init_method=init, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(minutes=5))
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"[env_check] host {socket.gethostname()} rank {env.rank}/{env.world_size} "
          f"local {env.local_rank}/{env.local_world_size} launcher {env.launcher} device {device} ({name})",
          flush=True)
    value = torch.tensor([float(env.rank)], device=device)
    start = time.perf_counter()
    dist.all_reduce(value)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    expected = env.world_size * (env.world_size - 1) / 2
    ok = float(value) == expected
    if env.rank == 0:
        print(f"[env_check] all_reduce over {env.world_size} ranks ({backend}): "
              f"{'ok' if ok else f'WRONG: {float(value)} != {expected}'} in {seconds * 1e3:.1f} ms", flush=True)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
