"""Helpers of ``bench/faults.py``: run a script's ``main`` in-process with its output captured,
grade a refusal, snapshot a directory, a pickle payload, the Shakespeare data list."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # run as a file: one clear line unless this checkout is installed
    import _checkout  # noqa: F401

from tests.helpers import tiny_args  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": ROOT}
Result = tuple[str, str]  # (grade, note)


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a script's ``main(argv)`` in this process (no interpreter start per case), capturing
    its stdout, stderr and log lines; ``-c CODE`` runs in a fresh process."""
    if argv[0] == "-c":
        return subprocess.run([PY, "-W", "ignore", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=timeout)
    import contextlib
    import importlib
    import io
    import logging

    module = importlib.import_module(argv[0].removesuffix(".py").replace("/", "."))
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = module.main(list(argv[1:]))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001  (an uncaught error is what the user would see)
                import traceback

                err.write(traceback.format_exc())
                code = 1
    finally:
        logging.getLogger().removeHandler(handler)
    return subprocess.CompletedProcess(argv, code, out.getvalue() + logs.getvalue(), err.getvalue())


def train(*flags: str, data: str | None = None) -> subprocess.CompletedProcess:
    source = ["--data-file-list", data, "--tokenizer-type", "byte"] if data else []
    return run("pretrain_gpt.py", *tiny_args(*source, *flags, mock=data is None))


def refused(p: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> Result:
    """GOOD: non-zero, one sentence holding every needle; POOR: traceback; BAD: exit 0."""
    if p.returncode == 0:
        return "BAD", "exit 0 for a fault"
    if "Traceback" in p.stderr or (code is not None and p.returncode != code):
        return "POOR", f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1][:120] if p.stderr.strip() else ''}"
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    if len(errors) == 1 and all(n in errors[0] for n in needles):
        return "GOOD", errors[0][:140]
    return "POOR", f"message does not name {needles}: {p.stderr.strip()[-160:]}"


# Not checkpoint contents: the lock, and the append-only event log of every launch (a refused
# launch still records that it started).
SKIPPED = (".lock", "events.jsonl")


def snapshot(directory: str) -> dict[str, tuple[int, int]]:
    return {os.path.join(r, f): (os.stat(os.path.join(r, f)).st_size, os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, fs in os.walk(directory) for f in fs if f not in SKIPPED and not f.startswith("run-")}


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def make_data(root: str) -> str:
    from megatron.config.data import DataConfig
    from megatron.data.preprocess import tokenize_to_indexed
    from tools.prepare_default_corpus import play_files

    stats = tokenize_to_indexed(play_files()[:2], os.path.join(root, "plays"), DataConfig(tokenizer_type="byte"),
                                on_progress=lambda p: None)
    path = os.path.join(root, "list.txt")
    with open(path, "w") as f:
        f.write(f"1.0 {stats.prefixes['text']} plays\n")
    return path


def loss_mismatches(ref: str, cut: str) -> list[int]:
    """Iterations whose training loss in ``cut``'s event log (every launch, killed ones too)
    differs from ``ref``'s; a line cut short by a kill is skipped."""
    import json

    def losses(save: str) -> list[tuple[int, float]]:
        found = []
        with open(os.path.join(save, "events.jsonl")) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "train":
                    found.append((event["iteration"], event["loss"]))
        return found

    expected = dict(losses(ref))
    return [it for it, loss in losses(cut) if expected.get(it) != loss]
