"""The import layering, kept by walking every import statement (module level, function level and
TYPE_CHECKING blocks): ``megatron.config`` (knobs) imports no other package of ours; registries
import only config (and know nothing of its config classes); ``megatron.plan`` sits above both;
and no two modules of ours import each other, directly or around a loop.
"""

from __future__ import annotations

import ast
import functools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3] / "megatron"
REGISTRIES = [*sorted((ROOT / "optimizer").glob("*.py")), *sorted((ROOT / "schedules").glob("*.py")),
              ROOT / "data" / "tokenizers.py"]
ALLOWED = {"megatron.config.fields"}  # errors and field helpers: no config classes


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_registries_do_not_import_config_sections():
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path)
                                            if m.startswith("megatron.config") and m not in ALLOWED)
        for path in REGISTRIES
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(REGISTRIES) > 10


def test_config_sections_validate_names_against_the_registries():
    # The other direction exists (so the rule above is the one that breaks the circles).
    from megatron.config.data import DataConfig
    from megatron.config.fields import registered_names

    ref = DataConfig.__dataclass_fields__["tokenizer_type"].metadata["names"]
    assert ref.startswith("megatron.data.tokenizers:")
    assert "byte" in registered_names(ref)


# --- The whole package: no import cycle, and the layers point one way -------------------------

PACKAGE = ROOT.parent
REGISTRY_PACKAGES = ("megatron.optimizer", "megatron.schedules", "megatron.objectives",
                     "megatron.data.tokenizers")


def _modules() -> dict[str, pathlib.Path]:
    """Every module of our package by dotted name (``megatron.core`` is the external library)."""
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _import_edges(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere: module level, inside functions and in
    ``TYPE_CHECKING`` blocks, relative imports resolved; ``from pkg import mod`` is ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
    edges = set()
    for target in targets:
        if not (target == "megatron" or target.startswith("megatron.")) or target.startswith("megatron.core"):
            continue
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target in modules and target != name:
            edges.add(target)
    return edges


@functools.cache
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _import_edges(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete import loop inside ``component``, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no loop through {start}")


def test_no_import_cycles_between_our_modules():
    graph = _graph()
    assert [" -> ".join(_one_cycle(graph, c)) for c in _cycles(graph)] == []
    assert len(graph) > 150 and "megatron.plan.resolve" in graph  # the walk saw the package


def test_cycle_finder_reports_a_function_level_loop():
    # The rule above counts imports anywhere: a loop closed by a function-local import is a cycle.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
    assert _one_cycle(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    modules = _modules()
    edges = _import_edges("megatron.plan.resolve", modules["megatron.plan.resolve"], modules)
    assert {"megatron.config.root", "megatron.plan.run", "megatron.schedules.registry"} <= edges


def test_config_imports_nothing_outside_config():
    graph = _graph()
    outside = {name: sorted(t for t in targets if not t.startswith("megatron.config"))
               for name, targets in graph.items() if name.startswith("megatron.config")}
    assert {k: v for k, v in outside.items() if v} == {}


def test_registries_sit_below_the_plan():
    graph = _graph()
    above = {name: sorted(t for t in targets if t.startswith(("megatron.plan", "megatron.trainer")))
             for name, targets in graph.items() if name.startswith(REGISTRY_PACKAGES)}
    assert {k: v for k, v in above.items() if v} == {}
