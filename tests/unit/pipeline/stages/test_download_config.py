"""The download stage's time limits follow what the user set: a URL's wall-clock deadline defaults to a few socket
timeouts, so `timeout: 5` gives up a dripping server within tens of seconds, not a minute."""

from __future__ import annotations

import time
from urllib.error import URLError

import pytest
from hostile_web import HostileWeb

from pipeline.fetch.net_guard import GuardPolicy, build_opener
from pipeline.stages.download import DownloadConfig


@pytest.mark.parametrize(("given", "deadline"), [({}, 60.0), ({"timeout": 5}, 30.0), ({"timeout": 0.5}, 3.0),
                                                 ({"timeout": 5, "url_deadline": 90}, 90.0)])
def test_the_url_deadline_defaults_to_six_socket_timeouts(given: dict, deadline: float) -> None:
    cfg = DownloadConfig(url_list="urls.parquet", **given)
    assert cfg.url_deadline_s() == deadline
    rounds = -(-cfg.number_sample_per_shard // cfg.thread_count)
    assert cfg.shard_deadline_s() == rounds * deadline + 600  # a shard's deadline follows its URLs'


def test_a_short_timeout_cuts_a_dripping_server_within_its_derived_deadline() -> None:
    """One byte every 0.3 s never trips a 0.5 s socket timeout; 6 x 0.5 s = 3 s ends the URL."""
    cfg = DownloadConfig(url_list="urls.parquet", timeout=0.5)
    with HostileWeb(drip_every=0.3) as web:
        opener = build_opener(GuardPolicy.from_config(cfg.guard, extra_allow=[f"127.0.0.1:{web.port}"],
                                                      url_deadline=cfg.url_deadline_s()))
        t0 = time.monotonic()
        with pytest.raises(URLError, match="url_deadline"):
            opener.open(web.url("/drip"), timeout=cfg.timeout).read()
        assert 2.5 < time.monotonic() - t0 < 10  # the drip is 120 bytes (36 s): cut at the deadline, not its end
