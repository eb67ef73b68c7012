"""The training loop each Ray Train worker runs (or this process, with `scaling.num_workers: 0`).

Read top to bottom: build the model, resume from the newest checkpoint if there is one, then for each step draw
`accum_steps` micro-batches, compute the objective under autocast, skip the update if the loss or the gradient is
not finite, clip, step AdamW on a cosine schedule, and every so often log, evaluate and checkpoint. Rank 0 writes
the logs and, at the end, the final weights and evaluation. Started by `training.trainer.fit`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from pipeline.core.layout import fs_and_path, join, read_json, write_json_atomic
from pipeline.core.model_configs import register_model_configs
from pipeline.core.storage import arrow_filesystem, is_remote, upload
from training import checkpoint as ckpt
from training.config import OptimConfig, TrainConfig
from training.data import ShardStream, TokenEncoder, make_loader
from training.eval import Evaluator, flat_metrics
from training.metrics_log import MetricsLog, plot_curves
from training.models import build_model, param_groups, set_patch_dropout
from training.objectives import make_objective, temperature_and_bias
from training.run_dir import RunDir
from training.vocab import WordTargets

log = logging.getLogger("winnow.train")


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


def worker_device() -> torch.device:
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # local mode before Ray Train set a device up
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resume_state(ckpt_root: str, rank: int) -> dict | None:
    """The newest checkpoint: Ray's (after a worker-group restart or a rerun) or the newest on disk."""
    import ray.train

    found = ray.train.get_checkpoint()
    if found is not None:
        with found.as_directory() as path:
            return ckpt.load_checkpoint(path, rank)
    for path in ckpt.complete_checkpoints(ckpt_root):  # newest first; one a crash left unreadable is passed over
        try:
            return ckpt.load_checkpoint(path, rank)
        except Exception as err:  # safetensors raises its own error types for a damaged file
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, err)
    return None


def record_resume(run: RunDir, step: int) -> None:
    """`resumes.json` lists the steps this run resumed from (after a worker failure or a rerun)."""
    path = run.path("resumes.json")
    steps = read_json(path) if os.path.isfile(path) else []
    write_json_atomic(path, [*steps, step])


def place_checkpoint(tmp: str, root: str, step: int, keep: int) -> str:
    """Local mode has no Ray storage: move (or upload) a written checkpoint directory into `root`, keep the newest
    `keep`; return where it went."""
    final = join(root, ckpt.step_dir_name(step))
    fs, path = fs_and_path(final)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    if is_remote(final):
        upload(tmp, final)  # a half-uploaded directory reads as incomplete: state.json lists every file's size
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.move(tmp, path)
    ckpt.prune_checkpoints(root, keep)
    return final


def ray_checkpoint(url: str):
    import ray.train

    filesystem, path = arrow_filesystem(url)
    return ray.train.Checkpoint(path, filesystem=filesystem)


def train_worker(config: dict) -> dict:
    """Ray Train's `train_loop_per_worker`; `config` comes from `training.trainer.fit`."""
    import ray.train

    cfg = TrainConfig.model_validate(config["train"])
    out_dir, local_mode, vocab = config["out_dir"], config["local_mode"], config.get("vocab") or []
    if not local_mode:
        # Ray Train configured this worker's root logger at INFO after our start-up hook ran; its per-step
        # "Reporting training result" lines and open_clip's model-loading chatter would bury the progress bar.
        from pipeline.core.logs import quiet_worker_logs

        quiet_worker_logs()
    ckpt_root = join(out_dir, "checkpoints")
    run = RunDir(out_dir)  # rank 0's logs and final files, staged locally when out_dir is remote
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = worker_device()
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, int(cfg.scaling.cpus_per_worker)))
    register_model_configs()

    # --- model, objective, optimizer (the same seed on every rank: identical initial weights) -------------------
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, cfg.objective, len(vocab))
    model, clip = built.model, built.clip
    if cfg.objective != "siglip" and getattr(clip, "logit_bias", None) is not None:
        clip.logit_bias.requires_grad_(False)  # unused by this loss; DDP would wait for its gradient
    model.to(device)  # before the optimizer exists, so a restored optimizer state lands on the device too
    objective = make_objective(cfg.objective, cfg.loss, rank, world)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
    amp_dtype = autocast_dtype(cfg.model.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step, samples_seen = 0, 0
    if rank == 0:
        run.pull()
    resumed = resume_state(ckpt_root, rank)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if resumed["state"].get("scaler"):
            scaler.load_state_dict(resumed["state"]["scaler"])
        if resumed["rng"] is not None:
            ckpt.set_rng_state(*resumed["rng"])
        start_step, samples_seen = resumed["state"]["step"], resumed["state"]["samples_seen"]
        if rank == 0:
            log.warning("resuming from step %d (%d samples seen)", start_step, samples_seen)
            record_resume(run, start_step)
    ddp = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    model.train()

    # --- data: a fresh stream position after a resume, so the resumed run does not replay its first batches ---
    encode = WordTargets(vocab) if cfg.objective == "catlip" else TokenEncoder(built.tokenizer)
    data_seed = cfg.data.seed + 7919 * start_step
    stream = ShardStream(config["shards"], built.preprocess_train, encode, rank, world, data_seed,
                         cfg.data.shuffle_buffer)
    batches = iter(make_loader(stream, cfg.data.batch_size, cfg.data.loader_workers))
    global_batch = cfg.data.batch_size * world * cfg.optim.accum_steps

    metrics_log = MetricsLog(run.local, cfg.steps, start_step, enabled=rank == 0)
    evaluator = None
    if rank == 0 and (cfg.eval.zeroshot or cfg.eval.retrieval):
        evaluator = Evaluator(cfg.eval, built.preprocess_val, built.tokenizer,
                              WordTargets(vocab) if cfg.objective == "catlip" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def save(step: int, metrics: dict) -> None:
        """Every rank writes its RNG; rank 0 the weights and optimizer; Ray merges and registers the directory."""
        state = {"step": step, "samples_seen": samples_seen, "data_seed": data_seed, "objective": cfg.objective,
                 "model": cfg.model.name}
        tmp = tempfile.mkdtemp(prefix="winnow-ckpt-")
        ckpt.save_rank_rng(tmp, rank)
        if rank == 0:
            ckpt.save_checkpoint(tmp, model=model, optimizer=optimizer, state=state, world=world, scaler=scaler)
        if local_mode:  # no Ray storage in local mode: place the directory ourselves
            final = place_checkpoint(tmp, ckpt_root, step, cfg.keep_checkpoints)
            ray.train.report(metrics, checkpoint=ray_checkpoint(final))
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=ckpt.step_dir_name(step))
            shutil.rmtree(tmp, ignore_errors=True)
        if rank == 0:  # a remote output directory is as current as its newest checkpoint
            metrics_log.flush()
            run.push()

    bad_in_a_row, bad_total, window_loss, window_steps, window_skipped = 0, 0, 0.0, 0, 0
    window_t0, window_samples, last_metrics = time.time(), 0, {}
    try:
        for step in range(start_step, cfg.steps):
            lr = lr_at(step, cfg.optim, cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cfg.model.unmasked_tuning_steps and step == cfg.steps - cfg.model.unmasked_tuning_steps:
                set_patch_dropout(clip, 0.0)  # FLIP: the last steps see every patch, as evaluation does

            # --- forward/backward over accum_steps micro-batches --------------------------------------------
            optimizer.zero_grad(set_to_none=True)
            step_loss, finite = 0.0, True
            for micro in range(cfg.optim.accum_steps):
                images, texts, skipped = next(batches)  # (B, 3, H, W), (B, T) tokens or (B, V) words, (B,)
                window_skipped += int(skipped.sum())
                images, texts = images.to(device, non_blocking=True), texts.to(device, non_blocking=True)
                last = micro == cfg.optim.accum_steps - 1
                with nullcontext() if last or world == 1 else ddp.no_sync():
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        out = ddp(images) if cfg.objective == "catlip" else ddp(images, texts)
                        loss = objective(out, {"text": texts})["loss"] / cfg.optim.accum_steps
                    step_loss += float(loss.detach())
                    finite = all_ranks_true(math.isfinite(step_loss), world, device)
                    if finite:
                        scaler.scale(loss).backward()
                if not finite:
                    break

            # --- update, unless the loss or (without a scaler) the gradient is not finite -------------------
            grad_norm = float("nan")
            if finite:
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip or float("inf")))
                finite = math.isfinite(grad_norm) or scaler.is_enabled()  # the scaler skips inf steps itself
            samples_seen += global_batch
            if not finite:
                bad_in_a_row, bad_total = bad_in_a_row + 1, bad_total + 1
                log.warning("step %d: non-finite %s, update skipped [%d in a row]", step + 1,
                            "gradient" if math.isfinite(step_loss) else "loss", bad_in_a_row)
                if bad_in_a_row >= cfg.max_bad_steps:
                    metrics_log.flush()
                    run.push()
                    return diverged(out_dir, rank, step + 1, bad_in_a_row, lr)
                continue
            bad_in_a_row = 0
            scaler.step(optimizer)
            scaler.update()
            if getattr(clip, "logit_scale", None) is not None:
                with torch.no_grad():
                    clip.logit_scale.clamp_(0, math.log(100))  # as open_clip: temperature no lower than 1/100
            done = step + 1
            window_loss, window_steps = window_loss + step_loss, window_steps + 1
            window_samples += global_batch

            # --- log, evaluate, checkpoint ------------------------------------------------------------------
            if done % cfg.log_every == 0 or done == cfg.steps:
                loss_avg, skipped_avg = mean_over_ranks([window_loss / window_steps, window_skipped], world, device)
                rate = window_samples / (time.time() - window_t0)
                last_metrics = {"loss": loss_avg, "lr": lr, "grad_norm": grad_norm, "samples_per_s": rate,
                                "skipped_samples": int(round(skipped_avg * world)), "skipped_steps": bad_total,
                                **temperature_and_bias(clip)}
                metrics_log.log(done, last_metrics)
                metrics_log.progress(window_steps, loss_avg, rate)
                window_loss, window_steps, window_skipped, window_samples = 0.0, 0, 0, 0
                window_t0 = time.time()
            t_pause = time.time()  # evaluation and checkpoints do not count against samples/s
            if evaluator is not None and cfg.eval.every_steps and done % cfg.eval.every_steps == 0:
                if done != cfg.steps:  # the final evaluation comes after the loop
                    metrics_log.log(done, flat_metrics(evaluator(model, clip, device)))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                save(done, {"step": done, **last_metrics})
            elif done % cfg.log_every == 0:
                ray.train.report({"step": done, **last_metrics})
            window_t0 += time.time() - t_pause

        if rank != 0:
            return {}
        # --- rank 0, after the last step: final weights open_clip can load, evaluation, curves --------------
        result = evaluator(model, clip, device) if evaluator is not None else {}
        metrics_log.log(cfg.steps, flat_metrics(result))
        save_final(cfg, run.local, model, built, result)
        metrics_log.flush()
        run.push()
        return {"eval": result, "step": cfg.steps}
    finally:
        metrics_log.close()
        run.close()
        del batches  # stops the DataLoader's worker processes


def diverged(out_dir: str, rank: int, step: int, bad: int, lr: float) -> dict:
    """Every rank stops at the same step (the skip decision is shared); rank 0 leaves the reason for the driver."""
    reason = (f"training diverged: {bad} consecutive steps had a non-finite loss or gradient (last: step {step}, "
              f"lr {lr:.3g}); lower optim.lr, raise optim.warmup_steps or check the data")
    if rank == 0:
        write_json_atomic(join(out_dir, "diverged.json"), {"error": reason, "step": step})
    return {"error": reason}


def save_final(cfg: TrainConfig, out_dir: str, model, built, result: dict) -> None:
    # A CLIP config trained with the sigmoid loss got a logit bias its named config lacks: leave it out of model.pt
    # so `create_model_and_transforms(name, pretrained=model.pt)` loads strictly; the embeddings do not use it.
    extra = {"logit_bias": float(built.clip.logit_bias.detach())} if "init_logit_bias" in built.extra_kwargs else {}
    ckpt.save_weights(os.path.join(out_dir, "model.pt"), built.clip, drop=tuple(extra))
    with open(os.path.join(out_dir, "model_config.json"), "w") as f:
        json.dump({"name": cfg.model.name, "model_cfg": built.model_cfg, **extra}, f, indent=1)
    if cfg.objective == "catlip":
        ckpt.save_module(os.path.join(out_dir, "catlip_head.safetensors"), model.head)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot_curves(os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "curves.png"))
