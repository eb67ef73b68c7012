"""The text-to-image diffusion task on the engine, in-process: a run interrupted and resumed ends where an
uninterrupted one ends with its EMA restored; what a run records (per-t-bin losses, grids, the objective, the
encoder); guidance 0 is unconditional sampling of the trained network; the latent path; refusals before training."""

from __future__ import annotations

import csv
import json
import os
import warnings

import pytest
import torch
from PIL import Image
from training_diffusion import tiny_config, tiny_vae

from pipeline.core.config import ConfigError
from training.engine import fit
from training.generative.config import SamplerConfig
from training.generative.diffusion.generate import load_generator
from training.generative.diffusion.task import DiffusionTask

STEPS = 40


class Interrupted(DiffusionTask):
    """Stops (as a crash would) before step `stop_at`; remembers the EMA it saved and the one it restored."""

    stop_at: int | None = None
    saved: dict | None = None
    restored: dict | None = None

    def on_step_start(self, step: int, total: int) -> None:
        if step == self.stop_at:
            raise RuntimeError("interrupted")
        super().on_step_start(step, total)

    def extra_state(self) -> dict:
        state = super().extra_state()
        self.saved = {k: v.clone() for k, v in state.items()}
        self.live = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return state

    def load_extra_state(self, tensors: dict) -> None:
        super().load_extra_state(tensors)
        self.restored = {k: v.clone() for k, v in self.ema.state_dict().items()}


def resume_config(untrained, shapes, **over):
    # a half-life of 200 samples without ramp-up: the EMA lags the live weights, so restoring it is visible
    return tiny_config(untrained, steps=STEPS, checkpoint_every=STEPS // 2, optim={"lr": 2e-3, "warmup_steps": 5},
                       ema={"halflife_samples": 200, "rampup": None},
                       eval={"heldout": shapes["test"], "synthetic_test": False}, **over)


@pytest.fixture(scope="module")
def runs(untrained, shapes, tmp_path_factory) -> dict:
    """One uninterrupted run, and one stopped after step 20 then rerun to the end."""
    root = tmp_path_factory.mktemp("diffusion")
    cfg = resume_config(untrained, shapes)
    whole = fit(DiffusionTask(cfg, shapes["pool"]), cfg, str(root / "whole"))
    first = Interrupted(cfg, shapes["pool"])
    first.stop_at = STEPS // 2
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(first, cfg, str(root / "resumed"))
    second = Interrupted(cfg, shapes["pool"])
    resumed = fit(second, cfg, str(root / "resumed"))
    return {"cfg": cfg, "whole": whole, "resumed": resumed, "first": first, "second": second,
            "dirs": (root / "whole", root / "resumed")}


def logged(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_a_resumed_run_ends_where_an_uninterrupted_one_ends_with_its_ema(runs):
    whole, resumed, first, second = runs["whole"], runs["resumed"], runs["first"], runs["second"]
    assert resumed["resumed_from"] == [STEPS // 2] and resumed["step"] == whole["step"] == STEPS
    assert resumed["samples_seen"] == whole["samples_seen"] == STEPS * 16
    # the EMA the crashed run saved at step 20 is the one the rerun started from, and it is not the live weights
    assert first.saved.keys() == {f"ema.{k}" for k in second.restored}
    assert all(torch.equal(first.saved[f"ema.{k}"], v) for k, v in second.restored.items())
    assert any(not torch.allclose(first.live[k], v) for k, v in second.restored.items())
    # the data order after a resume differs (a resumed run does not replay its first batches): equal within noise
    start = float(logged(runs["dirs"][0])[0]["loss"])
    a, b = whole["eval"]["heldout"]["loss"], resumed["eval"]["heldout"]["loss"]
    assert a < 0.8 * start and b < 0.8 * start, (start, a, b)  # both learned
    assert abs(a - b) < 0.1 * a, (a, b)  # and ended at the same held-out loss within 10 %


def test_a_run_records_losses_per_flow_time_bin_grids_and_the_objective(runs, untrained):
    whole_dir = runs["dirs"][0]
    rows = logged(whole_dir)
    bins = [f"loss_t{lo:.1f}-{lo + 0.2:.1f}" for lo in (0.0, 0.2, 0.4, 0.6, 0.8)]
    assert [int(r["step"]) for r in rows] == list(range(5, STEPS + 1, 5))
    assert all(r[b] for r in rows for b in bins)  # 80 samples per log row: every bin is visited
    # the flow's velocity loss is largest near the data (t -> 0: predicting the noise) and falls with t
    last = [float(rows[-1][b]) for b in bins]
    assert last[0] > last[-1], last
    grid = Image.open(runs["whole"]["grid"])
    assert grid.size == (170 + 2 * (48 + 2), 2 * (48 + 2))  # 2 prompts x 2 seeds, 16 px tiles scaled 3x
    info = json.loads((whole_dir / "generator.json").read_text())
    assert info["diffusion"] == {"family": "flow", "prediction": "velocity", "loss_weight": "natural",
                                 "time_sampler": {"kind": "logit_normal", "mean": 0.0, "std": 1.0,
                                                  "mode_scale": 1.29, "shift": 1.0},
                                 "shift": 1.0, "sigma_data": 0.5}
    assert info["image"] == {"space": "pixel", "channels": 3, "size": 16}
    from training.generative.encoders import weights_sha256

    assert info["encoder"]["sha256"] == weights_sha256(untrained.weights)


def test_guidance_zero_is_unconditional_sampling_of_the_trained_network(runs, untrained):
    gen = load_generator(str(runs["dirs"][0]), untrained)
    seeds = [0, 1]
    zero = SamplerConfig(method="euler", steps=6, guidance=0.0)
    red, blue = gen.images(["a red circle"] * 2, seeds, zero), gen.images(["a blue square"] * 2, seeds, zero)
    assert torch.equal(red, blue)  # the text no longer matters ...
    cond = SamplerConfig(method="euler", steps=6, guidance=1.0)
    assert not torch.allclose(gen.images(["a red circle"] * 2, seeds, cond),
                              gen.images(["a blue square"] * 2, seeds, cond))  # ... where it does at scale 1
    tokens, pooled = gen.conditioner(["a red circle"] * 2)
    null = gen.net(torch.zeros(2, 3, 16, 16), torch.full((2,), 500.0), (tokens, pooled, torch.ones(2)))
    free = gen.net(torch.zeros(2, 3, 16, 16), torch.full((2,), 500.0), (tokens * 0, pooled * 0, torch.ones(2)))
    assert torch.equal(null, free)  # scale 0 samples with the learned null caption
    with warnings.catch_warnings(record=True) as caught:  # the checkpoint's shift is the sampler's default
        warnings.simplefilter("always")
        gen.images(["a red circle"], [0], SamplerConfig(method="euler", steps=2))
        assert not caught
        gen.images(["a red circle"], [0], SamplerConfig(method="euler", steps=2, shift=3.0))
    assert any("trained with shift 1" in str(w.message) for w in caught)


def test_a_latent_generator_trains_on_the_autoencoders_latents(untrained, shapes, tmp_path):
    vae = tiny_vae(str(tmp_path / "vae"))
    cfg = tiny_config(untrained, steps=6, latent={"vae": vae, "channels": 4}, model={"patch_size": 1})
    result = fit(DiffusionTask(cfg, shapes["pool"]), cfg, str(tmp_path / "run"))
    info = json.loads((tmp_path / "run" / "generator.json").read_text())
    assert info["image"] == {"space": "latent", "channels": 4, "size": 8, "vae": vae, "scaling_factor": 0.7,
                             "shift_factor": 0.1}
    assert result["step"] == 6 and Image.open(result["grid"]).size == (170 + 2 * 50, 2 * 50)  # decoded: 16 px
    images = load_generator(str(tmp_path / "run"), untrained).images(["a red circle"], [0])
    assert images.shape == (1, 3, 16, 16) and images.abs().max() <= 1


def test_a_bad_autoencoder_or_encoder_fails_before_any_training(untrained, shapes, tmp_path):
    cfg = tiny_config(untrained, latent={"vae": str(tmp_path / "missing"), "channels": 4})
    with pytest.raises(ConfigError, match=r"train-diffusion\.latent\.vae: .* is missing \(no such folder\), not a "
                                          r"diffusers AutoencoderKL"):
        fit(DiffusionTask(cfg, shapes["pool"]), cfg, str(tmp_path / "a"))
    wrong = tiny_config(untrained.model_copy(update={"name": "tiny-sigmoid-vit"}))
    with pytest.raises(ConfigError, match=r"does not fit .*'tiny-sigmoid-vit'"):
        fit(DiffusionTask(wrong, shapes["pool"]), wrong, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a" / "checkpoints") and not os.path.exists(tmp_path / "b" / "checkpoints")
