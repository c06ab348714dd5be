"""Muon: orthogonalized momentum for 2-D hidden matrices, AdamW for everything else (SPEC 4).

One ``torch.optim.Optimizer`` holds both kinds of group, so DeepSpeed, the LR scheduler and the
checkpoint see a single optimizer:

- ``rule="matrix"`` groups: momentum ``buf = beta * buf + (1 - beta) * g``; with Nesterov the
  direction is ``(1 - beta) * g + beta * buf``. The direction is divided by its Frobenius norm
  (+eps) and orthogonalized by ``ns_steps`` Newton-Schulz quintic iterations
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (on the wide orientation: a tall matrix is
  transposed first). That runs in bf16 on CUDA and fp32 on CPU. The step is
  ``p *= 1 - lr * wd; p -= lr * scale(shape) * O``.
- ``rule="adamw"`` groups (embeddings, output head, norms, biases): plain AdamW with their own
  LR, betas and eps. Their LR follows the schedule through the scheduler's per-group
  ``lr_scale`` (``base_lr = --lr * lr_scale``), set to ``--muon-adamw-lr / --lr``.

Data parallelism at ZeRO-0: every DP rank holds the same gradients and momentum after DeepSpeed's
all-reduce, so the Newton-Schulz work (the whole cost of the step: ~``10 m^2 n`` flops per
``m x n`` matrix and iteration) is split: each matrix is assigned to one DP rank (greedy by
cost), which orthogonalizes it and broadcasts the result. Every rank then applies the same
update; the numbers are the ones a single rank would compute, at 1/DP of the per-rank cost.

Muon needs whole matrices. Under ZeRO-1/2/3, and in DeepSpeed's bf16 optimizer (``--bf16`` with
pipeline parallelism), the optimizer is handed flat 1-D shards; ``max_zero_stage=0`` refuses the
ZeRO pairs in the plan, and a matrix group that holds a non-2-D tensor at step time is an error
(never a silent fallback to an element-wise update). fp16/bf16 at ZeRO-0 without pipelining is
fine: DeepSpeed's unfused fp16 wrapper keeps one fp32 copy per tensor, shapes intact. Tensor
parallelism shards the matrices too and is refused when the optimizer is built.

Torch-free at import: the optimizer class is created on first use (``muon.Muon``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from megatron.config.fields import SECTION, ConfigError, flag_name
from megatron.optimizer.adamw_side import adamw_step_, check_group_rules, closure_loss
from megatron.optimizer.registry import register_optimizer

if TYPE_CHECKING:
    import torch

    from megatron.config.optim import OptimConfig
    from megatron.optimizer.param_groups import ParamGroup

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c)."""
NS_EPS = 1e-7
"""Added to the Frobenius norm before dividing by it."""
LR_SCALES = ("original", "match_rms_adamw")


def _flag(field_name: str) -> str:
    return flag_name(field_name, "muon")


@dataclass(**SECTION)
class MuonOptions:
    """Muon hyperparameters (flags --muon-*)."""

    momentum: float = 0.95
    """Muon momentum beta of the matrix groups, in [0, 1)."""
    nesterov: bool = True
    """Use Nesterov momentum in the matrix groups."""
    ns_steps: int = 5
    """Newton-Schulz iterations that orthogonalize the momentum (>= 1)."""
    lr_scale: str = "original"
    """Per-matrix LR shape scaling: original = sqrt(max(1, rows/cols)); match_rms_adamw = 0.2 * sqrt(max(rows, cols))."""
    adamw_lr: float | None = None
    """LR of the AdamW side groups (embeddings, head, norms, biases); default: --lr. Follows the LR schedule."""
    adamw_beta1: float | None = None
    """beta1 of the AdamW side groups; default: --adam-beta1."""
    adamw_beta2: float | None = None
    """beta2 of the AdamW side groups; default: --adam-beta2."""
    adamw_eps: float | None = None
    """Epsilon of the AdamW side groups; default: --adam-eps."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{_flag('momentum')}: must be in [0, 1), got {self.momentum}")
        if not 1 <= self.ns_steps < 100:
            raise ConfigError(f"{_flag('ns_steps')}: must be in [1, 100), got {self.ns_steps}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(
                f"{_flag('lr_scale')}: must be one of {', '.join(LR_SCALES)}, got {self.lr_scale!r}"
            )
        for name in ("adamw_lr", "adamw_eps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{_flag(name)}: must be > 0, got {value}")
        for name in ("adamw_beta1", "adamw_beta2"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{_flag(name)}: must be in [0, 1), got {value}")


def shape_scale(mode: str, rows: int, cols: int) -> float:
    """The LR multiplier of a ``rows x cols`` matrix under ``--muon-lr-scale mode``."""
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown muon lr scale {mode!r}; known: {LR_SCALES}")


def ns_cost(rows: int, cols: int, steps: int) -> tuple[int, int]:
    """Multiply-add flops of ``steps`` Newton-Schulz iterations on a ``rows x cols`` matrix:
    (direct on X, on the Gram matrix). With ``m <= n`` the sides: direct
    ``steps * (4 m^2 n + 2 m^3)``; Gram ``4 m^2 n + (8 steps - 6) m^3``."""
    m, n = sorted((rows, cols))
    return steps * (4 * m * m * n + 2 * m**3), 4 * m * m * n + (8 * steps - 6) * m**3


def ns_dtype(m: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The Newton-Schulz compute dtype: ``dtype``, else bf16 on CUDA and fp32 elsewhere."""
    import torch

    if dtype is not None:
        return dtype
    return torch.bfloat16 if m.is_cuda else torch.float32


def orthogonalize(
    m: torch.Tensor,
    *,
    steps: int,
    eps: float = NS_EPS,
    dtype: torch.dtype | None = None,
    gram: bool | None = None,
) -> torch.Tensor:
    """Approximately ``U V^T`` of ``m = U S V^T`` by quintic Newton-Schulz iterations.

    Two evaluations of the same polynomial. Direct: ``X <- a X + (b A + c A^2) X`` with
    ``A = X X^T`` recomputed each iteration. Gram: every ``Q_k = a + b A_k + c A_k^2`` is a
    polynomial of ``A_0``, so iterate ``A_{k+1} = Q_k^2 A_k`` on the small ``m x m`` side only and
    finish with ``(Q_{K-1} ... Q_0) X_0``: two products with the long side instead of ``3K``.
    For ``n > 1.5 m`` that is fewer flops (``ns_cost``; 35% fewer on a 512 x 2048 MLP weight);
    rounding grows to ~1e-4 relative in fp32 (direct: ~2e-5), far below bf16's, so the Gram form
    is used only in fp32.

    Args:
        m: A 2-D tensor.
        steps: Number of iterations.
        eps: Added to the Frobenius norm before normalising.
        dtype: Compute dtype; default bf16 on CUDA, fp32 elsewhere.
        gram: Force the Gram (True) or direct (False) form; None: Gram when fp32 and cheaper.

    Returns:
        The orthogonalized matrix, in ``dtype``, with the shape of ``m``.
    """
    import torch

    if m.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(m.shape)}")
    dtype = ns_dtype(m, dtype)
    if gram is None:
        direct_cost, gram_cost = ns_cost(m.size(0), m.size(1), steps)
        gram = dtype == torch.float32 and gram_cost < direct_cost
    a, b, c = NS_COEFFICIENTS
    x = m.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    # Frobenius norm >= spectral norm, so the singular values start in [0, 1].
    x = x / (x.norm() + eps)
    if gram:
        x = _gram_newton_schulz(x, steps)
    else:
        for _ in range(steps):
            gram_matrix = x @ x.T
            poly = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)  # b A + c A^2
            x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
    return x.T if tall else x


def _gram_newton_schulz(x: torch.Tensor, steps: int) -> torch.Tensor:
    import torch

    a, b, c = NS_COEFFICIENTS
    gram_matrix = x @ x.T
    product = None
    for k in range(steps):
        q = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        q.diagonal().add_(a)  # Q_k = a I + b A_k + c A_k^2
        product = q if product is None else q @ product
        if k < steps - 1:
            gram_matrix = q @ (q @ gram_matrix)  # A_{k+1} = Q_k A_k Q_k (Q_k commutes with A_k)
    return product @ x


@functools.cache
def _muon_class() -> type:
    import torch

    class Muon(torch.optim.Optimizer):
        """Muon for ``rule="matrix"`` groups and AdamW for ``rule="adamw"`` groups.

        Args:
            params: Param groups; each carries ``rule`` (``matrix`` default) and may override
                any default below.
            lr: LR of the matrix groups (the AdamW groups take theirs from their group dict).
            weight_decay: Decoupled weight decay, ``p *= 1 - lr * wd``.
            momentum: Muon momentum beta.
            nesterov: Nesterov momentum.
            ns_steps: Newton-Schulz iterations.
            shape_scale: ``original`` or ``match_rms_adamw``.
            betas: AdamW betas of the side groups.
            eps: AdamW epsilon of the side groups.
            ns_dtype: Newton-Schulz compute dtype; None: bf16 on CUDA, fp32 elsewhere.
            dp_group: Process group whose ranks hold identical gradients (ZeRO-0 data
                parallelism); the Newton-Schulz work is split across it. None: all local.
        """

        def __init__(
            self,
            params: Any,
            *,
            lr: float,
            weight_decay: float = 0.0,
            momentum: float = 0.95,
            nesterov: bool = True,
            ns_steps: int = 5,
            shape_scale: str = "original",
            betas: tuple[float, float] = (0.9, 0.999),
            eps: float = 1e-8,
            ns_dtype: torch.dtype | None = None,
            dp_group: Any = None,
        ):
            if shape_scale not in LR_SCALES:
                raise ValueError(f"unknown muon lr scale {shape_scale!r}; known: {LR_SCALES}")
            defaults = {
                "lr": lr,
                "weight_decay": weight_decay,
                "rule": "matrix",
                "momentum": momentum,
                "nesterov": nesterov,
                "ns_steps": ns_steps,
                "shape_scale": shape_scale,
                "betas": betas,
                "eps": eps,
            }
            super().__init__(params, defaults)
            self.ns_dtype = ns_dtype
            self.dp_group = dp_group
            check_group_rules(self, "muon")

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            loss = closure_loss(closure)
            for group in self.param_groups:
                if group["rule"] == "matrix":
                    self._matrix_step(group)
                else:
                    self._adamw_step(group)
            return loss

        def _matrix_step(self, group: dict[str, Any]) -> None:
            lr, wd, beta = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            directions = []
            for p in params:
                if p.ndim != 2:
                    raise RuntimeError(
                        f"muon: matrix group {group.get('name', '?')!r} holds a tensor of shape "
                        f"{tuple(p.shape)}, not a 2-D matrix; DeepSpeed flattens parameters "
                        "under ZeRO >= 1 and in its bf16 optimizer (--bf16 with pipeline "
                        "parallelism); muon needs whole matrices: use --zero-stage 0, and fp32 "
                        "when --pipeline-model-parallel-size > 1"
                    )
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1.0 - beta)
                directions.append(grad.lerp(buf, beta) if group["nesterov"] else buf)
            updates = self._orthogonalize_all(directions, group["ns_steps"])
            for p, update in zip(params, updates, strict=True):
                scale = shape_scale(group["shape_scale"], p.size(0), p.size(1))
                p.mul_(1.0 - lr * wd)
                p.add_(update.to(p.dtype), alpha=-lr * scale)

        def _orthogonalize_all(self, directions: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
            """Newton-Schulz of every direction, split over ``dp_group`` (class docstring)."""
            import torch.distributed as dist

            size = 1 if self.dp_group is None else dist.get_world_size(self.dp_group)
            if size == 1:
                return [orthogonalize(d, steps=steps, dtype=self.ns_dtype) for d in directions]
            me = dist.get_rank(self.dp_group)
            owners = assign_owners([tuple(d.shape) for d in directions], size, steps)
            dtype = ns_dtype(directions[0], self.ns_dtype)
            updates = [
                orthogonalize(d, steps=steps, dtype=dtype).contiguous()  # tall ones come transposed
                if owner == me
                else torch.empty(d.shape, dtype=dtype, device=d.device)
                for d, owner in zip(directions, owners, strict=True)
            ]
            works = [
                dist.broadcast(u, src=dist.get_global_rank(self.dp_group, owner),
                               group=self.dp_group, async_op=True)
                for u, owner in zip(updates, owners, strict=True)
            ]
            for work in works:
                work.wait()
            return updates

        def _adamw_step(self, group: dict[str, Any]) -> None:
            for p in group["params"]:
                if p.grad is not None:
                    adamw_step_(p, self.state[p], group)

    Muon.__module__ = __name__
    Muon.__qualname__ = "Muon"
    return Muon


def assign_owners(shapes: list[tuple[int, int]], ranks: int, steps: int) -> list[int]:
    """The rank that orthogonalizes each matrix: largest cost first, to the least-loaded rank.

    Cost: ``ns_cost`` of the cheaper form. Deterministic: every rank computes the same assignment.
    """
    costs = [min(ns_cost(*shape, steps=steps)) for shape in shapes]
    load = [0] * ranks
    owners = [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-costs[i], i)):
        owner = min(range(ranks), key=lambda r: (load[r], r))
        owners[i] = owner
        load[owner] += costs[i]
    return owners


def __getattr__(name: str) -> Any:
    if name == "Muon":
        return _muon_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_whole_matrices() -> None:
    # Tensor parallelism shards the hidden matrices: Muon on a shard is not Muon on the matrix.
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        tp = parallel_state.get_tensor_model_parallel_world_size()
        if tp > 1:
            raise ConfigError(
                f"--optimizer: muon needs whole matrices, but --tensor-model-parallel-size {tp} "
                "shards them; use --tensor-model-parallel-size 1 or an element-wise optimizer "
                "such as adamw"
            )


def _data_parallel_group() -> Any:
    """The DP group when megatron-core's parallel state is up (training), else None (tests)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return None
    return parallel_state.get_data_parallel_group()


@register_optimizer("muon", options=MuonOptions, param_policy="matrix", max_zero_stage=0)
def build_muon(
    param_groups: list[ParamGroup], cfg: OptimConfig, options: MuonOptions | None
) -> torch.optim.Optimizer:
    """Muon on the 2-D hidden matrices, AdamW (own lr/betas/eps) on the rest."""
    opts = options or MuonOptions()
    _check_whole_matrices()
    adamw_lr = cfg.lr if opts.adamw_lr is None else opts.adamw_lr
    betas = (
        cfg.adam_beta1 if opts.adamw_beta1 is None else opts.adamw_beta1,
        cfg.adam_beta2 if opts.adamw_beta2 is None else opts.adamw_beta2,
    )
    eps = cfg.adam_eps if opts.adamw_eps is None else opts.adamw_eps
    groups = []
    for g in param_groups:
        if g.rule == "matrix":
            groups.append(g.as_torch_group(rule="matrix"))
        elif g.rule == "adamw":
            # The scheduler sets lr = --lr * lr_scale * multiplier on every group.
            groups.append(
                g.as_torch_group(
                    rule="adamw", lr=adamw_lr, lr_scale=adamw_lr / cfg.lr, betas=betas, eps=eps
                )
            )
        else:
            raise ValueError(f"muon takes matrix/adamw groups, got {g.name!r} (rule {g.rule!r})")
    return _muon_class()(
        groups,
        dp_group=_data_parallel_group(),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=opts.momentum,
        nesterov=opts.nesterov,
        ns_steps=opts.ns_steps,
        shape_scale=opts.lr_scale,
    )
