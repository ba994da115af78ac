"""One-way architecture: the layers trainers <- analysis <- tune_looped <- benchmarks, no import cycle, and
no module importing a command-line entry module.

Every import statement counts, those inside functions too: a function-level import defers a cycle to run
time, it does not remove it.

Why not import-linter: its layers, acyclic_siblings and protected contracts could say these three rules, but
it would be a new development dependency with its own configuration and its own run, for rules this module
states in a screen of code that runs with every `pytest` and prints the offending import path.
"""
import ast
from collections import deque
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "analysis", "tune_looped", "benchmarks")
# what each package must never import (its top-level names); the layers below import nothing above them
FORBIDDEN = {
    "trainers": ("ray", "tune_looped", "analysis", "benchmarks"),
    "analysis": ("tune_looped", "benchmarks"),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported_names(source: str, importer: str, is_package: bool, known) -> set[str]:
    """The modules that the import statements of `source` name, wherever they are in it.

    `from x import y` names the module x.y when there is one (y is a submodule), otherwise x; relative
    imports are resolved against `importer`.
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = importer if is_package else importer.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = ".".join(filter(None, (package, base)))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in known else base)
    return names


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Every module of `packages` -> every module it imports (project modules or not)."""
    modules = project_modules(root, packages)
    return {name: imported_names(path.read_text(), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of `graph` (edges to nodes outside it are ignored)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node] & graph.keys():
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle_through(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str] | None:
    parent, queue = {}, deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & within):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through every module that lies on a cycle, each cycle listed once.

    A cycle is given as [a, b, ..., a] starting at its alphabetically first module.
    """
    cycles = set()
    for component in strongly_connected(graph):
        for node in sorted(component):
            cycle = shortest_cycle_through(graph, node, component)
            if cycle is not None:
                ring = cycle[:-1]
                first = ring.index(min(ring))
                cycles.add(tuple(ring[first:] + ring[:first] + [ring[first]]))
    return sorted(map(list, cycles))


def layer_violations(graph: dict[str, set[str]], forbidden=FORBIDDEN) -> list[str]:
    return sorted(f"{importer} imports {name}" for importer, names in graph.items() for name in names
                  if name.split(".")[0] in forbidden.get(importer.split(".")[0], ()))


def _has_main_block(source: str) -> bool:
    for node in ast.parse(source).body:
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
                and isinstance(test.ops[0], ast.Eq) and isinstance(test.comparators[0], ast.Constant)
                and test.comparators[0].value == "__main__"):
            return True
    return False


def entry_modules(root: Path, packages=PACKAGES) -> set[str]:
    """The modules that run as `python -m`: a `__main__.py`, or a module with an `if __name__ == "__main__"`."""
    return {name for name, path in project_modules(root, packages).items()
            if path.name == "__main__.py" or _has_main_block(path.read_text())}


def entry_module_imports(graph: dict[str, set[str]], entries: set[str]) -> list[str]:
    """Imports of entry modules. Run as `python -m`, such a module is `__main__`: importing it by name would
    execute it a second time."""
    return sorted(f"{importer} imports {name}" for importer, names in graph.items() for name in names & entries)


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO)


def test_the_graph_covers_every_package(graph):
    assert {name.split(".")[0] for name in graph} == set(PACKAGES)
    assert "trainers.models" in graph["trainers.checkpoint"]
    assert "trainers.training" in graph["trainers.train"]
    assert {"trainers.train", "tune_looped.run", "analysis.__main__"} <= entry_modules(REPO)


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_layers_import_one_way(graph):
    violations = layer_violations(graph)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_no_module_imports_a_command_line_entry_module(graph):
    imports = entry_module_imports(graph, entry_modules(REPO))
    assert not imports, "\n".join(imports)


@pytest.mark.parametrize("edges,cycles", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
    ({"c": {"a"}, "a": {"b"}, "b": {"c", "x"}}, [["a", "b", "c", "a"]]),
    ({"a": {"a"}}, [["a", "a"]]),
    ({"p.config": {"p.models", "p.tasks", "yaml"}, "p.models": {"p.config", "torch"}, "p.tasks": {"p.config"},
      "p.train": {"p.models"}},
     [["p.config", "p.models", "p.config"], ["p.config", "p.tasks", "p.config"]]),
])
def test_find_cycles(edges, cycles):
    assert find_cycles(edges) == cycles


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_imports_inside_functions_and_of_submodules_are_edges(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg import high\n",
        "pkg/high.py": "from . import low\nfrom pkg.low import f\nimport ray.tune\n",
        "pkg/sub/__init__.py": "from ..low import f\n",
        "pkg/cli.py": "from pkg.sub import f\n\nif __name__ == '__main__':\n    f()\n",
        "pkg/__main__.py": "import pkg.cli\n",
    })
    graph = import_graph(tmp_path, packages=("pkg",))
    assert graph == {"pkg": set(), "pkg.low": {"pkg.high"}, "pkg.high": {"pkg.low", "ray.tune"},
                     "pkg.sub": {"pkg.low"}, "pkg.cli": {"pkg.sub"}, "pkg.__main__": {"pkg.cli"}}
    assert find_cycles(graph) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert layer_violations(graph, {"pkg": ("ray",)}) == ["pkg.high imports ray.tune"]
    assert layer_violations(graph, {"other": ("ray",)}) == []
    entries = entry_modules(tmp_path, packages=("pkg",))
    assert entries == {"pkg.cli", "pkg.__main__"}
    assert entry_module_imports(graph, entries) == ["pkg.__main__ imports pkg.cli"]


DRY_RUN = """
import os, sys
# as on macOS: no sched_getaffinity (nor Python 3.13's process_cpu_count)
for name in ("sched_getaffinity", "process_cpu_count"):
    if hasattr(os, name):
        delattr(os, name)
from tune_looped.run import main
rc = main(["--space", "hypotheses", "--dry-run"])
print("rc", rc, "loaded", sorted(m for m in ("torch", "matplotlib", "ray", "pandas") if m in sys.modules))
"""


@pytest.mark.slow
def test_a_dry_run_imports_neither_torch_nor_matplotlib_nor_ray_and_needs_no_sched_getaffinity():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DRY_RUN], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "rc 0 loaded []"
    assert any(line.startswith("30 trials, ") for line in lines)
    assert done.stderr.strip().endswith("hypotheses.yaml: resources.gpu: auto (resolved at start, from the GPUs Ray "
                                        "finds)")


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_names_its_public_surface(package):
    import importlib

    module = importlib.import_module(package)
    assert isinstance(module.__all__, list)
    for name in module.__all__:
        value = getattr(module, name)
        # the public names are the package's own, not names it passes on from a library
        assert getattr(value, "__module__", package).split(".")[0] == package, name
