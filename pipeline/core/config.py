"""Typed pipeline configs: YAML in, pydantic models out, errors that name the file, the key and what was expected.

A pipeline config names a run root, the Ray runtime and an ordered mapping of stages:

    name: demo
    root: runs/demo
    ray: {num_cpus: 2}
    stages:
      download: {source: synthetic, ...}
      train_encoder: {kind: train-clip, input: pool, ...}

A stage's kind defaults to its key (`download` -> the download stage). Each stage kind owns its config model,
next to its code; `pipeline.stages` maps kinds to models. `--set download.thread_count=16` overrides any key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ConfigError(ValueError):
    """A config problem, already phrased for the user: file, key path, what was expected."""


def _expected(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return msg


def format_validation_error(source: str, err: ValidationError, prefix: tuple = ()) -> str:
    """One line per problem: `<file>: <key.path>: <what was expected> (got <value>)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *e["loc"])) or "<top level>"
        line = f"{source}: {loc}: {_expected(e)}"
        if e["type"] not in ("missing",) and "input" in e and not isinstance(e["input"], dict):
            line += f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden" and e.get("ctx", {}).get("known"):
            line += f"; known keys: {', '.join(e['ctx']['known'])}"
        lines.append(line)
    return "\n".join(lines)


def validate(model: type[BaseModel], data: Any, source: str, prefix: tuple = ()) -> BaseModel:
    """Validate `data` against `model`, turning pydantic's error into a ConfigError that names file and keys."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        known = sorted(model.model_fields)
        msg = format_validation_error(source, err, prefix)
        if any(e["type"] == "extra_forbidden" for e in err.errors()) and len(prefix) <= 2:
            msg += f"\n  ({'.'.join(map(str, prefix)) or 'top level'} accepts: {', '.join(known)})"
        raise ConfigError(msg) from None
    except RecursionError:
        raise ConfigError(f"{source}: {'.'.join(map(str, prefix)) or 'config'}: nested too deeply") from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a syntax error or a non-mapping names the file (and the line, where YAML knows it)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value); the value is parsed as YAML so `3`, `true`, `[1,2]` get types."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: empty key in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def set_path(data: dict, parts: list[str], value: Any, source: str) -> None:
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is not a mapping; cannot set {'.'.join(parts)}")
        node = nxt
    node[parts[-1]] = value


def config_hash(data: Any) -> str:
    """A short stable hash of a config (dict or model), recorded in manifests."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
