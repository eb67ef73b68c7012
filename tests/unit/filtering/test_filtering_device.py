"""Device-strict runs of the score and caption stages' models: the DFN scorer's forward and the CoCa captioner's
key/value-cached decoding with the model on a fake CUDA device (`fake_cuda`: FakeTensorMode, no GPU needed), where
a tensor left on the CPU fails the op that meets it.

Not run that way, and why: the decoding loops themselves (`sample_sequences`, `beam_search`) read each step's
tokens back (`.tolist()`: which rows ended, what to keep), which a fake tensor has no values for; here every part
of a step runs instead (image tokens, the caches, `step`, the repetition penalty, the per-row draws, a finished
row leaving the caches), fed the start token. Top-p is off here: `top_p_filter` widens its top-k until every row
holds top_p of the mass, which reads values (its mask is `zeros_like` the probabilities: on their device). The
scorer's numpy output (`embed`, `__call__`) reads values: `embed_on_device`, everything before that read, is what
runs here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capfilt_testdata import tiny_coca
from curation_testdata import TINY_MODEL, tiny_model_files
from fake_cuda import fake_cuda, real_constants

from filtering import dfn
from filtering.captioner import Captioner
from filtering.decoding import process, row_generators, sample_rows, top_p_filter
from filtering.dfn import DFNScorer, ModelSpec

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")


@pytest.fixture(autouse=True)
def weights_read_on_the_cpu(monkeypatch):
    """Checkpoints are read outside the fake mode (safetensors fills CPU storage); loading them into the model and
    moving it to the device are the code under test."""
    monkeypatch.setattr(dfn, "load_state_dict_safely", real_constants(dfn.load_state_dict_safely))


def crops(n: int, side: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_the_dfn_scorers_forward_runs_on_the_device(tmp_path):
    cfg, ckpt = tiny_model_files(tmp_path)
    spec = ModelSpec(name=TINY_MODEL, pretrained=ckpt, config_file=cfg)
    with fake_cuda():
        scorer = DFNScorer(spec, device="cuda")
        assert {p.device.type for p in scorer.model.parameters()} == {"cuda"}
        img, txt = scorer.embed_on_device(crops(3), ["a red circle", "a dog", ""])
    assert img.device.type == txt.device.type == "cuda" and img.shape == txt.shape == (3, scorer.embed_dim)


@pytest.mark.parametrize("strategy", ["nucleus", "beam"])
def test_the_captioners_cached_decoding_runs_on_the_device(tmp_path, strategy):
    weights = tiny_coca(tmp_path / "coca.safetensors")
    with fake_cuda():
        cap = Captioner({"name": "tiny-coca", "weights": weights},
                        {"device": "cuda", "strategy": strategy, "num_beams": 2, "repetition_penalty": 1.3,
                         "top_p": 1.0})
        backend, s = cap.backend, cap.backend.settings
        assert {p.device.type for p in backend.model.parameters()} == {"cuda"}
        image_tokens = backend.decoder.encode_images(backend.pixels_to_input(crops(2)))  # (B, N, W)
        state = backend.decoder.start(image_tokens, s.max_length)
        tokens = torch.full((2,), s.sot_id, dtype=torch.long, device=image_tokens.device)
        history = tokens[:, None]
        for n in range(3):  # what one decoding step does, fed fixed tokens
            logits = backend.decoder.step(state, tokens).float()  # (R, V)
            scores = process(logits, history, n, s)
            probs = top_p_filter(scores / s.temperature, s.top_p).softmax(dim=-1)
            tokens = sample_rows(probs, row_generators(0, ["a", "b"]))
            history = torch.cat([history, tokens[:, None]], dim=1)
        kept = state.select(torch.tensor([1], device=image_tokens.device))  # a row that ended leaves the caches
    assert image_tokens.device.type == logits.device.type == tokens.device.type == "cuda"
    assert logits.shape == (2, 49408) and kept.rows == 1 and all(k.device.type == "cuda" for k in kept.text_k)
