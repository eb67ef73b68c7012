"""Ops on the image's size and shape (signals `width`, `height`, `aspect_ratio`)."""

from __future__ import annotations

import numpy as np

from filtering.ops.base import Op, outside


class MinImageSide(Op):
    """Drop images whose shorter side is below the value (pixels)."""

    name = "min_image_side"
    scalar = (int, 0)

    def requires(self):
        return {"width", "height"}

    def threshold(self, pool):
        return ("min_side", float(self.params))

    def apply(self, pool, alive):
        return outside(np.minimum(pool.numeric("width"), pool.numeric("height")), alive, low=self.params)


class MaxAspectRatio(Op):
    """Drop images whose `aspect_ratio` (long side / short side, so >= 1 for portrait and landscape alike) is above
    the value."""

    name = "max_aspect_ratio"
    scalar = (float, 1.0)

    def requires(self):
        return {"aspect_ratio"}

    def threshold(self, pool):
        return ("aspect_ratio", float(self.params))

    def apply(self, pool, alive):
        return outside(pool.numeric("aspect_ratio"), alive, high=self.params)
