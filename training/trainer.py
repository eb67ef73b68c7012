"""Ray Train glue: launch `training.loop.train_worker` on N workers and collect what they wrote.

    from training.trainer import fit
    fit(TrainConfig(steps=300), shards=expand_shards("runs/demo/pool/shards/*.tar"), out_dir="runs/demo/encoder")

Checkpoints land in `<out_dir>/checkpoints/step_*` (Ray Train's storage is `<out_dir>`, its run name
`checkpoints`), so a restarted worker group resumes from the newest one (`scaling.max_failures`), and running the
same command again resumes a stopped run. The output directory must be visible to every worker: a local path on
one machine; on a cluster, object storage (`s3://`, `gs://`: Ray Train stores checkpoints through fsspec's
filesystem, rank 0 stages its other files locally and uploads them, see `training.run_dir`) or a shared mount.
"""

from __future__ import annotations

import logging
import os
import time

from pipeline.core.config import ConfigError
from pipeline.core.layout import join, read_json, write_json_atomic
from pipeline.core.storage import arrow_filesystem, exists, is_remote, local_path, remove
from training.config import TrainConfig

log = logging.getLogger("winnow.train")


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def catlip_vocab(cfg: TrainConfig, shards: list[str], out_dir: str) -> list[str]:
    """Build CatLIP's word vocabulary once per run; reuse the saved one on resume, so label ids stay fixed."""
    from training.vocab import build_vocab, captions_of

    url = join(out_dir, "catlip_vocab.json")
    if exists(url):
        return read_json(url)["words"]
    words = build_vocab(captions_of(shards, cfg.loss.catlip_vocab_samples), cfg.loss.catlip_vocab_size,
                        cfg.loss.catlip_min_count)
    write_json_atomic(url, {"words": words})
    return words


def fit(cfg: TrainConfig, shards: list[str], out_dir: str) -> dict:
    """Train (or resume) a run in `out_dir`; return {"step", "eval", "seconds", ...}. Ray must be initialised
    unless `cfg.scaling.num_workers == 0`."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # the default in Ray 2.60; V1 lacks what we use
    import torch
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.loop import train_worker
    from training.models import check_model_name

    hub = (cfg.model.pretrained or "").startswith(("hf-hub:", "local-dir:"))  # then the source names the model
    name = check_model_name(cfg.model.pretrained if hub else cfg.model.name)  # fail here, before workers start
    if cfg.objective == "coca":
        import open_clip

        if "multimodal_cfg" not in (open_clip.get_model_config(name) or {}):
            raise ConfigError(f"model.name: objective coca needs a CoCa model (with multimodal_cfg), not {name!r}")
    if not is_remote(out_dir):
        out_dir = os.path.abspath(local_path(out_dir))
        os.makedirs(out_dir, exist_ok=True)
    stale = join(out_dir, "diverged.json")
    if exists(stale):
        remove(stale)
    vocab = catlip_vocab(cfg, shards, out_dir) if cfg.objective == "catlip" else []
    sc = cfg.scaling
    local = sc.num_workers == 0
    storage_fs, storage_path = arrow_filesystem(out_dir)  # Ray Train's view of the same storage as fsspec's
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train": cfg.model_dump(mode="json"), "shards": list(shards), "out_dir": out_dir,
                           "local_mode": local, "vocab": vocab},
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.gpus_per_worker > 0,
                                     resources_per_worker=None if local else resources),
        torch_config=TorchConfig(backend="nccl" if sc.gpus_per_worker > 0 else "gloo"),
        run_config=RunConfig(name="checkpoints", storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             logging_config=LoggingConfig(log_level="WARNING")),
    )
    t0 = time.time()
    threads = torch.get_num_threads()
    try:
        result = trainer.fit()
    finally:
        torch.set_num_threads(threads)  # local mode trains in this process: leave its thread count as it was
    seconds = time.time() - t0
    if exists(stale):
        raise TrainingDiverged(read_json(stale)["error"])
    from training.checkpoint import latest_checkpoint

    last = latest_checkpoint(join(out_dir, "checkpoints"))
    state = read_json(join(last, "state.json"))
    evaluation = read_json(join(out_dir, "eval.json"))
    resumes = join(out_dir, "resumes.json")
    resumed_from = read_json(resumes) if exists(resumes) else []
    return {"step": state["step"], "resumed_from": resumed_from, "samples_seen": state["samples_seen"],
            "eval": evaluation, "seconds": round(seconds, 2), "last_checkpoint": last,
            "metrics": dict(result.metrics or {}), "weights": join(out_dir, "model.pt"),
            "vocab_size": len(vocab)}
