"""Pretraining on curated shards: one engine and the tasks it trains.

    engine/       steps, schedule, accumulation, autocast, the non-finite guard, checkpoints, resume, logging,
                  evaluation; a backend layer runs it in-process or on Ray Train workers (`training.engine.fit`)
    contrastive/  CLIP / SigLIP / CoCa / CatLIP encoders: one task (`ContrastiveTask`), its models, objectives,
                  shard loader, evaluation and CatLIP's vocabulary
    generative/   text-to-image generators: the MMDiT denoiser (rectified flow, EDM, VP, VE) and normalizing flows
    tasks/        any other task (neither contrastive nor generative): one module each
    data.py       the shard loader every task reads through

A new objective or generator is a `training.engine.task.Task` subclass in one of these; the engine does not change.
"""
