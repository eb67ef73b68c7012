"""Ray stays at the edge: only the Ray backend imports it, and training in-process never loads it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
TESTS = REPO / "tests"

IN_PROCESS = """
import json, sys
from training_mean_colour import MeanColourTask
from training.contrastive.config import TrainConfig
from training.contrastive.task import ContrastiveTask
from training.engine import fit
from training.engine.config import EngineConfig

pool, test, out = sys.argv[1:4]
scaling = {"num_workers": 0, "torch_threads": 1}
colour = fit(MeanColourTask([pool], test), EngineConfig(steps=3, scaling=scaling), out + "/colour")
cfg = TrainConfig.model_validate({"model": {"name": "tiny-sigmoid-vit"}, "steps": 2, "scaling": scaling,
                                  "data": {"batch_size": 8, "loader_workers": 0}})
siglip = fit(ContrastiveTask(cfg, [pool]), cfg, out + "/siglip")
print(json.dumps({"steps": [colour["step"], siglip["step"]], "ray": sorted(m for m in sys.modules if m == "ray"
                                                                          or m.startswith("ray."))}))
"""


def ray_importers() -> set[str]:
    """Modules under training/ with an `import ray...` or `from ray... import` anywhere in them."""
    found = set()
    for path in (REPO / "training").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.add(str(path.relative_to(REPO)))
    return found


def test_only_the_ray_backend_imports_ray():
    assert ray_importers() == {"training/engine/ray_backend.py"}


def test_training_in_process_never_imports_ray(shapes, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS, shapes["pool"][0], shapes["test"], str(tmp_path)],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["steps"] == [3, 2]  # both tasks trained to the end
    assert report["ray"] == []
