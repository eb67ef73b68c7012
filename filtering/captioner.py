"""Synthetic captions for images: BLIP's CapFilt captioner, run on any open_clip CoCa (or BLIP itself).

`Captioner` is a plain class — the model loads in `__init__`, `__call__(batch) -> batch` captions a batch — so it runs
in a unit test as is and under Ray Data as an actor:

    ds.map_batches(Captioner, fn_constructor_kwargs={"spec": spec.model_dump(), "cfg": cfg.model_dump(),
                                                     "num_threads": 1},
                   compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=64)

The CoCa backend decodes in winnow (`filtering.coca_kv`, `filtering.decoding`) with key/value caches: the image's
cross-attention keys and values are computed once per batch and each new token is one incremental decoder step.
open_clip's own `CoCa.generate` re-runs the decoder over the whole prefix at every step, its nucleus default
(`top_p=0.1`) is nearly greedy, and open_clip 3.3 disables it beside transformers 4.57 or 5 (it looks for
`BeamSearchScorer` where those no longer export it).

A batch holds `pixels` (uint8 crops from `filtering.preprocess.Preprocessor`), `decodable`, and optionally `uid`.
The output adds `synthetic_captions` (a list of `num_captions` strings per row; empty for rows that did not decode)
and `synthetic_captions_reason` ("" or why a row has none).

Seeded nucleus sampling: each caption draws from its own generator seeded from (`seed`, the row's `uid`, the
caption's index), so an image gets the same captions whichever batch it lands in. Without `uid` the row's position
in the call stands in, and then the captions depend on the batch's order. (Batch shapes can change float rounding
in the model by ~1e-7; a draw lands that close to a boundary between tokens about never.)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.core.config import StrictModel
from pipeline.core.errors import WinnowError

# BLIP's defaults for nucleus sampling (Li et al. 2022, models/blip.py: top_p=0.9, repetition_penalty=1.1); its beam
# search uses no repetition penalty, nor does greedy decoding here.
DEFAULT_REPETITION_PENALTY = {"nucleus": 1.1, "greedy": 1.0, "beam": 1.0}


class CaptionerError(WinnowError):
    """The captioner's model or weights cannot be used; the message names the weights and the model config."""


class CaptionerSpec(StrictModel):
    """Which captioning model, and its weights."""

    backend: Literal["coca", "blip"] = Field("coca", description="coca: an open_clip CoCa; blip: Hugging Face BLIP")
    name: str | None = Field(None, description="coca: open_clip model config name (winnow's configs/models, "
                                               "config_file, or open_clip's built-in coca_*)")
    weights: str = Field(..., description="coca: a checkpoint file (winnow's model.pt, .safetensors, a torch file "
                                          "that loads with weights_only=True; any fsspec URL) or an open_clip "
                                          "pretrained tag of `name`; blip: a local folder holding a "
                                          "BlipForConditionalGeneration and its processor (save_pretrained)")
    config_file: str | None = Field(None, description="coca: open_clip model config JSON (file or folder)")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="weights dtype (fp16/bf16 on GPU)")

    @model_validator(mode="after")
    def _name_for_coca(self):
        if self.backend == "coca" and not self.name:
            raise ValueError("the coca backend needs `name`, the open_clip model config of the weights")
        return self

    def preprocess_cfg(self) -> dict:
        """What the read tasks crop to (filtering.preprocess.Preprocessor) and the actor normalises with."""
        if self.backend == "blip":
            from filtering.captioner_blip import blip_preprocess_cfg

            return blip_preprocess_cfg(self.weights)
        from filtering.preprocess import resolve_preprocess

        return resolve_preprocess(self.name, self.weights, self.config_file)


class CaptionerConfig(StrictModel):
    """How captions are decoded. Lengths count caption tokens, without the start and end tokens."""

    strategy: Literal["nucleus", "greedy", "beam"] = Field(
        "nucleus", description="nucleus sampling (BLIP's CapFilt choice: diverse captions), greedy or beam search")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus: keep the most probable tokens up to this mass")
    temperature: float = Field(1.0, gt=0, description="nucleus: logits are divided by it before top-p")
    repetition_penalty: float | None = Field(
        None, gt=0, description="Hugging Face's repetition penalty over the tokens so far; None = the strategy's "
                                "default (BLIP's): 1.1 for nucleus, 1.0 (none) for greedy and beam")
    num_beams: int = Field(3, ge=1, description="beam: beams per image (BLIP: 3)")
    length_penalty: float = Field(1.0, description="beam: captions rank by sum log-prob / length ** this")
    num_captions: int = Field(1, ge=1, description="captions per image: nucleus draws; beam returns the best beams")
    min_length: int = Field(5, ge=0, description="EOS is blocked until this many tokens are out")
    max_length: int | None = Field(
        None, ge=1, description="most tokens in a caption; None = the model's full caption length (context "
                                "length - 2); a larger value is an error naming that length")
    seed: int = Field(0, description="nucleus: per-caption generators derive from it and the row's uid")
    batch_size: int = Field(64, ge=1, description="images decoded together (x num_captions or num_beams rows)")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy == "greedy" and self.num_captions > 1:
            raise ValueError("greedy decoding gives one caption per image: use nucleus or beam for num_captions > 1")
        if self.strategy == "beam" and self.num_captions > self.num_beams:
            raise ValueError(f"beam search returns at most num_beams={self.num_beams} captions per image, "
                             f"not num_captions={self.num_captions}")
        if self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} > max_length {self.max_length}")
        return self

    def penalty(self) -> float:
        return self.repetition_penalty if self.repetition_penalty is not None else \
            DEFAULT_REPETITION_PENALTY[self.strategy]


def _config_source(spec: CaptionerSpec) -> str:
    return f"model config {spec.name!r}" + (f" ({spec.config_file})" if spec.config_file else "")


def _is_pretrained_tag(spec: CaptionerSpec) -> bool:
    if "/" in spec.weights or "\\" in spec.weights or "." in spec.weights:
        return False  # a path or URL
    import open_clip

    return spec.weights in open_clip.list_pretrained_tags_by_model(spec.name)


def caption_length_cap(model_cfg: dict) -> int:
    """Longest caption a CoCa config was trained on: both towers' context minus the start and end tokens."""
    ctx = min(model_cfg.get("text_cfg", {}).get("context_length", 77),
              model_cfg.get("multimodal_cfg", {}).get("context_length", 77))
    return ctx - 2


def check_captioner(spec: dict | CaptionerSpec, cfg: dict | CaptionerConfig | None = None,
                    slot: str | None = None) -> dict:
    """Cheap checks a stage runs before any work (no model is built): the weights exist (a BLIP folder is one), the
    config is a CoCa this captioner decodes, `cfg`'s lengths fit it. Returns {"backend", "max_length"}; raises
    CaptionerError, naming `slot` (the config key of the captioner) where a folder is of the wrong kind."""
    spec = spec if isinstance(spec, CaptionerSpec) else CaptionerSpec(**spec)
    cfg = cfg if cfg is None or isinstance(cfg, CaptionerConfig) else CaptionerConfig(**cfg)
    if spec.backend == "blip":
        from filtering.captioner_blip import check_blip

        check_blip(spec.weights, "blip_caption", f"{slot}.weights" if slot else None)
        return {"backend": "blip", "max_length": cfg.max_length if cfg and cfg.max_length else None}
    from pathlib import Path

    from pipeline.core import storage
    from pipeline.core.model_configs import find_model_config
    from pipeline.core.model_files import folder_kind

    where = _config_source(spec)
    if "://" not in spec.weights and Path(spec.weights).is_dir():
        kind, found = folder_kind(spec.weights)
        hint = " (set backend: blip)" if kind == "blip_caption" else ""
        raise CaptionerError(f"{slot or 'captioner'}.weights: {spec.weights} is {found}, not a CoCa checkpoint file "
                             f"for {where}{hint}")
    if spec.config_file and not storage.exists(spec.config_file):
        raise CaptionerError(f"captioner {where}: {spec.config_file} does not exist")
    model_cfg = find_model_config(spec.name, spec.config_file)
    if model_cfg is None:
        raise CaptionerError(f"captioner weights {spec.weights}: unknown {where}; name a CoCa config from "
                             "configs/models/ or open_clip's coca_*, or set config_file")
    if "multimodal_cfg" not in model_cfg:
        raise CaptionerError(f"captioner weights {spec.weights}: {where} is not a CoCa config (it has no "
                             "multimodal_cfg: a CLIP has no caption decoder)")
    text = model_cfg.get("text_cfg", {})
    odd = [k for k in ("hf_model_name", "no_causal_mask", "qk_norm", "scaled_cosine_attn", "scale_heads",
                       "scale_attn_inner", "scale_attn", "scale_fc") if text.get(k)]
    if odd or text.get("block_type") not in (None, "default"):
        raise CaptionerError(f"captioner {where}: its text tower ({', '.join(odd) or text.get('block_type')}) is "
                             "not one the key/value-cached decoder replicates (open_clip's default causal blocks)")
    if "://" not in spec.weights and not storage.exists(spec.weights) and not _is_pretrained_tag(spec):
        raise CaptionerError(f"captioner weights {spec.weights}: no such file (nor an open_clip pretrained tag of "
                             f"{spec.name}), for {where}")
    if "://" in spec.weights and not storage.exists(spec.weights):
        raise CaptionerError(f"captioner weights {spec.weights}: no such file, for {where}")
    cap = caption_length_cap(model_cfg)
    if cfg is not None:
        if cfg.max_length is not None and cfg.max_length > cap:
            raise CaptionerError(f"captioner max_length {cfg.max_length} exceeds {where}'s caption length of {cap} "
                                 f"tokens (its context length {cap + 2} less the start and end tokens)")
        if cfg.min_length > (cfg.max_length or cap):
            raise CaptionerError(f"captioner min_length {cfg.min_length} > max_length {cfg.max_length or cap} "
                                 f"for {where}")
    return {"backend": "coca", "max_length": min(cfg.max_length or cap, cap) if cfg else cap}


def load_coca(spec: CaptionerSpec, device: str):
    """(CoCa in eval mode, tokenizer); checkpoint files load weights only, strictly, with errors naming both."""
    import pickle

    import open_clip

    from filtering.dfn import load_state_dict_safely
    from pipeline.core.model_configs import random_init_expected, register_model_configs

    where = _config_source(spec)
    register_model_configs(spec.config_file)
    if _is_pretrained_tag(spec):
        model = open_clip.create_model(spec.name, pretrained=spec.weights, precision=spec.precision, device=device,
                                       weights_only=True)
        return model.eval(), open_clip.get_tokenizer(spec.name)
    with random_init_expected():  # the weights load just below
        model = open_clip.create_model(spec.name, pretrained=None, precision=spec.precision, device="cpu")
    try:
        state = load_state_dict_safely(spec.weights)
    except pickle.UnpicklingError as err:
        raise CaptionerError(f"captioner weights {spec.weights}: refusing a file that holds pickled Python objects, "
                             f"not only tensors ({err})") from None
    except Exception as err:  # noqa: BLE001  (a truncated or foreign file: say which one, for which config)
        raise CaptionerError(f"captioner weights {spec.weights}: cannot be read as a checkpoint for {where}: "
                             f"{type(err).__name__}: {err}") from None
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} (config: {tuple(want[k].shape)})" for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
                 f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:2])})" if shapes else ""]
        raise CaptionerError(f"captioner weights {spec.weights} do not match {where}: "
                             + ", ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), open_clip.get_tokenizer(spec.name)


class CocaBackend:
    """Captions from an open_clip CoCa, decoded with key/value caches."""

    def __init__(self, spec: CaptionerSpec, cfg: CaptionerConfig, device: str):
        import torch

        from filtering.coca_kv import CocaKVDecoder, unsupported_reason
        from filtering.decoding import DecodeSettings

        self.cap = check_captioner(spec, cfg)["max_length"]
        self.model, self.tokenizer = load_coca(spec, device)
        reason = unsupported_reason(self.model)
        if reason:
            raise CaptionerError(f"captioner weights {spec.weights}, {_config_source(spec)}: {reason}")
        self.decoder = CocaKVDecoder(self.model)
        self.cfg, self.device, self.precision = cfg, device, spec.precision
        pre = spec.preprocess_cfg()
        self.mean = torch.tensor(pre["mean"], device=device)
        self.std = torch.tensor(pre["std"], device=device)
        self.settings = DecodeSettings(
            strategy=cfg.strategy, sot_id=int(getattr(self.tokenizer, "sot_token_id", 49406)),
            eos_id=int(getattr(self.tokenizer, "eot_token_id", 49407)), max_length=self.cap,
            min_length=cfg.min_length, top_p=cfg.top_p, temperature=cfg.temperature,
            repetition_penalty=cfg.penalty(), num_beams=cfg.num_beams, length_penalty=cfg.length_penalty)

    def pixels_to_input(self, images):
        """uint8 (B, H, W, 3) crops (numpy or torch) -> normalised (B, 3, H, W); a float (B, 3, H, W) passes as is."""
        import torch

        from filtering.preprocess import normalize_batch

        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if x.dtype == torch.uint8:
            return normalize_batch(x.to(self.device), self.mean, self.std)
        return x.to(self.device)

    def generate(self, images, keys: list[str]) -> list[list]:
        """Token-level output for one batch: per image, `num_captions` `decoding.Sequence`s."""
        import torch

        from filtering.decoding import beam_search, row_generators, sample_sequences

        n = self.cfg.num_captions
        # open_clip's fp16/bf16 keep some weights (LayerNorms, the attentional pooler's queries) in fp32 and rely on
        # autocast to mix them: its own forward fails without it
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        autocast = torch.autocast(torch.device(self.device).type, dtype=half, enabled=half is not None)
        with torch.inference_mode(), autocast:
            image_tokens = self.decoder.encode_images(self.pixels_to_input(images))  # (B, N, W)
            if self.cfg.strategy == "beam":
                return beam_search(self.decoder, image_tokens, self.settings, num_return=n)
            gens = None
            if self.cfg.strategy == "nucleus":
                gens = row_generators(self.cfg.seed, [f"{key}/{j}" for key in keys for j in range(n)])
            seqs = sample_sequences(self.decoder, image_tokens.repeat_interleave(n, dim=0), self.settings, gens)
        return [seqs[i * n:(i + 1) * n] for i in range(len(keys))]

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens).strip() if tokens else ""


class Captioner:
    """`num_captions` synthetic captions per image, from a CoCa (decoded here) or BLIP (Hugging Face)."""

    def __init__(self, spec: dict | CaptionerSpec, cfg: dict | CaptionerConfig | None = None,
                 num_threads: int | None = None, keep_pixels: bool = False):
        import torch

        from filtering.dfn import pick_device

        if num_threads:
            torch.set_num_threads(int(num_threads))  # an actor gets its own CPUs; torch would take every core
        self.spec = spec if isinstance(spec, CaptionerSpec) else CaptionerSpec(**spec)
        self.cfg = cfg if isinstance(cfg, CaptionerConfig) else CaptionerConfig(**(cfg or {}))
        self.keep_pixels = keep_pixels  # e.g. when the same actor scores the new captions next
        device = pick_device(self.cfg.device)
        if self.spec.backend == "blip":
            from filtering.captioner_blip import BlipBackend

            self.backend = BlipBackend(self.spec.weights, self.cfg, device)
        else:
            self.backend = CocaBackend(self.spec, self.cfg, device)

    def generate(self, images, uids=None) -> list[list]:
        """Per image, `num_captions` token-level results (CoCa: `decoding.Sequence`), in batches of batch_size."""
        keys = [str(u) for u in uids] if uids is not None else [f"#{i}" for i in range(len(images))]
        out = []
        step = self.cfg.batch_size
        for i in range(0, len(images), step):
            out.extend(self.backend.generate(images[i:i + step], keys[i:i + step]))
        return out

    def captions(self, images, uids=None) -> list[list[str]]:
        """Per image (uint8 (B, H, W, 3) crops or normalised (B, 3, H, W)), `num_captions` caption strings."""
        return [[self.backend.decode(s.tokens) for s in seqs] for seqs in self.generate(images, uids)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch["pixels"] if self.keep_pixels else batch.pop("pixels")  # (B, H, W, 3) uint8
        n = len(pixels)
        ok = np.asarray(batch["decodable"], dtype=bool) if "decodable" in batch else np.ones(n, dtype=bool)
        uids = np.asarray(batch["uid"])[ok] if "uid" in batch else None
        captions = np.empty(n, dtype=object)
        captions[:] = [[] for _ in range(n)]
        if ok.any():
            for i, caps in zip(np.flatnonzero(ok), self.captions(pixels[ok], uids), strict=True):
                captions[i] = caps
        batch["synthetic_captions"] = captions
        batch["synthetic_captions_reason"] = np.where(ok, "", "undecodable").astype(object)
        return batch
