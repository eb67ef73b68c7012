"""One small synthetic web for the synthetic source's tests (built once per session, ~1 s)."""

from __future__ import annotations

import time

import pytest

from pipeline.synthetic.config import SyntheticWebConfig

SLOW_S = 0.3


def small_config(**overrides) -> SyntheticWebConfig:
    """Large enough that every noise and fault kind occurs at the default rates (slow: once)."""
    base = dict(seed=7, pool_size=400, hq_size=40, test_size=95, oversized_pixels=1_000_000, slow_seconds=SLOW_S)
    return SyntheticWebConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def small_web(tmp_path_factory):
    """(config, out_dir, web.json, build seconds)."""
    from pipeline.synthetic.web import build_web

    cfg = small_config()
    out = str(tmp_path_factory.mktemp("web"))
    t0 = time.perf_counter()
    info = build_web(cfg, out)
    return cfg, out, info, time.perf_counter() - t0


@pytest.fixture(scope="session")
def truth(small_web):
    import pandas as pd

    return pd.read_parquet(f"{small_web[1]}/truth.parquet")


@pytest.fixture(scope="session")
def make_config():
    """The factory behind `small_web`'s config, for tests that build their own variant."""
    return small_config
