"""Random and malformed YAML into the config loader: every outcome is a valid config or a clear ConfigError."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.config import ConfigError
from pipeline.pipeline_config import PipelineConfig, load_pipeline_config

REPO = Path(__file__).resolve().parents[3]
KEYS = ["name", "root", "ray", "synthetic", "stages", "download", "kind", "input", "output", "source", "url_list",
        "thread_count", "timeout", "image_size", "guard", "allow", "num_cpus", "pool_size", "noise", "faults",
        "score", "filter", "reshard", "train-clip", "model", "recipe", "steps", "batch_size", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(KEYS))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=20)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.yaml"
        p.write_text(text)
        try:
            cfg = load_pipeline_config(p)
        except ConfigError as err:
            assert str(p) in str(err), f"error does not name the file: {err}"
            return
        assert isinstance(cfg, PipelineConfig)


@SETTINGS
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    _load(text)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_random_structures(data: dict) -> None:
    _load(yaml.safe_dump(data, allow_unicode=True))


@SETTINGS
@given(st.data())
def test_mutated_shipped_configs(data: st.DataObject) -> None:
    files = sorted((REPO / "configs").glob("*.yaml"))
    base = yaml.safe_load(data.draw(st.sampled_from(files)).read_text())

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, (*prefix, k))

    target = data.draw(st.sampled_from(list(paths(base))[1:]))
    node = base
    for k in target[:-1]:
        node = node[k]
    if data.draw(st.booleans()):
        node[target[-1]] = data.draw(values)
    else:
        del node[target[-1]]
    _load(yaml.safe_dump(base, allow_unicode=True))


def test_yaml_bytes_that_are_not_text(tmp_path: Path) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError, match="bin.yaml"):
        load_pipeline_config(p)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("stages: " + "[" * 3000 + "]" * 3000)
    with pytest.raises(ConfigError, match="deep.yaml"):
        load_pipeline_config(p)
