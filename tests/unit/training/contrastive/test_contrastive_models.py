"""Model names, SigLIP's initialisation, FLIP's patch dropout, the training augmentation, final weights open_clip
loads, pretrained weights (and no pickles)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch

from pipeline.core.model_configs import register_model_configs
from training.contrastive.config import AugmentConfig, ModelConfig
from training.contrastive.data import fast_train_transform
from training.contrastive.models import UnknownModelError, build_model, check_model_name, set_patch_dropout
from training.engine import checkpoint as ckpt


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_an_unknown_model_name_lists_the_closest_known_names():
    with pytest.raises(UnknownModelError) as err:
        check_model_name("tiny-sigmod-vit")
    assert "unknown model 'tiny-sigmod-vit'" in str(err.value)
    assert "tiny-sigmoid-vit" in str(err.value)
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        check_model_name("ViT-B-23")
    assert check_model_name("ViT-B/32") == "ViT-B/32"  # open_clip's own spelling is accepted


def test_siglip_starts_at_t_ln10_and_bias_minus_10_on_any_architecture():
    for name in ("tiny-sigmoid-vit", "tiny-clip-vit"):  # the second is a softmax-CLIP config
        clip = build_model(ModelConfig(name=name), "siglip").clip
        assert clip.logit_scale.item() == pytest.approx(math.log(10))
        assert clip.logit_bias.item() == pytest.approx(-10.0)
    assert build_model(ModelConfig(name="tiny-clip-vit"), "clip").clip.logit_bias is None


def test_flip_patch_dropout_is_random_in_training_and_off_for_tuning_and_eval():
    torch.manual_seed(0)
    clip = build_model(ModelConfig(name="tiny-clip-vit", patch_dropout=0.5), "clip").clip.train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(clip.encode_image(x), clip.encode_image(x))  # different patches dropped each call
    set_patch_dropout(clip, 0.0)
    assert torch.equal(clip.encode_image(x), clip.encode_image(x))
    set_patch_dropout(clip, 0.5)
    clip.eval()
    assert torch.equal(clip.encode_image(x), clip.encode_image(x))


def test_augment_sets_the_training_crop_and_colour_jitter_and_rejects_a_crop_over_the_image():
    def crop_scales(augment: AugmentConfig) -> tuple[tuple, list[str]]:
        train = build_model(ModelConfig(name="tiny-clip-rn"), "clip", augment=augment.open_clip_cfg()).preprocess_train
        return train.transforms[0].scale, [type(t).__name__ for t in train.transforms]

    assert crop_scales(AugmentConfig()) == ((0.9, 1.0), ["RandomResizedCrop", "MaybeConvertMode", "MaybeToTensor",
                                                         "Normalize"])  # open_clip's own default
    scale, steps = crop_scales(AugmentConfig(scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.1)))
    assert scale == (0.5, 1.0) and steps[2] == "color_jitter"
    # the crop alone keeps the one-resize fast path, with the wider crop
    fast = fast_train_transform(build_model(ModelConfig(name="tiny-clip-rn"), "clip",
                                            augment=AugmentConfig(scale=(0.5, 1.0)).open_clip_cfg()).preprocess_train)
    assert fast.crop.scale == (0.5, 1.0)
    with pytest.raises(ValueError, match="scale must be 0 < low <= high <= 1"):
        AugmentConfig(scale=(0.5, 1.2))


@pytest.mark.parametrize("name, objective", [("tiny-sigmoid-vit", "siglip"), ("tiny-coca", "coca"),
                                             ("tiny-clip-rn", "clip")])
def test_final_weights_load_in_open_clip_with_identical_embeddings(tmp_path, name, objective):
    torch.manual_seed(1)
    built = build_model(ModelConfig(name=name), objective)
    with torch.no_grad():  # move away from any default init, so equality means the weights were loaded
        for p in built.clip.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        for key, b in built.clip.named_buffers():  # the ResNet tower's BatchNorm statistics must travel too
            if "running_" in key:
                b.add_(torch.rand_like(b))
    path = str(tmp_path / "model.pt")
    ckpt.save_weights(path, built.clip)

    register_model_configs()
    loaded, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=path)
    images = torch.randn(3, 3, 32, 32)
    texts = open_clip.get_tokenizer(name)(["a red circle", "a blue square", "a green triangle"])
    built.clip.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), built.clip.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), built.clip.encode_text(texts))
        assert torch.equal(loaded.logit_scale, built.clip.logit_scale)


def test_coca_starts_from_the_same_finite_weights_whatever_memory_held():
    # open_clip 3.3 leaves CoCa's decoder projection uninitialised (torch.empty); build_model initialises it
    states = []
    for _ in range(2):
        junk = torch.full((8_000_000,), 3e30)
        del junk  # freed memory full of huge numbers, which torch.empty may hand back
        torch.manual_seed(0)
        states.append(build_model(ModelConfig(name="tiny-coca"), "coca").clip.state_dict())
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
        assert tensor.float().abs().max() < 100, name


def test_every_local_model_config_builds_a_model_of_a_few_million_parameters():
    names = register_model_configs()
    assert {"tiny-clip-vit", "tiny-sigmoid-vit", "tiny-coca"} <= set(names)
    for name in names:
        clip = open_clip.create_model(name)
        params = sum(p.numel() for p in clip.parameters())
        assert 1e6 < params < 1e7, f"{name}: {params / 1e6:.1f}M parameters"
        size = clip.visual.image_size  # a ResNet tower keeps an int, a ViT a pair
        assert (size if isinstance(size, tuple) else (size, size)) == (32, 32)


def test_pretrained_weights_load_and_a_pickle_payload_is_refused(tmp_path):
    torch.manual_seed(3)
    source = build_model(ModelConfig(name="tiny-clip-vit"), "clip").clip
    good = str(tmp_path / "good.pt")
    ckpt.save_weights(good, source)
    loaded = build_model(ModelConfig(name="tiny-clip-vit", pretrained=good), "clip").clip
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values(),
                                                   strict=True))
    evil = str(tmp_path / "evil.pt")
    torch.save({**source.state_dict(), "extra": Payload()}, evil)
    with pytest.raises(ckpt.CheckpointError, match="refusing to load pretrained weights"):
        build_model(ModelConfig(name="tiny-clip-vit", pretrained=evil), "clip")
