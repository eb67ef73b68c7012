"""The CoCa captioner: cached decoding equals open_clip's full-prefix decoder; strategies, lengths, seeds, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from filtering.captioner import Captioner, CaptionerConfig, CaptionerError, check_captioner
from filtering.coca_kv import CocaKVDecoder
from filtering.preprocess import DEFAULT_PREPROCESS, normalize_batch
from pipeline.core.model_configs import register_model_configs

MODEL = "tiny-coca"  # configs/models/tiny-coca.json: context 16, so captions of at most 14 tokens
SOT, EOS = 49406, 49407
FULL = 14


def _tiny_coca(seed: int = 0):
    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL)
    dec = model.text_decoder  # open_clip 3.3 leaves this as torch.empty garbage on random init
    torch.nn.init.normal_(dec.text_projection, std=dec.width ** -0.5)
    return model.eval()


def _save(model, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def images():
    """Five normalised 32x32 images and their uint8 crops."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    mean, std = torch.tensor(DEFAULT_PREPROCESS["mean"]), torch.tensor(DEFAULT_PREPROCESS["std"])
    return pixels, normalize_batch(torch.from_numpy(pixels), mean, std)


def _reference_greedy(model, x, max_len: int, min_len: int) -> list[list[int]]:
    """open_clip's own forward over the whole prefix at every step, one image at a time: the decoder being matched."""
    out = []
    with torch.no_grad():
        for img in x:
            img = img[None]
            latent, embs = model._encode_image(img)
            seq = [SOT]
            for n in range(max_len):
                logits = model(img, torch.tensor([seq]), image_latent=latent, image_embs=embs,
                               output_labels=False)["logits"][0, -1]
                if n < min_len:
                    logits[EOS] = float("-inf")
                tok = int(logits.argmax())
                if tok == EOS:
                    break
                seq.append(tok)
            out.append(seq[1:])
    return out


@pytest.fixture(scope="module")
def coca(tmp_path_factory, images):
    """Random-init tiny CoCa weights, and a copy whose EOS logit competes so that captions end at varied lengths."""
    d = tmp_path_factory.mktemp("coca")
    model = _tiny_coca()
    plain = _save(model, d / "tiny-coca.safetensors")
    # EOS takes the output column of tokens greedy picks mid-caption, scaled up: those steps now end the caption
    picks = _reference_greedy(model, images[1], FULL, FULL)
    with torch.no_grad():
        proj = model.text_decoder.text_projection
        proj[:, EOS] = 1.05 * proj[:, picks[0][4]]
    eos_prone = _save(model, d / "tiny-coca-eos.safetensors")
    return {"plain": plain, "eos": eos_prone, "dir": d}


def _captioner(weights: str, **cfg) -> Captioner:
    return Captioner({"name": MODEL, "weights": weights}, {"device": "cpu", **cfg})


def _tokens(cap: Captioner, x, uids=None) -> list[list[int]]:
    return [seqs[0].tokens for seqs in cap.generate(x, uids)]


def test_kv_step_logits_equal_full_prefix_forward(coca, images):
    """Every step's logits, all 16 positions, including a pad token (id 0) fed mid-caption: open_clip masks the key
    after it (its legacy CLS shift), and the cached decoder must too."""
    import open_clip

    from filtering.captioner import CaptionerSpec, load_coca

    model, _ = load_coca(CaptionerSpec(name=MODEL, weights=coca["plain"]), "cpu")
    dec = CocaKVDecoder(model)
    x = images[1]
    with torch.no_grad():
        latent, embs = model._encode_image(x)
        state = dec.start(embs)
        prefix = torch.full((len(x), 1), SOT)
        for t in range(dec.max_positions):
            ref = model(x, prefix, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
            got = dec.step(state, prefix[:, -1])
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            nxt = ref.argmax(dim=-1)
            if t in (3, 9):
                nxt[t % len(x)] = 0  # the pad id, a real token ("!")
            prefix = torch.cat([prefix, nxt[:, None]], dim=1)
    assert isinstance(open_clip.get_tokenizer(MODEL).decode([0]), str)


def test_greedy_full_length_equals_reference(coca, images):
    _, x = images
    cap = _captioner(coca["plain"], strategy="greedy", min_length=FULL)
    model = _tiny_coca()
    ref = _reference_greedy(model, x, FULL, FULL)
    got = cap.generate(x)
    assert [s[0].tokens for s in got] == ref
    assert all(len(t) == FULL and not s[0].finished for t, s in zip(ref, got, strict=True))
    # the reported log-prob is the model's: the sum of log-softmax of the full-prefix logits at the chosen tokens
    with torch.no_grad():
        seq = torch.tensor([[SOT, *ref[0]]])
        logits = model(x[:1], seq, output_labels=False)["logits"][0, :-1]
        want = logits.log_softmax(-1).gather(1, seq[0, 1:, None]).sum().item()
    assert got[0][0].logprob == pytest.approx(want, abs=1e-4)


def test_greedy_natural_eos_equals_reference_and_lengths_vary(coca, images):
    import open_clip

    from filtering.captioner import CaptionerSpec, load_coca

    _, x = images
    model, _ = load_coca(CaptionerSpec(name=MODEL, weights=coca["eos"]), "cpu")
    ref = _reference_greedy(model, x, FULL, 0)
    got = _captioner(coca["eos"], strategy="greedy", min_length=0).generate(x)
    assert [s[0].tokens for s in got] == ref
    lengths = {len(t) for t in ref}
    assert len(lengths) >= 2 and min(lengths) < FULL, f"captions should end at varied steps: {lengths}"
    assert all(s[0].finished == (len(s[0].tokens) < FULL) for s in got)
    assert _captioner(coca["eos"], strategy="greedy", min_length=0).captions(x)[0] == \
        [open_clip.get_tokenizer(MODEL).decode(ref[0]).strip()]


def test_min_and_max_length(coca, images):
    _, x = images
    for strategy in ("greedy", "nucleus", "beam"):
        longer = _captioner(coca["eos"], strategy=strategy, min_length=6).generate(x)
        assert all(len(s.tokens) >= 6 for seqs in longer for s in seqs), strategy
        short = _captioner(coca["plain"], strategy=strategy, min_length=0, max_length=4).generate(x)
        assert all(len(s.tokens) == 4 and not s.finished for seqs in short for s in seqs), strategy
    natural = [len(t) for t in _tokens(_captioner(coca["eos"], strategy="greedy", min_length=0), x)]
    assert min(natural) < 6  # so min_length=6 above did change something


def test_max_length_over_the_context_is_an_error_naming_the_cap(coca):
    spec = {"name": MODEL, "weights": coca["plain"]}
    assert check_captioner(spec)["max_length"] == FULL
    assert check_captioner(spec, {"max_length": 10})["max_length"] == 10
    for call in (lambda: check_captioner(spec, {"max_length": 15}), lambda: Captioner(spec, {"max_length": 15})):
        with pytest.raises(CaptionerError, match=r"max_length 15 exceeds model config 'tiny-coca'.* 14 tokens"):
            call()
    with pytest.raises(CaptionerError, match="min_length 15 > max_length 14"):
        check_captioner(spec, {"min_length": 15})


def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_greedy(coca, images):
    _, x = images
    for weights, min_len in ((coca["plain"], FULL), (coca["eos"], 0)):
        greedy = _captioner(weights, strategy="greedy", min_length=min_len).generate(x)
        beam1 = _captioner(weights, strategy="beam", num_beams=1, length_penalty=0.0, min_length=min_len).generate(x)
        assert [b[0].tokens for b in beam1] == [g[0].tokens for g in greedy]
        for b, g in zip(beam1, greedy, strict=True):
            assert b[0].logprob == pytest.approx(g[0].logprob, abs=1e-4)
    # Full length, no EOS: four beams find captions at least as likely as greedy's, here more likely for some.
    # (Not a theorem: a beam can prune greedy's prefix. With the EOS-prone weights it does, on image 3: greedy ends
    # after 3 tokens at log-prob -29, the beams lose that prefix. The exhaustive test below checks the search itself.)
    greedy = _captioner(coca["plain"], strategy="greedy", min_length=FULL).generate(x)
    wide = _captioner(coca["plain"], strategy="beam", num_beams=4, num_captions=4, length_penalty=0.0,
                      min_length=FULL).generate(x)
    for w, g in zip(wide, greedy, strict=True):
        assert len(w) == 4 and w[0].logprob >= g[0].logprob - 1e-4
        assert [s.score for s in w] == sorted((s.score for s in w), reverse=True)
        assert len({tuple(s.tokens) for s in w}) == 4  # distinct beams, not copies
    assert any(w[0].logprob > g[0].logprob + 1e-3 for w, g in zip(wide, greedy, strict=True))


class _ToyStepper:
    """Next-token logits that depend on the whole prefix (a table keyed by it): 6 tokens, SOT 4, EOS 5."""

    class State:
        def __init__(self, prefixes):
            self.prefixes = prefixes

        def select(self, idx):
            return _ToyStepper.State([self.prefixes[i] for i in idx.tolist()])

    def __init__(self, seed: int):
        self.seed = seed

    def logits(self, prefix: tuple) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, prefix)) % 2**31)
        return torch.randn(6, generator=g, dtype=torch.float64).float() * 2

    def start(self, image_tokens, max_positions):
        return self.State([() for _ in range(len(image_tokens))])

    def step(self, state, tokens):
        state.prefixes = [(*p, t) for p, t in zip(state.prefixes, tokens.tolist(), strict=True)]
        return torch.stack([self.logits(p) for p in state.prefixes])


def _all_captions(stepper: _ToyStepper, max_length: int) -> list[tuple[float, tuple]]:
    """Every caption the toy model can emit, with its log-prob: finished ones shorter than max_length, unfinished
    ones of exactly max_length."""
    out = []

    def walk(prefix, lp):
        logp = stepper.logits(prefix).log_softmax(-1).double()
        n = len(prefix) - 1
        out.append((lp + float(logp[5]), prefix[1:]))
        for tok in range(5):
            if n + 1 == max_length:
                out.append((lp + float(logp[tok]), (*prefix[1:], tok)))
            else:
                walk((*prefix, tok), lp + float(logp[tok]))

    walk((4,), 0.0)
    return sorted(out, reverse=True)


def test_beam_search_wide_enough_is_exhaustive():
    """With as many beams as prefixes and no length penalty, beam search returns the 3 most likely captions of all
    the model can emit (its bookkeeping of EOS, finished and running beams and scores is right)."""
    from filtering.decoding import DecodeSettings, beam_search

    for seed in range(4):
        toy = _ToyStepper(seed)
        best = _all_captions(toy, 3)[:3]
        s = DecodeSettings("beam", sot_id=4, eos_id=5, max_length=3, num_beams=25, length_penalty=0.0)
        (got,) = beam_search(toy, torch.zeros(1, 1, 1), s, num_return=3)
        assert [tuple(q.tokens) for q in got] == [b[1] for b in best]
        assert [q.logprob for q in got] == pytest.approx([b[0] for b in best], abs=1e-5)


def test_nucleus_is_seeded_per_image_and_returns_num_captions(coca, images):
    _, x = images
    uids = [f"uid{i}" for i in range(len(x))]
    # (8 tokens: the random model seldom ends a caption, and every draw would otherwise run to the full length)
    nucleus = {"strategy": "nucleus", "num_captions": 3, "max_length": 8}
    a = _captioner(coca["plain"], **nucleus, seed=7).captions(x, uids)
    assert [len(c) for c in a] == [3] * len(x)
    assert all(len(set(c)) == 3 for c in a)  # three draws, three captions
    assert _captioner(coca["plain"], **nucleus, seed=7).captions(x, uids) == a
    other = _captioner(coca["plain"], **nucleus, seed=8).captions(x, uids)
    assert all(o != c for o, c in zip(other, a, strict=True))
    # an image's captions do not depend on its batch-mates, their order, or the generation batch size
    alone = _captioner(coca["plain"], **nucleus, seed=7, batch_size=2)
    assert alone.captions(x[[3]], [uids[3]]) == [a[3]]
    assert alone.captions(x.flip(0), uids[::-1]) == a[::-1]


def test_top_p_filter_keeps_exactly_the_nucleus():
    from filtering.decoding import row_generators, sample_rows, top_p_filter

    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # nucleus at 0.9: tokens 1, 3, 2 (0.95); token 0 is out
    logits = probs.log()[None]
    kept = torch.isfinite(top_p_filter(logits, 0.9))[0].tolist()
    assert kept == [False, True, True, True]
    assert torch.isfinite(top_p_filter(logits, 0.5))[0].tolist() == [False, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.51))[0].tolist() == [False, True, False, True]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    n = 20000
    filtered = top_p_filter(logits.expand(n, 4), 0.9).softmax(-1)
    draws = sample_rows(filtered, row_generators(0, [str(i) for i in range(n)]))
    counts = torch.bincount(draws, minlength=4).double() / n
    assert counts[0] == 0  # never outside the nucleus
    torch.testing.assert_close(counts[1:], torch.tensor([0.5, 0.15, 0.3], dtype=torch.float64) / 0.95,
                               atol=0.015, rtol=0)


def test_repetition_penalty_follows_hugging_face():
    from filtering.decoding import repetition_penalty

    scores = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    out = repetition_penalty(scores, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # seen tokens only; positive divided, negative multiplied


def test_config_defaults_and_rules():
    cfg = CaptionerConfig()
    assert (cfg.strategy, cfg.top_p, cfg.penalty()) == ("nucleus", 0.9, 1.1)  # BLIP's CapFilt sampling
    assert CaptionerConfig(strategy="beam").penalty() == 1.0
    assert CaptionerConfig(strategy="greedy").penalty() == 1.0
    with pytest.raises(ValueError, match="greedy decoding gives one caption"):
        CaptionerConfig(strategy="greedy", num_captions=2)
    with pytest.raises(ValueError, match="at most num_beams=3"):
        CaptionerConfig(strategy="beam", num_captions=4)


def test_batch_call_adds_captions_and_reasons(coca, images):
    pixels, _ = images
    cap = _captioner(coca["plain"], strategy="nucleus", num_captions=2, seed=3)
    uids = np.array([f"u{i}" for i in range(len(pixels))])
    ok = np.array([True, False, True, True, False])
    out = cap({"pixels": pixels.copy(), "decodable": ok, "uid": uids})
    assert "pixels" not in out
    caps, reasons = out["synthetic_captions"], out["synthetic_captions_reason"]
    assert [len(c) for c in caps] == [2, 0, 2, 2, 0]
    assert list(reasons) == ["", "undecodable", "", "", "undecodable"]
    assert [caps[i] for i in (0, 2, 3)] == cap.captions(pixels[ok], uids[ok])
    kept = _captioner(coca["plain"], strategy="greedy")
    kept.keep_pixels = True
    assert "pixels" in kept({"pixels": pixels[:2].copy(), "decodable": np.ones(2, bool)})


def test_half_precision_runs_under_autocast_and_mostly_agrees(coca, images):
    """open_clip's bf16 keeps LayerNorms and pooler queries in fp32 and fails without autocast; the captioner mixes."""
    pixels, _ = images
    full = _tokens(_captioner(coca["plain"], strategy="greedy", min_length=FULL), pixels)
    half = Captioner({"name": MODEL, "weights": coca["plain"], "precision": "bf16"},
                     {"device": "cpu", "strategy": "greedy", "min_length": FULL})
    got = _tokens(half, pixels)
    assert all(len(t) == FULL for t in got)
    agree = sum(a == b for f, h in zip(full, got, strict=True) for a, b in zip(f, h, strict=True))
    assert agree >= 0.5 * FULL * len(full)


def test_trainer_checkpoint_loads_like_safetensors(coca, images):
    from safetensors.torch import load_file

    _, x = images
    path = coca["dir"] / "model.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in load_file(coca["plain"]).items()}}, path)
    assert _tokens(_captioner(str(path), strategy="greedy"), x) == _tokens(_captioner(coca["plain"],
                                                                                      strategy="greedy"), x)


def test_bad_weights_fail_before_any_work_naming_path_and_config(coca, tmp_path, monkeypatch):
    import open_clip

    missing = str(tmp_path / "nope" / "model.pt")
    built = []
    real_create = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: built.append(a) or real_create(*a, **k))
    with pytest.raises(CaptionerError, match=rf"{missing}: no such file.*model config 'tiny-coca'"):
        check_captioner({"name": MODEL, "weights": missing})
    with pytest.raises(CaptionerError, match=rf"{missing}: no such file"):
        Captioner({"name": MODEL, "weights": missing})
    with pytest.raises(CaptionerError, match="'tiny-clip-vit' is not a CoCa config"):
        check_captioner({"name": "tiny-clip-vit", "weights": coca["plain"]})
    with pytest.raises(CaptionerError, match="unknown model config 'no-such-model'"):
        check_captioner({"name": "no-such-model", "weights": coca["plain"]})
    assert built == []  # none of the above built a model

    # a CLIP's weights under the CoCa config: found at load, before any caption, naming both
    register_model_configs()
    torch.manual_seed(0)
    clip_weights = _save(real_create("tiny-clip-vit"), tmp_path / "clip.safetensors")
    with pytest.raises(CaptionerError, match=rf"{clip_weights} do not match model config 'tiny-coca'.*missing"):
        Captioner({"name": MODEL, "weights": clip_weights})
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "why": object.__new__(_Opaque)}, pickled)
    with pytest.raises(CaptionerError, match=rf"{pickled}: refusing a file that holds pickled Python objects"):
        Captioner({"name": MODEL, "weights": str(pickled)})


class _Opaque:
    pass


def test_blip_backend_without_weights_says_so(tmp_path):
    folder = str(tmp_path / "blip-base")
    for call in (lambda: check_captioner({"backend": "blip", "weights": folder}),
                 lambda: Captioner({"backend": "blip", "weights": folder})):
        with pytest.raises(CaptionerError, match=rf"BLIP captioning weights: {folder} is missing \(no such folder\), "
                                                 r"not a Hugging Face BLIP captioning folder .*downloads nothing"):
            call()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match=r"empty is no known model files \(empty\), not a Hugging Face BLIP"):
        check_captioner({"backend": "blip", "weights": str(tmp_path / "empty")})
