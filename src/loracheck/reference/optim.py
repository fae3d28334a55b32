"""Adam for the probe, without ``torch.optim``.

``torch.optim``'s first optimizer imports ``torch._dynamo`` (about 2 s on a CI core), longer than
the whole probe of the built-in model. The probe needs plain Adam (Kingma & Ba, 2015)::

    m ← β₁·m + (1 − β₁)·g          v ← β₂·v + (1 − β₂)·g²
    p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

with PyTorch's defaults β = (0.9, 0.999), ε = 1e-8. A parameter without a gradient is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class Adam:
    """Adam over ``params``; :meth:`step` then :meth:`zero_grad`, as ``torch.optim.Adam``."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (
            0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.beta1).add_(g, alpha=1.0 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
            denom = (v.sqrt() / math.sqrt(c2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
