"""The train-diffusion stage's config and preflight, without training: one conditioning encoder, references to other
stages checked before anything runs (with both configs named), the judge chosen apart from the conditioning
encoder, and validating the config never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError
from pipeline.pipeline_config import load_pipeline_config
from pipeline.stages.context import StageContext
from pipeline.stages.train_diffusion import _judge_name, preflight

REPO = Path(__file__).resolve().parents[4]


def pipeline(tmp_path: Path, generator: dict, **encoders: dict):
    stages = {name: {"kind": "train-clip", "input": "pool", **body} for name, body in encoders.items()}
    stages["gen"] = {"kind": "train-diffusion", "input": "pool", **generator}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path), "stages": stages}))
    cfg = load_pipeline_config(path)
    return StageContext(pipeline=cfg, stage="gen", config_path=str(path)), cfg.stages["gen"]


def test_exactly_one_conditioning_encoder_is_given(tmp_path):
    with pytest.raises(ConfigError, match=r"p\.yaml.*stages\.gen.*give `encoder_from` \(a train-clip stage\) or "
                                          r"`encoder`"):
        pipeline(tmp_path, {})
    with pytest.raises(ConfigError, match=r"exactly one"):
        pipeline(tmp_path, {"encoder_from": "a", "encoder": {"name": "tiny-clip-rn", "weights": "m.pt"}}, a={})


def test_the_judge_is_the_first_other_encoder_unless_named(tmp_path):
    ctx, cfg = pipeline(tmp_path, {"encoder_from": "b"}, a={}, b={}, c={})
    assert _judge_name(ctx, cfg) == "a"
    ctx, cfg = pipeline(tmp_path, {"encoder_from": "a", "eval": {"judge_from": "c"}}, a={}, b={}, c={})
    assert _judge_name(ctx, cfg) == "c"
    ctx, cfg = pipeline(tmp_path, {"encoder_from": "a"}, a={})
    assert _judge_name(ctx, cfg) is None  # no other encoder: evaluation without a judge
    preflight(ctx, cfg)


@pytest.mark.parametrize(("generator", "encoders", "message"), [
    ({"encoder_from": "pool"}, {"a": {}}, r"stages\.gen\.encoder_from: 'pool' is not a stage of this pipeline that "
                                          r"trains an encoder \(those: a\)"),
    ({"encoder_from": "a"}, {"a": {"objective": "catlip"}, "b": {}},
     r"stages\.gen\.encoder_from: stages\.a trains CatLIP .* text tower is never trained"),
    ({"encoder_from": "a", "eval": {"judge_from": "a"}}, {"a": {}},
     r"stages\.gen\.eval\.judge_from: 'a' is the conditioning encoder"),
    ({"encoder_from": "a", "latent": {"vae": "/nonexistent/vae"}}, {"a": {}},
     r"stages\.gen\.latent\.vae: /nonexistent/vae is missing \(no such folder\), not a diffusers "
     r"AutoencoderKL"),
])
def test_bad_references_fail_in_preflight_naming_both_configs(tmp_path, generator, encoders, message):
    ctx, cfg = pipeline(tmp_path, generator, **encoders)
    with pytest.raises(ConfigError, match=message):
        preflight(ctx, cfg)


def test_validating_a_config_with_the_stage_never_imports_torch():
    code = ("import sys; from pipeline.pipeline_config import load_pipeline_config; "
            "load_pipeline_config('configs/diffusion_demo.yaml'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_flow_kind_is_a_model_family_of_the_stage_with_no_text_encoder(tmp_path):
    ctx, cfg = pipeline(tmp_path, {"model": {"kind": "realnvp", "levels": 2, "conditioning": "text"},
                                   "data": {"resolution": 16}}, a={})
    assert cfg.is_flow and cfg.model.scale_kind() == "tanh" and cfg.encoder_from is None
    assert _judge_name(ctx, cfg) == "a"  # the judge: any train-clip stage, since none conditions a flow
    preflight(ctx, cfg)
    from pipeline.stages.train_diffusion import resolve
    from training.generative.flows.task import flow_task_config

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.pt").write_bytes(b"")  # the judge's weights, as its stage leaves them
    resolved = resolve(ctx, cfg)
    assert resolved.encoder is None and resolved.eval.judge.weights == str(tmp_path / "a" / "model.pt")
    task_cfg = flow_task_config(resolved)
    assert task_cfg.resolution == 16 and task_cfg.ema_halflife_samples == cfg.ema.halflife_samples
    assert task_cfg.eval_samples == cfg.eval.likelihood.samples and task_cfg.eval_seed == cfg.eval.likelihood.seed
    ctx, cfg = pipeline(tmp_path, {"model": {"layers": 2}, "encoder_from": "a"}, a={})
    assert not cfg.is_flow and cfg.model.kind == "mmdit"  # no kind: the MMDiT, as before flows


@pytest.mark.parametrize(("generator", "message"), [
    ({"model": {"kind": "glow"}, "encoder_from": "a"}, r"glow is a normalizing flow: .* drop `encoder_from`"),
    ({"model": {"kind": "glow", "levels": 3}, "data": {"resolution": 20}},
     r"data\.resolution 20 must be divisible by 2\^model\.levels = 8"),
    ({"model": {"kind": "nice", "layers": 2}}, r"model\.flow\.layers: unknown key"),
    ({"model": {"kind": "glow"}, "latent": {"vae": "/some/vae"}}, r"latent\.vae applies to mmdit only"),
])
def test_a_bad_flow_config_is_refused_when_loaded(tmp_path, generator, message):
    with pytest.raises(ConfigError, match=message):
        pipeline(tmp_path, generator, a={})
