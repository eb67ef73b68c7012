"""The independent check of every log-determinant: autograd's full Jacobian of a map on a small input, and its
log|det| by LU (torch.linalg.slogdet), one sample at a time."""

from __future__ import annotations

import torch


def autograd_log_det(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| per sample (B,) of x (B, ...), where fn maps a batch to a batch (or a tuple of them,
    concatenated flat: a split's (h, eps)) treating samples independently.

    The whole Jacobian in one backward pass: fn runs on D copies of a sample, and the gradient of sum_k y_k[k]
    with respect to copy k is row k of the Jacobian."""
    dets = []
    for sample in x:
        d = sample.numel()
        copies = sample.expand(d, *sample.shape).clone().requires_grad_(True)
        out = fn(copies)
        out = torch.cat([o.flatten(1) for o in (out if isinstance(out, tuple) else (out,))], 1)  # (D, D_out)
        assert out.shape == (d, d), "a bijection maps D numbers to D numbers"
        (jac,) = torch.autograd.grad(torch.diagonal(out).sum(), copies)
        dets.append(torch.linalg.slogdet(jac.reshape(d, d)).logabsdet)
    return torch.stack(dets)


def jiggle(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its (often zero) initial value, so couplings and priors are not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module
