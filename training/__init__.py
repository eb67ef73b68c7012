"""Pretraining on curated shards: one engine and the tasks it trains.

    engine/       steps, schedule, accumulation, autocast, the non-finite guard, checkpoints, resume, logging,
                  evaluation; a backend layer runs it in-process or on Ray Train workers (`training.engine.fit`)
    contrastive/  CLIP / SigLIP / CoCa / CatLIP encoders: one task (`ContrastiveTask`), its models, objectives,
                  shard loader, evaluation and CatLIP's vocabulary
    generative/   image generators (diffusion, flows): tasks to come, on the same engine

A new objective or generator is a `training.engine.task.Task` subclass beside these; the engine does not change.
"""
