"""The package layout as a checked contract: no import cycles, stage packages stay apart.

Imports inside functions count too: they hide a cycle from Python's import machinery, not from a
reader, and two modules that import each other cannot be understood (or moved) one at a time.
No module uses another's private (``_name``) names: what other modules need is part of a
module's interface and is named as such, so a private name can change without a search.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGES = ("rs_seg", "flows")
# The pipeline's order; ``model`` (the model contract) lies below all of them, and ``ops``
# (registry, ledger, incoming imagery) runs the stages, so it is outside this order.
STAGES = ("prepare", "train", "infer", "evaluate")
# Below every stage: the model contract may use top-level modules only.
BELOW_STAGES = ("model",)
# What inference must not load: the training stack (and pandas, which only it and ops need).
TRAINING_STACK = ("lightning", "albumentations", "pandas", "torchmetrics")
# Modules above ~700 lines, each with the reason it is still one file.
# None at present; an entry maps a path to its reason.
LONG_MODULES: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the project's packages by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere; ``from a import b`` counts ``a.b`` if a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    # A package's own __init__ runs first for any of its modules; it is not an edge of its own.
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = sources()
    known = set(modules)
    return {name: imported(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "rs_seg.train.fit" in graph and "rs_seg.run_folder" in graph["rs_seg.train.fit"]
    assert find_cycle(graph) is None


def package_of(module: str) -> str:
    """``rs_seg.infer.run`` -> ``rs_seg.infer``; a top-level module is its own package.

    A ``__main__`` module is an entry point (``python -m rs_seg.infer`` runs the CLI): nothing
    imports it, so it is a node of its own, not part of its package.
    """
    parts = module.split(".")
    if parts[-1] == "__main__":
        return module
    return ".".join(parts[:2]) if parts[0] == "rs_seg" else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph with each package's modules merged into one node."""
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        node = packages.setdefault(package_of(module), set())
        node.update(package_of(d) for d in deps if package_of(d) != package_of(module))
    return packages


def test_packages_import_each_other_one_way_only() -> None:
    """A cycle between packages (such as infer <-> ops) ties them together as one."""
    packages = package_graph(import_graph())
    assert "rs_seg.model" in packages and "rs_seg.evaluate" in packages
    assert find_cycle(packages) is None


@pytest.mark.parametrize("package", BELOW_STAGES)
def test_the_model_contract_imports_no_stage(package: str) -> None:
    for name, deps in import_graph().items():
        if name.startswith(f"rs_seg.{package}."):
            stages = sorted(d for d in deps if package_of(d).split(".")[-1] in (*STAGES, "ops"))
            assert not stages, f"{name} imports {stages}"


LOADED = """
import runpy, sys
heavy = {heavy!r}
sys.argv = {argv!r}
try:
    {run}
except SystemExit:
    pass
print("LOADED:" + ",".join(m for m in heavy if m in sys.modules))
"""


def loaded_heavy_modules(run: str, argv: list[str]) -> list[str]:
    """The training-stack modules in ``sys.modules`` after ``run`` in a fresh interpreter."""
    import subprocess
    import sys

    code = LOADED.format(heavy=TRAINING_STACK, argv=argv, run=run)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED:"))
    return [m for m in line.removeprefix("LOADED:").split(",") if m]


@pytest.mark.slow
def test_inference_does_not_load_the_training_stack(tmp_path: Path) -> None:
    from tests.helpers import make_bundle

    bundle = str(make_bundle(tmp_path / "m.pt"))
    cli = "runpy.run_module('rs_seg', run_name='__main__')"
    assert loaded_heavy_modules("import rs_seg.infer.run", ["x"]) == []
    assert loaded_heavy_modules(cli, ["rs-seg", "infer", "--help"]) == []
    assert loaded_heavy_modules(cli, ["rs-seg", "model", "info", bundle]) == []
    # the check itself sees the stack where it is loaded
    assert "lightning" in loaded_heavy_modules("import rs_seg.train.fit", ["x"])


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_does_not_import_a_later_stage(stage: str) -> None:
    """prepare -> train -> infer: a stage may use an earlier one, never a later one."""
    later = STAGES[STAGES.index(stage) + 1 :]
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(f"rs_seg.{stage}."):
            bad = sorted(d for d in deps if d.split(".")[1:2] and d.split(".")[1] in later)
            assert not bad, f"{name} imports {bad}"


def test_modules_stay_short_or_say_why() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in sorted((ROOT / "rs_seg").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 700
    }
    assert set(long) <= set(LONG_MODULES), f"over 700 lines without a reason: {long}"


def unexplained_local_imports(path: Path) -> list[str]:
    """Imports inside functions without a comment line right above their group of imports."""
    lines = path.read_text().splitlines()
    bad = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Import | ast.ImportFrom):
                continue
            row = sub.lineno - 1
            while row > 0 and lines[row - 1].lstrip().startswith(("import ", "from ")):
                row -= 1  # the first import of this group carries the reason
            reason = row > 0 and lines[row - 1].lstrip().startswith("#")
            if not (reason or "#" in lines[sub.lineno - 1]):
                bad.append(
                    f"{path.relative_to(ROOT)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}"
                )
    return bad


def test_imports_inside_functions_say_why() -> None:
    """Only start-up time or a heavy optional dependency justify one, and the line says which."""
    bad = [line for p in sources().values() for line in unexplained_local_imports(p)]
    assert not bad, "imports inside functions without a reason:\n" + "\n".join(bad)


def is_private(name: str) -> bool:
    """``_name`` is private; dunders (``__version__``, ``__main__``) are not."""
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str, name: str, is_package: bool, known: set[str]) -> list[str]:
    """Private names of other project modules that the module ``name`` imports or reads.

    Catches ``from rs_seg.x import _y`` (also relative), private modules (``import rs_seg._x``,
    ``from rs_seg import _x``, ``from rs_seg._x import y``) and ``x._y`` where ``x`` is a
    project module imported under a name (``import rs_seg.x as x``, ``from rs_seg import x``).
    """
    package = name if is_package else name.rpartition(".")[0]
    bound: dict[str, str] = {}  # local name -> the project module it stands for
    bad: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in PACKAGES:
                    continue
                if any(is_private(part) for part in alias.name.split(".")):
                    bad.append(f"{node.lineno}: import {alias.name}")
                local = alias.asname or alias.name.split(".")[0]
                bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                if any(is_private(part) for part in base.split(".")) or is_private(alias.name):
                    bad.append(f"{node.lineno}: from {base} import {alias.name}")
                if f"{base}.{alias.name}" in known:
                    bound[alias.asname or alias.name] = f"{base}.{alias.name}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        chain: list[str] = []
        value: ast.expr = node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in bound:
            module = ".".join([bound[value.id], *chain])
            if module in known and module != name:
                bad.append(f"{node.lineno}: {module}.{node.attr}")
    return bad


def test_the_private_use_finder_finds_each_form() -> None:
    known = {"rs_seg", "rs_seg.infer", "rs_seg.infer.polygonize", "rs_seg.infer.split"}
    source = "\n".join(
        [
            "import rs_seg",
            "import rs_seg.infer.polygonize as polygonize",
            "from rs_seg.infer import polygonize as poly",
            "from rs_seg.infer.polygonize import _Field, FieldRecord",
            "from .polygonize import _find",
            "from . import _compat",
            "import rs_seg._compat",
            "from numpy import _private_but_not_ours",
            "from rs_seg import __version__",
            "polygonize._PREFILTER, poly._CoordinateFunction, rs_seg.infer.polygonize._x",
            "polygonize.field_records, _Field._own, self._own",
        ]
    )
    found = private_uses(source, "rs_seg.infer.split", False, known)
    assert [line.partition(": ")[2] for line in found] == [
        "from rs_seg.infer.polygonize import _Field",
        "from rs_seg.infer.polygonize import _find",
        "from rs_seg.infer import _compat",
        "import rs_seg._compat",
        "rs_seg.infer.polygonize._PREFILTER",
        "rs_seg.infer.polygonize._CoordinateFunction",
        "rs_seg.infer.polygonize._x",
    ]


def test_no_module_uses_another_modules_private_names() -> None:
    """Names another module needs are public; no module flips another's private switches."""
    modules = sources()
    known = set(modules)
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in modules.items()
        for line in private_uses(path.read_text(), name, path.name == "__init__.py", known)
    ]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)
