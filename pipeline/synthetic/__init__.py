"""The synthetic web: a labelled image-text pool with web-style noise, served on loopback with injected faults.

    from pipeline.synthetic import SyntheticWebConfig, build_web, serve_web
    info = build_web(SyntheticWebConfig(pool_size=500), "runs/demo/web")
    with serve_web("runs/demo/web") as web:
        ...  # download pool.parquet's URLs through web.host_map

Exports load lazily: the server process imports `pipeline.synthetic.httpd` and should not pay for PIL and pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "SyntheticWebConfig": "config", "NoiseRates": "config", "FaultRates": "config",
    "build_web": "web", "read_web": "web", "web_dir": "web", "web_hash": "web",
    "serve_web": "server", "WebServer": "server", "rewrite_urls": "server", "rewrite_url": "server",
}
__all__ = [
    "FaultRates", "NoiseRates", "SyntheticWebConfig", "WebServer", "build_web", "read_web", "rewrite_url",
    "rewrite_urls", "serve_web", "web_dir", "web_hash",
]

if TYPE_CHECKING:
    from pipeline.synthetic.config import FaultRates, NoiseRates, SyntheticWebConfig
    from pipeline.synthetic.server import WebServer, rewrite_url, rewrite_urls, serve_web
    from pipeline.synthetic.web import build_web, read_web, web_dir, web_hash


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.synthetic' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipeline.synthetic.{_EXPORTS[name]}"), name)
