"""The trainer's side of a bootstrap's filter check: skip the held-out samples, measure the model on them at each
evaluation, keep the weights with the best estimate, and export those.

The probe (`filtering.holdout.HoldoutProbe`, built by the train-clip stage) holds the held-out pairs and knows how to
turn match scores into an estimated AUROC; this module only needs its small interface:

    probe.split(sample) -> bool        is this raw sample held out (the training stream skips it)
    probe.evaluate(score) -> dict      score(images, captions) -> (N,) match scores; returns "estimated_auroc", ...

The best weights so far ride in each checkpoint (the task's extra state), so a resumed run still exports the best.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from training.contrastive.config import HoldoutConfig
from training.data import ShardStream

BEST = "holdout/best/"  # extra-state prefix of the best weights
HISTORY = "holdout/history"  # (N, 2): step, estimated AUROC


class SkipHeldOut(ShardStream):
    """The training stream without the samples `held_out` names (they are the filter's test)."""

    def __init__(self, *args, held_out: Callable[[dict], bool], **kwargs):
        super().__init__(*args, **kwargs)
        self.held_out = held_out

    def raw(self, errors) -> Iterator[dict]:
        for sample in super().raw(errors):
            if not self.held_out(sample):
                yield sample


class HoldoutTracker:
    """Estimates per evaluation step, and the weights of the best one (rank 0)."""

    def __init__(self, probe, cfg: HoldoutConfig):
        self.probe, self.cfg = probe, cfg
        self.history: list[tuple[int, float]] = []
        self.results: dict[int, dict] = {}  # step -> the probe's full result (this process's evaluations)
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    @property
    def best_estimate(self) -> float:
        return dict(self.history).get(self.best_step, float("-inf")) if self.best_step is not None else float("-inf")

    def measure(self, step: int, clip: nn.Module, score: Callable) -> dict:
        """Estimate the current weights at `step`; keep a copy of them when they are the best so far."""
        result = self.probe.evaluate(score)
        est = float(result["estimated_auroc"])
        self.history = [(s, e) for s, e in self.history if s != step] + [(step, est)]
        self.results[step] = result
        if est == est and est > self.best_estimate:  # NaN never wins
            self.best_step = step
            self.best_state = {k: v.detach().cpu().clone() for k, v in clip.state_dict().items()}
        return result

    def choose(self, step: int, clip: nn.Module, score: Callable) -> dict:
        """After the last step: measure, then (with `choose_checkpoint`) load the best weights into `clip`; the
        chosen step's result, its estimate at the last step and the history."""
        final = self.measure(step, clip, score)
        chosen = step
        if self.cfg.choose_checkpoint and self.best_step is not None and self.best_step != step:
            clip.load_state_dict(self.best_state)
            chosen = self.best_step
        if chosen not in self.results:  # chosen in an earlier process (before a resume): measure it again
            self.results[chosen] = self.probe.evaluate(score)
        out = {**self.results[chosen], "step": chosen, "last_step": step,
               "last_step_auroc": float(final["estimated_auroc"]),
               "history": [{"step": s, "estimated_auroc": round(e, 4)} for s, e in sorted(self.history)],
               "fraction": self.cfg.fraction, "seed": self.cfg.seed, "warn_below": self.cfg.warn_below,
               "junk_images": self.cfg.junk_images, "near_misses": self.cfg.near_misses}
        return out

    def state(self) -> dict[str, torch.Tensor]:
        if not self.history:
            return {}
        out = {HISTORY: torch.tensor(sorted(self.history), dtype=torch.float64),
               "holdout/best_step": torch.tensor([self.best_step if self.best_step is not None else -1])}
        if self.best_state is not None:
            out.update({BEST + k: v.contiguous() for k, v in self.best_state.items()})
        return out

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if HISTORY not in tensors:
            return
        self.history = [(int(s), float(e)) for s, e in tensors[HISTORY].tolist()]
        best = int(tensors["holdout/best_step"][0])
        self.best_step = best if best >= 0 else None
        state = {k[len(BEST):]: v for k, v in tensors.items() if k.startswith(BEST)}
        self.best_state = state or None
