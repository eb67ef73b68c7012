"""What rank 0 records while training: a metrics CSV, TensorBoard events, a progress bar, and a PNG of the curves.

The CSV is the source of truth (one row per logged step, columns added as new metrics appear); on resume the rows
after the checkpoint's step are dropped, so a resumed run's CSV reads as one run.
"""

from __future__ import annotations

import csv
import math
import os
import time

from tqdm import tqdm


def read_csv(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class MetricsLog:
    def __init__(self, out_dir: str, total_steps: int, start_step: int, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.csv_path = os.path.join(out_dir, "metrics.csv")
        self.rows = [r for r in read_csv(self.csv_path) if int(r["step"]) <= start_step] if enabled else []
        self.tb = None
        self.bar = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start_step + 1)
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", desc=desc, dynamic_ncols=True)
            self._write()

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        if self.rows and int(self.rows[-1]["step"]) == step:
            self.rows[-1].update(row)  # e.g. evaluation metrics of a step already logged
        else:
            self.rows.append(row)
        for k, v in metrics.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(k.replace("@", "_at_"), v, step)
        self._write()

    def progress(self, steps: int, loss: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.0f}")

    def _write(self) -> None:
        columns = list(dict.fromkeys(k for r in self.rows for k in r)) or ["step"]
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def flush(self) -> None:
        """Put buffered TensorBoard events on disk (before the run directory is uploaded)."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_curves(csv_path: str, png_path: str) -> None:
    """One panel per metric column against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)
    keys = [k for k in (rows[0] if rows else {}) if k not in ("step", "time")]
    counts = {k: sum(r.get(k) not in (None, "") for r in rows) for k in keys}
    # a metric logged once (a final evaluation) is a number for the summary, not a curve; plot it only when nothing
    # else has two points
    keys = [k for k in keys if counts[k] > 1] or [k for k in keys if counts[k]]
    if not keys:
        return
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
