"""The code's shape: packages import only the layers below them, no import cycles, small modules and functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# Lowest first. A module imports its own unit and the units of lower layers, nothing above.
LAYERS = [
    ["pipeline.core"],  # the base layer: nothing else of pipeline
    ["pipeline.runtime", "pipeline.synthetic", "pipeline.fetch", "pipeline.execution"],
    ["pipeline.ingest"],  # the ingest stage's source readers: shard jobs of the execution layer
    ["pipeline.stages", "pipeline.pipeline_config"],  # validating a pipeline config asks each stage kind's config
    ["pipeline.report"],
    ["pipeline.cli"],
    ["pipeline.__main__"],
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
TOGETHER = {frozenset({"pipeline.stages", "pipeline.pipeline_config"})}  # one layer, each needs the other
ROOT_MODULES = {"__init__", "__main__", "pipeline_config", "runtime"}


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of a top-level package."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


ALL = {**modules("pipeline"), **modules("filtering"), **modules("training")}


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules of pipeline/filtering/training that a file imports (inside functions too, unless top_level_only)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline.report import curation` imports the module pipeline.report.curation
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in ALL else node.module
                      for a in node.names}
    return {m for m in found if m.split(".")[0] in ("pipeline", "filtering", "training")}


def unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else parts[0]


def test_pipeline_root_holds_only_the_entry_points_and_packages() -> None:
    root = {p.stem for p in (REPO / "pipeline").glob("*.py")}
    packages = {p.name for p in (REPO / "pipeline").iterdir() if (p / "__init__.py").exists()}
    assert root == ROOT_MODULES
    assert packages == {"core", "execution", "stages", "report", "synthetic", "cli", "fetch", "ingest"}
    assert {unit(m) for m in modules("pipeline")} - {"pipeline"} == set(RANK)


def test_no_package_imports_one_above_it() -> None:
    wrong = []
    for module, path in ALL.items():
        src = unit(module)
        for target in imports(path):
            dst = unit(target)
            if src in ("filtering", "training"):
                ok = dst in (src, "pipeline.core")  # the libraries use the base layer, nothing else of pipeline
            elif dst in ("filtering", "training"):
                ok = src == "pipeline.stages"  # the application uses the libraries through its stages
            else:
                ok = src == dst or RANK[dst] < RANK[src] or frozenset({src, dst}) in TOGETHER
            if not ok:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_import_cycle_between_modules() -> None:
    graph = {m: {t for t in imports(p, top_level_only=True) if t in ALL and t != m} for m, p in ALL.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path + [m, t]
            if t not in state and (cycle := visit(t, path + [m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            assert visit(m, []) is None


def test_every_pipeline_module_imports_on_its_own_interpreter() -> None:
    names = sorted(m for m in modules("pipeline") if not m.endswith("__main__"))
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def test_modules_and_functions_stay_small() -> None:
    """DESIGN.md: modules <= 400 lines, functions <= 80 (pipeline/, filtering/ and training/)."""
    big = []
    for module, path in ALL.items():
        src = path.read_text()
        if src.count("\n") > 400:
            big.append(f"{module}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                big.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == []
