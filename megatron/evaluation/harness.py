"""Run EleutherAI's lm-evaluation-harness (``lm-eval``) on an exported checkpoint.

``lm-eval`` is an optional dependency, imported only here and only when a run starts; without it
``require_lm_eval`` raises a ``ConfigError`` with the install command. Tasks are given as:

- ``shakespeare_next_line``: the bundled offline task (``tools/eval_tasks/``, see
  ``next_line_task``);
- a ``.jsonl``/``.json`` file of ``{"context", "choices", "label"}`` items: a multiple-choice
  task named after the file, scored like the bundled one (offline);
- a ``.yaml`` lm-eval task file: its directory is added to the harness's include path and its
  ``task:`` name is run (offline when its dataset is local);
- any other name: a task registered in lm-eval (its dataset may need the network or the HF cache).

Results are lm-eval's JSON (``results``, ``versions``, ``n-shot``, ``n-samples``, ``configs``)
plus ``source`` and ``model``; ``summary_line`` condenses them to one line.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from megatron.config.fields import ConfigError
from megatron.evaluation.next_line_task import TASK_NAME, task_config

log = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_TASKS = {TASK_NAME: os.path.join(ROOT, "tools", "eval_tasks", f"{TASK_NAME}.jsonl")}
INSTALL_HINT = "pip install lm-eval (listed in requirements.txt; an optional dependency of the export)"


def require_lm_eval() -> Any:
    """The ``lm_eval`` module.

    Raises:
        ConfigError: It is not installed, with the install command.
    """
    try:
        import lm_eval
        import lm_eval.evaluator  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--tasks: lm-evaluation-harness is not installed ({e}); {INSTALL_HINT}") from None
    return lm_eval


@dataclass
class TaskPlan:
    """What to hand lm-eval: task names or config dicts, extra include paths, and whether every
    task reads only local files (then the run is forced offline)."""

    tasks: list[str | dict[str, Any]] = field(default_factory=list)
    include_paths: list[str] = field(default_factory=list)
    offline: bool = True


def _yaml_task_name(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        match = re.search(r"^task:\s*['\"]?([^'\"\s#]+)", f.read(), flags=re.MULTILINE)
    if match is None:
        raise ConfigError(f"--tasks: {path} has no 'task:' name; it is not an lm-eval task file")
    return match.group(1)


def plan_tasks(specs: list[str]) -> TaskPlan:
    """Resolve ``--tasks`` entries (names or files) into a ``TaskPlan``.

    Raises:
        ConfigError: An empty list, or a task file that does not exist.
    """
    if not specs:
        raise ConfigError("--tasks: give at least one task, e.g. --tasks shakespeare_next_line")
    plan = TaskPlan()
    for spec in specs:
        if spec in BUNDLED_TASKS:
            plan.tasks.append(task_config(BUNDLED_TASKS[spec]))
        elif spec.endswith((".jsonl", ".json", ".yaml", ".yml")):
            if not os.path.isfile(spec):
                raise ConfigError(f"--tasks: no such task file {spec!r}")
            path = os.path.abspath(spec)
            if spec.endswith((".yaml", ".yml")):
                plan.include_paths.append(os.path.dirname(path))
                plan.tasks.append(_yaml_task_name(path))
            else:
                name = os.path.basename(path).split(".")[0]
                plan.tasks.append({**task_config(path), "task": name})
        else:
            plan.tasks.append(spec)
            plan.offline = False
    return plan


def run_harness(hf_dir: str, plan: TaskPlan, *, batch_size: int = 8, limit: int | None = None,
                num_fewshot: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the transformers model in ``hf_dir`` on ``plan``'s tasks.

    Returns:
        lm-eval's results, JSON-serializable.
    """
    require_lm_eval()
    import torch
    import transformers
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    # A loaded model, not a path: lm-eval then skips ``accelerate``'s launcher detection, which
    # would try to join a torch.distributed job whenever launcher variables are set.
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=plan.include_paths or None)
    results = simple_evaluate(
        model=lm,
        tasks=plan.tasks,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
    )
    keep = ("results", "versions", "n-shot", "n-samples", "configs", "higher_is_better")
    out = {k: results[k] for k in keep if k in results}
    return json.loads(json.dumps(out, default=handle_non_serializable))


def summary_line(results: dict[str, Any]) -> str:
    """``task acc 0.315 acc_norm 0.290 (n=200); ...`` from lm-eval results."""
    parts = []
    for task, metrics in sorted(results.get("results", {}).items()):
        values = [f"{k.split(',')[0]} {v:.3f}" for k, v in metrics.items()
                  if isinstance(v, float) and "stderr" not in k]
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        parts.append(f"{task} {' '.join(values)}" + (f" (n={n})" if n is not None else ""))
    return "; ".join(parts)
