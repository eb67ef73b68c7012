"""The diffusion trainer's parts against what they must compute: text features, the caption cache, the null caption,
the EMA, the per-t-bin loss, the Frechet distance, attribute scores, image normalisation, and refusals of encoders
and autoencoders that do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_diffusion import ENCODER, tiny_config

from pipeline.core.config import ConfigError
from training.generative.config import EncoderRef
from training.generative.diffusion.codec import LatentCodec, PixelTransform, to_pil
from training.generative.diffusion.config import MMDiTConfig
from training.generative.diffusion.generate import DESCRIPTION
from training.generative.diffusion.mmdit import TextToImageNet
from training.generative.diffusion.task import TimeBins, check_encoder, check_latent
from training.generative.ema import EMA
from training.generative.encoders import TextConditioner, load_encoder, text_features
from training.generative.evaluation import attribute_scores, frechet_distance, gaussian_of


@pytest.mark.parametrize("name", [ENCODER, "tiny-coca"])
def test_text_features_are_the_towers_tokens_and_its_encode_text(name, tmp_path):
    import open_clip

    from pipeline.core.model_configs import register_model_configs
    from training.engine.checkpoint import save_weights

    register_model_configs()
    save_weights(str(tmp_path / "m.pt"), open_clip.create_model(name))
    enc = load_encoder(EncoderRef(name=name, weights=str(tmp_path / "m.pt")))
    text = enc.tokenizer(["a red circle", "a large blue star in the top left"])
    tokens, pooled = text_features(enc.clip, text)
    assert torch.allclose(pooled, enc.clip.encode_text(text, normalize=False), atol=1e-5)
    assert tokens.shape[:2] == (2, text.shape[1])  # one feature per context position (CoCa: its cls slot dropped)
    assert not torch.allclose(tokens[0], tokens[1])


def test_the_conditioner_encodes_each_caption_once_and_caches_by_value(untrained):
    cond = TextConditioner(untrained)
    tokens, pooled = cond(["a red circle", "a blue star", "a red circle"])
    assert cond.encoded == 2 and len(cond.cache) == 2
    assert torch.equal(tokens[0], tokens[2]) and not torch.equal(tokens[0], tokens[1])
    assert torch.allclose(pooled.norm(dim=1), torch.ones(3))  # pooled is L2-normalised
    again, _ = cond(["a blue star", "a green cross"])
    assert cond.encoded == 3 and torch.equal(again[0], tokens[1])
    direct, _ = text_features(cond.clip, cond.tokenizer(["a green cross"]))
    assert torch.allclose(again[1], direct[0])
    full = TextConditioner(untrained, cache_size=1)  # a full cache still answers, it only stops growing
    assert torch.allclose(full(["a", "b", "b"])[0][1], full(["b"])[0][0], atol=1e-5) and len(full.cache) == 1


def test_an_encoder_checkpoint_of_another_model_is_refused_naming_both_configs(untrained):
    wrong = EncoderRef(name="tiny-sigmoid-vit", weights=untrained.weights, source="stages.enc")
    with pytest.raises(ConfigError, match=r"stages\.gen\.encoder_from: the encoder checkpoint .*model\.pt does not "
                                          r"fit stages\.enc: open_clip 'tiny-sigmoid-vit'.*Missing key"):
        load_encoder(wrong, user="stages.gen.encoder_from")
    cfg = tiny_config(untrained, model={"text_dim": 99})
    with pytest.raises(ConfigError, match=r"stages\.gen\.model\.text_dim is 99, but the conditioning encoder "
                                          r".*'tiny-clip-rn'.* gives 64"):
        check_encoder(cfg, "/nonexistent", "stages.gen")


def test_a_run_directory_refuses_a_different_conditioning_encoder(untrained, tmp_path):
    cfg = tiny_config(untrained)
    record = check_encoder(cfg, str(tmp_path), "stages.gen")
    older = {**record, "sha256": "0" * 64, "source": "stages.old"}  # another checkpoint trained this run
    (tmp_path / DESCRIPTION).write_text(json.dumps({"encoder": older}))
    with pytest.raises(ConfigError, match=r"conditioned on the encoder stages\.old 'tiny-clip-rn'.*but this config "
                                          r"gives an untrained CLIP"):
        check_encoder(cfg, str(tmp_path), "stages.gen")


def test_a_dropped_caption_is_the_learned_null_caption_whatever_the_text():
    torch.manual_seed(0)
    # default init (with adaLN-Zero nothing upstream of the zeroed output layer gets a gradient at step 0)
    net = TextToImageNet(MMDiTConfig(layers=1, heads=2, head_dim=16, patch_size=2, zero_init=False), 8, 3, 12, 10, 5)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([100.0, 700.0])
    tokens, pooled = torch.randn(2, 5, 12), torch.randn(2, 10)
    null = torch.ones(2)
    out = net(x, t, (tokens, pooled, null))
    assert torch.equal(out, net(x, t, (torch.randn(2, 5, 12), torch.randn(2, 10), null)))  # text ignored
    assert not torch.allclose(out, net(x, t, (tokens, pooled, torch.zeros(2))))  # ... and used when not dropped
    out.square().mean().backward()
    assert net.null_tokens.grad.abs().sum() > 0 and net.null_pooled.grad.abs().sum() > 0  # it learns
    zero = TextToImageNet(MMDiTConfig(layers=1, heads=2, head_dim=16, patch_size=2), 8, 3, 12, 10, 5)
    assert torch.equal(zero(x, t, (tokens, pooled, null)), torch.zeros_like(out))  # adaLN-Zero: the first output is 0


def test_the_ema_half_life_is_counted_in_samples_and_ramps_up():
    live = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(live, halflife_samples=1000, rampup=0.1)
    assert ema.beta(batch=100, samples_seen=500) == pytest.approx(0.5 ** (100 / 50))  # ramp-up: 0.1 x 500
    assert ema.beta(batch=100, samples_seen=10**6) == pytest.approx(0.5 ** (100 / 1000))
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(live, batch=1000, samples_seen=10**6)  # one half-life: halfway to the live weights
    assert torch.allclose(ema.module.weight, before + 0.5)
    assert not ema.module.weight.requires_grad


def test_the_loss_per_flow_time_bin_is_the_mean_of_its_samples():
    bins = TimeBins(5)
    t = torch.tensor([0.05, 0.1, 0.3, 0.95, 0.99, 0.5])
    bins.add(torch.tensor([1.0, 3.0, 5.0, 2.0, 4.0, 7.0]), t / (1 - t))  # sigma of each flow time
    bins.add(torch.tensor([9.0]), torch.tensor([0.25 / 0.75]))
    read = bins.read()
    assert read == pytest.approx({"loss_t0.0-0.2": 2.0, "loss_t0.2-0.4": 7.0, "loss_t0.4-0.6": 7.0,
                                  "loss_t0.8-1.0": 3.0})
    assert bins.read() == {}  # read resets: each log row is its own window


def test_the_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.2, 2, size=4), rng.uniform(0.2, 2, size=4)
    # commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # general covariances: scipy's sqrtm of the product
    from scipy.linalg import sqrtm

    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(4), m2 @ m2.T + 0.1 * np.eye(4)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
    # fitted to samples, it converges to the distance of the distributions
    x = torch.from_numpy(rng.multivariate_normal(mu1, s1, size=40_000))
    y = torch.from_numpy(rng.multivariate_normal(mu2, s2, size=40_000))
    assert frechet_distance(*gaussian_of(x), *gaussian_of(y)) == pytest.approx(want, rel=0.03)


def test_attribute_scores_count_colour_and_shape_separately():
    classes = ["red circle", "red square", "blue circle", "blue square", "green circle", "green square"]
    truth = torch.tensor([0, 1, 2, 3])
    predicted = torch.tensor([0, 0, 4, 2])  # right; right colour wrong shape; right shape; right colour
    s = attribute_scores(predicted, truth, classes)
    assert (s["colour"], s["shape"], s["both"]) == (0.75, 0.5, 0.25)
    assert (s["colour_chance"], s["shape_chance"], s["both_chance"]) == (1 / 3, 1 / 2, 1 / 6)


def test_attribute_scores_of_plain_classes_score_the_class():
    """The fashion world's classes are not "<colour> <shape>": "ankle boot" is one class, not an ankle colour."""
    classes = ["t-shirt", "trousers", "ankle boot", "bag"]
    s = attribute_scores(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 1, 2, 3]), classes)
    assert (s["shape"], s["both"], s["shape_chance"], s["colour"], s["colour_chance"]) == (0.5, 0.5, 0.25, 1.0, 1.0)


def test_images_are_cropped_to_the_resolution_in_minus_one_to_one_without_a_flip():
    from PIL import Image

    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 40))  # red on the left third
    x = PixelTransform(16)(img)  # short side 40 -> 16, width 24 -> centre 16 of it
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x[0, :, 0].mean() > 0.9 and x[2, :, -1].mean() > 0.9  # red stays left, blue right
    assert to_pil(x[None])[0].getpixel((15, 8)) == (0, 0, 255)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> str:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("vae"))
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                  norm_num_groups=4, sample_size=16, scaling_factor=0.7, shift_factor=0.1).save_pretrained(path)
    return path


def test_a_latent_channel_mismatch_or_a_missing_vae_is_refused_naming_both(untrained, vae_dir, tmp_path):
    cfg = tiny_config(untrained, latent={"vae": vae_dir, "channels": 16})
    with pytest.raises(ConfigError, match=r"stages\.gen\.latent\.channels is 16, but the autoencoder stages\.gen\."
                                          r"latent\.vae = .* has latent_channels 4"):
        check_latent(cfg, "stages.gen")
    missing = tiny_config(untrained, latent={"vae": str(tmp_path / "nowhere"), "channels": 4})
    with pytest.raises(ConfigError, match=r"stages\.gen\.latent\.vae: .*nowhere is missing \(no such folder\), not "
                                          r"a diffusers AutoencoderKL"):
        check_latent(missing, "stages.gen")
    check_latent(tiny_config(untrained, latent={"vae": vae_dir, "channels": 4}), "stages.gen")


def test_the_latent_codec_scales_and_shifts_with_the_autoencoders_own_factors(vae_dir):
    codec = LatentCodec(vae_dir, 16)
    assert (codec.channels, codec.size, codec.scale, codec.shift) == (4, 8, 0.7, 0.1)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    z = codec.encode(images)
    torch.manual_seed(1)
    raw = codec.vae.encode(images).latent_dist.sample()
    assert z.shape == (2, 4, 8, 8) and torch.allclose(z, (raw - 0.1) * 0.7, atol=1e-6)
    decoded = codec.decode(z)
    assert torch.allclose(decoded, codec.vae.decode(raw).sample.clamp(-1, 1), atol=1e-5)
