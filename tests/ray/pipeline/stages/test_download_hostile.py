"""The download stage against a hostile web on loopback: real img2dataset in real Ray tasks, every refusal counted
under its reason, and a server that drips bytes cannot hold the shard."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hostile_web import HostileWeb

from pipeline.cli.run import run_pipeline
from pipeline.core.layout import Dataset
from pipeline.pipeline_config import load_pipeline_config

BUDGET = 1024 * 1024


@pytest.fixture(scope="module")
def hostile_download(ray_local, tmp_path_factory) -> tuple[Dataset, dict, float]:
    tmp = tmp_path_factory.mktemp("hostile")
    with HostileWeb(drip_every=1.0, hdr_side=2000) as web, HostileWeb() as outside:
        expect = {web.url(f"/img/{i}.jpg"): "success" for i in range(12)}
        expect |= {web.url(f"/padded/400000/{i}.jpg"): "success" for i in range(20, 28)}
        expect |= {web.url("/drip"): "url_deadline",  # 120 bytes at one a second, never idle for 2 s
                   web.url("/hdr"): "refused_format",  # 2000x2000 Radiance HDR: OpenCV would decode it
                   web.url("/to-file"): "blocked_scheme",
                   web.url("/loop"): "too_many_redirects",
                   web.url(f"/to/{outside.port}/img/1.jpg"): "blocked_address"}
        rows = [{"url": u, "caption": f"caption {i}"} for i, u in enumerate(expect)]
        rows += [{"url": web.url("/img/50.jpg?" + "q" * 5000), "caption": "long url"},
                 {"url": web.url("/img/51.jpg"), "caption": "word " * 1000}]
        pq.write_table(pa.Table.from_pylist(rows), tmp / "urls.parquet")
        cfg = tmp / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"root": str(tmp / "run"), "stages": {"download": {
            "url_list": str(tmp / "urls.parquet"), "output": "pool", "image_size": 16, "thread_count": 8,
            # 2 s per socket operation (a loaded 2-core machine can keep a plain response from its thread for
            # over 1 s); the drip sends a byte a second, so only the URL's 5 s deadline can cut it
            "timeout": 2, "url_deadline": 5, "max_url_chars": 2048, "max_caption_chars": 1000,
            "guard": {"allow": [f"127.0.0.1:{web.port}"], "max_pixels": 1_000_000,
                      "max_response_bytes": 512 * 1024, "max_bytes_in_flight": BUDGET}}}}))
        t0 = time.monotonic()
        run_pipeline(load_pipeline_config(cfg), "download")
        seconds = time.monotonic() - t0
    return Dataset(str(tmp / "run"), "pool"), expect, seconds


def test_each_hostile_url_is_counted_under_what_happened(hostile_download) -> None:
    ds, expect, _ = hostile_download
    table = pq.read_table(ds.shard_file("00000", "parquet")).to_pydict()
    got = dict(zip(table["url"], table["reason"], strict=True))
    assert got == expect
    reasons = ds.manifest()["stages"]["download"]["reasons"]
    assert reasons["url_too_long"] == 1 and reasons["caption_too_long"] == 1  # dropped before download


def test_a_drip_cannot_hold_the_shard(hostile_download) -> None:
    _, _, seconds = hostile_download
    assert seconds < 60  # the drip alone lasts 120 s; its URL is cut at its 5 s deadline


def test_bodies_in_flight_stay_within_the_task_budget(hostile_download) -> None:
    ds, _, _ = hostile_download
    peak = ds.done_shards()["00000"]["peak_bytes_in_flight"]
    assert 400000 <= peak <= BUDGET  # eight 400 kB bodies, 8 threads, room for two at once


def _decode_with_opencv(data: bytes) -> str:
    import cv2
    import numpy as np

    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        return str(err)
    return "decoded" if img is not None else "not decoded"


def test_download_workers_run_with_opencvs_own_pixel_cap(ray_local) -> None:
    """OpenCV reads its cap once, at import: a download task's worker gets it in its environment."""
    import io

    from PIL import Image

    from pipeline.execution.shard_tasks import BoundedTasks
    from pipeline.fetch.download_reasons import classify
    from pipeline.stages.download import worker_env

    buf = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buf, "PNG")
    tasks = BoundedTasks(_decode_with_opencv, env=worker_env(10_000), label="decode")
    ((_, result, _),) = list(tasks.run({"png": (buf.getvalue(),)}))
    assert classify("failed_to_resize", result) == "too_many_pixels", result

