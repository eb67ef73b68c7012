"""How good a text-to-image generator is, judged by encoders that did not condition it.

    frechet     Frechet distance between Gaussians fitted to image features of generated and held-out real images
                (generated from the held-out captions, one fixed seed each), with the distance between two halves of
                the real set beside it: the floor that the sample size alone leaves
    attributes  on a held-out set of "<colour> <shape>" classes: generate for "a {colour} {shape}" (fixed seeds),
                classify each image zero-shot with the judge, report colour and shape accuracy with chance (1 / the
                number of values) and the judge's own accuracy on real held-out images (its ceiling)
    alignment   mean cosine x 100 between the judge's image and text embeddings of (generated image, its prompt),
                and of (real image, its caption) for scale

    likelihood  bits/dim of the first `likelihood.samples` held-out 8-bit images given their captions: every
                preprocessing log-determinant counted (`training.generative.likelihood`), so a flow's exact
                likelihood and a denoiser's probability-flow ODE score the same data; a non-finite sample is an
                error naming it (uid, shard, key)

A metric is a function `fn(ctx: EvalInputs) -> dict | None` listed in `METRICS`. A family supplies what its metrics
need: `generate` for the sample metrics, a `ModelDensity` for bits/dim. Generated images are produced once and
shared between metrics. Real and generated images take the same path to the judge: the generator's own
resize-and-crop to its resolution, 8 bits, then the judge's preprocessing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from training.generative.config import GenerativeEvalConfig


@dataclass
class Real:
    images: list  # PIL, at the generator's resolution
    captions: list[str]
    labels: list[int]  # class index, -1 when unlabelled


class ModelDensity(Protocol):
    """A generator's log-density of its own input space: `density(x, captions, index) -> log p (B,)` (`index`: each
    row's place in the held-out set, for estimators that draw per sample), its `preprocess`
    (8-bit data -> that space, with the log-det) and `method` (how the number is computed, for the record)."""

    preprocess: object
    method: str

    def __call__(self, x: torch.Tensor, captions: list[str], index: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class EvalInputs:
    """What metrics share: the generator (`generate(prompts, seeds) -> (B, 3, S, S) in [-1, 1]`), the config, and
    lazily loaded encoders, real images and generated images."""

    generate: Callable[[list[str], list[int]], torch.Tensor]
    cfg: GenerativeEvalConfig
    resolution: int
    device: torch.device | str = "cpu"
    density: ModelDensity | None = None
    cache: dict = field(default_factory=dict)

    def once(self, key: str, make: Callable):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def encoder(self, which: str):
        from training.generative.encoders import load_encoder

        if which == "features" and self.cfg.features is None:
            which = "judge"  # the judge's image tower gives the Frechet features too: loaded once
        ref = getattr(self.cfg, which)
        return None if ref is None else self.once(which, lambda: load_encoder(ref, self.device, f"eval.{which}"))

    def real(self) -> Real:
        return self.once("real", lambda: read_heldout(self.cfg.heldout, self.resolution, self.cfg.frechet_samples))

    def batched(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return generate_batched(self.generate, prompts, seeds, self.cfg.batch_size)

    def generated(self) -> torch.Tensor:
        """One image per held-out caption (seed = its index)."""
        captions = self.real().captions
        return self.once("generated", lambda: self.batched(captions, list(range(len(captions)))))


def generate_batched(generate: Callable, prompts: list[str], seeds: list[int], batch_size: int) -> torch.Tensor:
    """`generate(prompts, seeds)` over batches of `batch_size`: (N, 3, S, S)."""
    return torch.cat([generate(prompts[i:i + batch_size], seeds[i:i + batch_size])
                      for i in range(0, len(prompts), batch_size)])


def read_heldout(pattern: str, resolution: int, limit: int) -> Real:
    """Up to `limit` decodable held-out samples: images resized and cropped as the generator's training images."""
    import random

    from pipeline.core.images import open_rgb
    from pipeline.core.sample import image_member, pick_caption
    from training.data import ErrorCounter, expand_shards, tar_samples
    from training.generative.diffusion.codec import PixelTransform, to_pil

    crop, rng = PixelTransform(resolution), random.Random(0)
    images, captions, labels = [], [], []
    for sample in tar_samples(expand_shards(pattern), ErrorCounter()):
        caption = pick_caption(sample, rng)
        try:
            image = to_pil(crop(open_rgb(image_member(sample)[1]))[None])[0]
        except Exception:  # an undecodable held-out image is passed over, as in training
            continue
        if caption is None:
            continue
        images.append(image)
        captions.append(caption)
        labels.append(int(sample["cls"]) if "cls" in sample else -1)
        if len(images) == limit:
            break
    return Real(images, captions, labels)


# --- the Frechet distance -----------------------------------------------------------------------------------------
def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2): symmetric square roots by eigendecomposition, so
    no complex parts to discard (scipy's sqrtm of S1 S2 returns them for nearly singular covariances)."""
    s1 = _sqrt_psd(cov1)
    cross = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def gaussian_of(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = feats.double().cpu().numpy()
    return x.mean(0), np.cov(x, rowvar=False)


@torch.no_grad()
def image_features(encoder, images: list, device, batch_size: int = 128) -> torch.Tensor:
    """Normalised image embeddings (N, D) of PIL images through the encoder's own preprocessing."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([encoder.preprocess(im) for im in images[i:i + batch_size]]).to(device)
        out.append(encoder.clip.encode_image(batch, normalize=True).float().cpu())
    return torch.cat(out)


def frechet(ctx: EvalInputs) -> dict | None:
    from training.generative.diffusion.codec import to_pil

    enc = ctx.encoder("features")
    if enc is None:
        return None
    real = image_features(enc, ctx.real().images, ctx.device)
    fake = image_features(enc, to_pil(ctx.generated()), ctx.device)
    half = len(real) // 2
    return {"fd": frechet_distance(*gaussian_of(fake), *gaussian_of(real)),
            "fd_real_halves": frechet_distance(*gaussian_of(real[:half]), *gaussian_of(real[half:2 * half])),
            "samples": len(real), "dims": int(real.shape[1])}


# --- zero-shot attributes -----------------------------------------------------------------------------------------
def class_parts(classnames: list[str]) -> list[tuple[str, str]]:
    """(colour, shape) per class: "<colour> <shape>" (first word, the rest) when every class has two parts (the
    rendered worlds); otherwise ("", the class), so a world of plain classes (fashion's "t-shirt", "ankle boot") is
    scored by its class, with one colour that is always right."""
    parts = [tuple(c.split(" ", 1)) for c in classnames]
    if all(len(p) == 2 for p in parts):
        return parts
    return [("", c) for c in classnames]


def split_classes(classnames: list[str]) -> tuple[list[str], list[str]]:
    """Colours and shapes of the classes (`class_parts`), in order of appearance."""
    parts = class_parts(classnames)
    return list(dict.fromkeys(p[0] for p in parts)), list(dict.fromkeys(p[1] for p in parts))


@torch.no_grad()
def zero_shot_classes(encoder, images: list, classnames: list[str], templates: list[str], device) -> torch.Tensor:
    """The judge's class (N,) for each PIL image: the most similar class embedding (CLIP's prompt ensemble)."""
    from training.contrastive.eval import zeroshot_classifier

    classifier = zeroshot_classifier(encoder.clip, encoder.tokenizer, classnames, templates, device).cpu()  # (C, D)
    return (image_features(encoder, images, device) @ classifier.T).argmax(1)


def attribute_scores(predicted: torch.Tensor, truth: torch.Tensor, classnames: list[str]) -> dict:
    """Colour and shape accuracy of predicted vs true class indices, each with its chance level."""
    colours, shapes = split_classes(classnames)
    parts = class_parts(classnames)
    colour_of = torch.tensor([colours.index(colour) for colour, _ in parts])
    shape_of = torch.tensor([shapes.index(shape) for _, shape in parts])
    return {"colour": float((colour_of[predicted] == colour_of[truth]).float().mean()),
            "colour_chance": 1 / len(colours),
            "shape": float((shape_of[predicted] == shape_of[truth]).float().mean()),
            "shape_chance": 1 / len(shapes),
            "both": float((predicted == truth).float().mean()), "both_chance": 1 / len(classnames),
            "images": int(len(truth))}


def attributes(ctx: EvalInputs) -> dict | None:
    from training.contrastive.eval import read_classnames
    from training.generative.diffusion.codec import to_pil

    judge = ctx.encoder("judge")
    if judge is None or not ctx.cfg.classnames:
        return None
    classnames, templates = read_classnames(ctx.cfg.classnames)
    seeds = ctx.cfg.attribute_seeds
    truth = torch.arange(len(classnames)).repeat_interleave(seeds)  # (C * seeds,)
    prompts = [ctx.cfg.prompt.format(classnames[c]) for c in truth.tolist()]
    images = ctx.batched(prompts, [10_000 + i for i in range(len(prompts))])  # seeds apart from the Frechet set's
    out = attribute_scores(zero_shot_classes(judge, to_pil(images), classnames, templates, ctx.device), truth,
                           classnames)
    out["prompt"] = ctx.cfg.prompt
    real = ctx.real()
    labelled = [i for i, y in enumerate(real.labels) if y >= 0]
    if labelled:  # the judge's own accuracy on real images: what a perfect generator would score
        pred = zero_shot_classes(judge, [real.images[i] for i in labelled], classnames, templates, ctx.device)
        ceiling = attribute_scores(pred, torch.tensor([real.labels[i] for i in labelled]), classnames)
        out.update({f"real_{k}": ceiling[k] for k in ("colour", "shape", "both", "images")})
    return out


# --- alignment ----------------------------------------------------------------------------------------------------
def alignment(ctx: EvalInputs) -> dict | None:
    from training.contrastive.eval import encode_texts
    from training.generative.diffusion.codec import to_pil

    judge = ctx.encoder("judge")
    if judge is None:
        return None
    real = ctx.real()
    texts = encode_texts(judge.clip, judge.tokenizer, real.captions, ctx.device).cpu()  # (N, D)
    fake = image_features(judge, to_pil(ctx.generated()), ctx.device)
    truth = image_features(judge, real.images, ctx.device)
    return {"score": float(100 * (fake * texts).sum(1).mean()),
            "real_score": float(100 * (truth * texts).sum(1).mean()), "pairs": len(real.captions)}


# --- held-out bits/dim ----------------------------------------------------------------------------------------------
def likelihood(ctx: EvalInputs) -> dict | None:
    from training.data import expand_shards
    from training.generative.flows.data import first_samples
    from training.generative.likelihood import heldout_bits_per_dim

    lk = ctx.cfg.likelihood
    if ctx.density is None or lk.samples == 0 or ctx.cfg.heldout is None:
        return None
    pixels, captions, names = first_samples(expand_shards(ctx.cfg.heldout), lk.samples, ctx.resolution)
    t0 = time.perf_counter()
    # the conditioning handed through is each image's index: the density looks its captions up
    def density(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return ctx.density(x, [captions[i] for i in idx.tolist()], idx)

    result = heldout_bits_per_dim(density, pixels, names, torch.arange(len(pixels)),
                                  preprocess=ctx.density.preprocess, seed=lk.seed, batch_size=lk.batch_size,
                                  device=ctx.device)
    return {**result.as_dict(), "method": ctx.density.method, "seconds": round(time.perf_counter() - t0, 2)}


METRICS: dict[str, Callable[[EvalInputs], dict | None]] = {
    "frechet": frechet,
    "attributes": attributes,
    "alignment": alignment,
    "likelihood": likelihood,
}


def evaluate_generator(generate: Callable, cfg: GenerativeEvalConfig, resolution: int, device="cpu",
                       metrics: dict | None = None, density: ModelDensity | None = None) -> dict:
    """Every metric of `METRICS` (or `metrics`) that has what it needs; `{name: result}`."""
    ctx = EvalInputs(generate, cfg, resolution, device, density)
    out = {}
    for name, fn in (metrics or METRICS).items():
        found = fn(ctx)
        if found is not None:
            out[name] = found
    return out
