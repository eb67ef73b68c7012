"""A stage on a machine other work also uses: the embedded Ray's workers at nice 0 (winnow's `ray.worker_niceness`)
against Ray's own default, 15, idle and beside busy processes.

    python bench/shared_machine.py                  # download once, then the score stage (signals only), 4 runs
    python bench/shared_machine.py --busy 3 --limit 240 --pool 4000

Ray starts its worker processes at nice 15, so that its own daemons stay responsive; but then any other busy
process at nice 0 (a compiler, a browser, a second job) takes nearly all the CPU from every read task and model
actor. Per setting, in a fresh process: `winnow run configs/demo.yaml --stage score --set score.model_from=null` on
a downloaded pool (its shards' signals are removed before each run), once on an idle machine and once beside
`--busy` processes spinning at nice 0 (default: one more than the cores). A run past `--limit` seconds is stopped
and shown as such. Last line: RESULT shared_machine_slowdown_nice0=<busy / idle wall time at nice 0> target<=
<the fair share, (busy + cores) / cores>, beside the same ratio at nice 15.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402

CONFIG = REPO / "configs" / "demo.yaml"


def spin() -> None:
    while True:
        pass


def winnow(root: str, stage: str, niceness: int, limit: float, sets: list[str]) -> float | None:
    """Wall seconds of one stage in a fresh process (None when stopped at `limit`)."""
    cmd = [sys.executable, "-m", "pipeline", "run", str(CONFIG), "--stage", stage, "--set", f"root={root}",
           "--set", f"ray.worker_niceness={niceness}", *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=1000, help="synthetic pool size")
    ap.add_argument("--busy", type=int, default=(os.cpu_count() or 1) + 1, help="busy processes beside the stage")
    ap.add_argument("--limit", type=float, default=120, help="seconds before a run is stopped")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    root = tempfile.mkdtemp(prefix="bench-shared-")
    sets = [f"synthetic.pool_size={args.pool}", "score.model_from=null"]
    try:
        t = winnow(root, "download", 0, 600, sets)
        print(f"download {args.pool} synthetic pairs: {t:.1f} s", flush=True)
        signals = Path(root) / "pool" / "signals"
        walls: dict[tuple[int, bool], float | None] = {}
        for busy in (False, True):
            spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy if busy else 0)]
            for p in spinners:
                p.start()
            try:
                for niceness in (15, 0):
                    shutil.rmtree(signals, ignore_errors=True)
                    walls[niceness, busy] = w = winnow(root, "score", niceness, args.limit, sets)
                    shown = f"{w:.1f} s" if w is not None else f"stopped at {args.limit:.0f} s"
                    where = f"beside {args.busy} busy processes" if busy else "idle"
                    print(f"score (signals), workers at nice {niceness:2d}, {where}: {shown}", flush=True)
            finally:
                for p in spinners:
                    p.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    fair = (args.busy + cores) / cores
    ratios = {}
    for niceness in (15, 0):
        idle, busy = walls[niceness, False], walls[niceness, True] or args.limit
        ratios[niceness] = busy / idle
        least = " (at least)" if walls[niceness, True] is None else ""
        print(f"nice {niceness:2d}: busy / idle = {ratios[niceness]:.1f}x{least} (a fair share: {fair:.1f}x)")
    print(result_line("shared_machine_slowdown_nice15", ratios[15], "<=", round(fair, 2)))
    print(result_line("shared_machine_slowdown_nice0", ratios[0], "<=", round(fair, 2)))


if __name__ == "__main__":
    main()
