"""The blip backend on a tiny random BLIP saved to a folder (no download): same captions and ITM scores as calling
Hugging Face's models directly. Skipped where transformers is not installed (it is the optional `blip` extra)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from filtering.captioner import Captioner, CaptionerSpec, check_captioner  # noqa: E402
from filtering.captioner_blip import BLIP_PROMPT, BlipITM  # noqa: E402

WORDS = ["a", "picture", "of", "dog", "cat", "red", "blue", "on", "the", "grass", "table", "small", "big"]


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """Folders holding a tiny random BlipForConditionalGeneration and BlipForImageTextRetrieval with a processor."""
    d = tmp_path_factory.mktemp("blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")
    proc = transformers.BlipProcessor(transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tok)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=64,
                bos_token_id=vocab.index("[DEC]"), sep_token_id=vocab.index("[SEP]"), pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg = transformers.BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    out = {}
    for name, cls in (("caption", transformers.BlipForConditionalGeneration),
                      ("itm", transformers.BlipForImageTextRetrieval)):
        torch.manual_seed(0)
        cls(cfg).save_pretrained(d / name)
        proc.save_pretrained(d / name)
        out[name] = str(d / name)
    return out


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
    assert all(w in WORDS for c in got for w in c[0].split())


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
