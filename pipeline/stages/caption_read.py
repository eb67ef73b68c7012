"""The caption stage's read side: one input shard's rows with the captioner's (and the judge's) crops for the actor
pool (`read_shard`), and, when the judge is the score stage's model, the stored image embeddings it reuses
(`score_embeddings` on the driver, `stored_embeddings` in the read task). `pipeline.stages.caption` runs them.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.config import config_hash
from pipeline.core.layout import Dataset, fs_and_path


def read_shard(item: dict, chunk_rows: int, max_pixels: int, captioner_pre: dict, judge_pre: dict | None,
               splits: list, embed_dim: int | None = None):
    """Read function of the actor-pool runner: one shard's rows with the captioner's crops (and the judge's when
    its preprocessing differs), whether each is held out, then the shard's end. With `embed_dim` every row also
    carries `judge_embedding`: the score stage's stored embedding where `item` names one (`embeddings`, row-aligned
    with the `signals` parquet's keys), else NaN; a row that has one leaves its judge crop out of the batch."""
    from filtering.preprocess import Preprocessor
    from filtering.signals import decode_crops, sample_identity
    from pipeline.core.sample import image_member
    from pipeline.core.shards import ReadReport, read_samples
    from pipeline.core.timing import TimeSplit
    from pipeline.execution.actor_pool import ShardEnd

    pre = Preprocessor(captioner_pre)
    judge = Preprocessor(judge_pre) if judge_pre is not None else None
    report, shard, rows, split = ReadReport(), str(item["shard"]), [], TimeSplit()
    with split.part("reading"):
        stored = stored_embeddings(item) if embed_dim else {}
    for key, files in split.timed(read_samples(str(item["url"]), report), "reading"):
        uid, _, caption = sample_identity(key, files, shard)
        emb = stored.get(key)
        # one decode, at the size the larger of the two models needs, serves both crops (the judge's is made even
        # when its stored embedding replaces it: the decode's scale, so the captioner's crop, must not change)
        with split.part("decoding"):
            info, _, (pixels, *crop) = decode_crops(image_member(files)[1], max_pixels,
                                                    [pre, *([judge] if judge else [])])
        if emb is not None:
            crop = []
        row = {"uid": uid, "key": key, "shard": shard, "caption": caption, "decodable": info.decodable,
               "decode_error": info.decode_error}
        rows.append((row, pixels if info.decodable else None, crop[0] if crop and info.decodable else None, emb))
        if len(rows) >= chunk_rows:
            yield _columns(rows, pre, judge, splits, embed_dim)
            rows = []
    if rows:
        yield _columns(rows, pre, judge, splits, embed_dim)
    blank = ({"uid": "", "key": "", "shard": shard, "caption": "", "decodable": False, "decode_error": ""}, None, None,
             None)
    yield ShardEnd({**report.as_dict(), "time_split": split.as_dict()}, _columns([blank], pre, judge, [], embed_dim))


def stored_embeddings(item: dict) -> dict[str, np.ndarray]:
    """key -> the score stage's image embedding (float16) of a shard (`item["embeddings"]`, `item["signals"]`);
    empty when the item names none. Undecodable rows were stored as zeros: they are left out."""
    import pyarrow.parquet as pq

    if not item.get("embeddings"):
        return {}
    fs, path = fs_and_path(str(item["signals"]))
    with fs.open(path, "rb") as f:
        keys = pq.read_table(f, columns=["key"]).column("key").to_pylist()
    fs, path = fs_and_path(str(item["embeddings"]))
    with fs.open(path, "rb") as f:
        emb = np.load(f)
    if len(keys) != len(emb):  # not the pair the marker promised: encode every image instead
        return {}
    return {k: e for k, e in zip(keys, emb, strict=True) if np.any(e)}


def _columns(rows: list[tuple], pre, judge, splits: list, embed_dim: int | None = None) -> dict[str, np.ndarray]:
    from filtering.capfilt import object_column

    cols = {k: object_column([str(r[0][k] or "") for r in rows]) for k in ("uid", "key", "shard", "caption",
                                                                           "decode_error")}
    cols["decodable"] = np.array([bool(r[0]["decodable"]) for r in rows], dtype=bool)
    cols["held_out"] = np.array([any(s.uid(r[0]["uid"]) for s in splits) for r in rows], dtype=bool)
    for name, prep, i in (("pixels", pre, 1), ("judge_pixels", judge, 2)):
        if prep is not None:
            batch = np.zeros((len(rows), *prep.shape), dtype=np.uint8)  # (B, H, W, 3)
            for j, r in enumerate(rows):
                if r[i] is not None:
                    batch[j] = r[i]
            cols[name] = batch
    if embed_dim:  # every chunk of every shard has the column (Ray Data concatenates chunks of several shards)
        emb = np.full((len(rows), embed_dim), np.nan, dtype=np.float32)
        for j, r in enumerate(rows):
            if r[3] is not None and r[0]["decodable"]:
                emb[j] = r[3]
        cols["judge_embedding"] = emb
    return cols


def score_embeddings(ds: Dataset, models: dict, input_sha: dict[str, str | None]) -> dict:
    """What the judge can reuse: `{"dim": D, "shards": {shard: {"embeddings": url, "signals": url}}}` for the
    shards a score stage scored with the judge's own weights (content id: `models["judge_id"]`, the score stage's
    `model_weights_id`) and model config from the same input tar (`input_sha`: shard -> its tar's sha256), keeping
    embeddings; empty when there are none (or the judge is BLIP's, which has no image embedding to reuse)."""
    judge = models["judge"]
    if judge.backend != "clip":
        return {}
    key = config_hash(judge.model_spec())
    shards = {}
    for shard, mark in ds.done_shards("signals").items():
        if (shard in input_sha and mark.get("model") == key and mark.get("model_id") == models["judge_id"]
                and f"embeddings/{shard}.npy" in (mark.get("files") or {})
                and mark.get("input_sha256") == input_sha[shard]):
            shards[shard] = {"embeddings": ds.shard_file(shard, "npy", "embeddings"),
                             "signals": ds.shard_file(shard, "parquet", "signals")}
    for where in shards.values():  # the width from a header: (rows, D) (an empty shard's array may be 1-D)
        fs, path = fs_and_path(where["embeddings"])
        with fs.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape = read_header(f)[0]
        if len(shape) == 2 and shape[1]:
            return {"dim": int(shape[1]), "shards": shards}
    return {}
