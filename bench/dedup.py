"""Semantic dedup: the k-means list search (`dedup: {method: semantic}`) against the exact O(N^2) search it replaces.

    python bench/dedup.py            # lists at 50k/100k/200k, exact at 5k/10k/20k, agreement on 20k: ~1-2 min
    python bench/dedup.py --full     # lists up to 1M, agreement on 100k as well: ~5-10 min on 2 cores

Data: unit vectors (D=64) from a mixture of 1000 concepts on the sphere (Zipf-sized, each with its own spread,
so the lists k-means finds do not match the concepts), plus 10% planted copies: rows whose source is another
row, in groups of 1 to 6 copies per source, each copy at a cosine of about 0.92 to 1 from its source, so some
copies fall just under the 0.95 threshold and copies of one source may or may not be near each other.

Both methods run the dedup op's own code: the same survivor rule (priority order on a random dfn_score, then
`greedy_keep`), only the pair search differs (`cosine_pairs` vs `semantic_pairs`). Every measurement runs in a
fresh process so that peak memory is its own: extra RSS over the process after the data was made (the exact
search's block of similarities; k-means, the row-to-list table, one product and the pairs for the list search).
The exact method's time is extrapolated as a * N^2 from its largest measured size, its memory linearly (a block
x N similarities). Agreement: the fraction of the exact method's drops that the list search also drops (the
target), and the fraction of its drops that the exact method also drops; for comparison, the same for
SemDeDup's own-list-only comparison (nprobe 1). Planted recall: the fraction of planted (source, copy) pairs at
cosine >= 0.95 that the search returns, at every size (no exact run needed).
Last line: RESULT semantic_dedup_agreement=<fraction of the exact drops, smallest over the agreement sizes>
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402
from filtering import dedup  # noqa: E402

MIN_COSINE = 0.95
DIM = 64


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_pool(n: int, dim: int = DIM, seed: int = 0, dup_fraction: float = 0.1, concepts: int = 1000):
    """(embeddings (n, dim) float32 unit rows, dfn_score (n,), planted pairs (P, 2) as (source, copy) rows)."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((concepts, dim)))
    weight = 1.0 / np.arange(1, concepts + 1) ** 0.8
    spread = rng.uniform(0.8, 1.6, concepts)  # within-concept cosine ~1/(1+s^2): 0.28 to 0.61
    n_copy = int(n * dup_fraction)
    n_base = n - n_copy
    label = rng.choice(concepts, size=n_base, p=weight / weight.sum())
    noise = rng.standard_normal((n_base, dim)) * (spread[label] / math.sqrt(dim))[:, None]
    base = unit(centers[label] + noise)
    # groups: each source gets 1 + Geometric copies (capped at 6), until n_copy copies are planted
    per_source = np.minimum(rng.geometric(0.5, size=n_copy), 6)
    per_source = per_source[:np.searchsorted(np.cumsum(per_source), n_copy) + 1]
    per_source[-1] -= per_source.sum() - n_copy
    sources = rng.choice(n_base, size=len(per_source), replace=False)
    src = np.repeat(sources, per_source)
    t = rng.uniform(0.0, 0.43, n_copy)  # cosine to the source ~1/sqrt(1+t^2): 0.92 to 1
    copies = unit(base[src] + rng.standard_normal((n_copy, dim)) * (t / math.sqrt(dim))[:, None])
    emb = np.concatenate([base, copies]).astype(np.float32)
    perm = rng.permutation(n)  # rows in random order: copies are not next to their sources
    where = np.empty(n, np.int64)
    where[perm] = np.arange(n)
    planted = np.stack([where[src], where[n_base + np.arange(n_copy)]], axis=1)
    return emb[perm], rng.uniform(0, 1, n)[perm], planted


def drops(emb: np.ndarray, score: np.ndarray, exact: bool,
          nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the dedup op does to these rows: (dropped mask, representative, pairs (i, j)); uid = the row number."""
    uids = np.array([f"{k:08x}" for k in range(len(emb))], dtype=object)
    order = dedup.priority_order(uids, score)
    ordered = emb[order]
    if exact:
        i, j, v = dedup.cosine_pairs(ordered, MIN_COSINE)
    else:
        i, j, v = dedup.semantic_pairs(ordered, MIN_COSINE, nprobe=nprobe)
    i, j = order[i], order[j]
    dropped, rep, _ = dedup.greedy_keep(len(emb), i, j, v, order)
    return dropped, rep, np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)


class PeakRSS:
    """Samples this process's RSS every 10 ms while the block runs; `extra` is the peak over the RSS at entry."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.start


def measure(method: str, n: int, dim: int, seed: int) -> dict:
    """One method at one size, in this (fresh) process: time, extra peak RSS, drops, planted recall."""
    emb, score, planted = planted_pool(n, dim, seed)
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        dropped, _, pairs = drops(emb, score, exact=method == "exact")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    cos = np.einsum("nd,nd->n", emb[planted[:, 0]], emb[planted[:, 1]])
    near = planted[cos >= MIN_COSINE]
    near = np.stack([near.min(1), near.max(1)], axis=1)
    found = np.isin(near[:, 0] * n + near[:, 1], pairs[:, 0] * n + pairs[:, 1])
    return {"method": method, "n": n, "seconds": seconds, "cpu": cpu, "extra_mib": mem.extra / 2**20,
            "drops": int(dropped.sum()), "pairs": len(pairs), "planted_recall": float(found.mean())}


def agreement(n: int, dim: int, seed: int) -> dict:
    emb, score, _ = planted_pool(n, dim, seed)
    exact, exact_rep, exact_pairs = drops(emb, score, exact=True)
    exact_keys = set((exact_pairs[:, 0] * n + exact_pairs[:, 1]).tolist())
    out = {"n": n, "exact_drops": int(exact.sum())}
    for name, nprobe in (("lists", None), ("own_list", 1)):
        got, rep, pairs = drops(emb, score, exact=False, nprobe=nprobe)
        both = exact & got
        keys = set((pairs[:, 0] * n + pairs[:, 1]).tolist())
        out[name] = {"drops": int(got.sum()), "of_exact": both.sum() / max(1, exact.sum()),
                     "of_own": both.sum() / max(1, got.sum()),
                     "same_rep": float((exact_rep[both] == rep[both]).mean()) if both.any() else 1.0,
                     "pair_recall": len(exact_keys & keys) / max(1, len(exact_keys))}
    return out


def in_fresh_process(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench/dedup.py {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(runs: list[dict], agree: list[dict], extrapolate_to: int) -> None:
    print(f"\nmachine: {machine()}")
    print(f"dim {DIM}, min_cosine {MIN_COSINE}, clusters N/{dedup.ROWS_PER_CLUSTER}, nprobe {dedup.DEFAULT_NPROBE}; "
          "cpu = CPU seconds over all threads (less sensitive than wall time to other load on a shared machine)")
    print("method | rows | wall s | cpu s | cpu us/row | extra peak RSS | drops | pairs | planted recall")
    for r in runs:
        print(f"{r['method']} | {r['n']:,} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['cpu'] / r['n'] * 1e6:.1f} | "
              f"{r['extra_mib']:.0f} MiB | {r['drops']:,} | {r['pairs']:,} | {r['planted_recall']:.4f}")
    exact = [r for r in runs if r["method"] == "exact"]
    lists = [r for r in runs if r["method"] == "lists"]
    for name, rs in (("exact", exact), ("lists", lists)):
        if len(rs) > 1:
            growth = math.log(rs[-1]["cpu"] / rs[0]["cpu"]) / math.log(rs[-1]["n"] / rs[0]["n"])
            print(f"{name} cpu cost exponent {rs[0]['n']:,} -> {rs[-1]['n']:,} rows: {growth:.2f} (1 = linear)")
    big, top = lists[-1], exact[-1]
    slope = (top["extra_mib"] - exact[0]["extra_mib"]) / max(1, top["n"] - exact[0]["n"])
    for n in sorted({big["n"], extrapolate_to}):
        wall, cpu = (top[k] * (n / top["n"]) ** 2 for k in ("seconds", "cpu"))
        mem = top["extra_mib"] + slope * (n - top["n"])
        line = (f"exact at {n:,} rows, extrapolated from {top['n']:,}: {wall:,.0f} s wall, {cpu:,.0f} s cpu, "
                f"{mem:,.0f} MiB")
        at = next((r for r in lists if r["n"] == n), None)
        if at:
            line += (f"; lists measured {at['seconds']:.1f} s wall, {at['cpu']:.1f} s cpu, {at['extra_mib']:.0f} MiB: "
                     f"{wall / at['seconds']:.0f}x faster (wall), {cpu / at['cpu']:.0f}x (cpu)")
        print(line)
    for a in agree:
        for name, what in (("lists", f"nprobe {dedup.DEFAULT_NPROBE}"), ("own_list", "own list only (nprobe 1)")):
            r = a[name]
            print(f"agreement on {a['n']:,} rows, {what}: exact drops {a['exact_drops']:,}, this {r['drops']:,}; "
                  f"drops {r['of_exact']:.4f} of the exact drops, {r['of_own']:.4f} of its drops are exact drops; "
                  f"same kept copy {r['same_rep']:.4f}; pair recall {r['pair_recall']:.4f}")
    print(result_line("semantic_dedup_agreement", min(a["lists"]["of_exact"] for a in agree), ">=", 0.99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="lists up to 1M rows, agreement on 100k rows as well")
    ap.add_argument("--sizes", type=int, nargs="+",
                    help="sizes of the list search (default 50k 100k 200k; --full 50k 200k 1M)")
    ap.add_argument("--exact-sizes", type=int, nargs="+", default=[5_000, 10_000, 20_000])
    ap.add_argument("--agree", type=int, nargs="+", help="agreement sizes (default 20k; --full 20k 100k)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--measure", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)  # one fresh-process run
    ap.add_argument("--agreement", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), DIM, args.seed)))
        return
    if args.agreement:
        print(json.dumps(agreement(args.agreement, DIM, args.seed)))
        return
    sizes = args.sizes or ([50_000, 200_000, 1_000_000] if args.full else [50_000, 100_000, 200_000])
    agree_sizes = args.agree or ([20_000, 100_000] if args.full else [20_000])
    runs = []
    for method, ns in (("exact", sorted(args.exact_sizes)), ("lists", sorted(sizes))):
        for n in ns:
            runs.append(in_fresh_process("--measure", method, str(n), "--seed", str(args.seed)))
            print(f"{method} {n:,}: {runs[-1]['seconds']:.1f} s", flush=True)  # progress; the table follows
    agree = [in_fresh_process("--agreement", str(n), "--seed", str(args.seed)) for n in agree_sizes]
    report(runs, agree, 1_000_000)


if __name__ == "__main__":
    main()
