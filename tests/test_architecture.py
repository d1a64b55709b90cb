"""Issue #15: the import graph of the project's own code has no cycle, and the
boundaries of DEVELOPERS.md hold.

Every import counts, at module level or inside a function (a lazy import is still a
dependency). The graph is read from the source with ast; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "features", "data")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports (absolute; relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from detector import engine` imports the module detector.engine
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> project modules it imports, project module -> all imports)."""
    sources = _sources()
    internal, every = {}, {}
    for module, path in sources.items():
        names = _imports(path, module)
        every[module] = names
        internal[module] = {n for n in names if n in sources and n != module}
    return internal, every


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _importers(every: dict[str, set[str]], library: str) -> set[str]:
    return {m for m, names in every.items()
            if any(n == library or n.startswith(library + ".") for n in names)}


def test_the_walker_sees_imports_and_cycles():
    """The checks below can fail: the walker finds lazy imports and a planted cycle."""
    internal, every = _graph()
    assert "detector.engine" in internal["detector.scoring"]
    assert "mlflow" in every["detector.tracking"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    internal, _ = _graph()
    assert _cycles(internal) == []


def test_library_boundaries():
    _, every = _graph()
    assert _importers(every, "typer") <= {"detector.cli"}
    assert _importers(every, "mlflow") <= {"detector.tracking"}
    for library in ("pyod", "lightgbm"):
        outside = {m for m in _importers(every, library) if not m.startswith("detector.models")}
        assert outside == set(), f"{library} imported outside detector/models: {outside}"
    for web in ("starlette", "fastapi", "uvicorn"):
        outside = {m for m in _importers(every, web) if not m.startswith("detector.review")}
        assert outside == set(), f"{web} imported outside the review app: {outside}"
    # the CLI is the top: nothing of ours imports it
    assert {m for m, names in every.items() if "detector.cli" in names} <= {"detector.__main__"}



def test_features_do_no_io():
    """features/ builds expressions and frames from what it is given: no file, network
    or tracking access, no reading or writing of tables."""
    banned_modules = {"os", "io", "pathlib", "shutil", "tempfile", "urllib", "requests",
                      "socket", "mlflow", "detector.tables"}
    banned_calls = {"open", "read_csv", "read_parquet", "scan_csv", "scan_parquet",
                    "write_csv", "write_parquet", "read_text", "write_text", "sink_parquet",
                    "read_ipc", "scan_ipc", "write_ipc"}
    problems = []
    for module, path in _sources().items():
        if not module.startswith("features"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = []
            problems += [f"{module}: imports {n}" for n in names
                         if n.split(".")[0] in banned_modules or n in banned_modules]
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in banned_calls:
                    problems.append(f"{module}:{node.lineno}: calls {name}")
    assert problems == []


def test_engine_does_no_io():
    """The scoring engine neither reads datasets nor writes tables nor touches MLflow."""
    _, every = _graph()
    engine = every["detector.engine"]
    assert not {n for n in engine if n.startswith(("mlflow", "detector.tracking",
                                                   "detector.scoring", "detector.batch",
                                                   "detector.report", "os", "pathlib"))}
    tree = ast.parse((ROOT / "detector" / "engine.py").read_text())
    calls = {(n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", ""))
             for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"open", "read_csv", "read_parquet", "write_csv", "write_parquet",
                        "read_dataset", "write_table", "load_model", "load_reference"}


REPORT_LAYERS = ("detector.report.charts", "detector.report.data", "detector.report.cards",
                 "detector.report.render", "detector.report.generate")


def test_the_report_package_is_walked_and_layered():
    """The report is a package (data, cards, charts, render, generate): the walker sees
    each module, and each imports only those below it in REPORT_LAYERS (charts draw,
    data computes, cards read the scored features, render makes the page, generate runs
    it end to end); nothing in the package imports its own __init__ (a cycle)."""
    internal, _ = _graph()
    assert set(REPORT_LAYERS) | {"detector.report"} <= set(internal)
    assert (ROOT / "detector" / "report" / "templates" / "report.html.j2").is_file()
    for i, module in enumerate(REPORT_LAYERS):
        inside = {m for m in internal[module] if m.startswith("detector.report")}
        assert inside <= set(REPORT_LAYERS[:i]), f"{module} imports {inside}"
    assert _cycles({m: internal[m] for m in internal}) == []


def _test_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted((ROOT / "tests").glob("test_*.py"))}


def _test_module_imports(path: Path, tests: set[str]) -> set[str]:
    """The test modules ``path`` imports, in a statement or in a program text it runs
    (a subprocess's ``-c`` string)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[-1] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[-1])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(n for n in tests if f"import {n}" in node.value
                         or f"from {n} import" in node.value)
    return found & tests


def test_no_test_module_imports_another(tmp_path):
    """Helpers shared by tests live in *_fixtures.py modules (or conftest.py), never in
    a test module another one imports (that runs its tests' module code twice and ties
    the two files together)."""
    tests = _test_modules()
    assert "test_report" in tests and "test_architecture" in tests
    planted = tmp_path / "test_planted.py"  # the check can fail: both forms are seen
    # (split so that this file's own strings do not read as imports)
    planted.write_text("from " + "test_report import make_dataset\n"
                       "PROGRAM = 'import " + "test_review as t; t.main()'\n")
    assert _test_module_imports(planted, set(tests)) == {"test_report", "test_review"}
    offenders = {name: sorted(_test_module_imports(path, set(tests) - {name}))
                 for name, path in tests.items()}
    assert {n: found for n, found in offenders.items() if found} == {}
