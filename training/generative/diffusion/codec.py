"""Where the generator works: pixels in [-1, 1], or the latent space of a diffusers `AutoencoderKL` from a local
folder.

Generators see images in their own normalisation: resize the short side to the resolution, centre-crop, scale to
[-1, 1]; no CLIP mean/std and no contrastive augmentation (a flip would swap "left" and "right" in the captions).

    pixel space   x0 = image                                             (3, S, S)
    latent space  x0 = (vae.encode(image).sample() - shift_factor) * scaling_factor    (latent_channels, S/f, S/f)

`scaling_factor` and `shift_factor` come from the autoencoder's own config (SD3's: 1.5305, 0.0609, 16 channels),
f = 2^(len(block_out_channels) - 1). The autoencoder is frozen and runs outside DDP on each worker.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from pipeline.core.images import stored_extent


def square_crop(image: Image.Image, size: int) -> Image.Image:
    """Short side to `size` (bicubic), centre crop: every generator's (and its evaluation's) view of an image. An
    image the decoder reduced (`min_size`) is resized with the stored image's geometry (`stored_extent`)."""
    w, h, box = stored_extent(image)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.convert("RGB").resize((nw, nh), Image.BICUBIC, box=box)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


class PixelTransform:
    """PIL image -> (3, S, S): short side to S (bicubic), centre crop; floats in [-1, 1] (the denoisers' view), or
    with `uint8` the 8-bit values themselves (the flows' and the likelihoods': dequantised in one place). A class:
    loaders pickle it."""

    def __init__(self, size: int, uint8: bool = False):
        self.size, self.uint8 = size, uint8
        self.min_size = size  # what the loader asks the decoder for

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(square_crop(image, self.size), dtype=np.uint8)).permute(2, 0, 1)
        return pixels.contiguous() if self.uint8 else pixels.float() / 127.5 - 1  # (3, S, S)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> 8-bit RGB images."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [Image.fromarray(a.cpu().numpy()) for a in arr]


def read_vae_config(path: str, user: str) -> dict:
    """The autoencoder folder's config.json, or a ConfigError naming `user` (the config key that points there) and
    what the folder holds instead (`pipeline.core.model_files`)."""
    from pipeline.core.model_files import expect_folder

    expect_folder(path, "autoencoder_kl", user)
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def image_space(vae: str | None, resolution: int) -> dict:
    """What the generator's inputs are, from the config alone (no weights loaded): recorded in generator.json."""
    if vae is None:
        return {"space": "pixel", "channels": 3, "size": resolution}
    cfg = read_vae_config(vae, "latent.vae")
    channels, size = latent_geometry(cfg, resolution)
    return {"space": "latent", "channels": channels, "size": size, "vae": vae,
            "scaling_factor": float(cfg.get("scaling_factor", 0.18215)),  # diffusers' default when unset
            "shift_factor": float(cfg.get("shift_factor") or 0.0)}


def latent_geometry(vae_cfg: dict, resolution: int) -> tuple[int, int]:
    """(channels, side) of the latents of `resolution`-pixel images."""
    factor = 2 ** (len(vae_cfg.get("block_out_channels", [0])) - 1)
    return int(vae_cfg.get("latent_channels", 4)), resolution // factor


class PixelCodec:
    """The identity: the generator works on [-1, 1] pixels."""

    def __init__(self, resolution: int):
        self.channels, self.size = 3, resolution

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)


class LatentCodec:
    """A frozen diffusers AutoencoderKL: images <-> scaled latents."""

    def __init__(self, path: str, resolution: int, device: torch.device | str = "cpu", user: str = "latent.vae"):
        from diffusers import AutoencoderKL

        cfg = read_vae_config(path, user)
        self.path = path
        self.channels, self.size = latent_geometry(cfg, resolution)
        self.vae = AutoencoderKL.from_pretrained(path).to(device).eval().requires_grad_(False)
        self.scale = float(self.vae.config.scaling_factor)
        self.shift = float(self.vae.config.shift_factor or 0.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample()  # (B, C, S/f, S/f)
        return (latents.float() - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((x / self.scale + self.shift).to(self.vae.dtype)).sample.float().clamp(-1, 1)


def make_codec(vae: str | None, resolution: int, device: torch.device | str = "cpu"):
    return LatentCodec(vae, resolution, device) if vae else PixelCodec(resolution)
