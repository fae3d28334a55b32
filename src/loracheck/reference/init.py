"""Init schemes for the LoRA factors.

Linear layers (A: (r, in), B: (out, r)); every scheme but ``pissa`` and ``random`` keeps B = 0
so that the adapted model equals the base at step 0:

    normal     A ~ N(0, σ²), σ = 0.02 by default (LLMBook);  B = 0
    kaiming    A ~ U(±1/√in), kaiming_uniform(a=√5) as PEFT and loralib;  B = 0
    gaussian   A ~ N(0, (1/r)²) (PEFT's "gaussian");  B = 0
    pissa      A = diag(√(S_r/s))·Vh_r, B = U_r·diag(√(S_r/s)) from the SVD of W, and the base
               becomes the residual W − s·B·A, so the sum is still W (Meng et al., 2024)
    zeros      A = 0, B = 0 (no gradient ever reaches either: a planted fault)
    random     A and B both random (PEFT's ``init_lora_weights=False``): breaks W' = W

Embedding layers follow PEFT: A = 0, B ~ N(0, 1) for every identity-preserving scheme.
"""

from __future__ import annotations

import math

import torch

from loracheck.reference.layers import LoRAEmbedding, LoRALinear, LoRAModule

SCHEMES = ("normal", "kaiming", "gaussian", "pissa", "zeros", "random")
# Schemes whose step-0 identity comes from a zero factor (B for Linear, A for Embedding).
ZERO_FACTOR_SCHEMES = frozenset({"normal", "kaiming", "gaussian"})


def scheme_from_peft(value: bool | str | None, *, init_std: float | None = None) -> str:
    """Map a PEFT ``init_lora_weights`` value (and an optional declared σ) to a scheme name."""
    if init_std is not None and value in (None, True, "normal"):
        return "normal"
    if value is None or value is True:
        return "kaiming"
    if value is False:
        return "random"
    text = str(value).lower()
    if text.startswith("pissa"):
        return "pissa"
    if text in SCHEMES:
        return text
    if text in ("kaiming-uniform", "kaiming_uniform", "true"):
        return "kaiming"
    raise ValueError(f"init scheme {value!r} is not implemented by the reference LoRA")


def _normal(shape: tuple[int, ...], std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _uniform(shape: tuple[int, ...], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


@torch.no_grad()
def init_lora(
    layer: LoRAModule,
    scheme: str,
    *,
    std: float = 0.02,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise ``layer``'s factors in place (and, for ``pissa``, its base weight).

    Random draws happen on the CPU from ``generator`` (a fresh default one when None), so the
    same seed gives the same factors on every device.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    a_param, b_param = layer.factor_a, layer.factor_b
    r = layer.rank
    a: torch.Tensor
    b: torch.Tensor
    if isinstance(layer, LoRAEmbedding):
        n, d = layer.in_features, layer.out_features
        if scheme == "zeros":
            a, b = torch.zeros(r, n), torch.zeros(d, r)
        elif scheme == "random":
            a, b = _normal((r, n), 1.0, gen), _normal((d, r), 1.0, gen)
        else:
            a, b = torch.zeros(r, n), _normal((d, r), 1.0, gen)
    else:
        fan_in, fan_out = layer.in_features, layer.out_features
        b = torch.zeros(fan_out, r)
        if scheme == "normal":
            a = _normal((r, fan_in), std, gen)
        elif scheme == "kaiming":
            # kaiming_uniform_(a=√5) on an (r, in) weight: bound = √(6 / ((1 + 5) · in)) = 1/√in
            a = _uniform((r, fan_in), 1.0 / math.sqrt(fan_in), gen)
        elif scheme == "gaussian":
            a = _normal((r, fan_in), 1.0 / r, gen)
        elif scheme == "zeros":
            a = torch.zeros(r, fan_in)
        elif scheme == "random":
            # nn.Linear's own defaults for both: U(±1/√in) and U(±1/√r)
            a = _uniform((r, fan_in), 1.0 / math.sqrt(fan_in), gen)
            b = _uniform((fan_out, r), 1.0 / math.sqrt(r), gen)
        else:
            _pissa(layer)
            return
    a_param.copy_(a.to(a_param.dtype))
    b_param.copy_(b.to(b_param.dtype))


def _pissa(layer: LoRALinear) -> None:
    """Top-r SVD of W into the factors; the base keeps the residual W − s·B·A."""
    weight = layer.base_weight
    w = weight.detach().float()
    w = w.T if layer.fan_in_fan_out else w  # (out, in)
    u, s_vals, vh = torch.linalg.svd(w, full_matrices=False)
    r, scale = layer.rank, layer.scaling
    root = torch.sqrt(s_vals[:r] / scale)
    a = root[:, None] * vh[:r]  # (r, in)
    b = u[:, :r] * root[None, :]  # (out, r)
    layer.lora_A.weight.copy_(a)
    layer.lora_B.weight.copy_(b)
    residual = w - scale * (b @ a)
    weight.copy_((residual.T if layer.fan_in_fan_out else residual).to(weight.dtype))


def init_model(
    modules: list[tuple[str, LoRAModule]],
    scheme: str,
    *,
    std: float = 0.02,
    seed: int = 0,
) -> None:
    """Initialise every LoRA module, in name order, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    for _, module in sorted(modules, key=lambda item: item[0]):
        init_lora(module, scheme, std=std, generator=gen)
