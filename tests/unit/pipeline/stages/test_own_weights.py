"""A user's own weights in every model slot, each a tiny model saved locally in its upstream format: the scorer, the
caption judge and the conditioning encoder from an open_clip folder (`local-dir:`), the captioner from a Hugging Face
BLIP `save_pretrained` folder, the latent space from a diffusers `AutoencoderKL` `save_pretrained` folder. Each is
accepted by its stage's preflight and loads the folder's own weights; a folder of the wrong kind is one error naming
the slot and what was found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from capfilt_testdata import GREEDY, tiny_blip, tiny_coca
from curation_testdata import open_clip_folder
from training_diffusion import tiny_vae

from pipeline.core.config import ConfigError
from pipeline.core.errors import WinnowError
from pipeline.core.model_files import folder_kind, weights_digest
from pipeline.pipeline_config import load_pipeline_config
from pipeline.stages import caption, score, train_diffusion
from pipeline.stages.context import StageContext


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("own")
    pytest.importorskip("transformers")
    return {"open_clip": open_clip_folder(d / "clip", seed=3), **tiny_blip(d), "vae": tiny_vae(str(d / "vae")),
            "coca": tiny_coca(d / "coca.safetensors"), "empty": str(d / "empty")}


def stage(tmp_path: Path, name: str, body: dict) -> tuple[StageContext, object]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path), "stages": {name: body}}))
    cfg = load_pipeline_config(path)
    return StageContext(pipeline=cfg, stage=name, config_path=str(path)), cfg.stages[name]


def folder_weights(folder: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(folder) / "open_clip_pytorch_model.bin", weights_only=True)


def same_weights(model: torch.nn.Module, folder: str) -> bool:
    want = folder_weights(folder)
    have = model.state_dict()
    return set(have) == set(want) and all(torch.equal(have[k].cpu(), want[k]) for k in want)


def test_each_upstream_folder_is_named_by_its_files(folders, tmp_path):
    Path(folders["empty"]).mkdir(exist_ok=True)
    kinds = {k: folder_kind(folders[k])[0] for k in ("open_clip", "caption", "itm", "vae", "empty")}
    assert kinds == {"open_clip": "open_clip", "caption": "blip_caption", "itm": "blip_itm", "vae": "autoencoder_kl",
                     "empty": None}
    assert folder_kind(folders["empty"])[1] == "no known model files (empty)"
    assert folder_kind(str(tmp_path / "nowhere"))[1] == "missing (no such folder)"


def test_the_scorer_scores_with_an_open_clip_folder(folders, tmp_path):
    from filtering.dfn import DFNScorer

    ctx, cfg = stage(tmp_path, "score", {"input": "pool", "model": {"name": f"local-dir:{folders['open_clip']}"}})
    score.preflight(ctx, cfg)
    scorer = DFNScorer(cfg.model, device="cpu")
    assert same_weights(scorer.model, folders["open_clip"])  # the folder's weights, not a random start
    size = cfg.model.preprocess_cfg()["size"]
    pixels = np.random.default_rng(0).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    out = scorer({"pixels": pixels, "caption": np.array(["a red circle", "a blue square"], dtype=object),
                  "decodable": np.array([True, True])})
    assert np.isfinite(out["dfn_score"]).all() and out["image_embedding"].shape[0] == 2

    ctx, cfg = stage(tmp_path, "score", {"input": "pool", "model": {"name": f"local-dir:{folders['vae']}"}})
    with pytest.raises(ConfigError, match=r"stages\.score\.model\.name: .*vae is a diffusers AutoencoderKL folder "
                                          r".*, not an open_clip folder"):
        score.preflight(ctx, cfg)
    ctx, cfg = stage(tmp_path, "score", {"input": "pool", "model": {"name": "tiny-clip-rn",
                                                                    "pretrained": folders["open_clip"]}})
    with pytest.raises(ConfigError, match=r"stages\.score\.model\.pretrained: .* is an open_clip folder .*: name it "
                                          r"as `name: local-dir:"):
        score.preflight(ctx, cfg)


def test_the_caption_judge_is_an_open_clip_folder(folders, tmp_path):
    from filtering.capfilt import CaptionJudge
    from filtering.dfn import DFNScorer, ModelSpec

    body = {"input": "pool", "captioner": {"name": "tiny-coca", "weights": folders["coca"]}, "decoding": GREEDY,
            "caption_filter": {"name": f"local-dir:{folders['open_clip']}"}}
    ctx, cfg = stage(tmp_path, "caption", body)
    caption.preflight(ctx, cfg)  # builds both models: missing or foreign weights fail here
    judge = CaptionJudge(cfg.caption_filter, "cpu")
    assert same_weights(judge.scorer.model, folders["open_clip"])
    size = cfg.caption_filter.preprocess_cfg()["size"]
    pixels = np.random.default_rng(1).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    scores = judge.scores(pixels, [["a red circle"], ["a blue square", "a green star"]])
    img, txt = DFNScorer(ModelSpec(name=f"local-dir:{folders['open_clip']}"), "cpu").embed(
        pixels[[0, 1, 1]], ["a red circle", "a blue square", "a green star"])
    assert np.concatenate(scores) == pytest.approx((img * txt).sum(axis=1), abs=1e-5)

    for judge_cfg, message in (
            ({"name": f"local-dir:{folders['caption']}"},
             r"stages\.caption\.caption_filter\.name: .*caption is a Hugging Face BLIP captioning folder .*, not an "
             r"open_clip folder"),
            ({"name": f"local-dir:{folders['open_clip']}", "weights": folders["coca"]},
             r"stages\.caption\.caption_filter\.weights: local-dir:.* holds its own weights; drop weights"),
            ({"backend": "blip", "weights": folders["caption"]},
             r"stages\.caption\.caption_filter\.weights: .*caption is a Hugging Face BLIP captioning folder .*, not a "
             r"Hugging Face BLIP image-text matching folder")):
        ctx, cfg = stage(tmp_path, "caption", {**body, "caption_filter": judge_cfg})
        with pytest.raises((ConfigError, WinnowError), match=message):
            caption.preflight(ctx, cfg)


def test_the_conditioning_encoder_is_an_open_clip_folder(folders, tmp_path):
    from training.generative.encoders import TextConditioner, load_encoder, text_features

    folder = folders["open_clip"]
    ctx, cfg = stage(tmp_path, "gen", {"kind": "train-diffusion", "input": "pool",
                                       "encoder": {"name": f"local-dir:{folder}"}})
    train_diffusion.preflight(ctx, cfg)
    enc = load_encoder(cfg.encoder, "cpu", "stages.gen.encoder")
    assert same_weights(enc.clip, folder) and enc.sha256 == weights_digest(folder)
    cond = TextConditioner(cfg.encoder)
    tokens, pooled = cond(["a red circle"])
    want_tokens, want_pooled = text_features(enc.clip, enc.tokenizer(["a red circle"]))
    assert torch.equal(tokens, want_tokens.float()) and torch.allclose(pooled, torch.nn.functional.normalize(
        want_pooled.float(), dim=-1))

    ctx, cfg = stage(tmp_path, "gen", {"kind": "train-diffusion", "input": "pool",
                                       "encoder": {"name": f"local-dir:{folders['itm']}"}})
    with pytest.raises(ConfigError, match=r"stages\.gen\.encoder\.name: .*itm is a Hugging Face BLIP image-text "
                                          r"matching folder .*, not an open_clip folder"):
        train_diffusion.preflight(ctx, cfg)
    with pytest.raises(ConfigError, match=r"give `weights`.*or name an open_clip folder as `name: local-dir:"):
        stage(tmp_path, "gen", {"kind": "train-diffusion", "input": "pool", "encoder": {"name": "tiny-clip-rn"}})


def test_the_captioner_is_a_hugging_face_blip_folder(folders, tmp_path):
    from filtering.captioner import Captioner

    body = {"input": "pool", "captioner": {"backend": "blip", "weights": folders["caption"]},
            "decoding": {"strategy": "greedy", "min_length": 2, "max_length": 5},
            "caption_filter": {"backend": "blip", "weights": folders["itm"]}}
    ctx, cfg = stage(tmp_path, "caption", body)
    caption.preflight(ctx, cfg)
    captioner = Captioner(cfg.captioner, {**cfg.decoding.model_dump(), "device": "cpu"})
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    captions = captioner.captions(pixels)
    assert [len(c) for c in captions] == [1, 1] and all(2 <= len(c[0].split()) <= 5 for c in captions)

    for weights, backend, message in (
            (folders["itm"], "blip", r"stages\.caption\.captioner\.weights: .*itm is a Hugging Face BLIP image-text "
                                     r"matching folder .*, not a Hugging Face BLIP captioning folder"),
            (folders["vae"], "blip", r"captioner\.weights: .*vae is a diffusers AutoencoderKL folder"),
            (folders["caption"], "coca", r"stages\.caption\.captioner\.weights: .*caption is a Hugging Face BLIP "
                                         r"captioning folder .*, not a CoCa checkpoint file .*\(set backend: blip\)")):
        spec = {"backend": backend, "weights": weights, **({"name": "tiny-coca"} if backend == "coca" else {})}
        ctx, cfg = stage(tmp_path, "caption", {**body, "captioner": spec})
        with pytest.raises((ConfigError, WinnowError), match=message):
            caption.preflight(ctx, cfg)


def test_the_latent_space_is_a_diffusers_autoencoder_folder(folders, tmp_path):
    from training.generative.diffusion.codec import LatentCodec

    gen = {"kind": "train-diffusion", "input": "pool", "encoder": {"name": f"local-dir:{folders['open_clip']}"},
           "data": {"resolution": 16}, "model": {"patch_size": 1}}
    ctx, cfg = stage(tmp_path, "gen", {**gen, "latent": {"vae": folders["vae"], "channels": 4}})
    train_diffusion.preflight(ctx, cfg)
    codec = LatentCodec(folders["vae"], 16)
    assert codec.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 8, 8)
    ctx, cfg = stage(tmp_path, "gen", {**gen, "latent": {"vae": folders["open_clip"], "channels": 4}})
    with pytest.raises(ConfigError, match=r"stages\.gen\.latent\.vae: .*clip is an open_clip folder .*, not a "
                                          r"diffusers AutoencoderKL folder"):
        train_diffusion.preflight(ctx, cfg)
