"""Which addresses the guard refuses, and what an allow-list entry may be: decisions only, no connection."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from pipeline.core.config import ConfigError
from pipeline.fetch.net_guard import GuardConfig, block_reason
from pipeline.pipeline_config import load_pipeline_config


@pytest.mark.parametrize(("address", "allow"), [
    ("169.254.169.254", ["169.254.0.0/16"]),
    ("169.254.169.254", ["169.254.169.254:80"]),
    ("::ffff:169.254.169.254", ["169.254.0.0/16"]),
    ("fd00:ec2::254", ["fd00::/8"]),
    ("100.100.100.200", ["100.64.0.0/10"]),
])
def test_metadata_addresses_stay_blocked_whatever_the_allow_list_says(address: str, allow: list[str]) -> None:
    assert "metadata" in block_reason(address, 80, allow)


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",  # 6to4 embedding 127.0.0.1
    "2002:a9fe:a9fe::1",  # ... 169.254.169.254
    "2002:c0a8:101::1",  # ... 192.168.1.1
    "2002:a00:1::",  # ... 10.0.0.1
    "fec0::1", "fec0::a00:1", "feff::1",  # site-local (fec0::/10)
])
def test_6to4_and_site_local_addresses_reaching_private_space_are_blocked(address: str) -> None:
    assert block_reason(address, 80) is not None


def test_6to4_of_a_public_address_passes() -> None:
    assert block_reason("2002:808:808::1", 443) is None


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.1:8080", "10.0.0.0/8", "10.1.0.0/16:9000", "::1",
                                   "[::1]:8080", "fd00::/8", "[fd00::/8]:443"])
def test_valid_allow_list_entries(entry: str) -> None:
    GuardConfig(allow=[entry])


@pytest.mark.parametrize(("entry", "why"), [
    ("localhost:8080", "never host names"),
    ("web.internal", "never host names"),
    ("127.0.0.1:99999", "port"),
    ("127.0.0.1:http", "port"),
    ("10.0.0.300", "not an IP address"),
    ("0.0.0.0/0", "too broad"),
    ("::/0", "too broad"),
    ("10.0.0.0/4", "too broad"),
])
def test_malformed_host_name_and_overbroad_allow_entries_are_errors(entry: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        GuardConfig(allow=[entry])
    with pytest.raises(ValueError, match=why):
        block_reason("127.0.0.1", 80, [entry])  # a policy built in code is parsed the same way


def test_a_bad_allow_entry_in_a_pipeline_config_names_file_and_key(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"root": str(tmp_path / "r"), "stages": {
        "download": {"url_list": "u.parquet", "guard": {"allow": ["127.0.0.1:8080", "localhost"]}}}}))
    with pytest.raises(ConfigError, match=r"c\.yaml.*stages\.download\.guard\.allow.*host names"):
        load_pipeline_config(cfg)
