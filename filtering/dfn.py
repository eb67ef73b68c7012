"""The filtering network: `dfn_score` = cosine similarity of an image's and its caption's embeddings.

Any open_clip model scores: a checkpoint from winnow's own trainer, a local file, a built-in tag, or
`hf-hub:apple/DFN2B-CLIP-ViT-L-14` (Data Filtering Networks, Fang et al. 2023). `DFNScorer` is a plain class —
the model loads in `__init__`, `__call__(batch) -> batch` scores a batch — so it runs in a unit test as is and
under Ray Data as an actor:

    ds.map_batches(DFNScorer, fn_constructor_kwargs={"spec": spec.model_dump()},
                   compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=64)

A batch holds `pixels` (uint8 crops from `filtering.preprocess.Preprocessor`), `caption` and `decodable`; rows
that did not decode get a NaN score and a zero embedding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from filtering.preprocess import normalize_batch, resolve_preprocess
from pipeline.core.config import StrictModel
from pipeline.core.model_configs import random_init_expected, register_model_configs


class ModelSpec(StrictModel):
    """Which open_clip model scores, and with which weights."""

    name: str = Field(..., description="open_clip model name, 'hf-hub:org/repo' or 'local-dir:/path' (a folder "
                                       "holding open_clip_config.json and its weights, as open_clip writes them)")
    pretrained: str | None = Field(
        None, description="a tag (e.g. 'openai'), or a checkpoint file: .safetensors, or a torch file that loads "
                          "with weights_only=True (winnow's trainer checkpoints); None = random init")
    config_file: str | None = Field(None, description="open_clip model config JSON (file or folder) to register")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="weights dtype (fp16/bf16 on GPU)")

    def preprocess_cfg(self) -> dict:
        return resolve_preprocess(self.name, self.pretrained, self.config_file)

    def check(self, slot: str = "model") -> None:
        """A `local-dir:` name that is not an open_clip folder with weights, or a folder given as `pretrained`, is an
        error naming `slot` (the config key) and what the folder holds (`pipeline.core.model_files`)."""
        from pipeline.core.model_files import check_open_clip_source

        check_open_clip_source(self.name, self.pretrained, slot, "pretrained")


def _is_file(pretrained: str | None) -> bool:
    """A checkpoint file (local, or a remote URL such as a train-clip stage's model.pt on s3://), not a tag."""
    from pathlib import Path

    if pretrained and "://" in pretrained:
        return True
    return bool(pretrained) and ("/" in pretrained or "\\" in pretrained or Path(pretrained).suffix != "") \
        and Path(pretrained).is_file()


def load_state_dict_safely(path: str) -> dict:
    """Weights only: safetensors, or torch.load(weights_only=True); unwraps trainer checkpoints and DDP prefixes.
    `path` may be any fsspec URL: a remote file is downloaded first."""
    import torch

    from pipeline.core.storage import local_copy

    with local_copy(path) as local:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(local, device="cpu")
        else:
            state = torch.load(local, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_model(spec: ModelSpec, device: str = "cpu"):
    """(model in eval mode, tokenizer) for a spec; checkpoint files never go through pickle."""
    import open_clip

    register_model_configs(spec.config_file)
    spec.check()
    if _is_file(spec.pretrained):
        with random_init_expected():  # the weights load just below
            model = open_clip.create_model(spec.name, pretrained=None, precision=spec.precision, device="cpu")
        state = load_state_dict_safely(spec.pretrained)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        model.load_state_dict(state, strict=True)
        model = model.to(device)
    else:
        model = open_clip.create_model(spec.name, pretrained=spec.pretrained, precision=spec.precision,
                                       device=device, weights_only=True)
    model.eval()
    return model, open_clip.get_tokenizer(spec.name)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class DFNScorer:
    """Image-caption cosine similarity and image embeddings for a batch of preprocessed crops."""

    def __init__(self, spec: dict | ModelSpec, device: str = "auto", num_threads: int | None = None):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))  # an actor gets its own CPUs; torch would take every core
        self.spec = spec if isinstance(spec, ModelSpec) else ModelSpec(**spec)
        self.device = pick_device(device)
        self.model, self.tokenizer = load_model(self.spec, self.device)
        pre = self.spec.preprocess_cfg()
        # read tasks resolved the same dict without the model: it must be what open_clip attached to the model
        want = dict(getattr(self.model.visual, "preprocess_cfg", None) or {})
        size = want.get("size", getattr(self.model.visual, "image_size", pre["size"]))
        want["size"] = list(size) if isinstance(size, list | tuple) else [size, size]
        for key in ("size", "mean", "std", "interpolation", "resize_mode"):
            if key not in want:
                continue
            same = want[key] == pre[key] if isinstance(pre[key], str) else \
                np.allclose(np.asarray(want[key], dtype=float), np.asarray(pre[key], dtype=float))
            if not same:
                raise ValueError(f"{self.spec.name}: the model's {key} is {want[key]}, preprocessing resolved "
                                 f"{pre[key]}")
        self.mean = torch.tensor(pre["mean"], device=self.device)
        self.std = torch.tensor(pre["std"], device=self.device)
        self.dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            self.embed_dim = int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[1])

    def embed(self, pixels: np.ndarray, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) unit-norm image and text embeddings, float32 numpy."""
        img, txt = self.embed_on_device(pixels, captions)
        return img.float().cpu().numpy(), txt.float().cpu().numpy()

    def embed_on_device(self, pixels: np.ndarray, captions: list[str]):
        """(B, D) unit-norm image and text embeddings as tensors on the scorer's device, in its dtype."""
        import torch

        with torch.inference_mode():
            x = normalize_batch(torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device), self.mean, self.std)
            img = self.model.encode_image(x.to(self.dtype), normalize=True)  # (B, D)
            tokens = self.tokenizer(list(captions)).to(self.device)  # (B, T)
            return img, self.model.encode_text(tokens, normalize=True)  # (B, D) each

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")  # (B, H, W, 3) uint8; dropped from the output: nothing downstream needs it
        ok = np.asarray(batch["decodable"], dtype=bool)
        n = len(ok)
        score = np.full(n, np.nan, dtype=np.float32)
        emb = np.zeros((n, self.embed_dim), dtype=np.float16)
        if ok.any():
            captions = [str(c) for c in np.asarray(batch["caption"], dtype=object)[ok]]
            img, txt = self.embed(pixels[ok], captions)
            score[ok] = (img * txt).sum(axis=1)
            emb[ok] = img.astype(np.float16)
        batch["dfn_score"] = score
        batch["image_embedding"] = emb
        return batch
