"""Every invertible layer: f^-1(f(x)) = x, and its log|det| equals autograd's full-Jacobian log-determinant on
small inputs; NICE's additive coupling's is exactly zero; actnorm is initialised from data once, and only once."""

from __future__ import annotations

import pytest
import torch
from flow_jacobian import autograd_log_det, jiggle

from training.generative.flows.coupling import AdditiveCoupling, AffineCoupling
from training.generative.flows.layers import ActNorm, InvConv1x1, NotInitialised, Reverse, Squeeze
from training.generative.flows.multiscale import Prior, Split

F64 = torch.float64
COND = 5  # conditioning width in the conditional variants


def ready_actnorm(c: int) -> ActNorm:
    a = ActNorm(c)
    a.initialize(torch.randn(8, c, 4, 4) * 3 + 1)
    return a


class SplitAsMap(torch.nn.Module):
    """Split's forward as one bijection x -> (h, eps), for the Jacobian."""

    def __init__(self, split: Split):
        super().__init__()
        self.split = split

    def forward(self, x, c=None):
        h, eps, log_det = self.split(x, c)
        return torch.cat([h.flatten(1), eps.flatten(1)], 1), log_det

    def inverse(self, y, c=None):  # inputs here are (B, 4, 2, 2): h and eps are (B, 2, 2, 2) each
        h, eps = y.view(-1, 2, 2, 2, 2).unbind(1)
        return self.split.inverse(h, eps, c)


LAYERS = {
    "actnorm": lambda: ready_actnorm(4),
    "invconv": lambda: InvConv1x1(4),
    "reverse": Reverse,
    "squeeze": Squeeze,
    "additive": lambda: AdditiveCoupling(4, 8),
    "affine-sigmoid": lambda: AffineCoupling(4, 8, scale="sigmoid"),
    "affine-tanh": lambda: AffineCoupling(4, 8, scale="tanh"),
    "affine-conditional": lambda: AffineCoupling(4, 8, COND, scale="sigmoid"),
    "additive-conditional": lambda: AdditiveCoupling(4, 8, COND),
    "split": lambda: SplitAsMap(Split(4)),
    "split-conditional": lambda: SplitAsMap(Split(4, COND)),
    "prior": lambda: Prior((4, 2, 2)),
    "prior-conditional": lambda: Prior((4, 2, 2), COND),
}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor | None]:
    torch.manual_seed(0)
    layer = jiggle(LAYERS[name](), scale=0.3).double()
    c = torch.randn(3, COND, dtype=F64) if "conditional" in name else None
    return layer, c


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_layer_inverts_and_its_log_det_is_the_full_jacobians(name):
    layer, c = build(name)
    x = torch.randn(3, 4, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    y, log_det = layer(x, c)
    assert (layer.inverse(y, c) - x).abs().max() < 1e-12
    # row by row, each with its own conditioning vector
    rows = [autograd_log_det(lambda v, i=i: layer(v, None if c is None else c[i:i + 1])[0], x[i:i + 1])
            for i in range(len(x))]
    assert torch.allclose(log_det, torch.cat(rows), atol=1e-10), (log_det, rows)
    if name not in ("reverse", "squeeze", "additive", "additive-conditional"):
        assert log_det.abs().min() > 1e-3  # a layer that scales: the comparison above was not 0 == 0

    # and in float32, the precision training runs in
    layer32, x32 = layer.float(), x.float()
    c32 = None if c is None else c.float()
    assert (layer32.inverse(layer32(x32, c32)[0], c32) - x32).abs().max() < 1e-5


def test_nices_additive_coupling_has_a_log_det_of_exactly_zero():
    layer, c = build("additive-conditional")
    x = torch.randn(3, 4, 2, 2, dtype=F64)
    y, log_det = layer(x, c)
    assert not torch.allclose(y, x)  # it does transform x
    assert torch.equal(log_det, torch.zeros(3, dtype=F64))
    assert autograd_log_det(lambda v: layer(v, c[:1])[0], x[:1]).abs().item() < 1e-12


def test_invconv_log_det_is_that_of_its_weight_times_the_pixels():
    layer = jiggle(InvConv1x1(6)).double()
    x = torch.randn(2, 6, 3, 5, dtype=F64)
    _, log_det = layer(x)
    assert torch.allclose(log_det, torch.linalg.slogdet(layer.weight()).logabsdet * 15 * torch.ones(2, dtype=F64))


def test_actnorm_initialises_from_data_once_and_keeps_a_loaded_state():
    x = torch.randn(64, 3, 4, 4) * torch.tensor([2.0, 0.5, 7.0]).view(1, 3, 1, 1) + 3
    a = ActNorm(3)
    with pytest.raises(NotInitialised):
        a(x)
    a.initialize(x)
    y, _ = a(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    with pytest.raises(RuntimeError, match="already initialised"):
        a.initialize(x * 5)

    loaded = ActNorm(3)  # a resumed model: built, then given the checkpoint's state
    loaded.load_state_dict(a.state_dict())
    assert loaded.ready and float(loaded.state_dict()["initialised"]) == 1.0
    assert torch.equal(loaded(x)[0], y)  # runs without a data init, with the checkpoint's values
    with pytest.raises(RuntimeError, match="already initialised"):
        loaded.initialize(x)
