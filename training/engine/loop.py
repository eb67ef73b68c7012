"""The training loop every worker runs (or this process, in-process), whatever the task.

Read `Loop.run` top to bottom: for each step set the learning rate, draw `accum_steps` micro-batches and compute
the task's loss under autocast, skip the update if the loss or the gradient is not finite, clip, step AdamW, then
every so often log, evaluate and checkpoint. Before it, `Loop.__init__` builds the task's model and the optimizer
and resumes from the newest checkpoint; after it, rank 0 evaluates once more and has the task write its final
files. The loop never imports `ray`: a backend (`training.engine.backend`) says where it runs. Started by
`training.engine.fit`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pipeline.core.layout import join, read_json, write_json_atomic
from training.engine import checkpoint as ckpt
from training.engine.backend import Backend
from training.engine.config import EngineConfig, OptimConfig
from training.engine.metrics_log import MetricsLog, plot_curves
from training.engine.run_dir import RunDir
from training.engine.task import Task

log = logging.getLogger("winnow.train")
RESEED = 7919  # a resumed run's data seed moves by this per step already done: it does not replay its first batches


def lr_at(step: int, cfg: OptimConfig, total: int) -> float:
    """Linear warmup to `lr`, then cosine to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def all_ranks_true(flag: bool, world: int, device: torch.device) -> bool:
    """Every rank must agree to skip a step, or DDP's gradient all-reduce would wait forever."""
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(values: list[float], world: int, device: torch.device) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


@dataclass
class Window:
    """The steps since the last log line: what that line averages."""

    loss: float = 0.0
    steps: int = 0
    skipped: int = 0  # samples the readers dropped
    samples: int = 0
    t0: float = field(default_factory=time.time)


def train(task: Task, cfg: EngineConfig, out_dir: str, backend: Backend) -> dict:
    """Train `task` for `cfg.steps` in `out_dir`. Rank 0 returns `{"metrics": last reported metrics, "export": what
    `task.export` returned}` (`{"error": ...}` after divergence); the other ranks return `{}`."""
    run_dir = RunDir(out_dir)  # rank 0's logs and final files, staged locally when out_dir is remote
    loop = None
    try:
        loop = Loop(task, cfg, out_dir, backend, run_dir)
        return loop.run()
    finally:
        if loop is not None:
            loop.close()
        run_dir.close()


class Loop:
    """One worker's training run; `train` builds it, runs it and closes it."""

    def __init__(self, task: Task, cfg: EngineConfig, out_dir: str, backend: Backend, run_dir: RunDir):
        self.task, self.cfg, self.out_dir, self.backend, self.run_dir = task, cfg, out_dir, backend, run_dir
        self.rank, self.world, self.device = backend.rank, backend.world, backend.device
        self.metrics_log, self.batches, self.window = None, None, Window()
        torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))

        # --- model and optimizer (the same seed on every rank: identical initial weights) -------------------------
        torch.manual_seed(cfg.seed)
        # on the device before the optimizer exists, so a restored optimizer state lands on the device too
        self.model = task.setup(self.rank, self.world, self.device).to(self.device)
        opt = cfg.optim
        self.optimizer = torch.optim.AdamW(task.param_groups(self.model, opt.weight_decay), lr=opt.lr,
                                           betas=(opt.beta1, opt.beta2), eps=opt.eps)
        self.amp_dtype = autocast_dtype(task.precision, self.device)
        # the device's own scaler: a "cuda" one on another device disables itself (fp16 would run unscaled)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.start_step, self.samples_seen = 0, 0
        self.resume()
        self.ddp = backend.wrap(self.model)
        self.model.train()

        self.global_batch = task.batch_size * self.world * opt.accum_steps
        self.data_seed = RESEED * self.start_step
        self.bad_in_a_row, self.bad_total = 0, 0
        self.last_metrics: dict = {}  # of the last log step
        self.reported: dict = {}  # what the backend was last given; fit returns it

    def run(self) -> dict:
        cfg, task = self.cfg, self.task
        self.metrics_log = MetricsLog(self.run_dir.local, cfg.steps, self.start_step, enabled=self.rank == 0,
                                      desc=task.name)
        self.batches = task.batches(self.rank, self.world, self.data_seed)
        self.window = Window()
        for step in range(self.start_step, cfg.steps):
            lr = lr_at(step, cfg.optim, cfg.steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            task.on_step_start(step, cfg.steps)

            step_loss, finite = self.forward_backward()
            grad_norm = float("nan")
            if finite:  # clip, unless (without a scaler) the gradient is not finite
                self.scaler.unscale_(self.optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, cfg.optim.grad_clip or math.inf))
                finite = math.isfinite(grad_norm) or self.scaler.is_enabled()  # the scaler skips inf steps itself
            self.samples_seen += self.global_batch
            if not finite:
                self.bad_in_a_row, self.bad_total = self.bad_in_a_row + 1, self.bad_total + 1
                log.warning("step %d: non-finite %s, update skipped [%d in a row]", step + 1,
                            "gradient" if math.isfinite(step_loss) else "loss", self.bad_in_a_row)
                if self.bad_in_a_row >= cfg.max_bad_steps:
                    return self.diverged(step + 1, lr)
                continue
            self.bad_in_a_row = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            task.after_update(step)
            self.window.loss, self.window.steps = self.window.loss + step_loss, self.window.steps + 1
            self.window.samples += self.global_batch
            self.log_evaluate_checkpoint(step + 1, lr, grad_norm)
        return self.finish()

    def forward_backward(self) -> tuple[float, bool]:
        """Accumulate one step's gradients over `accum_steps` micro-batches (DDP all-reduces on the last one only);
        return the step's loss and whether it was finite on every rank (if not, the rest are not drawn)."""
        accum = self.cfg.optim.accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(accum):
            batch = self.next_batch()
            sync = micro == accum - 1 or self.world == 1
            with nullcontext() if sync else self.ddp.no_sync():
                amp = self.amp_dtype
                with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    loss = self.task.loss(self.ddp, batch)["loss"] / accum
                step_loss += float(loss.detach())
                if not all_ranks_true(math.isfinite(step_loss), self.world, self.device):
                    return step_loss, False
                self.scaler.scale(loss).backward()
        return step_loss, True

    def next_batch(self) -> dict:
        batch = next(self.batches)
        skipped = batch.pop("skipped", 0)
        self.window.skipped += int(skipped.sum()) if torch.is_tensor(skipped) else int(skipped)
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def log_evaluate_checkpoint(self, done: int, lr: float, grad_norm: float) -> None:
        cfg, w = self.cfg, self.window
        if done % cfg.log_every == 0 or done == cfg.steps:
            loss_avg, skipped_avg = mean_over_ranks([w.loss / w.steps, w.skipped], self.world, self.device)
            rate = w.samples / (time.time() - w.t0)
            self.last_metrics = {"loss": loss_avg, "lr": lr, "grad_norm": grad_norm, "samples_per_s": rate,
                                 "skipped_samples": int(round(skipped_avg * self.world)),
                                 "skipped_steps": self.bad_total, **self.task.step_metrics()}
            self.metrics_log.log(done, self.last_metrics)
            self.metrics_log.progress(w.steps, loss_avg, rate)
            self.window = Window()
        t_pause = time.time()  # evaluation and checkpoints do not count against samples/s
        every = self.task.eval_every
        if self.rank == 0 and every and done % every == 0 and done != cfg.steps:  # the final one comes after
            self.metrics_log.log(done, self.task.eval_metrics(self.task.evaluate()))
        metrics = {"step": done, **self.last_metrics}
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            self.save(done, metrics)
        elif done % cfg.log_every == 0:
            self.backend.report(metrics)
            self.reported = metrics
        self.window.t0 += time.time() - t_pause

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def save(self, step: int, metrics: dict) -> None:
        """Every rank writes its RNG; rank 0 the weights, optimizer and the task's extra state; the backend takes
        the directory (Ray merges the ranks' directories)."""
        state = {"step": step, "samples_seen": self.samples_seen, "data_seed": self.data_seed, "task": self.task.name}
        folder = tempfile.mkdtemp(prefix="winnow-ckpt-")
        ckpt.save_rank_rng(folder, self.rank)
        if self.rank == 0:
            ckpt.save_checkpoint(folder, model=self.model, optimizer=self.optimizer, state=state, world=self.world,
                                 scaler=self.scaler, extra=self.task.extra_state())
        self.backend.save(folder, step, metrics)
        self.reported = metrics
        if self.rank == 0:  # a remote output directory is as current as its newest checkpoint
            self.metrics_log.flush()
            self.run_dir.push()

    def resume(self) -> None:
        """Load the newest checkpoint, if any: the backend's (after a restart), else the newest complete on disk."""
        if self.rank == 0:
            self.run_dir.pull()
        found = load_newest(self.backend, join(self.out_dir, "checkpoints"), self.rank)
        if found is None:
            return
        self.model.load_state_dict(found["model"])
        self.optimizer.load_state_dict(found["optimizer"])
        if found["state"].get("scaler"):
            self.scaler.load_state_dict(found["state"]["scaler"])
        if found["rng"] is not None:
            ckpt.set_rng_state(*found["rng"])
        self.task.load_extra_state(found["extra"])
        self.start_step, self.samples_seen = found["state"]["step"], found["state"]["samples_seen"]
        if self.rank == 0:
            log.warning("resuming from step %d (%d samples seen)", self.start_step, self.samples_seen)
            record_resume(self.run_dir, self.start_step, self.world)

    # --- the end ------------------------------------------------------------------------------------------------
    def finish(self) -> dict:
        """Rank 0, after the last step: the final evaluation, the task's files, eval.json and the curves."""
        if self.rank != 0:
            return {}
        result = self.task.evaluate()
        self.metrics_log.log(self.cfg.steps, self.task.eval_metrics(result))
        exported = self.task.export(self.run_dir, result)
        with open(self.run_dir.path("eval.json"), "w") as f:
            json.dump(result, f, indent=1)
        plot_curves(self.run_dir.path("metrics.csv"), self.run_dir.path("curves.png"))
        self.metrics_log.flush()
        self.run_dir.push()
        return {"metrics": self.reported, "export": exported}

    def diverged(self, step: int, lr: float) -> dict:
        """Every rank stops at the same step (the skip decision is shared); rank 0 leaves the reason for the driver."""
        reason = (f"training diverged: {self.bad_in_a_row} consecutive steps had a non-finite loss or gradient "
                  f"(last: step {step}, lr {lr:.3g}); lower optim.lr, raise optim.warmup_steps or check the data")
        self.metrics_log.flush()
        self.run_dir.push()
        if self.rank == 0:
            write_json_atomic(join(self.out_dir, "diverged.json"), {"error": reason, "step": step})
        return {"error": reason}

    def close(self) -> None:
        if self.metrics_log is not None:
            self.metrics_log.close()
        if hasattr(self.batches, "close"):
            self.batches.close()  # a generator's close releases its DataLoader, which stops the worker processes
        self.batches = None


def load_newest(backend: Backend, ckpt_root: str, rank: int) -> dict | None:
    with backend.restored() as path:
        if path is not None:
            return ckpt.load_checkpoint(path, rank)
    for path in ckpt.complete_checkpoints(ckpt_root):  # newest first; one a crash left unreadable is passed over
        try:
            return ckpt.load_checkpoint(path, rank)
        except Exception as err:  # safetensors raises its own error types for a damaged file
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, err)
    return None


def record_resume(run: RunDir, step: int, world: int) -> None:
    """`resumes.json` lists the resumes of this run (after a worker failure, a lost node or a rerun): the step each
    resumed from and the world size it resumed with (smaller than configured after an elastic restart)."""
    path = run.path("resumes.json")
    resumes = read_json(path) if os.path.isfile(path) else []
    write_json_atomic(path, [*resumes, {"step": step, "world": world}])
