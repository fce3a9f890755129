"""The shape of the package: no import circle among ``melissa_sa`` modules, no
module over 450 lines, one import path for every name (a name is imported from
the module that defines it, or from its package).

The import graph is read from the source with :mod:`ast`, so it holds every
import, the lazy ones inside functions too. Importing ``a.b.c`` from outside the
package ``a.b`` also counts as importing ``a.b`` (Python runs the package's
``__init__`` first); a package's ``__init__`` importing its own modules does not
make a circle with them.

``KNOWN_CIRCLES`` and ``KNOWN_LONG`` name the modules that still fail, each with
why: strict xfails, so a module that gets fixed fails here until it is taken
off the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "melissa_sa"
MAX_LINES = 450

KNOWN_CIRCLES: dict[str, str] = {}
KNOWN_LONG: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _known(name: str, *, strip_to: set[str]) -> str:
    """``name`` or its nearest enclosing module in ``strip_to``."""
    while name not in strip_to and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The melissa_sa modules one import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        return {_known(a.name, strip_to=set(MODULES)) for a in node.names
                if a.name.split(".")[0] == "melissa_sa"}
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base.pop()
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "melissa_sa":
        return set()
    return {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES
            else _known(target, strip_to=set(MODULES)) for a in node.names}


def _with_packages(module: str, targets: set[str]) -> set[str]:
    """Add each target's enclosing packages that ``module`` is not inside."""
    out = set(targets)
    for target in targets:
        parts = target.split(".")
        for k in range(2, len(parts)):
            package = ".".join(parts[:k])
            if module != package and not module.startswith(package + "."):
                out.add(package)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the melissa_sa modules it imports (anywhere in its source)."""
    graph = {}
    for module, path in MODULES.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets |= _imported(module, node)
        graph[module] = _with_packages(module, targets)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


_CIRCLE_OF = {m: circle for circle in circles(import_graph()) for m in circle}


def _params(known: dict[str, str]) -> list:
    return [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=known[m]))
            if m in known else m for m in MODULES]


def test_the_known_lists_name_modules_that_exist():
    assert set(KNOWN_CIRCLES) <= set(MODULES)
    assert set(KNOWN_LONG) <= set(MODULES)


@pytest.mark.parametrize("module", _params(KNOWN_CIRCLES))
def test_module_is_in_no_import_circle(module):
    assert module not in _CIRCLE_OF, f"{module} is in the import circle {_CIRCLE_OF[module]}"


@pytest.mark.parametrize("module", _params(KNOWN_LONG))
def test_module_is_short(module):
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (at most {MAX_LINES})"


def test_the_circle_finder_sees_a_lazy_import_back():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from melissa_sa.sampling import factory\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _imported("melissa_sa.sampling.samplers", node) == {"melissa_sa.sampling.factory"}
    assert _with_packages("melissa_sa.config.model", {"melissa_sa.launcher.schedulers"}) == {
        "melissa_sa.launcher.schedulers", "melissa_sa.launcher"}


def _top_level_names(path: Path) -> tuple[set[str], set[str]]:
    """(names ``path`` defines at its top level, names it imports there)."""
    defined: set[str] = set()
    imported: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(sub.name)
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                defined.add(sub.id)
    return defined, imported


def borrowed_imports(files) -> list[str]:
    """``from m import x`` where ``m`` is a melissa_sa module (not a package) that
    only imports ``x`` itself: a second import path for a name."""
    names = {m: _top_level_names(p) for m, p in MODULES.items() if p.name != "__init__.py"}
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in names:
                defined, imported = names[node.module]
                found += [f"{path.name}:{node.lineno}: {a.name} from {node.module}"
                          for a in node.names if a.name in imported - defined]
    return found


def test_every_name_has_one_import_path():
    root = PACKAGE.parent
    files = [p for d in ("melissa_sa", "tests", "benchmarks", "examples")
             for p in sorted((root / d).rglob("*.py"))]
    assert borrowed_imports(files) == []


def test_a_borrowed_import_is_seen(tmp_path):
    user = tmp_path / "user.py"
    user.write_text("from melissa_sa.server.study_state import StudyLimits\n"
                    "from melissa_sa.server.study_records import StudyLimits as L\n")
    assert borrowed_imports([user]) == [
        "user.py:1: StudyLimits from melissa_sa.server.study_state"]
