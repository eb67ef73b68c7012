"""The synthetic web's config: how big, how noisy, how faulty. The demo's and the tests' internet."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.config import StrictModel


class DisjointRates(StrictModel):
    """Fractions of the pool, one per kind; a sample gets at most one kind, so they add up to at most 1."""

    @model_validator(mode="after")
    def _total(self) -> DisjointRates:
        total = sum(self.model_dump().values())
        if total > 1:
            raise ValueError(f"the rates add up to {total:.3g}; a sample gets at most one kind, so at most 1")
        return self


class NoiseRates(DisjointRates):
    """Fractions of the pool carrying each kind of web noise (disjoint; the rest is clean)."""

    mismatched_caption: float = Field(0.15, ge=0, le=1, description="caption belongs to another image")
    generic_caption: float = Field(0.08, ge=0, le=1, description="'IMG_2041.jpg', 'image', boilerplate")
    junk_image: float = Field(0.06, ge=0, le=1, description="noise or blank image with a plausible caption")
    exact_duplicate: float = Field(0.04, ge=0, le=1, description="same bytes as another pool image, new URL")
    near_duplicate: float = Field(0.04, ge=0, le=1, description="re-rendered with jitter / re-encoded")
    tiny_image: float = Field(0.03, ge=0, le=1, description="a few pixels on a side")


class FaultRates(DisjointRates):
    """Fractions of pool URLs the server answers badly (disjoint)."""

    http_404: float = Field(0.02, ge=0, le=1)
    http_500: float = Field(0.02, ge=0, le=1)
    slow: float = Field(0.003, ge=0, le=1, description="answers after `slow_seconds`, past the download timeout")
    truncated: float = Field(0.01, ge=0, le=1, description="body cut short of its Content-Length")
    not_image: float = Field(0.01, ge=0, le=1, description="an HTML page served as image/jpeg")
    oversized: float = Field(0.005, ge=0, le=1, description="an image with far more pixels than allowed")
    opt_out: float = Field(0.01, ge=0, le=1, description="X-Robots-Tag: noai")


class SyntheticWebConfig(StrictModel):
    dir: str = Field("web", description="folder under the run root (or an absolute path) holding the web")
    world: Literal["shapes", "objects", "fashion"] = Field(
        "shapes", description="what the images look like: flat shapes, outlined objects on photo-like backgrounds, "
                              "or real grey product photos (Fashion-MNIST; pipeline/synthetic/worlds.py)")
    fashion_data: str | None = Field(
        None, description="the fashion world's photos: a folder of the Fashion-MNIST IDX files or a .npz extract "
                          "(default $WINNOW_FASHION_DIR, else /usr/share/datasets/fashion-mnist: `make fashion-data`)")
    seed: int = 0
    pool_size: int = Field(3000, ge=1, description="noisy image-text pairs in the pool URL list")
    hq_size: int = Field(400, ge=0, description="clean high-quality pairs (a second URL list)")
    test_size: int = Field(600, ge=0, description="held-out labelled test images (webdataset, not served)")
    min_side: int = Field(48, ge=8, description="smallest side of a normal image, pixels")
    max_side: int = Field(128, ge=8, description="largest side of a normal image, pixels")
    host: str = Field("web.synthetic.invalid", description="host name in the URLs; resolved to the loopback server")
    noise: NoiseRates = NoiseRates()
    faults: FaultRates = FaultRates()
    slow_seconds: float = Field(4.0, gt=0, description="delay of a `slow` fault; keep above the download timeout")
    oversized_pixels: int = Field(50_000_000, description="pixel count of an `oversized` image (a decompression bomb)")
