"""Image-text encoders (CLIP, SigLIP, CoCa, CatLIP) as one engine task: `training.contrastive.task.ContrastiveTask`.

Configs in `config` (pydantic only: cheap to import), networks in `models`, losses in `objectives`, the shard loader
in `data`, zero-shot and retrieval evaluation in `eval`, CatLIP's word labels in `vocab`.
"""
