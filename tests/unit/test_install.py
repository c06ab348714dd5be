"""The installable project: no ``sys.path`` edits, entry points that resolve, scripts that run
from any directory in the installed environment and stop with one clear line elsewhere."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = "megatron-ds-cpt"
FIRST_PARTY = {"megatron", "tools", "utils", "bench", "tests"}
SCRIPT_DIRS = ("tools", "bench", "utils")
PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*[+]?=")


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / p for p in out.stdout.split() if p.endswith(suffixes)]


def scripts() -> list[Path]:
    return [p for d in SCRIPT_DIRS for p in sorted((ROOT / d).glob("*.py"))
            if p.name not in ("__init__.py", "_checkout.py")]


def pyproject_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def installed() -> tuple[Path | None, dict[str, str]]:
    """The checkout this interpreter has the project installed from (editable), or None, and the
    installed console scripts. The build's egg-info in the checkout (on sys.path here) has no
    install record (direct_url.json) and is skipped."""
    for dist in importlib.metadata.distributions(name=DIST):
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            source = Path(unquote(urlparse(direct["url"]).path)).resolve()
            eps = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
            return source, eps
    return None, {}


def test_no_file_edits_sys_path():
    """The project is installed (or PYTHONPATH names it); no module or script edits sys.path."""
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in tracked(".py", ".sh")
            for n, line in enumerate(p.read_text().splitlines(), 1) if PATH_EDIT.search(line)]
    assert hits == [], f"sys.path edits: {hits}"


def test_every_script_checks_the_checkout_before_first_party_imports():
    """``python tools/X.py``: the ``if not __package__: import _checkout`` guard comes before the
    first module-level import of our packages (else an uninstalled interpreter fails on an
    import error naming megatron-core's namespace); bench/ and utils/ link to one guard file."""
    for d in ("bench", "utils"):
        assert (ROOT / d / "_checkout.py").samefile(ROOT / "tools" / "_checkout.py")
    missing = []
    for path in scripts():
        guarded = False
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.If) and ast.unparse(node.test) == "not __package__"
                    and any(isinstance(s, ast.Import) and s.names[0].name == "_checkout"
                            for s in node.body)):
                guarded = True
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in FIRST_PARTY for n in names) and not guarded:
                missing.append(path.relative_to(ROOT))
                break
    assert missing == [], f"first-party import before the _checkout guard: {missing}"


def test_entry_points_resolve_to_callables():
    declared = pyproject_scripts()
    assert {"megatron-import-checkpoint", "megatron-preprocess-data"} <= set(declared)
    for name, target in declared.items():
        module, _, attr = target.partition(":")
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{name}: no {module}"
        assert callable(getattr(importlib.import_module(module), attr)), f"{name}: {target}"
    source, eps = installed()
    if source == ROOT:  # the installed metadata is the current pyproject's
        assert eps == declared, f"stale install: run pip install --no-deps -e {ROOT}"


def test_a_tool_runs_from_another_directory(tmp_path):
    """In the environment ALCF/env.sh builds (.venv), the checkout is installed: a tool runs as a
    file and as an entry point from any directory. An interpreter without it installed (or with
    another checkout installed) gets one line with the command that fixes it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ROOT / "tools" / "mix_datasets.py"
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    source, _ = installed()
    if Path(sys.prefix).resolve() == ROOT / ".venv":
        assert source == ROOT, f"ALCF/env.sh did not install {ROOT} into .venv"
    if source == ROOT:
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("usage: mix_datasets.py")
        entry = Path(sys.executable).parent / "megatron-mix-datasets"
        via_entry = subprocess.run([str(entry), "--help"], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=120)
        assert via_entry.returncode == 0 and "--input" in via_entry.stdout, via_entry.stderr
    else:
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
        assert f"pip install --no-deps -e {ROOT}" in done.stderr
        assert f"PYTHONPATH={ROOT}" in done.stderr


def test_another_checkout_on_the_path_is_not_mixed_in(tmp_path):
    """One environment installed from one checkout, another first on PYTHONPATH: ``megatron``
    spans this checkout and megatron-core's namespace directory, never the other checkout."""
    other = tmp_path / "other" / "megatron"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "only_there.py").write_text("")
    code = ("import json, megatron, importlib.util as u; print(json.dumps([megatron.__path__, "
            "u.find_spec('megatron.only_there') is None, u.find_spec('megatron.core') is not None]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(other.parent)])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=True, timeout=120)
    path, absent, core = json.loads(done.stdout.splitlines()[-1])
    assert path[0] == str(ROOT / "megatron") and str(other) not in path and absent
    assert core and any(Path(p, "core").is_dir() for p in path[1:])  # megatron-core's portion
