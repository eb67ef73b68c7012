"""Frozen open_clip encoders around a generator: the text tower that conditions it, and the image-text encoders that
judge its samples (Frechet features, zero-shot attributes, alignment). None of them is trained here, wrapped in DDP
or saved in the generator's checkpoints.

    ref = EncoderRef(name="tiny-clip-rn", weights="runs/demo/train/model.pt", source="stages.train")
    cond = TextConditioner(ref, device)
    tokens, pooled = cond(["a red circle", "a blue star"])   # (B, T, D_text), (B, D_pool)

Per-token features are the text transformer's outputs after `ln_final` (every context position, as SD3 feeds its
text encoders' sequences); pooled is `encode_text`, L2-normalised (the geometry the contrastive loss shaped, and a
scale that does not depend on how long the encoder trained). Features are cached per caption in memory, per
worker (on the CPU): each caption is encoded once per process; the cache belongs to one encoder checkpoint (its
sha256).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.core.config import ConfigError
from training.generative.config import EncoderRef


def weights_sha256(path: str) -> str:
    """A weights file's sha256, or a folder's (an open_clip `local-dir:` folder: its files in name order)."""
    from pipeline.core.model_files import weights_digest

    return weights_digest(path)


@dataclass
class LoadedEncoder:
    clip: torch.nn.Module
    preprocess: object  # open_clip's evaluation transform (PIL -> (3, S, S))
    tokenizer: object
    sha256: str


def load_encoder(ref: EncoderRef, device: torch.device | str = "cpu", user: str = "") -> LoadedEncoder:
    """The frozen encoder `ref` names, in eval mode. Weights that do not fit the named model are a ConfigError that
    names both configs: the encoder's (`ref.source`, its model name) and the one using it (`user`)."""
    import open_clip

    from pipeline.core.model_configs import random_init_expected, register_model_configs
    from pipeline.core.model_files import check_open_clip_source, local_dir
    from training.engine.checkpoint import CheckpointError, load_weights

    register_model_configs()
    check_open_clip_source(ref.name, ref.weights, user or "encoder")
    if local_dir(ref.name) is None and open_clip.get_model_config(ref.name) is None:
        raise ConfigError(f"{user}: encoder {ref.describe()}: no open_clip model config named {ref.name!r}")
    with random_init_expected():  # the weights load just below (a local-dir: folder's, by open_clip itself)
        clip, _, preprocess = open_clip.create_model_and_transforms(ref.name, device="cpu",
                                                                    require_pretrained=ref.weights is None)
    if ref.weights is not None:
        try:
            clip.load_state_dict(load_weights(ref.weights), strict=True)
        except (RuntimeError, CheckpointError, FileNotFoundError) as err:
            first = " ".join(str(err).split())[:400]  # "Error(s) in loading state_dict ...: Missing key(s) ..."
            raise ConfigError(f"{user}: the encoder checkpoint {ref.weights} does not fit {ref.describe()} "
                              f"(the model that checkpoint was trained as must be the one named): {first}") from None
    clip.eval().requires_grad_(False)
    return LoadedEncoder(clip.to(device), preprocess, open_clip.get_tokenizer(ref.name), weights_sha256(ref.files))


@torch.no_grad()
def text_features(clip: torch.nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, T, D_text) after ln_final, pooled (B, D_pool) = encode_text) of token ids (B, T)."""
    from open_clip.model import text_global_pool

    if hasattr(clip, "text"):  # CustomTextCLIP and CoCa keep a TextTransformer that can return its tokens
        tower, keep = clip.text, clip.text.output_tokens
        tower.output_tokens = True
        try:
            pooled, tokens = tower(text)
        finally:
            tower.output_tokens = keep
        return tokens, pooled
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(text).to(cast) + clip.positional_embedding.to(cast)  # (B, T, D_text)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    pooled = text_global_pool(x, text, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    proj = clip.text_projection
    if proj is not None:
        pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
    return x, pooled


def text_widths(clip: torch.nn.Module, tokenizer) -> tuple[int, int, int]:
    """(token width, pooled width, tokens per caption) of an encoder's text tower."""
    tokens, pooled = text_features(clip, tokenizer([""]).to(next(clip.parameters()).device))
    return tokens.shape[2], pooled.shape[1], tokens.shape[1]


class TextConditioner:
    """Captions -> (tokens, pooled) from a frozen text tower, each unique caption encoded once per process."""

    def __init__(self, ref: EncoderRef, device: torch.device | str = "cpu", cache_size: int = 100_000,
                 user: str = "conditioning"):
        enc = load_encoder(ref, device, user)
        self.clip, self.tokenizer, self.sha256, self.device = enc.clip, enc.tokenizer, enc.sha256, device
        self.text_dim, self.pooled_dim, self.tokens = text_widths(self.clip, self.tokenizer)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache_size, self.encoded = cache_size, 0

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        fresh = {}
        if missing:
            tokens, pooled = text_features(self.clip, self.tokenizer(missing).to(self.device))
            pooled = F.normalize(pooled.float(), dim=-1)
            self.encoded += len(missing)
            fresh = {c: (tokens[i].float().cpu(), pooled[i].cpu()) for i, c in enumerate(missing)}
            room = self.cache_size - len(self.cache)  # a full cache keeps what it has; new captions are recomputed
            self.cache.update(dict(list(fresh.items())[:max(room, 0)]))
        rows = [self.cache.get(c) or fresh[c] for c in captions]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
