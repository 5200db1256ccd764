"""The import structure of the installed packages: no import cycles, light imports stay light, and one
home for the subcommands.

The graph is computed from the source files under the repository (``jaxsplit/``, and ``envs/`` and
``agents/`` as ``jaxsplit.envs`` and ``jaxsplit.agents`` through ``[tool.setuptools.package-dir]``),
so it does not depend on how the package is installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Collection, Mapping

ROOT = Path(__file__).resolve().parents[1]
TOP = "jaxsplit"


def package_dirs() -> dict[str, Path]:
    """Package name -> source folder, from pyproject.toml's ``[tool.setuptools.package-dir]``."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["tool"]["setuptools"].get("package-dir", {})
    return {name: ROOT / folder for name, folder in table.items() if _is_ours(name)}


def module_files() -> dict[str, Path]:
    """Every module of the ``jaxsplit`` packages -> its source file (a package maps to its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            # only folders that are packages all the way down are importable (no namespace packages here)
            if not all((folder / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(len(rel.parts))):
                continue
            parts = rel.with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_ours(name: str) -> bool:
    return name == TOP or name.startswith(TOP + ".")


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from {'.' * level}{name} import ...`` written in ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def _import_module_target(call: ast.Call, module: str, is_package: bool) -> str | None:
    """The module named by ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None  # a computed name cannot be followed statically
    name = first.value
    if not name.startswith("."):
        return name
    # relative: only when anchored at this module (``__name__``) or its package (``__package__``)
    anchor = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "package"), None)
    if not (isinstance(anchor, ast.Name) and anchor.id in ("__package__", "__name__")):
        return None
    stripped = name.lstrip(".")
    return _resolve_relative(module, is_package or anchor.id == "__name__", len(name) - len(stripped), stripped or None)


def imported_names(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """Every ``jaxsplit`` module that ``module``'s source imports -> the first line importing it.

    Import statements count wherever they are (module top, functions, ``if`` blocks). ``import a.b.c``
    is an edge to ``a.b.c`` only; ``from X import name`` is an edge to ``X.name`` when that is a module,
    else to ``X``; literal ``importlib.import_module`` / ``__import__`` calls count like imports.
    """
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        if _is_ours(name):
            targets[name] = min(line, targets.get(name, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if alias.name != "*" and sub in known else base, node.lineno)
        elif isinstance(node, ast.Call):
            target = _import_module_target(node, module, is_package)
            if target is not None:
                add(target, node.lineno)
    return targets


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, set[str]]]:
    """(module -> {imported jaxsplit module: line}, module -> imported jaxsplit names that are no module)."""
    files = module_files()
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    unknown: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = imported_names(module, path, known)
        graph[module] = {t: line for t, line in targets.items() if t in known}
        if set(targets) - known:
            unknown[module] = set(targets) - known
    return graph, unknown


def cycles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """One cycle (first node repeated at the end) of every strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has a few hundred nodes at most, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, set(c), c[0]) for c in sorted(components)]


def _cycle_in(graph: Mapping[str, Collection[str]], component: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` inside one strongly connected component (breadth-first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(set(graph[v]) & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no cycle of its component")  # pragma: no cover


def test_the_walk_finds_every_package():
    modules = module_files()
    for name in ("jaxsplit", "jaxsplit.cli", "jaxsplit.commands", "jaxsplit.bridge", "jaxsplit.kernels",
                 "jaxsplit.envs", "jaxsplit.envs.alloc", "jaxsplit.agents", "jaxsplit.agents.ppo"):
        assert name in modules, name
    assert modules["jaxsplit.envs"] == ROOT / "envs" / "__init__.py"


def test_graph_resolution_on_a_small_package(tmp_path):
    """The rules of :func:`imported_names` on hand-written sources."""
    src = {
        "jaxsplit/__init__.py": "from . import a\nfrom .b import thing\n",
        "jaxsplit/a.py": "import jaxsplit.sub.c as c\nfrom jaxsplit import b, not_a_module\n",
        "jaxsplit/b.py": "def f():\n    import importlib\n    return importlib.import_module('jaxsplit.sub')\n",
        "jaxsplit/sub/__init__.py": "from .. import a\nfrom .c import *\nimport numpy\n",
        "jaxsplit/sub/c.py": "import importlib\nimportlib.import_module('.d', __package__)\n",
        "jaxsplit/sub/d.py": "",
    }
    for rel, text in src.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    known = {"jaxsplit", "jaxsplit.a", "jaxsplit.b", "jaxsplit.sub", "jaxsplit.sub.c", "jaxsplit.sub.d"}
    got = {m: imported_names(m, tmp_path / rel, known) for m, rel in zip(
        ["jaxsplit", "jaxsplit.a", "jaxsplit.b", "jaxsplit.sub", "jaxsplit.sub.c", "jaxsplit.sub.d"], src)}
    assert got["jaxsplit.a"] == {"jaxsplit.sub.c": 1, "jaxsplit.b": 2, "jaxsplit": 2}
    assert got["jaxsplit.b"] == {"jaxsplit.sub": 3}  # inside a function
    got = {m: set(t) for m, t in got.items()}
    assert got == {"jaxsplit": {"jaxsplit.a", "jaxsplit.b"},
                   "jaxsplit.a": {"jaxsplit.sub.c", "jaxsplit.b", "jaxsplit"},
                   "jaxsplit.b": {"jaxsplit.sub"},
                   "jaxsplit.sub": {"jaxsplit.a", "jaxsplit.sub.c"},
                   "jaxsplit.sub.c": {"jaxsplit.sub.d"},
                   "jaxsplit.sub.d": set()}
    # one component {jaxsplit, a, b, sub}, reported by its shortest cycle through its first module
    assert cycles(got) == [["jaxsplit", "jaxsplit.a", "jaxsplit"]]


def test_every_jaxsplit_import_names_a_module():
    """An import of a jaxsplit name that is no module (a stale path) would silently drop an edge."""
    _, unknown = import_graph()
    assert not unknown, "imports of jaxsplit modules that do not exist: " + "; ".join(
        f"{m} -> {', '.join(sorted(t))}" for m, t in sorted(unknown.items()))


def test_no_import_cycles():
    graph, _ = import_graph()
    files = module_files()

    def edge(a: str, b: str) -> str:
        return f"{a} -> {b} ({files[a].relative_to(ROOT)}:{graph[a][b]})"

    found = cycles(graph)
    assert not found, "import cycles (one per group of mutually importing modules):\n" + "\n".join(
        "  " + "; ".join(edge(a, b) for a, b in zip(c, c[1:])) for c in found)


def _modules_after(statement: str, names: list[str], tmp_path: Path) -> dict[str, bool]:
    """Which of ``names`` are imported after ``statement`` in a fresh interpreter."""
    code = f"{statement}; import sys; print(*[n in sys.modules for n in {names!r}])"
    # outside the repository, so that the installed package is imported, not the folder on sys.path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    return dict(zip(names, (word == "True" for word in out.stdout.split())))


def test_importing_the_environments_never_imports_the_agents(tmp_path):
    assert _modules_after("import jaxsplit.envs", ["jaxsplit.agents"], tmp_path) == {"jaxsplit.agents": False}


def test_the_latency_model_and_solvers_import_neither_torch_nor_envs_nor_agents(tmp_path):
    names = ["torch", "jaxsplit.envs", "jaxsplit.agents"]
    assert _modules_after("import jaxsplit.latency, jaxsplit.solvers", names, tmp_path) == dict.fromkeys(names, False)


def test_every_subcommand_lives_in_jaxsplit_commands():
    from jaxsplit.cli import COMMANDS

    files = module_files()
    home = ROOT / "jaxsplit" / "commands"
    misplaced = {name: module for name, (module, _) in COMMANDS.items()
                 if module not in files or files[module].parent != home}
    assert not misplaced, f"subcommands outside {home.relative_to(ROOT)}/ (or missing): {misplaced}"
    # and every module there is a subcommand, so the folder holds nothing but the commands
    unused = {m for m, path in files.items() if path.parent == home and path.name != "__init__.py"}
    unused -= {module for module, _ in COMMANDS.values()}
    unused -= {"jaxsplit.commands.options"}  # the one command-line convention every command parses with
    assert not unused, f"modules in {home.relative_to(ROOT)}/ that no subcommand names: {sorted(unused)}"
