"""An open_clip model's eval preprocessing, split at the point where pixels leave the CPU worker.

open_clip's eval transform is resize -> crop -> to-tensor -> normalize. The resize and crop run in CPU read tasks
and hand the model actor a uint8 crop (a quarter of the float32 bytes through the object store); the actor does
`/255`, `-mean`, `/std` on a batch, which is exactly what ToTensor + Normalize compute.

The preprocessing config is resolved from the model's config without building the model, so read tasks can start
before any actor has loaded weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.images import stored_extent
from pipeline.core.model_configs import find_model_config, register_model_configs

# open_clip's PreprocessCfg() defaults (OpenAI's mean/std), used when no pretrained tag or hub config says otherwise
DEFAULT_PREPROCESS = {"size": [224, 224], "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                      "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                      "resize_mode": "shortest", "fill_color": 0}


def resolve_preprocess(name: str, pretrained: str | None = None, model_config: str | None = None) -> dict:
    """open_clip's PreprocessCfg (size, mean, std, interpolation, resize_mode, fill_color) for a model, as a dict.

    Random or file weights use the defaults and the config's image size, read without importing torch (the score
    stage's driver only needs this dict). Pretrained tags read the tag's preprocessing (no download); `hf-hub:`
    models read the hub's `open_clip_config.json` (a small file, cached for the actors that load the weights).
    """
    is_file = bool(pretrained) and ("://" in pretrained or Path(pretrained).is_file())  # s3://.../model.pt too
    if ":" not in name and (not pretrained or is_file):
        model_cfg = find_model_config(name, model_config)
        if model_cfg is not None:
            size = model_cfg["vision_cfg"].get("image_size", 224)
            return {**DEFAULT_PREPROCESS, "size": list(size) if isinstance(size, list | tuple) else [size, size]}
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    register_model_configs(model_config)  # before name lookups: the name may be one of winnow's own configs
    cfg = asdict(PreprocessCfg())
    if name.startswith("hf-hub:"):
        from open_clip.pretrained import download_pretrained_from_hf

        path = download_pretrained_from_hf(name[len("hf-hub:"):], filename="open_clip_config.json")
        hub = json.loads(Path(path).read_text())
        model_cfg = hub["model_cfg"]
        cfg = merge_preprocess_dict(cfg, hub.get("preprocess_cfg", {}))
    elif name.startswith("local-dir:"):
        local = json.loads((Path(name[len("local-dir:"):]) / "open_clip_config.json").read_text())
        model_cfg = local["model_cfg"]
        cfg = merge_preprocess_dict(cfg, local.get("preprocess_cfg", {}))
    else:
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip model {name!r}; known: {', '.join(open_clip.list_models()[:20])}, "
                             "... (or set model_config: to a JSON config)")
        if pretrained and open_clip.get_pretrained_cfg(name, pretrained):
            cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(name, pretrained))
    size = model_cfg["vision_cfg"].get("image_size", cfg["size"])
    cfg["size"] = list(size) if isinstance(size, list | tuple) else [size, size]
    cfg["mean"], cfg["std"] = list(cfg["mean"]), list(cfg["std"])
    return cfg


class Preprocessor:
    """RGB PIL image -> uint8 array (H, W, 3): open_clip's eval resize and crop, without to-tensor/normalize.

    The common modes (square `shortest`, `squash`) are plain PIL calls with torchvision's exact size arithmetic,
    so read tasks never import torch; other modes use open_clip's own transforms.
    """

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.size = (int(cfg["size"][0]), int(cfg["size"][1]))  # (H, W)
        self.shape = (*self.size, 3)
        self.resample = Image.BILINEAR if cfg["interpolation"] == "bilinear" else Image.BICUBIC
        square = self.size[0] == self.size[1]
        self.fast = (cfg["resize_mode"] == "shortest" and square) or cfg["resize_mode"] == "squash"
        self.steps = None if self.fast else self._open_clip_steps(cfg)
        # the short side to ask the decoder for: the fast modes resize from a reduced JPEG with the full image's
        # geometry (`stored_extent`); open_clip's own steps get the full decode
        self.min_size = max(self.size) if self.fast else None

    @staticmethod
    def _open_clip_steps(cfg: dict) -> list:
        from open_clip.transform import image_transform
        from torchvision.transforms import Normalize, ToTensor

        full = image_transform(tuple(cfg["size"]), is_train=False, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                               resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"],
                               fill_color=cfg["fill_color"])
        # Keep the geometric PIL steps; the actor does the tensor conversion and normalisation on the batch.
        return [t for t in full.transforms if not isinstance(t, ToTensor | Normalize)
                and type(t).__name__ not in ("MaybeConvertMode", "MaybeToTensor")]

    def _resize_crop(self, img: Image.Image) -> Image.Image:
        h_out, w_out = self.size
        w, h, box = stored_extent(img)  # the stored size: the arithmetic is the full image's, whatever was decoded
        same = img.size == (w, h)
        if self.cfg["resize_mode"] == "squash":
            return img if same and (w, h) == (w_out, h_out) else img.resize((w_out, h_out), self.resample, box=box)
        # torchvision Resize(int): the short side becomes `s`, the long side int(s * long / short)
        s = h_out
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = s, int(s * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if not same or (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), self.resample, box=box)
        top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))  # CenterCrop's rounding
        return img.crop((left, top, left + s, top + s))

    def __call__(self, img: Image.Image) -> np.ndarray:
        if self.fast:
            img = self._resize_crop(img)
        else:
            for step in self.steps:
                img = step(img)
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        if arr.shape != self.shape:
            raise ValueError(f"preprocess produced {arr.shape}, expected {self.shape}")
        return arr


def normalize_batch(pixels, mean, std):
    """uint8 (B, H, W, 3) tensor -> float (B, 3, H, W), as ToTensor + Normalize would produce."""
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    return x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
