"""The demo's trained models, tiny: `configs/demo.yaml`'s model stages (a filtering CLIP trained with a held-out
self-check, a CoCa captioner, a caption stage judging with the filter, a text-to-image MMDiT conditioned on a CLIP's
text tower), trained here through the real stages for a few steps each, in-process, on a synthetic web written
straight to shards (`capfilt_testdata.web_shards`). For tests of what uses trained models: `winnow sample`,
`winnow caption`.

`demo_models` (session): {"config": the pipeline config's path, "root": the run root, "web": the web's datasets}.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from built_once import built_once
from capfilt_testdata import web_shards

TINY = {"log_every": 5, "data": {"batch_size": 16, "loader_workers": 0, "shuffle_buffer": 64},
        "scaling": {"num_workers": 0, "torch_threads": 1}}
STAGES = {
    "train_filter": {"kind": "train-clip", "input": "hq", "model": {"name": "tiny-clip-rn"}, "objective": "clip",
                     "steps": 20, "checkpoint_every": 10, "optim": {"lr": 2e-3, "warmup_steps": 5},
                     "eval": {"synthetic_test": False},
                     "holdout": {"fraction": 0.2, "seed": 3, "every_steps": 10}, **TINY},
    "train_captioner": {"kind": "train-clip", "input": "hq", "model": {"name": "tiny-coca"}, "objective": "coca",
                        "steps": 8, "checkpoint_every": 8, "optim": {"lr": 1e-3, "warmup_steps": 2},
                        "eval": {"synthetic_test": False}, **TINY},
    "caption": {"input": "pool", "captioner_from": "train_captioner", "caption_filter_from": "train_filter",
                "decoding": {"strategy": "nucleus", "num_captions": 2, "min_length": 2, "max_length": 6,
                             "batch_size": 4}},
    "generator": {"kind": "train-diffusion", "input": "hq", "encoder_from": "train_filter", "steps": 12,
                  "checkpoint_every": 12, "model": {"layers": 1, "heads": 2, "head_dim": 16, "patch_size": 2},
                  "data": {"resolution": 16, "batch_size": 16, "loader_workers": 0, "shuffle_buffer": 64},
                  "sample": {"sampler": {"method": "heun", "steps": 4, "guidance": 2.0, "churn": 4.0},
                             "prompts": ["a red circle", "a blue square"], "seeds_per_prompt": 2},
                  "log_every": 6, "scaling": {"num_workers": 0, "torch_threads": 1},
                  "eval": {"likelihood": {"samples": 0}}},
}


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict:
    return built_once(tmp_path_factory, "demo_models", _train_demo_models)


def _train_demo_models(root: Path) -> dict:
    from pipeline.cli.run import run_pipeline
    from pipeline.pipeline_config import load_pipeline_config

    web = web_shards(str(root), pool=24, hq=200, per_shard=100)
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny-demo", "root": str(root), "stages": STAGES}, sort_keys=False))
    cfg = load_pipeline_config(path)
    for stage in ("train_filter", "train_captioner", "generator"):
        run_pipeline(cfg, stage, config_path=str(path))
    return {"config": str(path), "root": root, "web": web}
