"""One decoding step of an open_clip CoCa with key/value caches, reading the module's own weights and layers.

A CoCa caption step runs two causal towers. The unimodal text tower (`model.text`) turns the prefix into token
features; it appends a CLS token at the end for the contrastive embedding, which generation never needs (attention
is causal, so no text token sees it). The multimodal decoder (`model.text_decoder`) runs, per layer, a causal
self-attention block and a cross-attention block over the image tokens, then `ln_final` and `text_projection` give
the next token's logits. open_clip's `CoCa.generate` re-runs both towers over the whole prefix at every step; here
each step feeds one token per row:

- self-attention keys/values of both towers are cached per layer, (R, heads, T, head_dim), written at position t;
- cross-attention keys/values over the image tokens are computed once per batch, per layer;
- LayerNorms, layer scale, MLPs, positional embeddings and projections are the module's own submodules, so the
  logits are those of `model(image, prefix)["logits"][:, -1]` up to float rounding (a unit test holds it to that).

The text tower masks keys whose token is the pad id (0, a real token: "!"), as open_clip's `_build_additive_mask`
does, including its legacy one-position shift (`correct_cls_mask=False`, what CoCa checkpoints were trained with):
key j is masked when token j-1 is the pad id. Rows of a batch advance in lockstep, one position per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this module cannot be decoded step by step here, or None; checked before any work."""
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer

    text, dec = getattr(model, "text", None), getattr(model, "text_decoder", None)
    if dec is None:
        return "not a CoCa model (it has no text_decoder)"
    if not isinstance(text, TextTransformer):
        return f"its text tower is {type(text).__name__}; only open_clip's TextTransformer is supported"
    if text.attn_mask is None:
        return "its text tower is bidirectional (no_causal_mask): a prefix cannot be decoded token by token"
    blocks = [*text.transformer.resblocks, *dec.resblocks, *dec.cross_attn]
    for block in blocks:
        if type(block) is not ResidualAttentionBlock:
            return f"it uses {type(block).__name__} attention blocks; only open_clip's default blocks are supported"
        mha = block.attn
        if not (mha._qkv_same_embed_dim and mha.batch_first and mha.bias_k is None and not mha.add_zero_attn):
            return "its attention layers are not plain batch-first nn.MultiheadAttention"
    if not dec.batch_first:
        return "its decoder is not batch-first"
    return None


@dataclass
class DecodeState:
    """Caches for R rows (sequences). `t` is the next position; all rows share it."""

    text_k: list[torch.Tensor]  # per text layer, (R, nh, T, hs)
    text_v: list[torch.Tensor]
    dec_k: list[torch.Tensor]  # per decoder layer, (R, nh, T, hs)
    dec_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]  # per decoder layer, (R, nh, N_img, hs)
    cross_v: list[torch.Tensor]
    key_valid: torch.Tensor  # (R, T) bool: the text tower's pad mask over keys
    prev_token: torch.Tensor  # (R,) last token fed (the legacy pad mask looks one position back)
    t: int = 0

    @property
    def rows(self) -> int:
        return int(self.key_valid.shape[0])

    def select(self, idx: torch.Tensor) -> DecodeState:
        """Keep (and reorder, repeat) rows: finished rows leave, beams follow their parents."""

        def pick(xs):
            return [x.index_select(0, idx) for x in xs]

        return DecodeState(pick(self.text_k), pick(self.text_v), pick(self.dec_k), pick(self.dec_v),
                           pick(self.cross_k), pick(self.cross_v), self.key_valid.index_select(0, idx),
                           self.prev_token.index_select(0, idx), self.t)


def _heads(x: torch.Tensor, nh: int) -> torch.Tensor:
    """(R, L, W) -> (R, nh, L, hs)"""
    r, length, w = x.shape
    return x.view(r, length, nh, w // nh).transpose(1, 2)


class CocaKVDecoder:
    """Incremental next-token logits for an open_clip CoCa (eval mode, no grad)."""

    def __init__(self, model: nn.Module):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"cannot decode this CoCa with a key/value cache: {reason}")
        self.model, self.text, self.dec = model, model.text, model.text_decoder
        self.text_blocks = list(self.text.transformer.resblocks)
        self.dec_blocks = list(zip(self.dec.resblocks, self.dec.cross_attn, strict=True))
        # longest prefix both towers have positions for (the text tower's extra slot is the CLS token's)
        self.max_positions = min(self.text.context_length, self.dec.context_length)
        self.pad_id = int(self.text.pad_id)
        self.legacy_pad_shift = not getattr(self.text, "correct_cls_mask", False)
        self.dtype = self.text.transformer.get_cast_dtype()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, N_img, W_img) image tokens the decoder attends to."""
        _, tokens = self.model.visual(images.to(self.dtype))
        return tokens

    def start(self, image_tokens: torch.Tensor, max_positions: int | None = None) -> DecodeState:
        """Empty caches for R rows (one per image token set given), with cross-attention K/V computed once."""
        t_max = min(max_positions or self.max_positions, self.max_positions)
        r, dev = image_tokens.shape[0], image_tokens.device
        tw, th = self.text.transformer.width, self.text.heads
        dw = self.dec.width
        dh = self.dec_blocks[0][0].attn.num_heads

        def empty(width, heads):
            return torch.zeros(r, heads, t_max, width // heads, device=dev, dtype=self.dtype)

        cross_k, cross_v = [], []
        for _, xblock in self.dec_blocks:
            kv = xblock.ln_1_kv(image_tokens)  # (R, N, W)
            w, b = xblock.attn.in_proj_weight, xblock.attn.in_proj_bias
            k = F.linear(kv, w[dw:2 * dw], None if b is None else b[dw:2 * dw])
            v = F.linear(kv, w[2 * dw:], None if b is None else b[2 * dw:])
            cross_k.append(_heads(k, dh))
            cross_v.append(_heads(v, dh))
        return DecodeState([empty(tw, th) for _ in self.text_blocks], [empty(tw, th) for _ in self.text_blocks],
                           [empty(dw, dh) for _ in self.dec_blocks], [empty(dw, dh) for _ in self.dec_blocks],
                           cross_k, cross_v, torch.zeros(r, t_max, dtype=torch.bool, device=dev),
                           torch.full((r,), -1, dtype=torch.long, device=dev))

    def _self_attention(self, block, x, cache_k, cache_v, t, mask):
        """Self-attention of one new position over cached keys: (R, 1, W) -> (R, 1, W)."""
        mha = block.attn
        q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        nh = mha.num_heads
        cache_k[:, :, t:t + 1] = _heads(k, nh)
        cache_v[:, :, t:t + 1] = _heads(v, nh)
        y = F.scaled_dot_product_attention(_heads(q, nh), cache_k[:, :, :t + 1], cache_v[:, :, :t + 1],
                                           attn_mask=mask)  # (R, nh, 1, hs)
        return mha.out_proj(y.transpose(1, 2).reshape(x.shape))

    def _cross_attention(self, block, x, k, v):
        mha, w = block.attn, block.attn.in_proj_weight.shape[1]
        b = mha.in_proj_bias
        q = F.linear(x, mha.in_proj_weight[:w], None if b is None else b[:w])
        y = F.scaled_dot_product_attention(_heads(q, mha.num_heads), k, v)  # (R, nh, 1, hs)
        return mha.out_proj(y.transpose(1, 2).reshape(x.shape))

    @torch.no_grad()
    def step(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row at position `state.t`; (R,) long -> next-token logits (R, V)."""
        t = state.t
        if t >= state.key_valid.shape[1]:
            raise ValueError(f"position {t} is past the model's {state.key_valid.shape[1]} text positions")
        # the text tower's pad mask over keys (open_clip's _build_additive_mask, legacy shift or not)
        if self.legacy_pad_shift:
            valid = torch.ones_like(tokens, dtype=torch.bool) if t == 0 else state.prev_token != self.pad_id
        else:
            valid = tokens != self.pad_id
        state.key_valid[:, t] = valid
        keys_valid = state.key_valid[:, :t + 1]
        # always the mask (all True is no mask): asking whether it is needed would read it back, a GPU sync a token
        mask = keys_valid[:, None, None, :]  # (R, 1, 1, t+1)
        state.prev_token = tokens

        x = self.text.token_embedding(tokens[:, None]).to(self.dtype)  # (R, 1, W)
        x = x + self.text.positional_embedding[t:t + 1].to(self.dtype)
        for i, block in enumerate(self.text_blocks):
            x = x + block.ls_1(self._self_attention(block, block.ln_1(x), state.text_k[i], state.text_v[i], t, mask))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if self.text.cls_emb is None:  # without a CLS token the tower's token outputs pass its ln_final
            x = self.text.ln_final(x)

        for i, (block, xblock) in enumerate(self.dec_blocks):
            x = x + block.ls_1(self._self_attention(block, block.ln_1(x), state.dec_k[i], state.dec_v[i], t, None))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = x + xblock.ls_1(self._cross_attention(xblock, xblock.ln_1(x), state.cross_k[i], state.cross_v[i]))
            x = x + xblock.ls_2(xblock.mlp(xblock.ln_2(x)))
        out = self.dec.ln_final(x)
        if self.dec.text_projection is not None:
            out = out @ self.dec.text_projection
        state.t = t + 1
        return out[:, 0]  # (R, V)
