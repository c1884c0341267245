"""Code shape: imports point down the layers; modules and functions stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "pcam_core").glob("*.py"))
APP = sorted((REPO / "app").rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    """The pcam_core modules a file imports anywhere in it (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pcam_core"):
            if node.module == "pcam_core":
                found |= {f"pcam_core.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pcam_core.")}
    return found


def test_the_library_import_graph_has_no_cycle():
    graph = {f"pcam_core.{p.stem}": imported_modules(p) - {f"pcam_core.{p.stem}"} for p in LIBRARY}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            cycle = trail[trail.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            visit(target, trail + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])
    assert "pcam_core.validation" not in graph  # its split went to splits.py, its scoring to train.py


def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = [f"pcam_core.{p.stem}" for p in LIBRARY if p.stem != "__main__"]

    def load(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        return module, done.returncode, done.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        failures = [(m, err) for m, code, err in pool.map(load, modules) if code]
    assert not failures, failures


def test_the_run_list_and_jobs_do_not_import_torch():
    # the app lists runs and polls jobs on every rerun; torch costs seconds to import
    code = "import sys, pcam_core.jobs, pcam_core.runs, pcam_core.splits; print('torch' in sys.modules)"
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
