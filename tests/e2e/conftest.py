"""The end-to-end modules' cluster: a real two-node Ray cluster (`ray start` head + worker on loopback), one per
module that asks for `cluster` (test_node_loss.py builds its own three-node one)."""

from __future__ import annotations

import pytest
from local_cluster import LocalCluster


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(cpus_per_node=1).start()
    try:
        yield c
    finally:
        c.stop()
