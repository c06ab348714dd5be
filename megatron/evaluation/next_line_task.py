"""A small offline multiple-choice task: which of four lines truly comes next in a play?

Built from text the model did not train on (``tools/build_eval_task.py`` uses The Winter's Tale,
the last play of the bundled corpus, which the demo's ``--split 90,5,5`` and the default
``98,1,1`` put in the test split). Each item is the preceding ``context_lines`` non-empty lines
(speaker names and stage directions included, as in the text), the true next line, and three
lines of similar length drawn from elsewhere in the same play, shuffled. A model that has
learned nothing scores about 0.25; scoring uses lm-evaluation-harness's ``multiple_choice``
(``acc``: summed log-likelihood of each line, ``acc_norm``: per byte of the line).
"""

from __future__ import annotations

import random
from typing import Any

TASK_NAME = "shakespeare_next_line"


def _is_candidate(line: str, min_chars: int, max_chars: int) -> bool:
    # A spoken line: long enough to carry signal, short enough to fit a small model's context
    # (byte tokens), not a speaker tag ("LEONTES.") or a stage direction.
    return (min_chars <= len(line) <= max_chars and not line.isupper()
            and not line.startswith(("[", "_")))


def next_line_items(text: str, *, num_items: int = 200, context_lines: int = 4, num_choices: int = 4,
                    min_chars: int = 25, max_chars: int = 64,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Items ``{"context", "choices", "label"}`` from ``text`` (deterministic for a seed).

    Raises:
        ValueError: The text has too few usable lines for ``num_items`` items.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The cast list before the first scene is not dialogue.
    first_scene = next((i for i, line in enumerate(lines) if line.upper().startswith("SCENE")), 0)
    lines = lines[first_scene:]
    candidates = [i for i in range(context_lines, len(lines)) if _is_candidate(lines[i], min_chars, max_chars)]
    if len(candidates) < num_items * 2:
        raise ValueError(f"only {len(candidates)} usable lines for {num_items} items")
    rng = random.Random(seed)
    targets = sorted(rng.sample(candidates, num_items))
    items = []
    for i in targets:
        truth = lines[i]
        context = lines[i - context_lines : i]
        similar = [lines[j] for j in candidates if abs(j - i) > context_lines + 1 and lines[j] != truth
                   and lines[j] not in context and 0.75 <= len(lines[j]) / len(truth) <= 1.33]
        distractors = rng.sample(sorted(set(similar)), num_choices - 1)
        choices = [truth, *distractors]
        rng.shuffle(choices)
        items.append({"context": "\n".join(context) + "\n", "choices": choices,
                      "label": choices.index(truth)})
    return items


def task_config(data_file: str) -> dict[str, Any]:
    """lm-evaluation-harness task config of a next-line JSONL file (offline: the ``json`` loader)."""
    return {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": data_file}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        # The context ends with a newline; the choice is the next line itself, no " " before it.
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
