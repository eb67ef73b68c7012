"""The built synthetic web: URL lists, files and ground truth agree; noise at exact rates; test set balanced;
builds are deterministic and idempotent."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile

import pandas as pd
import pytest
from PIL import Image

from pipeline.core.ids import uid_of
from pipeline.synthetic.render import COLOURS, SHAPES
from pipeline.synthetic.web import CLEAN_NOISE, build_web, web_hash

NOISE = ("mismatched_caption", "generic_caption", "junk_image", "exact_duplicate", "near_duplicate", "tiny_image")
FAULTS = ("http_404", "http_500", "slow", "truncated", "not_image", "oversized", "opt_out")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_builds_quickly(small_web):
    cfg, _, _, seconds = small_web
    n = cfg.pool_size + cfg.hq_size + cfg.test_size
    assert seconds < 10, f"{n} images took {seconds:.1f}s"  # ~0.3 s measured; thousands must build in seconds


def test_noise_and_fault_counts_are_exact(small_web, truth):
    cfg, _, info, _ = small_web
    pool = truth[truth.split == "pool"]
    assert len(pool) == cfg.pool_size
    for kind in NOISE:
        want = round(getattr(cfg.noise, kind) * cfg.pool_size)
        assert want >= 1 and (pool.noise == kind).sum() == want == info["counts"]["noise"][kind], kind
    for kind in FAULTS:
        want = round(getattr(cfg.faults, kind) * cfg.pool_size)
        assert want >= 1 and (pool.fault == kind).sum() == want == info["counts"]["faults"][kind], kind
    assert set(pool.noise) == {"none", *NOISE} and set(pool.fault) == {"none", *FAULTS}
    assert info["counts"]["pool_clean"] == pool.clean.sum()


def test_noise_is_placed_at_random(truth):
    pool = truth[truth.split == "pool"].reset_index(drop=True)
    for kind in ("mismatched_caption", "http_404"):
        idx = pool.index[(pool.noise == kind) | (pool.fault == kind)]
        assert idx.min() < len(pool) * 0.2 and idx.max() > len(pool) * 0.8, kind


def test_url_lists_match_truth(small_web, truth):
    cfg, out, _, _ = small_web
    for split, folder in (("pool", "img"), ("hq", "hq")):
        lst = pd.read_parquet(os.path.join(out, f"{split}.parquet"))
        part = truth[truth.split == split]
        assert list(lst.columns) == ["url", "caption"]
        assert lst.url.tolist() == part.url.tolist() and lst.caption.tolist() == part.caption.tolist()
        assert all(re.fullmatch(rf"http://{re.escape(cfg.host)}/{folder}/[0-9a-f]{{16}}\.(jpg|png)", u)
                   for u in lst.url)
    assert (truth.uid == truth.url.map(uid_of)).all() and truth.uid.is_unique


def test_clean_flag_follows_its_definition(truth):
    assert (truth.clean == (truth.noise.isin(CLEAN_NOISE) & (truth.fault == "none"))).all()
    hq = truth[truth.split == "hq"]
    assert hq.clean.all() and (hq.fault == "none").all() and (hq.noise == "none").all()


def test_captions_tell_the_truth_about_noise(truth):
    for row in truth.itertuples():
        w = words(row.caption)
        said = (w & set(COLOURS), w & set(SHAPES))
        if row.noise in ("none", "exact_duplicate", "near_duplicate", "tiny_image"):
            assert said == ({row.colour}, {row.shape}), row.caption
        elif row.noise == "mismatched_caption":
            assert len(said[0]) == 1 and len(said[1]) == 1
            assert f"{next(iter(said[0]))} {next(iter(said[1]))}" != row.classname, row.caption
        elif row.noise == "generic_caption":
            assert not said[0] and not said[1], row.caption
        elif row.noise == "junk_image":  # plausible caption over an image of nothing
            assert len(said[0]) == 1 and len(said[1]) == 1 and row.classname is None


def test_served_files_match_truth(small_web, truth):
    cfg, out, _, _ = small_web
    no_file = truth.fault.isin(["http_404", "http_500"])
    assert truth[no_file].path.isna().all() and truth[~no_file].path.notna().all()
    for row in truth[~no_file].itertuples():
        with open(os.path.join(out, row.path), "rb") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        if row.fault == "not_image":
            assert data.lstrip().lower().startswith(b"<!doctype html")
            continue
        im = Image.open(io.BytesIO(data))
        assert im.size == (row.width, row.height)
        assert im.format == ("PNG" if row.path.endswith(".png") else "JPEG")
        if row.fault == "oversized":
            assert row.width * row.height == cfg.oversized_pixels and len(data) < cfg.oversized_pixels / 100
    formats = truth[truth.fault == "none"].path.str.rsplit(".", n=1).str[1].value_counts()
    assert formats["jpg"] > 3 * formats["png"] > 0  # JPEG mostly, some PNG


def test_image_sizes_by_noise(small_web, truth):
    cfg, *_ = small_web
    ok = truth[truth.width.notna() & (truth.fault != "oversized")]
    tiny = ok.noise == "tiny_image"
    assert ok[tiny].width.between(4, 16).all() and ok[tiny].height.between(4, 16).all()
    normal = ok[~tiny & (ok.noise != "near_duplicate")]  # near duplicates may be rescaled by up to 10%
    assert normal.width.between(cfg.min_side, cfg.max_side).all()
    assert normal.height.between(cfg.min_side, cfg.max_side).all()
    assert truth[truth.noise == "junk_image"]["shape"].isna().all()
    assert truth[truth.noise != "junk_image"]["shape"].notna().all()


def test_duplicates_point_at_their_source(small_web, truth):
    cfg, out, _, _ = small_web
    by_uid = truth.set_index("uid")
    served = ("none", "slow", "truncated", "opt_out")  # faults whose file is the rendered image
    assert truth[~truth.noise.isin(["exact_duplicate", "near_duplicate"])].duplicate_of.isna().all()
    compared = 0
    for row in truth[truth.noise.isin(["exact_duplicate", "near_duplicate"])].itertuples():
        src = by_uid.loc[row.duplicate_of]
        assert src.split == "pool" and src.noise == "none" and row.uid != row.duplicate_of
        for key in ("shape", "colour", "size", "position", "background"):
            assert getattr(row, key) == src[key]
        if row.fault in served and src.fault in served:
            compared += 1
            same = open(os.path.join(out, row.path), "rb").read() == open(os.path.join(out, src.path), "rb").read()
            assert same == (row.noise == "exact_duplicate") == (row.sha256 == src.sha256), row.noise
    assert compared >= cfg.pool_size * (cfg.noise.exact_duplicate + cfg.noise.near_duplicate) / 2


def test_test_set_is_balanced_and_labelled(small_web):
    cfg, out, info, _ = small_web
    meta = json.load(open(os.path.join(out, "test", "classnames.json")))
    names = meta["classnames"]
    assert names == info["classnames"] and len(names) == len(SHAPES) * len(COLOURS) == len(set(names))
    assert "a photo of a {}." in meta["templates"] and all("{}" in t for t in meta["templates"])
    samples: dict[str, dict] = {}
    with tarfile.open(os.path.join(out, "test", "00000.tar")) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    assert len(samples) == cfg.test_size and all(set(s) == {"jpg", "txt", "cls", "json"} for s in samples.values())
    labels = [int(s["cls"]) for s in samples.values()]
    counts = pd.Series(labels).value_counts()
    assert len(counts) == len(names) and counts.max() - counts.min() <= 1
    for s in samples.values():
        attrs = json.loads(s["json"])
        label = int(s["cls"])
        assert attrs["classname"] == names[label] == f"{attrs['colour']} {attrs['shape']}"
        w = words(s["txt"].decode())
        assert w & set(COLOURS) == {attrs["colour"]} and w & set(SHAPES) == {attrs["shape"]}
        assert Image.open(io.BytesIO(s["jpg"])).size == (attrs["width"], attrs["height"])


def test_build_is_idempotent(small_web, monkeypatch):
    cfg, out, info, _ = small_web
    marker = os.path.join(out, "web.json")
    before = os.stat(marker).st_mtime_ns
    import pipeline.synthetic.web as web

    monkeypatch.setattr(web, "_pool", lambda cfg: pytest.fail("rebuilt a complete web"))
    assert build_web(cfg, out) == info
    assert os.stat(marker).st_mtime_ns == before
    assert info["config_hash"] == web_hash(cfg) == web_hash(cfg.model_copy(update={"dir": "/elsewhere"}))


def test_build_is_deterministic_and_rebuilds_on_change(small_web, tmp_path, make_config):
    cfg, out, _, _ = small_web
    again = str(tmp_path / "again")
    build_web(cfg, again)
    assert tree_digest(again) == tree_digest(out)  # every file byte for byte, web.json included

    other = make_config(seed=8, pool_size=60, hq_size=5, test_size=30)
    info = build_web(other, again)  # a different config in the same folder: rebuilt, old files gone
    truth = pd.read_parquet(os.path.join(again, "truth.parquet"))
    assert info["config_hash"] == web_hash(other) != web_hash(cfg)
    assert len(truth) == 65 and len(os.listdir(os.path.join(again, "images", "hq"))) == 5
    assert not set(truth.url) & set(pd.read_parquet(os.path.join(out, "truth.parquet")).url)

    os.remove(os.path.join(again, "web.json"))  # a build that died before its marker is redone
    os.remove(os.path.join(again, "pool.parquet"))
    assert build_web(other, again) == info and os.path.exists(os.path.join(again, "pool.parquet"))
