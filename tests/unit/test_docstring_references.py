"""Docstrings and guides point at code that exists: every backticked dotted name under pipeline, training or
filtering (`pipeline.core.images`, `training.data.ShardStream`) names a module or a name a module defines, and every
backticked repo path (`training/data.py`) is there. A module moved without its mentions fails here, naming the file
and the line."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "filtering", "training")
DOTTED = re.compile(r"`[^`\n]*?(?<![\w.])((?:pipeline|filtering|training)(?:\.\w+)+)")
PATH = re.compile(r"`((?:pipeline|filtering|training|tests|bench|configs)/[\w./-]*?)`")


@cache
def defined(module_file: Path) -> set[str]:
    """Top-level names of a module: functions, classes, assignments and imports."""
    names = set()
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:i])
        file = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if file.is_file():
            return i == len(parts) or parts[i] in defined(file) or (base / parts[i]).is_dir()
    return False


def sources() -> list[Path]:
    files = [p for pkg in (*PACKAGES, "tests", "bench") for p in (REPO / pkg).rglob("*.py")]
    return sorted(files) + [REPO / "ARCHITECTURE.md", REPO / "README.md"]


def test_every_module_and_path_a_docstring_names_exists() -> None:
    wrong = []
    for path in sources():
        text = path.read_text()
        for pattern, ok in ((DOTTED, resolves), (PATH, lambda p: (REPO / p.rstrip("/")).exists()
                                                 or any(c in p for c in "*<{"))):
            for m in pattern.finditer(text):
                if not ok(m.group(1)):
                    wrong.append(f"{path.relative_to(REPO)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(1)}")
    assert wrong == []
