"""Step checkpoints and final weights, written without pickle and read without unpickling.

A step checkpoint is a directory:

    step_0000200/
      model.safetensors                    the state dict of the module `Task.setup` returned
      optimizer.safetensors + .json        AdamW's per-parameter tensors; its param groups as JSON
      rng_rank<r>.safetensors + .json      each worker's torch / numpy / python RNG states as tensors
      task_state.safetensors               the task's extra tensors (e.g. EMA weights), when it has any
      state.json                           step, samples seen, data seed, task, scaler, the files above

Final weights (`save_weights`) are a plain state dict of tensors that `torch.load(weights_only=True)` reads, e.g.
the contrastive task's `model.pt`, which `open_clip.create_model_and_transforms(name, pretrained="model.pt")`
loads; `load_weights` refuses any file that holds pickled Python objects.
"""

from __future__ import annotations

import json
import os
import pickle
import posixpath
import random
import re

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import local_copy

STEP_DIR = re.compile(r"^step_(\d+)$")
TASK_STATE = "task_state.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, or holds something other than plain tensors."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and a clone also detaches from the live weights
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _write_json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)


# --- optimizer ---------------------------------------------------------------------------------------------------
def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, per_param in sd["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return _tensors(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# --- RNG ---------------------------------------------------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_keys.astype(np.int64)),
               "python": torch.tensor(py_state, dtype=torch.int64)}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    meta = {"numpy": [int(np_pos), int(np_has_gauss), float(np_gauss)], "python": [py_version, py_gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state(("MT19937", tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = meta["python"]
    random.setstate((version, tuple(int(x) for x in tensors["python"].tolist()), py_gauss))


# --- step checkpoints --------------------------------------------------------------------------------------------
def save_rank_rng(path: str, rank: int) -> list[str]:
    os.makedirs(path, exist_ok=True)
    tensors, meta = rng_state()
    save_file(tensors, os.path.join(path, f"rng_rank{rank}.safetensors"))
    _write_json(os.path.join(path, f"rng_rank{rank}.json"), meta)
    return [f"rng_rank{rank}.safetensors", f"rng_rank{rank}.json"]


def save_checkpoint(path: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                    world: int, scaler=None, extra: dict[str, torch.Tensor] | None = None) -> None:
    """Rank 0's part of a checkpoint, after its `save_rank_rng`: weights, optimizer, the task's `extra` tensors
    and state.json (the other ranks add their RNG files)."""
    os.makedirs(path, exist_ok=True)
    save_file(_tensors(model.state_dict()), os.path.join(path, "model.safetensors"))
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, os.path.join(path, "optimizer.safetensors"))
    _write_json(os.path.join(path, "optimizer.json"), opt_meta)
    own = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "rng_rank0.safetensors", "rng_rank0.json"]
    if extra:
        save_file(_tensors(extra), os.path.join(path, TASK_STATE))
        own.append(TASK_STATE)
    # sizes of rank 0's files (None: another rank's, unknown here) let a reader spot a half-copied directory
    files = {name: os.path.getsize(os.path.join(path, name)) for name in own}
    files |= {f"rng_rank{r}.{ext}": None for r in range(1, world) for ext in ("safetensors", "json")}
    scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
    _write_json(os.path.join(path, "state.json"), {**state, "scaler": scaler_state, "world": world, "files": files})


# Checkpoint directories may live on any fsspec path (Ray Train uploads them to the run's storage); they are read
# through fsspec, and a remote one is downloaded before its tensors load.
def is_complete(path: str) -> bool:
    fs, base = fs_and_path(path)
    try:
        with fs.open(f"{base}/state.json", "r") as f:
            files = json.load(f)["files"]
        sizes = {posixpath.basename(p["name"]): p["size"] for p in fs.ls(base, detail=True)}
    except (OSError, ValueError, KeyError):  # FileNotFoundError included: no state.json yet
        return False
    return all(name in sizes and (size is None or sizes[name] == size) for name, size in files.items())


def step_dirs(root: str) -> list[str]:
    """`step_*` directory names under `root`, oldest first."""
    fs, base = fs_and_path(root)
    if not fs.isdir(base):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(base, detail=False)]
    return sorted((name for name in names if STEP_DIR.match(name)), key=lambda n: int(STEP_DIR.match(n).group(1)))


def complete_checkpoints(root: str) -> list[str]:
    """Complete `step_*` directories under `root`, newest first."""
    return [p for name in reversed(step_dirs(root)) if is_complete(p := join(root, name))]


def latest_checkpoint(root: str) -> str | None:
    """The newest complete `step_*` directory under `root`, or None."""
    found = complete_checkpoints(root)
    return found[0] if found else None


def prune_checkpoints(root: str, keep: int) -> None:
    """Delete all but the newest `keep` step directories (used where Ray does not manage them: in-process runs)."""
    fs, base = fs_and_path(root)
    for name in step_dirs(root)[:-keep]:
        fs.rm(f"{base}/{name}", recursive=True)


def load_checkpoint(path: str, rank: int = 0) -> dict:
    """Read a step checkpoint (tensors via safetensors, the rest JSON): model, optimizer, state, this rank's RNG,
    the task's extra tensors (`{}` when it saved none, as in checkpoints written before tasks had any)."""
    if not is_complete(path):
        raise CheckpointError(f"{path}: incomplete checkpoint (state.json or a listed file is missing)")
    with local_copy(path) as local:
        return _load_local_checkpoint(local, rank)


def _load_local_checkpoint(path: str, rank: int) -> dict:
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    with open(os.path.join(path, "optimizer.json")) as f:
        opt_meta = json.load(f)
    out = {"state": state, "model": load_file(os.path.join(path, "model.safetensors")),
           "optimizer": unflatten_optimizer(load_file(os.path.join(path, "optimizer.safetensors")), opt_meta),
           "rng": None, "extra": {}}
    if os.path.isfile(os.path.join(path, TASK_STATE)):
        out["extra"] = load_file(os.path.join(path, TASK_STATE))
    rng = os.path.join(path, f"rng_rank{rank}.safetensors")
    if os.path.isfile(rng):
        with open(os.path.join(path, f"rng_rank{rank}.json")) as f:
            out["rng"] = (load_file(rng), json.load(f))
    return out


# --- final weights -----------------------------------------------------------------------------------------------
def save_weights(path: str, model: torch.nn.Module, drop: tuple[str, ...] = ()) -> None:
    """A plain tensor state dict, loadable by open_clip (torch.load with weights_only=True), minus `drop` keys."""
    tmp = f"{path}.tmp"
    torch.save({k: v for k, v in _tensors(model.state_dict()).items() if k not in drop}, tmp)
    os.replace(tmp, path)


def save_module(path: str, module: torch.nn.Module) -> None:
    """A module's weights as .safetensors (e.g. CatLIP's word head next to model.pt)."""
    save_file(_tensors(module.state_dict()), path)


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict of tensors from .safetensors or a torch file (any fsspec path); refuse pickled Python
    objects."""
    if path.endswith(".safetensors"):
        with local_copy(path) as local:
            return load_file(local)
    try:
        with local_copy(path) as local:
            sd = torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load: the file contains pickled Python objects, not only tensors "
            f"(loading it could run arbitrary code). Re-save it as a plain state dict or .safetensors. ({err})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}
