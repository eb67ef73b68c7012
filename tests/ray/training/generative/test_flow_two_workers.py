"""Glow on Ray Train with two gloo workers: each rank initialises actnorm from data in `setup`, before the engine
wraps the model in DDP, and both compute the same values (those one process computes); the run trains."""

from __future__ import annotations

import csv
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from training_shapes import CLASSNAMES

from training.engine import fit
from training.engine.checkpoint import step_dir_name
from training.engine.config import EngineConfig
from training.generative.flows.config import FlowTaskConfig
from training.generative.flows.data import first_images
from training.generative.flows.multiscale import FlowModel
from training.generative.flows.task import INIT_SEED, FlowTask
from training.generative.likelihood import dequantize

STEPS = 30


class RecordingFlowTask(FlowTask):
    """Writes each rank's actnorm as `setup` leaves it, i.e. before the engine wraps the model in DDP."""

    def setup(self, rank: int, world: int, device: torch.device) -> torch.nn.Module:
        net = super().setup(rank, world, device)
        state = {f"{i}.{k}": v.detach().clone()
                 for i, a in enumerate(net.actnorms()) for k, v in a.state_dict().items()}
        state["inits"] = torch.tensor(self.actnorm_inits)
        save_file(state, os.path.join(self.out_dir, f"actnorm_at_setup_rank{rank}.safetensors"))
        return net


def test_glow_on_two_gloo_workers_initialises_actnorm_identically_before_ddp(ray_local, shapes, tmp_path):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import test modules
    cfg = FlowTaskConfig.model_validate({
        "model": {"kind": "glow", "levels": 2, "steps_per_level": 2, "hidden": 32}, "resolution": 8,
        "batch_size": 16, "loader_workers": 0, "shuffle_buffer": 64, "ema_decay": None, "init_samples": 64,
        "eval_samples": 120})
    engine = EngineConfig.model_validate({
        "steps": STEPS, "log_every": 10, "checkpoint_every": STEPS,
        "optim": {"lr": 1e-2, "warmup_steps": 10, "weight_decay": 0.0},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1, "max_failures": 0}})
    out = str(tmp_path)
    result = fit(RecordingFlowTask(cfg, shapes["pool"], [shapes["test"]], CLASSNAMES), engine, out)

    ranks = [load_file(os.path.join(out, f"actnorm_at_setup_rank{r}.safetensors")) for r in (0, 1)]
    assert int(ranks[0]["inits"]) == int(ranks[1]["inits"]) == 1
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 1 + 3 * 4  # 4 actnorms: loc, log_scale, flag
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    # ... and they are the data's statistics, as one process computes them from the same first images
    torch.manual_seed(engine.seed)
    alone = FlowModel(cfg.model, 3, 8)
    pixels, _, _ = first_images(shapes["pool"], 64, 8, lambda caption: torch.zeros(0))
    alone.initialize(FlowTask(cfg, shapes["pool"]).preprocess(
        dequantize(pixels, torch.Generator().manual_seed(INIT_SEED)))[0].float())
    for i, a in enumerate(alone.actnorms()):
        assert torch.allclose(a.loc, ranks[0][f"{i}.loc"], atol=1e-5)
        assert torch.allclose(a.log_scale, ranks[0][f"{i}.log_scale"], atol=1e-5)
    assert ranks[0]["0.log_scale"].abs().max() > 0.5  # really data-dependent: far from the identity's zeros

    with open(tmp_path / "checkpoints" / step_dir_name(STEPS) / "state.json") as f:
        assert json.load(f)["world"] == 2
    with open(tmp_path / "metrics.csv") as f:
        curve = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    assert curve[-1] < curve[0] - 0.5, curve
    assert result["eval"]["likelihood"]["bits_per_dim"] < 7.0, result["eval"]
