"""The DFN scorer as a plain class: same scores as open_clip's own pipeline, safe checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from curation_testdata import TINY_MODEL, jpeg, smooth_image, tiny_model_files

from filtering.dfn import DFNScorer, ModelSpec, load_state_dict_safely
from filtering.preprocess import Preprocessor
from filtering.signals import signal_batches
from pipeline.core.images import decode_image


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg, ckpt = tiny_model_files(tmp_path_factory.mktemp("tiny_model"))
    return ModelSpec(name=TINY_MODEL, pretrained=ckpt, config_file=cfg)


def test_scores_match_open_clip_reference_pipeline(tiny):
    import open_clip

    scorer = DFNScorer(tiny, device="cpu")
    images = [jpeg(smooth_image(i, (64 + 8 * i, 48))) for i in range(5)]
    captions = [f"picture {i} of something" for i in range(5)]
    samples = [(f"k{i}", {"jpg": b, "txt": c.encode()}) for i, (b, c) in enumerate(zip(images, captions, strict=True))]
    samples.append(("bad", {"jpg": b"not an image", "txt": b"broken image"}))
    (batch,) = signal_batches(samples, "00000", preprocess=Preprocessor(tiny.preprocess_cfg()))
    out = scorer(batch)
    assert "pixels" not in out and out["image_embedding"].shape == (6, 64)
    assert out["image_embedding"].dtype == np.float16 and np.isnan(out["dfn_score"][5])
    assert not out["image_embedding"][5].any()

    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=tiny.pretrained)
    model.eval()
    tok = open_clip.get_tokenizer(TINY_MODEL)
    with torch.no_grad():
        x = torch.stack([preprocess(decode_image(b)[1]) for b in images])
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok(captions), normalize=True)
    ref = (img * txt).sum(-1).numpy()
    np.testing.assert_allclose(out["dfn_score"][:5], ref, atol=1e-5)
    np.testing.assert_allclose(out["image_embedding"][:5].astype(np.float32), img.numpy(), atol=2e-3)


def test_loads_trainer_style_torch_checkpoint_with_weights_only(tiny, tmp_path):
    from safetensors.torch import load_file

    state = {f"module.{k}": v for k, v in load_file(tiny.pretrained).items()}
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": state}, path)
    loaded = load_state_dict_safely(str(path))
    assert set(loaded) == {k[len("module."):] for k in state}
    a = DFNScorer(tiny, device="cpu")
    b = DFNScorer(tiny.model_copy(update={"pretrained": str(path)}), device="cpu")
    (batch,) = signal_batches([("k", {"jpg": jpeg(smooth_image(1)), "txt": b"a thing"})], "0",
                              preprocess=Preprocessor(tiny.preprocess_cfg()))
    assert a(dict(batch))["dfn_score"][0] == pytest.approx(b(dict(batch))["dfn_score"][0], abs=1e-6)


def test_pickled_objects_in_a_checkpoint_are_refused(tiny, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": object()}, path)  # an arbitrary object needs pickle to load
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_state_dict_safely(str(path))


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_preprocess_crops_equal_open_clip_transforms(mode):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": mode,
           "fill_color": 0}
    ours = Preprocessor(cfg)
    ref = image_transform_v2(PreprocessCfg(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode=mode), False)
    for size in [(64, 48), (33, 95), (32, 32), (17, 40), (301, 129)]:
        img = smooth_image(sum(size), size)
        want = ((ref(img).numpy().transpose(1, 2, 0) * 0.5 + 0.5) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(ours(img), want, err_msg=f"{mode} {size}")
    assert ours.fast == (mode != "longest")


def test_preprocess_resolved_without_open_clip_equals_open_clips_own(tiny):
    from dataclasses import asdict

    import open_clip
    from open_clip.transform import PreprocessCfg

    from filtering.preprocess import DEFAULT_PREPROCESS, resolve_preprocess
    from pipeline.core.model_configs import register_model_configs

    register_model_configs(tiny.config_file)  # for open_clip's side; ours reads the JSON files directly
    defaults = asdict(PreprocessCfg())
    assert {**defaults, "size": [224, 224], "mean": list(defaults["mean"]), "std": list(defaults["std"])} == \
        DEFAULT_PREPROCESS
    for name, pretrained, config in [(TINY_MODEL, tiny.pretrained, tiny.config_file), ("ViT-B-32", None, None),
                                     ("RN50", None, None), ("tiny-clip-vit", None, None)]:
        ours = resolve_preprocess(name, pretrained, config)
        model = open_clip.create_model(name, pretrained=None) if name != TINY_MODEL else DFNScorer(tiny).model
        theirs = model.visual.preprocess_cfg
        size = theirs["size"]
        assert ours["size"] == (list(size) if isinstance(size, tuple | list) else [size, size]), name
        assert ours["mean"] == list(theirs["mean"]) and ours["resize_mode"] == theirs["resize_mode"], name


def test_weights_on_s3_score_like_the_local_file(tiny, s3_bucket):
    # score's `model_from:` a train-clip stage whose run root is a bucket: the actor downloads model.pt itself
    from pipeline.core.layout import join
    from pipeline.core.storage import upload

    url = join(s3_bucket, "train", "model.safetensors")
    upload(tiny.pretrained, url)
    remote = tiny.model_copy(update={"pretrained": url})
    assert remote.preprocess_cfg() == tiny.preprocess_cfg()
    (batch,) = signal_batches([("k", {"jpg": jpeg(smooth_image(2)), "txt": b"a thing"})], "0",
                              preprocess=Preprocessor(tiny.preprocess_cfg()))
    a, b = DFNScorer(tiny, device="cpu"), DFNScorer(remote, device="cpu")
    assert a(dict(batch))["dfn_score"][0] == pytest.approx(b(dict(batch))["dfn_score"][0], abs=1e-6)
