"""Test data for the CapFilt and filter-check tests: a small synthetic web written straight to shards (no server,
no download), its ground truth, and the truth's verdict on a caption.

`web_shards` builds the web on disk (`pipeline.synthetic.build_web`, no URL faults) and writes its pool and
high-quality URLs as winnow datasets `pool` and `hq` (tar + done marker, like the download stage: `<key>.jpg`,
`<key>.txt`, `<key>.json` with uid and url), so a test gets the synthetic web's images, captions and noise with
`truth.parquet` beside them in a second instead of a download stage's run.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from pipeline.core.layout import Dataset, file_record
from pipeline.core.shards import write_tar
from pipeline.synthetic.config import FaultRates, SyntheticWebConfig
from pipeline.synthetic.web import build_web
from pipeline.synthetic.worlds import get_world

CLEAN = ("none", "exact_duplicate", "near_duplicate")  # the caption describes the served image


def web_shards(root: str, world: str = "shapes", pool: int = 600, hq: int = 600, seed: int = 0,
               per_shard: int = 300, **noise) -> dict:
    """Build the web under `root/web` and write datasets `pool` and `hq`; returns paths and the truth DataFrame."""
    no_faults = FaultRates(**dict.fromkeys(FaultRates.model_fields, 0.0))
    cfg = SyntheticWebConfig(world=world, seed=seed, pool_size=pool, hq_size=hq, test_size=60, faults=no_faults,
                             **({"noise": noise} if noise else {}))
    web_dir = os.path.join(root, "web")
    build_web(cfg, web_dir)
    truth = pd.read_parquet(os.path.join(web_dir, "truth.parquet"))
    out = {"root": root, "web": web_dir, "truth": truth, "world": world}
    for split in ("pool", "hq"):
        rows = truth[truth["split"] == split].reset_index(drop=True)
        ds = Dataset(root, split)
        tars = []
        for start in range(0, len(rows), per_shard):
            shard = f"{start // per_shard:05d}"
            samples = []
            for i, r in rows.iloc[start:start + per_shard].iterrows():
                with open(os.path.join(web_dir, r["path"]), "rb") as f:
                    image = f.read()
                meta = {"uid": r["uid"], "url": r["url"], "caption": r["caption"]}
                samples.append((f"{i:09d}", {r["path"].rsplit(".", 1)[1]: image, "txt": r["caption"].encode(),
                                             "json": json.dumps(meta).encode()}))
            write_tar(ds.shard_file(shard, "tar"), samples)
            ds.write_marker(shard, {"samples": len(samples), "ok": len(samples), "reasons": {},
                                    "files": {f"shards/{shard}.tar": file_record(ds.fs, ds.shard_file(shard, "tar"))}})
            tars.append(ds.shard_file(shard, "tar"))
        out[split] = tars
    return out


def caption_is_right(caption: str, colour: str | None, shape: str | None, world: str) -> bool:
    """A caption is right for an image when it names the image's colour and shape, and no other colour or shape."""
    if colour is None or shape is None or not caption:
        return False
    w = get_world(world)
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    return [c for c in w.colours if c in words] == [colour] and [s for s in w.shapes if s in words] == [shape]


def web_truth(truth: pd.DataFrame, uids) -> np.ndarray:
    """Per uid: whether its web caption is right (the pair is clean)."""
    clean = truth.set_index("uid")["noise"].isin(CLEAN)
    return np.asarray([bool(clean.get(u, False)) for u in uids])
