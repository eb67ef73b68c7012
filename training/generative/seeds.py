"""One seed per image: every random number a generated image uses comes from its own CPU generator.

    gens = image_generators([7, 7, 3])                 # one torch.Generator per image
    noise = randn_rows((3, 16, 16), gens, device=dev)  # (3, 3, 16, 16): row i from gens[i] only, moved to dev

Drawn on the CPU and moved (as diffusers' `randn_tensor` does), so the numbers never depend on the device's RNG;
drawn row by row, so an image's numbers never depend on what else is in its batch. A sampler that adds noise as it
goes (churn, Euler-Maruyama) keeps drawing from the same generators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def randn_rows(row_shape: Sequence[int], generators: Sequence[torch.Generator], dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard normal (len(generators), *row_shape), row i from generators[i], on `device`."""
    rows = [torch.randn(tuple(row_shape), generator=g, dtype=dtype) for g in generators]
    return torch.stack(rows).to(device)
