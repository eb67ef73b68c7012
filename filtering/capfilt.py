"""BLIP's CapFilt (Li et al. 2022): caption every pool image, then let a separate filter judge the web caption and
each synthetic caption of the image; keep the captions the filter says match.

    CaptionAndJudge (the caption stage's actor): crops -> Captioner -> synthetic captions
                                                 -> CaptionJudge scores the web caption and every synthetic one
    the `capfilt` recipe op (filtering.ops) -> keep / drop per caption (`filtering.capfilt_rule`)

The judge is an open_clip model (`clip` backend: a CLIP, SigLIP or CoCa checkpoint; its score is the image-caption
cosine) or BLIP's image-text matching head (`blip` backend: its score is already P(match)). A cosine becomes a
match probability through a Platt calibration fitted on held-out clean pairs (`filtering.holdout`), so the keep
rule can be BLIP's: P(match) >= 0.5. The judge must not be the captioner: BLIP measured that a filter sharing the
captioner's parameters accepts its own captions (it rejected 8% of them, against 25% for a separate filter) and the
final model got worse, so `check_distinct` refuses a judge with the captioner's weights.

Like the other model classes here, `CaptionAndJudge` is a plain class (load in `__init__`, `__call__(batch)`): it
runs in a unit test as is and under Ray Data as an actor.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from pipeline.core.errors import WinnowError

SOURCES = ("web", "synthetic")
# What the caption stage adds to a pool for the filter stage (`caption_calibrated`: its judge's scores have match
# probabilities, so `capfilt: {min_probability: ...}` can cut on them)
CAPTION_SIGNALS = ("web_score", "web_probability", "synthetic_captions", "synthetic_scores", "synthetic_probabilities",
                   "caption_filter")
CALIBRATED = "caption_calibrated"
SAME_MODEL = ("the caption filter must be a different model from the captioner: BLIP (Li et al. 2022) found that a "
              "filter sharing the captioner's parameters accepts its own captions (it rejected 8% of them, a separate "
              "filter 25%) and the final model trains worse")


class CapFiltError(WinnowError):
    """A CapFilt setting that cannot work (e.g. the judge is the captioner)."""


class CaptionFilterSpec(StrictModel):
    """The model that judges captions, and its weights."""

    backend: Literal["clip", "blip"] = Field("clip", description="clip: an open_clip model's cosine (CLIP, SigLIP, "
                                                                 "CoCa); blip: BLIP's image-text matching head")
    name: str | None = Field(None, description="clip: open_clip model config name, or local-dir:/path (an open_clip "
                                               "folder: open_clip_config.json and its weights)")
    weights: str | None = Field(None, description="clip: a checkpoint file or open_clip pretrained tag of `name` "
                                                  "(none for a local-dir: name); blip: a local "
                                                  "BlipForImageTextRetrieval folder (save_pretrained)")
    config_file: str | None = Field(None, description="clip: open_clip model config JSON (file or folder)")
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _name_for_clip(self):
        from pipeline.core.model_files import local_dir

        if self.backend == "clip" and not self.name:
            raise ValueError("the clip backend needs `name`, the open_clip model config of the weights")
        if self.weights is None and (self.backend == "blip" or local_dir(self.name) is None):
            raise ValueError("give `weights`: " + ("a local BlipForImageTextRetrieval folder" if self.backend == "blip"
                                                   else "a checkpoint file or pretrained tag of `name` (or name an "
                                                        "open_clip folder as `name: local-dir:/path`)"))
        return self

    @property
    def files(self) -> str:
        """What holds the parameters: the weights file, folder or tag, or the local-dir folder."""
        from pipeline.core.model_files import local_dir

        return self.weights or local_dir(self.name)

    def check(self, slot: str = "caption_filter") -> None:
        """A folder of the wrong kind (a BLIP folder that is not an ITM model, a local-dir: that is not an open_clip
        folder, a folder given as a weights file) is an error naming `slot`."""
        if self.backend == "blip":
            from filtering.captioner_blip import check_blip

            check_blip(self.weights, "blip_itm", f"{slot}.weights")
            return
        from pipeline.core.model_files import check_open_clip_source

        check_open_clip_source(self.name, self.weights, slot)

    def model_spec(self):
        from filtering.dfn import ModelSpec

        return ModelSpec(name=self.name, pretrained=self.weights, config_file=self.config_file,
                         precision=self.precision)

    def preprocess_cfg(self) -> dict:
        if self.backend == "blip":
            from filtering.captioner_blip import blip_preprocess_cfg

            return blip_preprocess_cfg(self.weights)
        return self.model_spec().preprocess_cfg()


def weights_id(weights: str, name: str | None = None) -> str:
    """What identifies a model's parameters: `sha256:<hex>` of a checkpoint file (or of a folder's files, in name
    order), else `tag:<name>/<tag>` for a pretrained tag."""
    from pipeline.core import storage
    from pipeline.core.model_files import weights_digest

    if storage.exists(weights):
        return f"sha256:{weights_digest(weights)}"
    return f"tag:{name}/{weights}"


def check_distinct(captioner_id: str, judge_id: str, captioner: str, judge: str) -> None:
    """Refuse a judge whose parameters are the captioner's."""
    if captioner_id == judge_id:
        raise CapFiltError(f"{SAME_MODEL}; captioner {captioner} and caption filter {judge} are the same "
                           f"weights ({captioner_id[:23]}...): train or name a separate filter")


def check_loads(captioner, judge: CaptionFilterSpec | None = None, judge_slot: str = "caption_filter") -> None:
    """Build the captioner (a CoCa) and the judge (a clip model) from their weights on the CPU, so that missing or
    incompatible weights fail before any work, naming the weights and the model config. BLIP folders are only
    checked for their kind (`check_blip`): loading them is the actors' job."""
    from filtering.captioner import load_coca

    if captioner is not None and captioner.backend == "coca":
        load_coca(captioner, "cpu")
    if judge is None:
        return
    judge.check(judge_slot)
    if judge.backend == "blip":
        return
    from filtering.dfn import load_model
    from pipeline.core import storage

    where = f"model config {judge.name!r}" + (f" ({judge.config_file})" if judge.config_file else "")
    w = judge.weights
    if w and ("/" in w or "." in w) and not storage.exists(w):
        raise CapFiltError(f"caption filter weights {w}: no such file, for {where}")
    try:
        load_model(judge.model_spec(), "cpu")
    except Exception as err:  # noqa: BLE001  (strict loading raises RuntimeError; a foreign file, others)
        raise CapFiltError(f"caption filter weights {judge.files} do not load as {where}: "
                           f"{type(err).__name__}: {str(err)[:300]}") from None


def read_calibration(path: str) -> dict:
    """The Platt fit (`{"a", "b", "threshold_score"}`) from a train-clip stage's `holdout.json`."""
    from pipeline.core.layout import read_json

    found = read_json(path)
    platt = found.get("platt") if isinstance(found, dict) else None
    if not platt or "a" not in platt or "b" not in platt:
        raise CapFiltError(f"calibration {path}: no Platt fit (`platt: {{a, b}}`) in it; it should be the "
                           "holdout.json of a train-clip stage with `holdout:` set")
    return {"a": float(platt["a"]), "b": float(platt["b"]), "threshold_score": platt.get("threshold_score"),
            "source": path, "estimated_auroc": found.get("estimated_auroc"), "cut": found.get("cut"),
            "cut_vs_unrelated": found.get("cut_vs_unrelated"), "near_misses": found.get("near_misses_counted")}


def probability(scores: np.ndarray, calibration: dict | None, backend: str) -> np.ndarray:
    """Match probability of judge scores: BLIP's ITM score is one; a cosine goes through the Platt fit (NaN
    without one)."""
    s = np.asarray(scores, dtype=np.float64)
    if backend == "blip":
        return s
    if calibration is None:
        return np.full(s.shape, np.nan)
    z = np.clip(calibration["a"] * s + calibration["b"], -60, 60)
    return 1.0 / (1.0 + np.exp(-z))


class CaptionJudge:
    """Scores (image, caption) pairs, several captions per image: cosine (clip) or P(match) (blip)."""

    def __init__(self, spec: dict | CaptionFilterSpec, device: str = "auto", num_threads: int | None = None):
        self.spec = spec if isinstance(spec, CaptionFilterSpec) else CaptionFilterSpec(**spec)
        if self.spec.backend == "blip":
            from filtering.captioner_blip import BlipITM

            self.itm = BlipITM(self.spec.weights, device)
        else:
            from filtering.dfn import DFNScorer

            self.scorer = DFNScorer(self.spec.model_spec(), device, num_threads)

    def scores(self, pixels: np.ndarray, caption_sets: list[list[str]],
               embeddings: np.ndarray | None = None) -> list[np.ndarray]:
        """Per image (uint8 (B, H, W, 3) crops), the scores of its captions, in order. `embeddings` (clip backend):
        (B, D) unit-norm image embeddings this judge already computed (the score stage's, same weights); a row of
        NaN is encoded from its crop as usual."""
        rows = np.asarray([i for i, caps in enumerate(caption_sets) for _ in caps], dtype=np.int64)
        texts = [c for caps in caption_sets for c in caps]
        if not texts:
            return [np.zeros(0, np.float32) for _ in caption_sets]
        if self.spec.backend == "blip":
            flat = self.itm.scores(pixels[rows], texts)
        else:
            flat = self._cosines(pixels, rows, texts, embeddings)
        bounds = np.cumsum([0] + [len(c) for c in caption_sets])
        return [np.asarray(flat[bounds[i]:bounds[i + 1]], np.float32) for i in range(len(caption_sets))]

    def _cosines(self, pixels: np.ndarray, rows: np.ndarray, texts: list[str],
                 embeddings: np.ndarray | None = None) -> np.ndarray:
        import torch

        from filtering.preprocess import normalize_batch

        s = self.scorer
        known = np.zeros(len(pixels), dtype=bool) if embeddings is None else np.isfinite(embeddings).all(axis=1)
        with torch.inference_mode():
            txt = s.model.encode_text(s.tokenizer(texts).to(s.device), normalize=True)  # (T, D)
            img = torch.zeros((len(pixels), txt.shape[1]), dtype=txt.dtype, device=s.device)
            if known.any():  # stored as float16: normalised again, so a cosine stays a cosine
                given = torch.from_numpy(np.asarray(embeddings[known], dtype=np.float32)).to(s.device)
                img[torch.from_numpy(known).to(s.device)] = torch.nn.functional.normalize(given, dim=1).to(txt.dtype)
            if not known.all():
                todo = np.ascontiguousarray(pixels[~known])
                x = normalize_batch(torch.from_numpy(todo).to(s.device), s.mean, s.std)
                img[torch.from_numpy(~known).to(s.device)] = s.model.encode_image(x.to(s.dtype), normalize=True) \
                    .to(txt.dtype)  # each image once
            cos = (img[torch.from_numpy(rows).to(s.device)] * txt).sum(dim=1)  # (T,)
        return cos.float().cpu().numpy()


def object_column(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class CaptionAndJudge:
    """The caption stage's actor: synthetic captions for every decodable, not held-out image, then the judge's
    score and match probability for its web caption and each synthetic caption.

    Batch in: `pixels` (the captioner's crops), optional `judge_pixels` (the judge's, when its preprocessing
    differs), optional `judge_embedding` (the judge's image embeddings from the score stage, NaN rows where there
    are none), `caption`, `decodable`, `held_out`, `uid`. Out: `synthetic_captions`, `reason`, `web_score`,
    `web_probability`, `synthetic_scores`, `synthetic_probabilities` (no pixels)."""

    def __init__(self, captioner: dict, decoding: dict, judge: dict, calibration: dict | None = None,
                 device: str = "cpu", num_threads: int | None = None):
        from filtering.captioner import Captioner

        self.captioner = Captioner(captioner, {**decoding, "device": device}, num_threads, keep_pixels=True)
        self.judge = CaptionJudge(judge, device)
        self.calibration = calibration

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decodable = np.asarray(batch["decodable"], dtype=bool)
        held = np.asarray(batch["held_out"], dtype=bool)
        ok = decodable & ~held  # evaluation pairs are never captioned
        batch["decodable"] = ok
        batch = self.captioner(batch)
        batch["decodable"] = decodable
        batch["reason"] = np.where(held, "held_out", np.where(decodable, "", "undecodable")).astype(object)
        del batch["synthetic_captions_reason"]
        crops = batch.pop("judge_pixels") if "judge_pixels" in batch else batch["pixels"]
        del batch["pixels"]
        stored = batch.pop("judge_embedding", None)
        web = [str(c).strip() for c in batch["caption"]]
        n = len(ok)
        web_s, syn_s = np.full(n, np.nan, np.float32), [[] for _ in range(n)]
        idx = np.flatnonzero(ok)
        if len(idx):
            sets = [([web[i]] if web[i] else []) + list(batch["synthetic_captions"][i]) for i in idx]
            given = None if stored is None else np.asarray(stored)[idx]
            for i, s in zip(idx, self.judge.scores(crops[idx], sets, given), strict=True):
                if web[i]:
                    web_s[i], s = s[0], s[1:]
                syn_s[i] = [float(v) for v in s]
        backend = self.judge.spec.backend
        reused = np.zeros(n, dtype=bool) if stored is None else np.isfinite(np.asarray(stored)).all(axis=1) & ok
        batch["judge_embedding_reused"] = reused  # counted per shard by the writer, not stored
        batch["web_score"] = web_s
        batch["web_probability"] = probability(web_s, self.calibration, backend).astype(np.float32)
        batch["synthetic_scores"] = object_column(syn_s)
        batch["synthetic_probabilities"] = object_column(
            [probability(np.asarray(s), self.calibration, backend).tolist() for s in syn_s])
        return batch


CAPTIONS_SCHEMA = pa.schema([
    ("uid", pa.string()), ("key", pa.string()), ("shard", pa.string()), ("caption", pa.string()),
    ("decodable", pa.bool_()), ("reason", pa.string()), ("synthetic_captions", pa.list_(pa.string())),
    ("web_score", pa.float32()), ("web_probability", pa.float32()), ("synthetic_scores", pa.list_(pa.float32())),
    ("synthetic_probabilities", pa.list_(pa.float32())), ("captioner", pa.string()), ("caption_filter", pa.string()),
    ("decoding", pa.string()),
])


def captions_table(cols: dict, captioner_id: str, judge_id: str, decoding: str) -> pa.Table:
    """The caption stage's rows as its parquet table: one row per sample, with the captioner's and the judge's
    checkpoint hashes and the decoding settings on every row."""
    n = len(cols["uid"])

    def floats(values) -> list:
        return [None if v is None or v != v else float(v) for v in values]

    data = {
        "uid": [str(v) for v in cols["uid"]], "key": [str(v) for v in cols["key"]],
        "shard": [str(v) for v in cols["shard"]], "caption": [str(v) for v in cols["caption"]],
        "decodable": [bool(v) for v in cols["decodable"]], "reason": [str(v) or None for v in cols["reason"]],
        "synthetic_captions": [list(v) for v in cols["synthetic_captions"]],
        "web_score": floats(cols["web_score"]), "web_probability": floats(cols["web_probability"]),
        "synthetic_scores": [floats(v) for v in cols["synthetic_scores"]],
        "synthetic_probabilities": [floats(v) for v in cols["synthetic_probabilities"]],
        "captioner": [captioner_id] * n, "caption_filter": [judge_id] * n, "decoding": [decoding] * n,
    }
    return pa.Table.from_pydict(data, schema=CAPTIONS_SCHEMA)


def decoding_record(decoding: dict) -> str:
    """The decoding settings as the JSON string stored with each caption row (device and batch left out)."""
    return json.dumps({k: v for k, v in sorted(decoding.items()) if k not in ("device", "batch_size")},
                      sort_keys=True)


def caption_counts(selection: pa.Table) -> dict | None:
    """Captions judged and kept by source, among the images the recipe kept and over the whole pool, and the images
    keeping at least one (None for a selection that judged no captions)."""
    if "captions" not in selection.column_names:
        return None
    out = {s: {"judged": 0, "kept": 0} for s in SOURCES}
    images = 0
    for kept, caps in zip(selection.column("kept").to_pylist(), selection.column("captions").to_pylist(),
                          strict=True):
        for c in caps or []:
            out[c["source"]]["judged"] += 1
            out[c["source"]]["kept"] += int(bool(c["kept"] and kept))
        images += int(bool(kept))
    for s in SOURCES:
        out[s]["rejected_fraction"] = round(1 - out[s]["kept"] / out[s]["judged"], 4) if out[s]["judged"] else None
    return {**out, "images_with_caption": images}
