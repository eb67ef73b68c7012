"""The blip backend on a tiny random BLIP saved to a folder (no download): same captions and ITM scores as calling
Hugging Face's models directly. Skipped where transformers is not installed (it is the optional `blip` extra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from capfilt_testdata import BLIP_WORDS, tiny_blip  # noqa: E402

from filtering.captioner import Captioner, CaptionerSpec, check_captioner  # noqa: E402
from filtering.captioner_blip import BLIP_PROMPT, BlipITM  # noqa: E402


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """Folders holding a tiny random BlipForConditionalGeneration and BlipForImageTextRetrieval with a processor."""
    return tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def test_blip_captions_equal_hugging_face_generate(blip, pixels):
    from PIL import Image

    assert CaptionerSpec(backend="blip", weights=blip["caption"]).preprocess_cfg()["size"] == [32, 32]
    assert check_captioner({"backend": "blip", "weights": blip["caption"]})["backend"] == "blip"
    cap = Captioner({"backend": "blip", "weights": blip["caption"]},
                    {"strategy": "greedy", "min_length": 2, "max_length": 6, "device": "cpu"})
    got = cap.captions(pixels)
    assert [len(c) for c in got] == [1, 1, 1]

    proc = transformers.BlipProcessor.from_pretrained(blip["caption"])
    model = transformers.BlipForConditionalGeneration.from_pretrained(blip["caption"]).eval()
    inputs = proc(images=[Image.fromarray(p) for p in pixels], text=[BLIP_PROMPT] * 3, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=2, num_beams=1, do_sample=False)
    want = [t[len(BLIP_PROMPT.strip()):].strip() for t in proc.batch_decode(out, skip_special_tokens=True)]
    assert [c[0] for c in got] == want and all(len(w.split()) >= 2 for w in want)
    assert all(w in BLIP_WORDS for c in got for w in c[0].split())


def test_blip_sampling_is_seeded_and_beams_return_num_captions(blip, pixels):
    spec = {"backend": "blip", "weights": blip["caption"]}
    nucleus = {"strategy": "nucleus", "num_captions": 2, "max_length": 8, "min_length": 1, "device": "cpu"}
    a = Captioner(spec, {**nucleus, "seed": 1}).captions(pixels)
    assert [len(c) for c in a] == [2, 2, 2]
    assert Captioner(spec, {**nucleus, "seed": 1}).captions(pixels) == a
    assert Captioner(spec, {**nucleus, "seed": 2}).captions(pixels) != a
    beams = Captioner(spec, {"strategy": "beam", "num_beams": 3, "num_captions": 3, "max_length": 5,
                             "device": "cpu"}).generate(pixels)
    assert all(len(b) == 3 and all(len(s.tokens) <= 5 for s in b) for b in beams)
    greedy = Captioner(spec, {"strategy": "greedy", "device": "cpu"})
    out = greedy({"pixels": pixels, "decodable": [True, False, True]})
    assert [len(c) for c in out["synthetic_captions"]] == [1, 0, 1]


def test_blip_itm_scores_equal_hugging_face(blip, pixels):
    from PIL import Image

    captions = ["a dog on the grass", "a red cat", "a small table"]
    got = BlipITM(blip["itm"], device="cpu").scores(pixels, captions)
    proc = transformers.BlipProcessor.from_pretrained(blip["itm"])
    model = transformers.BlipForImageTextRetrieval.from_pretrained(blip["itm"]).eval()
    inputs = proc(images=[Image.fromarray(p) for p in pixels], text=captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**inputs, use_itm_head=True).itm_score.softmax(-1)[:, 1].numpy()
    assert got.shape == (3,) and ((got > 0) & (got < 1)).all()
    np.testing.assert_allclose(got, want, atol=1e-5)
