"""Code shape: the folders are the architecture, imports point down the layers, modules stay small."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Alembic's scripts (review/migrations) are run by Alembic on a connection, not imported as modules
LIBRARY = sorted(p for p in (REPO / "pcam_core").rglob("*.py") if "migrations" not in p.parts)
APP = sorted((REPO / "app").rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 6
# pcam_core's packages, lowest first: a package imports only those before it (and the top-level basics)
LAYERS = ("runs", "data", "models", "inference", "training", "review", "slides", "bench", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The package a module belongs to: `runs`, `data`, ... or `` for the top-level basics."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def imported_modules(path: Path) -> set[str]:
    """The pcam_core modules (or packages) a file imports anywhere in it (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pcam_core"):
            for alias in node.names:
                inner = REPO / node.module.replace(".", "/") / alias.name
                is_module = inner.with_suffix(".py").is_file() or (inner / "__init__.py").is_file()
                found.add(f"{node.module}.{alias.name}" if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pcam_core.")}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if state.get(node) == "done":
            return None
        if state.get(node) == "open":
            return trail[trail.index(node):] + [node]
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target, trail + [node]):
                return cycle
        state[node] = "done"
        return None

    return next((cycle for node in graph if (cycle := visit(node, []))), None)


def library_graph() -> dict[str, set[str]]:
    graph = {module_name(p): imported_modules(p) for p in LIBRARY}
    return {module: {t for t in targets if t in graph and t != module and t != "pcam_core"}
            for module, targets in graph.items()}


def test_the_library_import_graph_has_no_cycle_among_modules():
    graph = library_graph()
    # `from pcam_core import runs` uses the package's surface: an edge to each module of the package
    members = {package: {m for m in graph if m.startswith(package + ".")}
               for package in graph if (REPO / package.replace(".", "/") / "__init__.py").is_file()}
    expanded = {m: set().union(*(members.get(t, {t}) for t in targets)) - {m} for m, targets in graph.items()}
    cycle = find_cycle(expanded)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_packages_import_only_the_packages_below_them():
    upward = []
    for module, targets in library_graph().items():
        if module == "pcam_core.__main__":  # the entry point stands above everything
            continue
        mine = package_of(module)
        for target in targets:
            theirs = package_of(target)
            if theirs and theirs != mine and (not mine or LAYERS.index(theirs) > LAYERS.index(mine)):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing up the layers: " + ", ".join(sorted(upward))


def test_the_top_level_is_a_few_basics_and_every_package_says_what_it_holds():
    top = sorted(p.name for p in (REPO / "pcam_core").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    packages = sorted(p.parent.name for p in (REPO / "pcam_core").glob("*/__init__.py"))
    assert packages == sorted(LAYERS)
    for name in packages:  # a name of the surface that is also a module would be shadowed once it is imported
        init = REPO / "pcam_core" / name
        clash = [n for n in getattr(importlib.import_module(f"pcam_core.{name}"), "__all__", [])
                 if (init / f"{n}.py").is_file()]
        assert not clash, f"{name}: {clash} are both names and modules"
    for name in packages:
        init = REPO / "pcam_core" / name / "__init__.py"
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring.splitlines()) >= 3, f"{name}/__init__.py: say what it holds"


@pytest.mark.parametrize("package", LAYERS)
def test_every_name_a_package_offers_is_there(package):
    surface = importlib.import_module(f"pcam_core.{package}")
    missing = [name for name in getattr(surface, "__all__", []) if getattr(surface, name, None) is None]
    assert not missing, f"pcam_core.{package} offers {missing} but has none"


APP_LAYERS = ("widgets", "compute", "views")  # lowest first


def test_the_app_layout_shows_its_parts_and_imports_point_down():
    top = sorted(p.name for p in (REPO / "app").glob("*.py"))
    assert top == ["__init__.py", "bench.py", "server.py", "streamlit_app.py"], top
    upward = []
    for path in (REPO / "app").rglob("*.py"):
        mine = path.relative_to(REPO / "app").parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "app"):
                continue
            targets = ([node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names])
            for theirs in targets:  # `from app.widgets import ui` or `from app import widgets`
                if theirs not in APP_LAYERS:  # the entry file or the page bench: nothing imports them
                    upward.append(f"{path.relative_to(REPO)} imports app.{theirs}")
                elif theirs == "views" or (mine in APP_LAYERS
                                           and APP_LAYERS.index(theirs) > APP_LAYERS.index(mine)):
                    upward.append(f"{path.relative_to(REPO)} imports app.{theirs}")
    assert not upward, upward


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    # a package's lazy __init__ imports nothing of its own (its names are checked above)
    modules = [module_name(p) for p in LIBRARY if p.stem not in ("__main__", "__init__")]

    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        return module, done.returncode, done.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        failures = [(m, err) for m, code, err in pool.map(load, modules) if code]
    assert not failures, failures


def test_the_run_list_and_jobs_do_not_import_torch():
    # the app lists runs and polls jobs on every rerun; torch costs seconds to import
    code = ("import sys, pcam_core.runs.jobs, pcam_core.runs.folder, pcam_core.data.splits, "
            "pcam_core.slides.cache; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_pages_do_not_touch_torch_or_grow_their_own_logic():
    for page in (REPO / "app" / "views").glob("*.py"):
        assert "import torch" not in page.read_text(), page.name


@pytest.mark.parametrize("path", LIBRARY + APP, ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_readable(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text)) if isinstance(node, ast.FunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {long}"


def test_the_patch_geometry_is_defined_once():
    for path in LIBRARY + APP:
        if path.name == "geometry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                names = {t.id for t in node.targets if isinstance(t, ast.Name)}
                shared = names & {"PATCH", "CENTRE", "SPLITS", "PATCH_BYTES"}
                assert not shared, f"{path.name} redefines {shared}: import them from geometry.py"
