"""The two LoRA layer types, by composition around a frozen base layer.

Both layers only compute; choosing targets, freezing, initialising and merging are free
functions in :mod:`loracheck.reference.inject` and :mod:`loracheck.reference.init`.

Attribute names follow PEFT's (``base_layer``, ``lora_A``, ``lora_B``, ``lora_embedding_A``,
``lora_embedding_B``) so that a state-dict key maps onto PEFT's on-disk key by a fixed prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def lora_scaling(rank: int, alpha: float, *, use_rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA (Kalajdzievski, 2023)."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    Forward::

        y = base(x) + s · B(A(dropout(x)))

    Shapes, for ``base: nn.Linear(in_features, out_features)``::

        lora_A.weight: (r, in_features)    the down-projection
        lora_B.weight: (out_features, r)   the up-projection
        ΔW = s · B @ A: (out_features, in_features)

    Init is left to :func:`loracheck.reference.init.init_lora`; the default here is A = B = 0
    (so a freshly built layer is the identity until an init scheme runs). Dropout applies to
    the input of the LoRA branch only and is ``nn.Identity`` when ``dropout == 0``. The scale is
    computed once, here.

    Args:
        base: the layer to adapt; its parameters are not touched here (freezing is the
            caller's job, see :func:`~loracheck.reference.inject.mark_only_lora_trainable`).
        rank: r, the inner dimension of the update.
        alpha: α, the numerator of the scale.
        dropout: dropout probability on the LoRA branch's input.
        use_rslora: scale by α/√r instead of α/r.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.rank = rank
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(rank, self.alpha, use_rslora=use_rslora)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dt)
        nn.init.zeros_(self.lora_A.weight)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return int(self.base_layer.in_features)

    @property
    def out_features(self) -> int:
        return int(self.base_layer.out_features)

    @property
    def factor_a(self) -> torch.Tensor:
        return self.lora_A.weight

    @property
    def factor_b(self) -> torch.Tensor:
        return self.lora_B.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base_layer(x)
        if self.merged:
            return y
        # (..., in) -> (..., r) -> (..., out)
        update: torch.Tensor = self.lora_B(self.lora_A(self.lora_dropout(x)))
        # In place: linear's backward keeps its input and weight, not y, so y is free to reuse.
        return y.add_(update, alpha=self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B @ A, shape (out, in), computed in fp32 and returned in the base's dtype."""
        a = self.lora_A.weight.detach().float()
        b = self.lora_B.weight.detach().float()
        return ((b @ a) * self.scaling).to(self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


class LoRAEmbedding(nn.Module):
    """A frozen embedding plus a trainable low-rank update of its table.

    Forward, for token ids ``t``::

        y = base(t) + s · embed(t, Aᵀ) @ Bᵀ

    Shapes, for ``base: nn.Embedding(num_embeddings, embedding_dim)`` (PEFT's layout)::

        lora_embedding_A: (r, num_embeddings)
        lora_embedding_B: (embedding_dim, r)
        ΔW = s · (B @ A)ᵀ: (num_embeddings, embedding_dim)

    As in PEFT, the zero factor of the standard init is A (A = 0, B ~ N(0, 1)) and there is no
    dropout on ids. The lookup reuses the base's ``padding_idx``, ``max_norm`` and friends.
    """

    def __init__(
        self,
        base: nn.Embedding,
        rank: int,
        alpha: float,
        *,
        use_rslora: bool = False,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.rank = rank
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(rank, self.alpha, use_rslora=use_rslora)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_embedding_A = nn.Parameter(
            torch.zeros(rank, base.num_embeddings, device=dev, dtype=dt)
        )
        self.lora_embedding_B = nn.Parameter(
            torch.zeros(base.embedding_dim, rank, device=dev, dtype=dt)
        )
        self.merged = False

    @property
    def in_features(self) -> int:
        return int(self.base_layer.num_embeddings)

    @property
    def out_features(self) -> int:
        return int(self.base_layer.embedding_dim)

    @property
    def factor_a(self) -> torch.Tensor:
        return self.lora_embedding_A

    @property
    def factor_b(self) -> torch.Tensor:
        return self.lora_embedding_B

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base_layer(ids)
        if self.merged:
            return y
        base = self.base_layer
        # (..., ) ids -> (..., r) rows of Aᵀ -> (..., dim)
        after_a = F.embedding(
            ids,
            self.lora_embedding_A.T,
            padding_idx=base.padding_idx,
            max_norm=base.max_norm,
            norm_type=base.norm_type,
            scale_grad_by_freq=base.scale_grad_by_freq,
            sparse=base.sparse,
        )
        return y + (after_a @ self.lora_embedding_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · (B @ A)ᵀ, shape (num_embeddings, dim), in the base's dtype."""
        a = self.lora_embedding_A.detach().float()
        b = self.lora_embedding_B.detach().float()
        return ((b @ a).T * self.scaling).to(self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


LoRAModule = LoRALinear | LoRAEmbedding
"""Either LoRA layer: both expose ``factor_a``, ``factor_b``, ``delta_weight`` and ``merged``."""
