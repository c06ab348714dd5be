"""Evaluate stage checkpoints on data file lists: per-sequence losses, cells, the matrix.

The evaluator reads a checkpoint through ``checkpointing.reader`` (any TP/PP/DP/ZeRO layout, or a
universal checkpoint: weights come back TP-merged), builds the same ``GPTModel`` at TP=1 in one
process and scores every sequence of the list's datasets: the training data path
(``SequenceDataset``: ``seq_length + 1`` tokens per sample, the same loss as training), each
dataset read once in its epoch-0 order (``max_sequences`` caps it per dataset: a fixed random
subset). Cells go to ``cells.jsonl``; measured cells are never recomputed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megatron.continual.eval_plan import EvalPlan, finished_stages
from megatron.continual.matrix import (
    CELLS_FILE,
    NORMALIZER_ROW,
    CellStore,
    build_matrix,
    make_cell,
    write_matrix,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvalSet:
    """A named evaluation data file list."""

    key: str
    data_list: str


def _ensure_single_process_groups() -> bool:
    """A one-process gloo group and TP=PP=1 megatron-core groups, unless some already exist.

    Returns:
        True when this call started them (the caller tears them down).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    if dist.is_initialized():
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    return True


def _teardown() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def load_model(checkpoint: str) -> tuple[torch.nn.Module, dict]:
    """The dense GPT of ``checkpoint`` (``SAVE``, ``SAVE/global_stepN`` or universal) at TP=1.

    Returns:
        (model in eval mode, the checkpoint's run metadata).
    """
    from megatron.checkpointing.hf_export import open_checkpoint
    from megatron.checkpointing.layout import canonical_name
    from megatron.checkpointing.reader import WEIGHT
    from megatron.model.gpt import GPTModel

    reader = open_checkpoint(checkpoint)
    model = GPTModel(reader.spec)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(reader.full(canonical_name(name, reader.spec.num_layers), WEIGHT))
    return model.eval(), reader.metadata


@torch.no_grad()
def sequence_losses(
    model: torch.nn.Module, data_list: str, *, seq_length: int, seed: int, micro_batch_size: int = 8,
    max_sequences: int | None = None, flag: str = "--eval-data",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean token loss and token count of every evaluated sequence of ``data_list``."""
    from megatron.data.data_list import parse_data_file_list
    from megatron.data.indexed import open_indexed
    from megatron.data.sequences import SequenceDataset, shuffle_name

    losses, tokens = [], []
    for entry in parse_data_file_list(data_list, flag=flag):
        indexed = open_indexed(entry.prefix)
        dataset = SequenceDataset(indexed, 0, len(indexed), seq_length, seed, name=shuffle_name(entry.prefix, len(indexed), "eval"))
        count = dataset.samples_per_epoch
        if max_sequences is not None:
            count = min(count, max_sequences)
        for start in range(0, count, micro_batch_size):
            rows = np.stack([dataset[i] for i in range(start, min(count, start + micro_batch_size))])
            samples = torch.from_numpy(rows)
            token_losses = model(samples[:, :-1], samples[:, 1:])
            losses.extend(token_losses.mean(dim=1).double().tolist())
            tokens.extend([token_losses.shape[1]] * len(rows))
    return np.asarray(losses), np.asarray(tokens)


def evaluate_cells(
    store: CellStore, row: str, checkpoint: str, eval_sets: Sequence[EvalSet], **kw: object
) -> int:
    """Measure the missing cells of one checkpoint's row; return how many were measured."""
    todo = [e for e in eval_sets if not store.has(row, e.key)]
    if not todo:
        return 0
    model, metadata = load_model(checkpoint)
    seed = int(metadata.get("config", {}).get("--seed", 1234))
    for e in todo:
        losses, tokens = sequence_losses(model, e.data_list, seq_length=model.spec.seq_length,
                                         seed=seed, flag=f"eval set {e.key}", **kw)
        cell = make_cell(row, e.key, losses, tokens, source=checkpoint)
        store.append(cell)
        log.info("checkpoint %s on %s: loss %.4f [%.4f, %.4f] over %d sequences", row, e.key,
                 cell.loss, cell.ci_low, cell.ci_high, cell.sequences)
    return len(todo)


def evaluate_plan(
    plan: EvalPlan, *, extra: Sequence[EvalSet] = (), normalizer: str | None = None,
    output_dir: str | None = None, plots: bool = True, **kw: object,
) -> tuple[dict, int]:
    """Fill the matrix of every finished stage and write ``matrix.json`` (+ plots).

    Args:
        plan: The stage plan.
        extra: Evaluation sets beyond the stages' own (columns in no metric).
        normalizer: A reference checkpoint whose losses normalize the metrics.
        output_dir: Where cells and the matrix go (default ``<root>/eval``).
        plots: Also write ``matrix.png`` and ``matrix_lines.png``.
        **kw: ``micro_batch_size``, ``max_sequences`` for ``sequence_losses``.

    Returns:
        (the matrix, cells measured by this call).
    """
    out = output_dir or os.path.join(plan.root, "eval")
    os.makedirs(out, exist_ok=True)
    store = CellStore(os.path.join(out, CELLS_FILE))
    eval_sets = [EvalSet(s.key, s.eval_data) for s in plan.stages] + list(extra)
    done = finished_stages(plan)
    started = _ensure_single_process_groups()
    try:
        measured = sum(evaluate_cells(store, key, ckpt, eval_sets, **kw) for key, ckpt in done)
        if normalizer is not None:
            measured += evaluate_cells(store, NORMALIZER_ROW, normalizer, eval_sets, **kw)
    finally:
        if started:
            _teardown()
    matrix = build_matrix(store.cells, [k for k, _ in done], [e.key for e in eval_sets], plan.keys)
    write_matrix(out, matrix)
    if plots and done:
        from megatron.continual.matrix_plot import plot_matrix

        plot_matrix(matrix, out)
    return matrix, measured
