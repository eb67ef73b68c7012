"""Device-strict runs without a GPU: `fake_cuda()` runs a block under PyTorch's FakeTensorMode, where tensors have
shapes, dtypes and devices but no data, and `torch.device("cuda")` is accepted on a machine without CUDA. An op
that mixes a (fake) CUDA tensor with a CPU tensor fails exactly as on a GPU ("Unhandled FakeTensor Device
Propagation ... found two different devices cpu, cuda:0"), so a tensor a code path leaves on the CPU fails the test.

What it cannot run: anything that reads values (`.item()`, `float(t)`, `.tolist()`, `bool(t)`, `nonzero`: a
`DataDependentOutputException`) and the autograd engine's backward on a fake CUDA tensor (it asks the CUDA driver
for a context). For backward passes use the `meta` device, which the autograd engine accepts and which refuses CPU
operands the same way ("Tensor on device cpu is not on the expected device meta!").

    with fake_cuda() as cuda:
        model = build().to(cuda)
        out = model(torch.randn(2, 3, device=cuda))
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily


def _apply(self: torch.nn.Module, fn, recurse: bool = True) -> torch.nn.Module:
    """`Module._apply` for fake parameters: torch swaps a fake parameter's contents in place, which fails for one
    FakeTensorMode created ("Cannot swap t1 because it has weakref associated with it"); a new Parameter (the
    pre-2.0 behaviour) moves it as well. Tied weights come apart, which a device check does not mind."""
    if recurse:
        for child in self.children():
            child._apply(fn)
    for key, param in self._parameters.items():
        if param is not None:
            with torch.no_grad():
                self._parameters[key] = torch.nn.Parameter(fn(param), param.requires_grad)
    for key, buf in self._buffers.items():
        if buf is not None:
            self._buffers[key] = fn(buf)
    return self


class FakeCuda:
    """A fake CUDA device to enter as often as needed: `with fake as cuda:` (see the module docstring). The fake
    tensors of one instance may be used again each time it is entered, never outside it."""

    def __init__(self):
        # non-fake inputs (weights read from a file, a module built before the block) become fake CPU tensors
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.stack: list[contextlib.ExitStack] = []

    def __enter__(self) -> torch.device:
        stack = contextlib.ExitStack()
        original = torch.nn.Module._apply
        torch.nn.Module._apply = _apply
        stack.callback(setattr, torch.nn.Module, "_apply", original)
        stack.enter_context(self.mode)
        self.stack.append(stack)
        return torch.device("cuda")

    def __exit__(self, *exc) -> None:
        self.stack.pop().close()


def fake_cuda() -> FakeCuda:
    """A fresh fake CUDA device: `with fake_cuda() as cuda: ...`."""
    return FakeCuda()


def real_constants(fn):
    """`fn` run outside the fake mode: for a function that computes CPU constants and reads them (a noise schedule's
    `.tolist()`), whose values are not the device's business. Its tensor arguments must be real."""

    def run(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)

    return run


def strict_odeint(func, y0: tuple, t: torch.Tensor, **_):
    """A stand-in for torchdiffeq's `odeint` on the `meta` device, whose adaptive step control reads values: it
    joins the tuple state as torchdiffeq does (`torch.cat` of the flattened parts, where a CPU part fails), checks
    the time grid is on the state's device, and takes one Euler step from t[0] to t[-1] through `func` (so the
    vector field, its divergence and its probes run on the device). Returns torchdiffeq's (len(t), ...) per part."""
    flat = torch.cat([part.reshape(-1) for part in y0])
    if t.device != flat.device:
        raise RuntimeError(f"time grid on {t.device}, state on {flat.device}")
    step = func(t[0], y0)
    end = tuple(p + (t[-1] - t[0]) * d for p, d in zip(y0, step, strict=True))
    func(t[-1], end)
    return tuple(torch.stack([a, b]) for a, b in zip(y0, end, strict=True))
