"""Config loading: every shipped YAML validates; bad files give errors that name the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, load_yaml
from pipeline.pipeline_config import load_pipeline_config

REPO = Path(__file__).resolve().parents[3]
PIPELINE_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_every_pipeline_config_loads(path: Path) -> None:
    cfg = load_pipeline_config(path)
    assert cfg.stages, f"{path} has no stages"
    for name, stage in cfg.stages.items():
        assert stage.kind, name


def test_every_yaml_under_configs_is_valid_yaml() -> None:
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        assert isinstance(load_yaml(f), dict), f


def test_unknown_stage_key_names_file_key_and_known_keys(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  download:\n    source: synthetic\n    thread_cont: 8\n")
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "stages.download.thread_cont: unknown key" in msg
    assert "thread_count" in msg  # the accepted keys are listed


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  download:\n    thread_count: many\n")
    with pytest.raises(ConfigError, match=r"stages\.download\.thread_count: .*integer.*'many'"):
        load_pipeline_config(p)


def test_unknown_stage_kind_lists_known_kinds(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  fetch:\n    url_list: x.parquet\n")
    with pytest.raises(ConfigError, match=r"stages\.fetch: unknown stage kind 'fetch'; known kinds: download"):
        load_pipeline_config(p)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  download: {source: [\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: line \d+, column \d+: invalid YAML"):
        load_pipeline_config(p)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_pipeline_config(p)


def test_set_overrides_stage_and_top_level_keys_with_types(tmp_path: Path) -> None:
    p = write(tmp_path, "root: runs/x\nstages:\n  download:\n    source: synthetic\n")
    cfg = load_pipeline_config(p, ["download.thread_count=16", "ray.num_cpus=2", "download.timeout=2.5",
                                   "download.save_additional_columns=[a, b]"])
    d = cfg.stages["download"]
    assert d.thread_count == 16 and isinstance(d.thread_count, int)
    assert d.timeout == 2.5
    assert d.save_additional_columns == ["a", "b"]
    assert cfg.ray.num_cpus == 2


def test_set_override_is_validated(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  download: {}\n")
    with pytest.raises(ConfigError, match=r"stages\.download\.thread_count"):
        load_pipeline_config(p, ["download.thread_count=-3"])


def test_set_unknown_target_suggests(tmp_path: Path) -> None:
    p = write(tmp_path, "stages:\n  download: {}\n")
    with pytest.raises(ConfigError, match="did you mean download"):
        load_pipeline_config(p, ["downlaod.thread_count=3"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline_config(tmp_path / "nope.yaml")
