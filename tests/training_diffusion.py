"""What the diffusion trainer's tests share (unit and Ray): frozen encoders saved as train-clip stages save them, and a
tiny config.

`encoders` (session): `conditioner`, a tiny CLIP trained briefly on the shapes shards, whose frozen text tower
conditions the generators; `judge`, another tiny CLIP trained longer with another seed, which classifies and scores
samples and never conditions them. `untrained` (session): random weights of the same model (structural tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from built_once import built_once

from training.generative.config import EncoderRef

ENCODER = "tiny-clip-rn"


def train_clip(shards: list[str], out_dir: str, steps: int, seed: int) -> str:
    """A tiny CLIP on the shapes shards, in-process, one thread; returns its model.pt."""
    from training.contrastive.config import TrainConfig
    from training.contrastive.task import ContrastiveTask
    from training.engine import fit

    cfg = TrainConfig.model_validate({
        "model": {"name": ENCODER}, "objective": "clip", "steps": steps, "seed": seed, "log_every": steps,
        "checkpoint_every": steps, "optim": {"lr": 1e-3, "warmup_steps": 10}, "eval": {"synthetic_test": False},
        "data": {"batch_size": 64, "loader_workers": 0, "seed": seed},
        "scaling": {"num_workers": 0, "torch_threads": 1}})
    return fit(ContrastiveTask(cfg, shards), cfg, out_dir)["weights"]


@pytest.fixture(scope="session")
def untrained(tmp_path_factory) -> EncoderRef:
    """Random weights of the encoder model, saved as a train-clip stage saves them (for structural tests)."""
    import open_clip
    import torch

    from pipeline.core.model_configs import register_model_configs
    from training.engine.checkpoint import save_weights

    register_model_configs()
    torch.manual_seed(5)
    path = str(tmp_path_factory.mktemp("untrained") / "model.pt")
    save_weights(path, open_clip.create_model(ENCODER))
    return EncoderRef(name=ENCODER, weights=path, source="an untrained CLIP")


@pytest.fixture(scope="session")
def encoders(shapes, tmp_path_factory) -> dict[str, EncoderRef]:
    """Two tiny CLIPs trained on the shapes shards with different seeds: one conditions, the other judges."""
    def build(root: Path) -> dict[str, EncoderRef]:
        return {"conditioner": EncoderRef(name=ENCODER, weights=train_clip(shapes["pool"], f"{root}/cond", 40, seed=1),
                                          source="the conditioning CLIP"),
                "judge": EncoderRef(name=ENCODER, weights=train_clip(shapes["pool"], f"{root}/judge", 120, seed=2),
                                    source="the judge CLIP")}

    return built_once(tmp_path_factory, "encoders", build)


def tiny_vae(folder: str) -> str:
    """A tiny random diffusers AutoencoderKL (4 latent channels, downsampling 2x) saved with `save_pretrained`."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                  norm_num_groups=4, sample_size=16, scaling_factor=0.7, shift_factor=0.1).save_pretrained(folder)
    return folder


def tiny_config(encoder: EncoderRef, steps: int = 20, **over):
    """A one-layer MMDiT at 16 px (patch 2: 64 image tokens), batch 16, in-process on one thread; no held-out bits/dim
    unless `eval={"likelihood": {...}}` asks."""
    from training.generative.diffusion.config import DiffusionTrainConfig

    data = {"steps": steps, "log_every": 5, "checkpoint_every": steps, "encoder": encoder.model_dump(),
            "model": {"layers": 1, "heads": 2, "head_dim": 16, "patch_size": 2},
            "data": {"resolution": 16, "batch_size": 16, "loader_workers": 0, "shuffle_buffer": 64},
            "sample": {"sampler": {"method": "euler", "steps": 4, "guidance": 2.0}, "seeds_per_prompt": 2,
                       "prompts": ["a red circle", "a blue square"]},
            "scaling": {"num_workers": 0, "torch_threads": 1},
            "eval": {"likelihood": {"samples": 0}}}  # held-out bits/dim (an ODE solve per image) where a test asks
    for key, value in over.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return DiffusionTrainConfig.model_validate(data)
