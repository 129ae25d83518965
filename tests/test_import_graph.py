"""The project's packages import each other without a cycle, in the layering of DESIGN.md:
core <- ref <- engine <- calibration <- export (an arrow: "is imported by"); the evaluation
package (adabldm_eval) imports core and ref only, and nothing imports it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"adabldm_core": "core", "adabldm_ref": "adabldm_ref", "adabldm_engine": "engine",
           "adabldm_calibration": "calibration", "adabldm_export": "export", "adabldm_eval": "evaluation"}
LAYERS = ["adabldm_core", "adabldm_ref", "adabldm_engine", "adabldm_calibration", "adabldm_export"]


def imported_packages(path: Path, package: str) -> set[str]:
    """Project packages imported anywhere in ``path`` (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            name = package if node.level else (node.module or "")
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            found.update(n.split(".")[0] for n in names if n.split(".")[0] in FOLDERS)
            continue
        else:
            continue
        top = name.split(".")[0]
        if top in FOLDERS:
            found.add(top)
    return found - {package}


def package_graph() -> dict[str, set[str]]:
    return {pkg: set().union(*(imported_packages(p, pkg) for p in (ROOT / folder).rglob("*.py")))
            for pkg, folder in FOLDERS.items()}


def test_package_imports_are_acyclic():
    graph = package_graph()
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        seen.add(node)

    for pkg in graph:
        visit(pkg)


def test_each_package_imports_only_layers_below_it():
    for pkg, deps in package_graph().items():
        if pkg not in LAYERS:
            continue
        below = set(LAYERS[: LAYERS.index(pkg)])
        assert deps <= below, f"{pkg} imports {sorted(deps - below)}, above it in {LAYERS}"


def test_core_imports_no_other_package():
    assert package_graph()["adabldm_core"] == set()


def test_evaluation_imports_core_and_ref_only_and_nothing_imports_it():
    graph = package_graph()
    assert graph["adabldm_eval"] <= {"adabldm_core", "adabldm_ref"}
    assert not [pkg for pkg, deps in graph.items() if "adabldm_eval" in deps]
