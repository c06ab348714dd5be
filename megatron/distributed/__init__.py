"""Process groups: torch.distributed, megatron-core parallel_state, and DeepSpeed's view of them.

``init_distributed(plan, env)`` is the one place that starts them; ``destroy_distributed`` the
one place that tears them down (tests call it between runs).
"""

from __future__ import annotations

import datetime
import logging
import random
import socket
import sys

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron.config.env import DistEnv, ds_accelerator
from megatron.distributed.backend import check_deepspeed_agrees, pick_accelerator
from megatron.distributed.context import ParallelContext
from megatron.plan.run import RunPlan

log = logging.getLogger(__name__)


class MegatronMPU:
    """The ``mpu`` object ``deepspeed.initialize`` expects, backed by megatron-core groups.

    DeepSpeed uses it to all-reduce gradients over the data-parallel group only and to count
    tensor-parallel shards once in the gradient norm.
    """

    get_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(parallel_state.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(parallel_state.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(
        parallel_state.get_tensor_model_parallel_world_size
    )
    get_tensor_model_parallel_group = staticmethod(parallel_state.get_tensor_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(parallel_state.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(
        parallel_state.get_pipeline_model_parallel_world_size
    )
    get_pipeline_model_parallel_group = staticmethod(parallel_state.get_pipeline_model_parallel_group)
    get_data_parallel_rank = staticmethod(parallel_state.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(parallel_state.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(parallel_state.get_data_parallel_group)


class UlyssesMPU(MegatronMPU):
    """The ``mpu`` of a DeepSpeed-Ulysses run (``--ds-sequence-parallel-size`` > 1).

    The sequence-parallel group is megatron-core's context-parallel group (ranks next to each
    other after TP). SP ranks hold the same parameters, so DeepSpeed all-reduces gradients and
    partitions ZeRO states over the sequence-data-parallel group (DP x SP); it divides by the DP
    size only, i.e. sums over SP, which the loss's global token count accounts for.
    """

    get_sequence_parallel_group = staticmethod(parallel_state.get_context_parallel_group)
    get_sequence_parallel_world_size = staticmethod(parallel_state.get_context_parallel_world_size)
    get_sequence_parallel_rank = staticmethod(parallel_state.get_context_parallel_rank)

    @staticmethod
    def get_sequence_data_parallel_group() -> dist.ProcessGroup:
        """DP x SP ranks: those holding the same parameters."""
        return parallel_state.get_data_parallel_group(with_context_parallel=True)

    @staticmethod
    def get_sequence_data_parallel_world_size() -> int:
        """DP x SP."""
        return parallel_state.get_data_parallel_world_size(with_context_parallel=True)

    @staticmethod
    def get_sequence_data_parallel_rank() -> int:
        """This rank's index among DP x SP."""
        return parallel_state.get_data_parallel_rank(with_context_parallel=True)


def deepspeed_mpu(ctx: ParallelContext) -> MegatronMPU:
    """The ``mpu`` object for ``deepspeed.initialize`` (dense engine)."""
    return UlyssesMPU() if ctx.sp_size > 1 else MegatronMPU()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_deepspeed_shm_build() -> None:
    # On the CPU accelerator DeepSpeed compiles a shared-memory collective (~25 s of g++ on a
    # fresh machine) that only its inference all-reduce uses. Training never calls it.
    module = sys.modules.get("deepspeed.comm.torch")
    if module is None:
        import importlib

        module = importlib.import_module("deepspeed.comm.torch")
    module.build_shm_op = lambda: None


def init_distributed(plan: RunPlan, env: DistEnv) -> ParallelContext:
    """Start torch.distributed and megatron-core's parallel groups; seed every RNG.

    Args:
        plan: The resolved run (parallel sizes, backend, seed).
        env: Where the launcher placed this process.

    Returns:
        This rank's parallel coordinates.
    """
    env.export()
    # One decision for device and backend (CUDA/NCCL, XPU/xccl or ccl, CPU/gloo): backend.py.
    accelerator = pick_accelerator(plan.config.parallel.distributed_backend, ds_accelerator())
    check_deepspeed_agrees(accelerator)  # before any group starts: a refusal leaves nothing behind
    device = accelerator.device(env.local_rank)
    accelerator.set_device(device)
    if accelerator.kind == "cpu":
        _skip_deepspeed_shm_build()
    backend = accelerator.backend
    if not dist.is_initialized():
        if env.master_addr is None:
            if env.world_size > 1:
                raise RuntimeError(
                    "MASTER_ADDR is not set for a multi-process run; start with torchrun, "
                    "mpiexec or srun through train_alcf.sh"
                )
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        else:
            init_method = f"tcp://{env.master_addr}:{env.master_port or 29500}"
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=plan.config.parallel.distributed_timeout_minutes),
        )
    # DeepSpeed's communication layer wraps the group started above (PipelineModule needs it
    # before deepspeed.initialize runs).
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=plan.tp,
        pipeline_model_parallel_size=plan.pp,
        context_parallel_size=plan.sp,  # the Ulysses group: megatron-core order tp-cp-dp-pp
        create_gloo_process_groups=False,
    )
    seed_everything(plan.config.train.seed)
    return ParallelContext(
        env=env,
        device=device,
        backend=backend,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=plan.tp,
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        pp_size=plan.pp,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=plan.dp,
        sp_rank=parallel_state.get_context_parallel_rank(),
        sp_size=plan.sp,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Every rank uses the same seed: weights come from per-tensor
    generators and data order from the sampler, so only dropout draws from these."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _reset_deepspeed_groups() -> None:
    # DeepSpeed caches process groups in module globals; a later run in the same process (tests,
    # tools that train or evaluate several times) must not reuse groups of a destroyed default group.
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.isupper() and name.startswith("_") and name.endswith(("GROUP", "GROUP_RANKS")):
            setattr(groups, name, {} if isinstance(value, dict) else None)


def _drop_group_references(module) -> None:
    # destroy_model_parallel leaves some globals (e.g. the intra-partial DP group) pointing at dead
    # groups. Drop them here: a process forked later would otherwise run their destructors when it
    # reassigns the globals, and a gloo group destroyed in a forked child hangs.
    for name, value in list(vars(module).items()):
        if isinstance(value, dist.ProcessGroup):
            setattr(module, name, None)


def destroy_distributed() -> None:
    """Tear down megatron-core's groups, DeepSpeed's cached groups and the default group."""
    parallel_state.destroy_model_parallel()
    _drop_group_references(parallel_state)
    if "deepspeed.utils.groups" in sys.modules:
        _reset_deepspeed_groups()
    if dist.is_initialized():
        dist.destroy_process_group()
