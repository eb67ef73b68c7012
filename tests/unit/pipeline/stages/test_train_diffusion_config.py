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
     r"stages\.gen\.latent\.vae: no diffusers AutoencoderKL at '/nonexistent/vae'"),
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
