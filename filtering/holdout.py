"""A bootstrap's check of its own filter, without ground truth: held-out clean pairs against broken ones.

Both bootstraps (DFN, CapFilt) train their filter on a high-quality set. Part of that set is held back: a sample is
held out when a hash of (seed, uid) falls under `fraction`, so the split is the same in every run, on every worker
and in every stage that asks (the trainer skips those samples; the caption stage never captions them). The filter
is then measured on them:

    positives   the held-out pairs as they are (image, its own caption)
    negatives   the same images with the captions shuffled across images (a derangement: no image keeps its own
                caption text), and, for the DFN, junk images (noise, flat colour, gradients) with real captions
    near misses the same images with their own caption, one word swapped for another held-out caption's word at
                the same place ("a red circle" -> "a blue circle"): what a captioner's fluent mistakes look like.
                Always measured (`auroc_near_miss`); with `near_misses` on they are negatives of the estimate, of
                the Platt fit and of the threshold too (the CapFilt filter's check)

The estimated AUROC is P(score of a positive > score of a negative). It needs no labels beyond "these pairs were
clean", so a bootstrap reports it, chooses its filter's checkpoint by it, and warns when it is low. The same scores
fit a Platt calibration (logistic regression of match / no match on the cosine), which turns a cosine into a match
probability: CapFilt keeps a caption with p >= 0.5, as BLIP keeps its ITM head's p(match) >= 0.5.

A shuffled caption can still fit its image (two images of one class), so the estimate errs low, not high. A
shuffled caption mostly differs from the truth in every attribute at once, so a filter that reads one attribute
only (colour, not shape) still ranks it well: the near misses are what show that. The same scores also choose a
cut (`best_cut`): the score, and its probability, that best separates positives from negatives (Youden's J, each
negative kind weighing the same), which CapFilt can use instead of a fixed 0.5 (`capfilt: {min_probability: auto}`),
and a second cut against the unrelated negatives only (shuffled, junk; `cut_vs_unrelated`), which CapFilt's auto
rule uses for web captions: a wrong web caption is mostly another image's text, not a near miss.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.core.ids import sample_uid as uid_rule
from pipeline.core.images import open_rgb
from pipeline.core.sample import image_member, primary_caption, sample_meta

# Below this estimated AUROC a bootstrap warns: at 0.85 roughly one in seven (positive, negative) pairs is ranked
# the wrong way round, and the filter's cut keeps visibly many broken pairs.
WARN_BELOW = 0.85
SCORE = Callable[[list[Image.Image], list[str]], np.ndarray]  # (images, captions) -> (N,) match scores


def held_out(uid: str, fraction: float, seed: int) -> bool:
    """Whether the sample `uid` is held out: a hash of (seed, uid) below `fraction` (the same everywhere)."""
    if fraction <= 0:
        return False
    h = hashlib.sha256(f"holdout/{seed}/{uid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def sample_uid(files: dict, key: str | None = None) -> str:
    """A raw sample's uid by the signals' rule (`pipeline.core.ids.sample_uid`: JSON uid, URL hash, image hash)."""
    return uid_rule(sample_meta(files), image_member(files)[1], str(key or files.get("__key__")))[0]


@dataclass(frozen=True)
class HoldoutSplit:
    """Callable on a raw sample (`{"__key__", "jpg", "json", ...}`): True when it is held out. Small, so it pickles
    cheaply into every loader worker."""

    fraction: float
    seed: int = 0

    def __call__(self, sample: dict) -> bool:
        return held_out(sample_uid(sample), self.fraction, self.seed)

    def uid(self, uid: str) -> bool:
        return held_out(uid, self.fraction, self.seed)


def auroc(scores, positive) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U); NaN scores are
    left out; NaN when either class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    ok = np.isfinite(s)
    s, pos = s[ok], pos[ok]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Platt:
    """p(match | score) = sigmoid(a * score + b)."""

    a: float
    b: float

    def probability(self, scores) -> np.ndarray:
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    @property
    def threshold(self) -> float:
        """The score where p = 0.5 (inf when the fit found no slope)."""
        return -self.b / self.a if self.a > 0 else math.inf

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "threshold_score": self.threshold}


def fit_platt(pos_scores, neg_scores, iters: int = 100) -> Platt:
    """Platt scaling (1999) by Newton's method, with his smoothed targets ((N+ + 1)/(N+ + 2), 1/(N- + 2)). The two
    classes weigh the same, so p = 0.5 is where a match and a mismatch are equally likely at equal priors."""
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("Platt calibration needs scores of both matching and mismatched pairs")
    x = np.concatenate([pos, neg])
    t = np.concatenate([np.full(len(pos), (len(pos) + 1) / (len(pos) + 2)), np.full(len(neg), 1 / (len(neg) + 2))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    scale = max(float(x.std()), 1e-6)  # Newton on a standardised score, mapped back at the end
    xs = (x - x.mean()) / scale
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(a * xs + b, -60, 60)))
        g = np.array([np.sum(w * (p - t) * xs), np.sum(w * (p - t))])
        h = w * p * (1 - p)
        hess = np.array([[np.sum(h * xs * xs), np.sum(h * xs)], [np.sum(h * xs), np.sum(h)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return Platt(a=float(a / scale), b=float(b - a * x.mean() / scale))


def junk_images(n: int, seed: int, size: int = 64) -> list[Image.Image]:
    """Images that match no caption: uniform noise, a flat colour, or a two-colour gradient, in turn."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        elif kind == 1:
            arr = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (size, size, 3)).copy()
        else:
            a, b = rng.integers(0, 256, (2, 3)).astype(np.float64)
            ramp = np.linspace(0, 1, size)[:, None, None]
            arr = (a + (b - a) * ramp).repeat(size, axis=1).astype(np.uint8)
        out.append(Image.fromarray(arr))
    return out


def derangement(captions: list[str], seed: int) -> np.ndarray:
    """A permutation sending each caption to another image, avoiding an identical caption text where it can."""
    n = len(captions)
    rng = np.random.default_rng([seed, 78])
    # one random cycle through the images: image order[i] takes the caption of order[i - 1], never its own
    order = rng.permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = np.roll(order, 1)
    for i in range(n):  # a same-text caption is no negative: swap with a partner that fixes both where possible
        if captions[perm[i]] != captions[i]:
            continue
        for j in rng.permutation(n):
            if j != i and captions[perm[j]] != captions[i] and captions[perm[i]] != captions[j] and perm[j] != i:
                perm[i], perm[j] = perm[j], perm[i]
                break
    return perm


# Words never swapped in or out for a near miss: a caption with "a" swapped for "the" still describes its image.
FUNCTION_WORDS = frozenset("a an the of on in at with and or to for by from is this one its".split())
KINDS = {0: "positive", 1: "shuffled", 2: "junk", 3: "near_miss"}


def _word(token: str) -> str:
    return token.strip(".,;:!?\"'()").lower()


def _skeleton(words: list[str]) -> tuple:
    """A caption's template as far as its words show it: its length and where its function words are ("an" is
    "a": the article follows the next word, not the template)."""
    return tuple(("a" if _word(w) == "an" else _word(w)) if _word(w) in FUNCTION_WORDS else "_" for w in words)


def near_miss(captions: list[str], seed: int) -> list[str | None]:
    """Per caption, the caption with exactly one word swapped for a different word that another caption of the
    same template has at the same position: the same length with the same function words in the same places
    ("a small red circle in the centre" and "a large blue square in the centre" give "a small blue circle in the
    centre", "a small red square in the centre", ...); None where no swap changes the text. Function words ("a",
    "of", ...) are neither swapped nor swapped in, and "a" / "an" before the swapped word follows it.
    Deterministic from `seed`."""
    rng = np.random.default_rng([seed, 79])
    split = [c.split() for c in captions]
    slots: dict[tuple, set[str]] = {}  # (template, position) -> the words seen there
    for words in split:
        skeleton = _skeleton(words)
        for k, w in enumerate(words):
            if skeleton[k] == "_" and _word(w):
                slots.setdefault((skeleton, k), set()).add(w)
    out: list[str | None] = []
    for words in split:
        skeleton = _skeleton(words)
        swaps = sorted((k, v) for k, w in enumerate(words) if skeleton[k] == "_"
                       for v in slots.get((skeleton, k), ()) if _word(v) != _word(w))
        if not swaps:
            out.append(None)
            continue
        k, v = swaps[int(rng.integers(len(swaps)))]
        new = list(words)
        new[k] = v
        if k > 0 and new[k - 1].lower() in ("a", "an"):
            article = "an" if _word(v)[:1] in tuple("aeiou") else "a"
            new[k - 1] = article.capitalize() if new[k - 1][0].isupper() else article
        out.append(" ".join(new))
    return out


def best_cut(scores, kind) -> dict | None:
    """The score cut (keep >= cut) with the highest balanced accuracy: the mean of the positives' kept rate and
    the negatives' rejected rate, each negative kind (`kind` > 0) weighing the same (Youden's J = 2 x balanced
    accuracy - 1). The cut is midway between two neighbouring scores; None without positives or negatives."""
    s = np.asarray(scores, dtype=np.float64)
    kind = np.asarray(kind)
    ok = np.isfinite(s)
    s, kind = s[ok], kind[ok]
    kinds = [k for k in sorted(set(kind.tolist())) if k != 0]
    if not (kind == 0).any() or not kinds:
        return None
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    balanced, tpr, tnr = balanced_accuracy(s, kind, cuts)
    i = int(np.argmax(balanced))
    return {"score": float(cuts[i]), "balanced_accuracy": float(balanced[i]), "true_positive_rate": float(tpr[i]),
            "true_negative_rate": {KINDS.get(k, str(k)): float(v[i]) for k, v in tnr.items()}}


def balanced_accuracy(scores: np.ndarray, kind: np.ndarray, cuts) -> tuple[np.ndarray, np.ndarray, dict]:
    """At each cut (keep >= cut): balanced accuracy, the positives' kept rate, and each negative kind's rejected
    rate (the kinds weigh the same)."""
    cuts = np.atleast_1d(np.asarray(cuts, dtype=np.float64))
    pos = np.sort(scores[kind == 0])
    tpr = 1 - np.searchsorted(pos, cuts, side="left") / len(pos)
    tnr = {}
    for k in sorted(set(kind.tolist()) - {0}):
        neg = np.sort(scores[kind == k])
        tnr[k] = np.searchsorted(neg, cuts, side="left") / len(neg)
    return (tpr + np.mean(list(tnr.values()), axis=0)) / 2, tpr, tnr


@dataclass
class HoldoutProbe:
    """The held-out pairs of a training run and how to measure a filter on them (`evaluate`).

    Built on the driver from the training shards (`from_shards`) and handed to the trainer; the trainer skips the
    samples `split` holds out and calls `evaluate(score)` at its evaluation steps."""

    split: HoldoutSplit
    images: list[bytes] = field(default_factory=list)  # the held-out pairs' encoded images
    captions: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    junk: bool = False  # add junk images with real captions to the negatives (the DFN's check)
    warn_below: float = WARN_BELOW
    near_misses: bool = False  # near misses are negatives of the estimate, the Platt fit and the cut (else reported)

    @classmethod
    def from_shards(cls, shards: list[str], split: HoldoutSplit, max_pairs: int = 500, junk: bool = False,
                    warn_below: float = WARN_BELOW, near_misses: bool = False) -> HoldoutProbe:
        """The first `max_pairs` held-out samples (shard order) whose image decodes and that have a caption."""
        from pipeline.core.shards import ReadReport, read_samples

        probe = cls(split, junk=junk, warn_below=warn_below, near_misses=near_misses)
        for url in shards:
            for key, files in read_samples(url, ReadReport()):
                uid = sample_uid(files, key)
                if not split.uid(uid):
                    continue
                caption = primary_caption(files)
                _, data = image_member(files)
                if caption is None or data is None:
                    continue
                try:
                    open_rgb(data)
                except Exception:  # noqa: BLE001  (PIL raises many kinds: an undecodable pair is no evidence)
                    continue
                probe.images.append(data)
                probe.captions.append(caption)
                probe.uids.append(uid)
                if len(probe.images) >= max_pairs:
                    return probe
        return probe

    def __len__(self) -> int:
        return len(self.images)

    def pairs(self) -> tuple[list[Image.Image], list[str], np.ndarray, np.ndarray]:
        """(images, captions, label 1/0, kind 0 positive / 1 shuffled / 2 junk / 3 near miss) of every pair
        evaluated (near misses always: whether they count is `evaluate`'s business)."""
        imgs = [open_rgb(b) for b in self.images]
        perm = derangement(self.captions, self.split.seed)
        images = imgs + imgs
        captions = self.captions + [self.captions[j] for j in perm]
        kind = [0] * len(imgs) + [1] * len(imgs)
        if self.junk:
            size = max(max(im.size) for im in imgs) if imgs else 64
            images += junk_images(len(imgs), self.split.seed, size)
            captions += list(self.captions)
            kind += [2] * len(imgs)
        for im, text in zip(imgs, near_miss(self.captions, self.split.seed), strict=True):
            if text is not None:
                images.append(im)
                captions.append(text)
                kind.append(3)
        kind = np.asarray(kind)
        return images, captions, (kind == 0).astype(np.int8), kind

    def evaluate(self, score: SCORE) -> dict:
        """Estimated AUROC (positives vs all negatives, and vs each kind), the Platt fit, and a warning if low."""
        if len(self) < 2:
            return {"pairs": len(self), "estimated_auroc": float("nan"),
                    "warning": f"only {len(self)} held-out pairs: nothing to estimate the filter with (raise "
                               "holdout.fraction or add high-quality data)"}
        images, captions, label, kind = self.pairs()
        s = np.asarray(score(images, captions), dtype=np.float64)
        counted = kind != 3 if not self.near_misses else np.ones(len(kind), bool)  # the estimate's pairs
        out = {"pairs": len(self), "negatives": int((label[counted] == 0).sum()),
               "estimated_auroc": auroc(s[counted], label[counted] == 1),
               "auroc_shuffled": auroc(s[kind <= 1], label[kind <= 1] == 1),
               "positive_mean": float(s[kind == 0].mean()), "shuffled_mean": float(s[kind == 1].mean())}
        if self.junk:
            out["auroc_junk"] = auroc(s[(kind == 0) | (kind == 2)], label[(kind == 0) | (kind == 2)] == 1)
            out["junk_mean"] = float(s[kind == 2].mean())
        near = (kind == 0) | (kind == 3)
        out["near_miss_pairs"] = int((kind == 3).sum())
        out["near_misses_counted"] = self.near_misses
        out["auroc_near_miss"] = auroc(s[near], label[near] == 1)
        out["near_miss_mean"] = float(s[kind == 3].mean()) if out["near_miss_pairs"] else float("nan")
        platt = fit_platt(s[counted & (label == 1)], s[counted & (label == 0)])
        out["platt"] = platt.as_dict()
        # Two cuts: against every counted negative (a synthetic caption's mistakes look like near misses), and
        # against the unrelated ones only (shuffled, junk: what a wrong web caption looks like), which is looser.
        for name, pairs in (("cut", counted), ("cut_vs_unrelated", counted & (kind != 3))):
            cut = best_cut(s[pairs], kind[pairs])
            if cut is not None:
                p = float(platt.probability(cut["score"])) if platt.a > 0 else None
                at_half = balanced_accuracy(s[pairs], kind[pairs], [platt.threshold])[0][0] if platt.a > 0 else None
                out[name] = {**cut, "probability": p, "balanced_accuracy_at_half": None if at_half is None
                             else float(at_half)}
        out["warning"] = warning(out["estimated_auroc"], len(self), self.warn_below)
        return out


def warning(estimate: float, pairs: int, warn_below: float = WARN_BELOW) -> str | None:
    """What to say when a filter's estimated AUROC is below `warn_below` (None when it is not)."""
    if not (estimate < warn_below):
        return None
    return (f"the filter's estimated AUROC {estimate:.3f} on {pairs} held-out pairs is below {warn_below}: it tells "
            "matching from mismatched captions poorly. Try more high-quality data, more training steps, or another "
            "model (a larger config or pretrained weights)")

