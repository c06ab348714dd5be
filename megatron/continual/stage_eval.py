"""``eval_after_each_stage``: the forgetting matrix grows as the plan runs.

After each stage the runner runs ``tools/continual_eval.py`` on the plan (the evaluator measures
only the cells it does not have yet: the new stage's row, one JSONL line per evaluation set),
which rewrites ``matrix.json``/``matrix.png`` and writes the new row to TensorBoard in
``<root>/eval/tensorboard``, at step = the stage's index:

- ``forgetting/loss/<eval set>``: the stage's final checkpoint on each evaluation set;
- ``forgetting/id``, ``forgetting/backward``, ``forgetting/forward``: the metrics of the rows
  finished so far (rows 0..k), so the curves show forgetting as it happens;
- ``forgetting/normalized_*`` as well when the matrix has a normalizer row.

Rows already written are listed in ``<tensorboard dir>/rows_written.json``, so a rerun writes
nothing twice. ``pending`` tells the runner, without torch, whether any finished stage's row is
still missing (cells or TensorBoard), e.g. after a crash between a stage's marker and its
evaluation; a rerun with nothing pending starts no evaluation at all.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from megatron.continual.markers import read_marker
from megatron.continual.matrix import CELLS_FILE, CellStore, metrics

EVAL_DIR = "eval"
TB_DIR = "tensorboard"
ROWS_FILE = "rows_written.json"


def eval_dirs(root: str) -> tuple[str, str]:
    """(evaluation directory, its TensorBoard directory) of a run root."""
    out = os.path.join(root, EVAL_DIR)
    return out, os.path.join(out, TB_DIR)


def rows_written(tb_dir: str) -> list[str]:
    """Rows (stage keys) already written to TensorBoard."""
    path = os.path.join(tb_dir, ROWS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(json.load(f))


def pending(root: str, stage_keys: Sequence[str], stage_dirs: Sequence[str]) -> list[str]:
    """Finished stages whose row misses a cell (on any stage's evaluation set) or TensorBoard."""
    out, tb = eval_dirs(root)
    store = CellStore(os.path.join(out, CELLS_FILE))
    written = set(rows_written(tb))
    missing = []
    for key, directory in zip(stage_keys, stage_dirs, strict=True):
        if read_marker(directory) is None:
            continue
        if key not in written or not all(store.has(key, e) for e in stage_keys):
            missing.append(key)
    return missing


def row_scalars(matrix: dict, row: str, stage_keys: Sequence[str]) -> dict[str, float]:
    """TensorBoard tags -> values of one matrix row (metrics over the rows up to it)."""
    rows, eval_sets = matrix["checkpoints"], matrix["eval_sets"]
    i = rows.index(row)
    index = {key: k for k, key in enumerate(stage_keys)}
    scalars = {f"forgetting/loss/{e}": v for e, v in zip(eval_sets, matrix["loss"][i], strict=True)
               if v is not None}
    grid = [[math.nan] * len(eval_sets) for _ in stage_keys]
    for key, values in zip(rows[: i + 1], matrix["loss"][: i + 1], strict=True):
        grid[index[key]] = [math.nan if v is None else v for v in values]
    columns = [index.get(e) for e in eval_sets]
    so_far = {"": metrics(grid, eval_stage=columns)}
    if matrix.get("normalizer"):
        so_far["normalized_"] = metrics(grid, matrix["normalizer"], eval_stage=columns)
    for prefix, values in so_far.items():
        scalars.update({f"forgetting/{prefix}{k}": v for k, v in values.items() if v is not None})
    return scalars


def write_rows(matrix: dict, stage_keys: Sequence[str], tb_dir: str) -> list[str]:
    """Write every finished row not yet in TensorBoard (complete rows only); return their keys."""
    written = rows_written(tb_dir)
    stage_columns = [e for e in matrix["eval_sets"] if e in stage_keys]
    todo = []
    for row, values in zip(matrix["checkpoints"], matrix["loss"], strict=True):
        complete = all(v is not None for e, v in zip(matrix["eval_sets"], values, strict=True)
                       if e in stage_columns)
        if row not in written and complete:
            todo.append(row)
    if not todo:
        return []
    from torch.utils.tensorboard import SummaryWriter

    os.makedirs(tb_dir, exist_ok=True)
    writer = SummaryWriter(log_dir=tb_dir)
    try:
        for row in todo:
            for tag, value in row_scalars(matrix, row, stage_keys).items():
                writer.add_scalar(tag, value, stage_keys.index(row))
        writer.flush()
    finally:
        writer.close()
    path = os.path.join(tb_dir, ROWS_FILE)
    with open(f"{path}.tmp", "w") as f:
        json.dump(written + todo, f)
    os.replace(f"{path}.tmp", path)
    return todo


def write_eval_plan(plan: object) -> str:
    """``<root>/eval/eval_plan.yaml``: the runner's resolved plan as the evaluator reads it (its
    CLI overrides, e.g. ``--exp-name``, included; absolute paths); returns its path."""
    import yaml

    doc = {"name": plan.name, "output_dir": plan.output_dir,
           "stages": [{"key": s.key, "eval_data": s.eval_data} for s in plan.stages]}
    out = os.path.join(plan.root, EVAL_DIR)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "eval_plan.yaml")
    with open(f"{path}.tmp", "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    os.replace(f"{path}.tmp", path)
    return path


def run_eval_tool(plan: object, python: str, rows: Sequence[str]) -> dict:
    """Run ``tools/continual_eval.py`` on ``plan`` (a ``continual.plan.Plan``) for the pending
    ``rows``, writing TensorBoard; returns its JSON summary.

    Raises:
        ConfigError: The evaluation failed (its last output lines, naming the rows).
    """
    import logging
    import subprocess

    from megatron.config.fields import ConfigError
    from megatron.continual.launch import ROOT

    tool = os.path.join(ROOT, "tools", "continual_eval.py")
    argv = [python, tool, "--plan", write_eval_plan(plan), "--tensorboard-dir", "auto"]
    if plan.eval_max_sequences is not None:
        argv += ["--max-sequences", str(plan.eval_max_sequences)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = " | ".join((out.stderr.strip() or out.stdout.strip()).splitlines()[-3:])
        raise ConfigError(f"eval_after_each_stage: evaluating the rows {list(rows)} failed (status "
                          f"{out.returncode}; {' '.join(argv[1:])}): {tail}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    logging.getLogger(__name__).info(
        "eval_after_each_stage: rows %s: %d cells measured, TensorBoard rows %s, metrics so far %s "
        "(%s)", list(rows), summary["measured_cells"], summary["tensorboard_rows"], summary["metrics"],
        os.path.join(plan.root, EVAL_DIR, "matrix.json"))
    return summary
