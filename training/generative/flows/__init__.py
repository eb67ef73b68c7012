"""Normalizing flows: NICE, RealNVP and Glow, one change of variables written once, written in winnow.

    layers.py        ActNorm (data-initialised once), InvConv1x1 (LU), Reverse, Squeeze
    coupling.py      AdditiveCoupling (NICE, log|det| = 0), AffineCoupling (sigmoid or tanh-bounded scale)
    multiscale.py    Split / Prior (learned, conditional Gaussians as invertible standardisations), FlowModel
    conditioning.py  caption -> class id or hashed words (loader); ids -> vector (model)
    config.py        FlowModelConfig (kind: nice | realnvp | glow), FlowTaskConfig
    data.py          uint8 pixels from shards: the training stream, the first N images in file order
    artifacts.py     save / load a flow, sample pixels by the exact inverse, a PNG grid
    task.py          FlowTask: maximum likelihood in bits/dim on the training engine

Every layer: `forward(x, c) -> (y, log|det| (B,))`, `inverse(y, c) -> x`. A `FlowModel` is one bijection from the
model's input space to a standard normal; `model(x, ids)` is log p(x), `model.sample(seeds, ids, temperature)` inverts
(one seed per image).
Bits/dim of 8-bit data (dequantisation and preprocessing counted) come from `training.generative.likelihood`, the
same bookkeeping the diffusion families' probability-flow ODE uses.

Why not a library: normflows (last release 2023) and nflows (2020) are unmaintained; zuko (maintained) and FrEIA
target vector flows and have no Glow-style multi-scale image flow with actnorm's data init and conditional split
priors. The blocks are each a few lines here, and tested against autograd's full Jacobian.
"""
