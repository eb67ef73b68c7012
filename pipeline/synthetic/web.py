"""Build the synthetic web on disk: URL lists, the files behind them, a labelled test set and the ground truth.

    <out_dir>/
      pool.parquet        url, caption: the noisy pool (http://<host>/img/<id>.<jpg|png>)
      hq.parquet          url, caption: clean pairs (http://<host>/hq/<id>.<jpg|png>), never faulty
      images/img/, images/hq/, images/fault/   what the server sends (see server.py)
      test/00000.tar, test/classnames.json      held-out labelled webdataset, not served
      truth.parquet       per URL: noise, fault, attributes, caption, served file (the pipeline never reads it)
      web.json            config + hash, counts, classnames; written last: present and same hash = complete

Run: `python -m pipeline.synthetic build <out_dir>`.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import config_hash
from pipeline.core.ids import uid_of
from pipeline.core.layout import read_json, write_json_atomic
from pipeline.synthetic.assign import assign_kinds
from pipeline.synthetic.captions import generic_caption
from pipeline.synthetic.config import SyntheticWebConfig
from pipeline.synthetic.faults import NOT_IMAGE_HTML, bomb_png
from pipeline.synthetic.render import Scene, encode, junk_image
from pipeline.synthetic.testset import labelled_samples, write_test_set
from pipeline.synthetic.worlds import World, get_world

VERSION = 1  # bump when the generator's output changes, so old webs are rebuilt
PNG_FRACTION = 0.1
NOT_IMAGE_PATH = "images/fault/not_image.html"
OVERSIZED_PATH = "images/fault/oversized.png"
NO_FILE_FAULTS = ("http_404", "http_500")  # nothing is served for these
CLEAN_NOISE = ("none", "exact_duplicate", "near_duplicate")  # the caption describes a real rendered image

TRUTH_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("split", pa.string()), ("clean", pa.bool_()),
    ("noise", pa.string()), ("fault", pa.string()), ("duplicate_of", pa.string()),
    ("shape", pa.string()), ("colour", pa.string()), ("size", pa.string()), ("position", pa.string()),
    ("background", pa.string()), ("classname", pa.string()), ("caption", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("path", pa.string()), ("sha256", pa.string()),
    ("source", pa.string()),  # the fashion world: which photo of the package ("train:<index>"); else null
])


def web_hash(cfg: SyntheticWebConfig) -> str:
    """Hash of what determines the web's content (not where it lives)."""
    # the shapes world hashes as before the world key existed, so webs built then are still current; the rendered
    # worlds hash as before fashion_data existed
    exclude = {"dir", "fashion_data"} | ({"world"} if cfg.world == "shapes" else set())
    extra = {"fashion_source": world_of(cfg).source} if cfg.world == "fashion" else {}
    return config_hash({**cfg.model_dump(mode="json", exclude=exclude), **extra, "version": VERSION})


def world_of(cfg: SyntheticWebConfig) -> World:
    """The config's world, reading the fashion world's photos from where the config says."""
    return get_world(cfg.world, cfg.fashion_data)


def web_dir(cfg: SyntheticWebConfig, root: str) -> str:
    """The web's folder: `cfg.dir` if absolute, else under the run root."""
    return cfg.dir if os.path.isabs(cfg.dir) else os.path.join(root, cfg.dir)


def _item_id(seed: int, split: str, i: int) -> str:
    return hashlib.sha1(f"{seed}/{split}/{i}".encode()).hexdigest()[:16]


def _item(cfg: SyntheticWebConfig, split: str, i: int, scene: Scene | None, caption: str, data: bytes, fmt: str,
          width: int, height: int) -> dict:
    folder = "img" if split == "pool" else "hq"
    ident = _item_id(cfg.seed, split, i)
    return {"url": f"http://{cfg.host}/{folder}/{ident}.{fmt}", "split": split, "scene": scene, "caption": caption,
            "data": data, "fmt": fmt, "width": width, "height": height, "file": f"images/{folder}/{ident}.{fmt}",
            "noise": "none", "fault": "none", "duplicate_of": None}


def _render(cfg: SyntheticWebConfig, split: str, i: int, noise: str = "none") -> dict:
    """One URL's content before cross-row noise (mismatched captions, duplicates) is applied."""
    rng = np.random.default_rng([cfg.seed, 10, 1 if split == "pool" else 2, i])
    world = world_of(cfg)
    scene = world.web_scene(cfg.seed, cfg.pool_size, split, i, rng, cfg.min_side, cfg.max_side)
    fmt = "png" if rng.random() < PNG_FRACTION else "jpg"
    quality = int(rng.integers(75, 96))
    if noise == "tiny_image":  # same kind of picture, a few pixels a side
        scene = world.tiny_scene(scene, cfg.seed, i)
    caption = world.describe(scene, rng, world.hq_templates if split == "hq" else world.pool_templates)
    if noise == "junk_image":
        junk = junk_image(rng, scene.width, scene.height)
        image = junk.convert("L").convert("RGB") if world.grey else junk
    else:
        image = world.draw(scene)
    item = _item(cfg, split, i, None if noise == "junk_image" else scene, caption, encode(image, fmt, quality), fmt,
                 scene.width, scene.height)
    item.update(noise=noise, quality=quality)
    return item


def _apply_cross_noise(cfg: SyntheticWebConfig, items: list[dict]) -> None:
    """Mismatched captions and duplicates: rows that take something from another row of the pool."""
    world = world_of(cfg)
    sources = [j for j, it in enumerate(items) if it["noise"] == "none"]  # their captions describe what is served
    if not sources and any(it["noise"] in ("mismatched_caption", "exact_duplicate", "near_duplicate") for it in items):
        raise ValueError("noise rates leave no clean pool image to take captions or duplicates from; lower them")
    for i, it in enumerate(items):
        rng = np.random.default_rng([cfg.seed, 30, i])
        if it["noise"] == "mismatched_caption":
            own = it["scene"].classname
            draws = (sources[int(k)] for k in rng.integers(len(sources), size=64))
            j = next((j for j in draws if items[j]["scene"].classname != own), None)
            if j is None:  # 64 draws all of one class: only when the pool is tiny or nearly uniform
                others = [j for j in sources if items[j]["scene"].classname != own]
                if not others:
                    raise ValueError("no clean pool image of another class to take a mismatched caption from")
                j = others[int(rng.integers(len(others)))]
            it["caption"] = items[j]["caption"]
        elif it["noise"] == "generic_caption":
            it["caption"] = generic_caption(rng)
        elif it["noise"] in ("exact_duplicate", "near_duplicate"):
            src = items[sources[int(rng.integers(len(sources)))]]
            it["duplicate_of"] = uid_of(src["url"])
            if it["noise"] == "exact_duplicate":
                scene, data, fmt = src["scene"], src["data"], src["fmt"]
            else:  # re-rendered with small jitter, re-encoded at another JPEG quality
                scene = world.jitter_scene(src["scene"], rng)
                quality = int(rng.integers(55, 96))
                if quality == src["quality"]:
                    quality -= 5
                data, fmt = encode(world.draw(scene), "jpg", quality), "jpg"
            ident = it["url"].rsplit("/", 1)[1].split(".")[0]
            it.update(scene=scene, data=data, fmt=fmt, width=scene.width, height=scene.height,
                      caption=world.describe(scene, rng, world.pool_templates),
                      url=f"http://{cfg.host}/img/{ident}.{fmt}", file=f"images/img/{ident}.{fmt}")


def _pool(cfg: SyntheticWebConfig) -> list[dict]:
    n = cfg.pool_size
    noise = assign_kinds(cfg.noise.model_dump(), n, np.random.default_rng([cfg.seed, 20]))
    faults = assign_kinds(cfg.faults.model_dump(), n, np.random.default_rng([cfg.seed, 21]))
    items = []
    for i in range(n):
        it = _render(cfg, "pool", i, noise[i] if noise[i] not in ("exact_duplicate", "near_duplicate") else "none")
        it["noise"], it["fault"] = noise[i], faults[i]
        items.append(it)
    _apply_cross_noise(cfg, items)
    return items


Served = tuple[str | None, bytes | None, int | None, int | None]


def _served(item: dict, bomb: tuple[bytes, int, int] | None) -> Served:
    """(path, bytes, width, height) of what the server sends for a URL, given its fault."""
    fault = item["fault"]
    if fault in NO_FILE_FAULTS:
        return None, None, None, None
    if fault == "not_image":
        return NOT_IMAGE_PATH, NOT_IMAGE_HTML, None, None
    if fault == "oversized":
        return OVERSIZED_PATH, bomb[0], bomb[1], bomb[2]
    return item["file"], item["data"], item["width"], item["height"]


def _truth_row(item: dict, path: str | None, data: bytes | None, width: int | None, height: int | None) -> dict:
    scene = item["scene"]
    attrs = scene.attributes() if scene is not None else dict.fromkeys(
        ("shape", "colour", "size", "position", "background", "classname"))
    clean = item["noise"] in CLEAN_NOISE and item["fault"] == "none"
    return {"uid": uid_of(item["url"]), "url": item["url"], "split": item["split"], "clean": clean,
            "noise": item["noise"], "fault": item["fault"], "duplicate_of": item["duplicate_of"], **attrs,
            "caption": item["caption"], "width": width, "height": height, "path": path,
            "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
            "source": getattr(scene, "origin", None)}


def _write_parquet(table: pa.Table, path: str) -> None:
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_file(out_dir: str, rel: str, data: bytes) -> None:
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _clear(out_dir: str) -> None:
    """Remove a previous (other-config or partial) build's outputs; only the names this module writes."""
    for name in ("web.json", "pool.parquet", "hq.parquet", "truth.parquet"):
        p = os.path.join(out_dir, name)
        if os.path.exists(p):
            os.remove(p)
    for name in ("images", "test"):
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def read_web(out_dir: str) -> dict | None:
    """The web's `web.json` if the build completed, else None."""
    path = os.path.join(out_dir, "web.json")
    return read_json(path) if os.path.exists(path) else None


def build_web(cfg: SyntheticWebConfig, out_dir: str) -> dict:
    """Write the synthetic web to `out_dir` (a local folder) and return its `web.json`; a no-op if already built."""
    want = web_hash(cfg)
    done = read_web(out_dir)
    if done is not None and done.get("config_hash") == want:
        return done
    _clear(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    items = _pool(cfg) + [_render(cfg, "hq", i) for i in range(cfg.hq_size)]
    bomb = bomb_png(cfg.oversized_pixels) if any(it["fault"] == "oversized" for it in items) else None
    rows = []
    for it in items:
        path, data, width, height = _served(it, bomb)
        if path is not None:
            _write_file(out_dir, path, data)
        rows.append(_truth_row(it, path, data, width, height))
    truth = pa.Table.from_pylist(rows, schema=TRUTH_SCHEMA)
    for split in ("pool", "hq"):
        part = [r for r in rows if r["split"] == split]
        _write_parquet(pa.table({"url": [r["url"] for r in part], "caption": [r["caption"] for r in part]}),
                       os.path.join(out_dir, f"{split}.parquet"))
    _write_parquet(truth, os.path.join(out_dir, "truth.parquet"))
    world = world_of(cfg)
    shards = write_test_set(labelled_samples(cfg.seed, cfg.test_size, cfg.min_side, cfg.max_side, world),
                            os.path.join(out_dir, "test"), world.classnames(), world.class_templates)

    pool_rows = [r for r in rows if r["split"] == "pool"]
    info = {
        "version": VERSION,
        "config": cfg.model_dump(mode="json"),
        "config_hash": want,
        "host": cfg.host,
        "counts": {
            "pool": cfg.pool_size, "hq": cfg.hq_size, "test": cfg.test_size,
            "pool_clean": sum(r["clean"] for r in pool_rows),
            "noise": {k: sum(r["noise"] == k for r in pool_rows) for k in cfg.noise.model_dump()},
            "faults": {k: sum(r["fault"] == k for r in pool_rows) for k in cfg.faults.model_dump()},
        },
        "world": cfg.world,
        "classnames": world.classnames(),
        "templates": list(world.class_templates),
        "files": {"pool": "pool.parquet", "hq": "hq.parquet", "truth": "truth.parquet",
                  "test": [f"test/{s}" for s in shards], "classnames": "test/classnames.json"},
    }
    write_json_atomic(os.path.join(out_dir, "web.json"), info)
    return read_json(os.path.join(out_dir, "web.json"))
