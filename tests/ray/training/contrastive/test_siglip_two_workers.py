"""The distributed path: SigLIP on two gloo workers (each half the batch, text features exchanged between
neighbours, DDP-averaged gradients) gives the same losses and weights as one worker on the whole batch."""

from __future__ import annotations

import sys

import pytest

GLOBAL_BATCH, STEPS = 16, 3


def siglip_steps(world_of_run: int) -> tuple[list[float], float]:
    """Three AdamW steps of a tiny SigLIP on a fixed global batch; this rank trains on its slice of it.

    Returns the loss per step (averaged over ranks) and a checksum of the final weights."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from training.contrastive.config import LossConfig, ModelConfig
    from training.contrastive.models import build_model, param_groups
    from training.contrastive.objectives import make_objective

    rank, world = (ray.train.get_context().get_world_rank(), world_of_run) if world_of_run > 1 else (0, 1)
    torch.manual_seed(0)
    built = build_model(ModelConfig(name="tiny-sigmoid-vit"), "siglip")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)  # (16, 3, 32, 32)
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle", "star"]
    texts = built.tokenizer([f"a {c} {s}" for c in colours for s in shapes])  # (16, 32)
    mine = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    model = ray.train.torch.prepare_model(built.clip) if world > 1 else built.clip
    objective = make_objective("siglip", LossConfig(), rank, world)
    optimizer = torch.optim.AdamW(param_groups(built.clip, 0.1), lr=1e-3)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = objective(model(images[mine], texts[mine]), {})["loss"]
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
        losses.append(float(mean) / world)
    return losses, float(sum(p.detach().double().abs().sum() for p in built.clip.parameters()))


def two_and_one(config: dict) -> dict:
    """Ray Train worker: the two-worker run, then (rank 0 alone, no communication) the one-worker reference."""
    import ray.train
    import torch

    torch.set_num_threads(1)
    two = siglip_steps(2)
    if ray.train.get_context().get_world_rank() != 0:
        return {}
    one = siglip_steps(1)
    return {"two": two, "one": one, "world": ray.train.get_context().get_world_size()}


def test_two_gloo_workers_match_one_worker_on_the_same_global_batch(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable by workers
    trainer = TorchTrainer(two_and_one, scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           torch_config=TorchConfig(backend="gloo"),
                           run_config=RunConfig(name="siglip", storage_path=str(tmp_path)))
    out = trainer.fit().return_value
    (two_losses, two_weights), (one_losses, one_weights) = out["two"], out["one"]
    assert out["world"] == 2
    assert two_losses == pytest.approx(one_losses, rel=1e-4)
    assert one_losses[-1] < one_losses[0]  # the steps did move the weights
    assert two_weights == pytest.approx(one_weights, rel=1e-5)
