"""A synthetic scored pool on disk in winnow's own format, for `bench/scale.py`: signals, no images.

    python bench/scale_pool.py --rows 1000000 --root /tmp/scale    # -> /tmp/scale/pool (about 10 s per 1M rows)

Writes `<root>/pool/signals/NNNNN.parquet` (the score stage's schema, with `dfn_score`), `signals/_done/NNNNN`,
`shards/_done/NNNNN` (so the filter stage sees a fully scored pool), optionally `embeddings/NNNNN.npy` (D=64,
float32) for semantic dedup, and `manifest.json` with download and score sections, as the stages would.

What the rows hold (vectorised; every shard is a function of the seed and its index, so shards can be written in any
order): random 32-hex uids, 0.5% of them a uid listed twice; image sizes 16-1024 px; 2% undecodable (no size, no
score, no hashes); captions from 1000 templates (so words and characters are real counts), 3% generic ones with
a reason; sha256 and phash derived from an image id, where 2% of the rows are exact copies of another row (same
sha256 and phash) and 2% near copies (phash 1-4 bits away); dfn_score ~ N(0.25, 0.08). Embeddings: 1000 concepts
on the sphere plus noise, 5% of a shard's rows near copies (cosine ~0.97) of another row of the same shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from filtering.signals import signals_schema  # noqa: E402

ROWS_PER_SHARD = 10_000
DIM = 64
_WORDS = ("a photo of the red cat dog sitting on wooden table near window with bright sunlight "
          "old house garden flowers car street night city lights mountain lake river beach people").split()
_GENERIC = [("IMG_0001.jpg", "filename"), ("image", "single word"), ("click here to download", "boilerplate")]


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (x + salt): a reproducible 64-bit hash of an id, vectorised."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hex(words: list[np.ndarray]) -> pa.Array:
    """Rows of 64-bit words -> one lowercase hex string per row (16 digits per word)."""
    raw = np.stack([w.astype(">u8") for w in words], axis=1).tobytes().hex().encode()
    return pa.array(np.frombuffer(raw, dtype=f"S{16 * len(words)}")).cast(pa.string())


def _captions(rng: np.random.Generator, count: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    texts = [" ".join(rng.choice(_WORDS, size=rng.integers(2, 14))) for _ in range(count)]
    return (np.array(texts, dtype=object), np.array([len(t.split()) for t in texts], np.int32),
            np.array([len(t) for t in texts], np.int32))


def shard_table(index: int, total_rows: int, seed: int = 0, rows: int = ROWS_PER_SHARD) -> pa.Table:
    """Signals of shard `index` (global rows index*rows ... +rows)."""
    rng = np.random.default_rng([seed, index])
    n = min(rows, total_rows - index * rows)
    gid = np.arange(index * rows, index * rows + n, dtype=np.int64)
    shard = f"{index:05d}"
    uid_src = gid.copy()
    twice = rng.random(n) < 0.005  # a URL listed twice: the uid of another row of the pool
    uid_src[twice] = rng.integers(0, total_rows, twice.sum())
    image = gid.copy()
    u = rng.random(n)
    exact, near = u < 0.02, (u >= 0.02) & (u < 0.04)
    image[exact | near] = rng.integers(0, total_rows, (exact | near).sum())
    phash = _mix(image, 3)
    flips = np.zeros(n, np.uint64)
    for _ in range(4):  # 1-4 random bits flipped (a flip twice cancels: some near copies are exact in phash)
        bit = rng.integers(0, 64, n).astype(np.uint64)
        flips ^= np.where(near & (rng.random(n) < 0.7), np.uint64(1) << bit, np.uint64(0))
    flips[near & (flips == 0)] = np.uint64(1)
    phash ^= flips
    sha = [_mix(image, s) for s in (5, 6, 7, 8)]
    sha[3] = np.where(near, _mix(gid, 9), sha[3])  # a near copy is other bytes
    decodable = rng.random(n) >= 0.02
    w = rng.integers(16, 1025, n)
    h = np.clip((w * rng.lognormal(0, 0.4, n)).astype(np.int64), 8, 4096)
    texts, words, chars = _captions(np.random.default_rng(seed))
    pick = rng.integers(0, len(texts), n)
    caption, cwords, cchars = texts[pick], words[pick], chars[pick]
    generic = rng.random(n) < 0.03
    g = rng.integers(0, len(_GENERIC), n)
    caption = np.where(generic, np.array([t for t, _ in _GENERIC], dtype=object)[g], caption)
    cwords, cchars = cwords.copy(), cchars.copy()
    cwords[generic] = np.array([len(t.split()) for t, _ in _GENERIC], np.int32)[g[generic]]
    cchars[generic] = np.array([len(t) for t, _ in _GENERIC], np.int32)[g[generic]]
    reason = np.where(generic, np.array([r for _, r in _GENERIC], dtype=object)[g], None)
    score = rng.normal(0.25, 0.08, n).astype(np.float32)
    uid = _hex([_mix(uid_src, 1), _mix(uid_src, 2)])
    cols = {
        "uid": uid, "key": pa.array([f"{i:09d}" for i in gid]), "shard": pa.array([shard] * n),
        "url": pa.array([f"https://img.example/{i}.jpg" for i in uid_src]), "caption": pa.array(caption.tolist()),
        "image_ext": pa.array(["jpg"] * n), "image_bytes": pa.array(rng.lognormal(10, 1, n).astype(np.int64)),
        "width": pa.array(w.astype(np.int32), mask=~decodable),
        "height": pa.array(h.astype(np.int32), mask=~decodable),
        "aspect_ratio": pa.array((np.maximum(w, h) / np.minimum(w, h)).astype(np.float32), mask=~decodable),
        "decodable": pa.array(decodable),
        "decode_error": pa.array(np.where(decodable, None, "UnidentifiedImageError: cannot identify image").tolist(),
                                 type=pa.string()),
        "caption_chars": pa.array(cchars), "caption_words": pa.array(cwords), "generic_caption": pa.array(generic),
        "generic_reason": pa.array(reason.tolist(), type=pa.string()),
        "sha256": _hex(sha), "phash": pa.array(_hex([phash]).to_numpy(zero_copy_only=False), mask=~decodable),
        "dfn_score": pa.array(score, mask=~decodable),
    }
    schema = signals_schema(with_model=True)
    return pa.Table.from_arrays([pa.array(cols[f.name]).cast(f.type) for f in schema], schema=schema)


def shard_embeddings(index: int, n: int, seed: int = 0, dim: int = DIM, concepts: int = 1000) -> np.ndarray:
    """(n, dim) float32 unit rows: concept centre + noise; 5% near copies of another row of the shard."""
    centers = np.random.default_rng(seed + 7).standard_normal((concepts, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, index, 1])
    emb = centers[rng.integers(0, concepts, n)] + rng.standard_normal((n, dim)).astype(np.float32) * 0.15
    copy = np.flatnonzero(rng.random(n) < 0.05)
    emb[copy] = emb[rng.integers(0, n, len(copy))] + rng.standard_normal((len(copy), dim)).astype(np.float32) * 0.03
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def write_pool(root: str, rows: int, seed: int = 0, embeddings: bool = False, name: str = "pool",
               rows_per_shard: int = ROWS_PER_SHARD) -> dict:
    """Write the pool; return counts and seconds."""
    t0 = time.perf_counter()
    base = Path(root) / name
    n_shards = -(-rows // rows_per_shard)
    for i in range(n_shards):
        shard = f"{i:05d}"
        t = shard_table(i, rows, seed, rows_per_shard)
        out = base / "signals" / f"{shard}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)
        files = {f"signals/{shard}.parquet": {"size": out.stat().st_size}}
        if embeddings:
            e = base / "embeddings" / f"{shard}.npy"
            e.parent.mkdir(parents=True, exist_ok=True)
            np.save(e, shard_embeddings(i, t.num_rows, seed))
            files[f"embeddings/{shard}.npy"] = {"size": e.stat().st_size}
        record = {"samples": t.num_rows, "ok": t.num_rows, "reasons": {}, "files": files}
        _json(base / "signals" / "_done" / shard, record)
        _json(base / "shards" / "_done" / shard, {"samples": t.num_rows, "ok": t.num_rows, "reasons": {},
                                                  "files": {}})
    shards = {"done": n_shards, "total": n_shards}
    stages = {kind: {"kind": kind, "state": "complete", "samples": rows, "ok": rows, "success_rate": 1.0,
                     "shards": shards, "wall_seconds": 0.0, "synthetic": "bench/scale_pool.py"}
              for kind in ("download", "score")}
    _json(base / "manifest.json", {"stages": stages})
    return {"rows": rows, "shards": n_shards, "seconds": time.perf_counter() - t0,
            "bytes": sum(f.stat().st_size for f in base.rglob("*") if f.is_file())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--root", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="pool", help="the dataset's name (its folder under --root)")
    p.add_argument("--embeddings", action="store_true", help="also write embeddings/*.npy (D=64) for semantic dedup")
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    print(json.dumps(write_pool(args.root, args.rows, args.seed, args.embeddings, args.name)))


if __name__ == "__main__":
    main()
