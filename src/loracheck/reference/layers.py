"""The two LoRA layer types, by composition around a frozen base layer.

Both layers only compute; choosing targets, freezing, initialising and merging are free
functions in :mod:`loracheck.reference.inject` and :mod:`loracheck.reference.init`.

Attribute names follow PEFT's (``base_layer``, ``lora_A``, ``lora_B``, ``lora_embedding_A``,
``lora_embedding_B``) so that a state-dict key maps onto PEFT's on-disk key by a fixed prefix.

The factors are float32 whatever the base's dtype (fp32 master weights, as AMP keeps them and as
PEFT's ``autocast_adapter_dtype=True`` does): the LoRA branch computes in fp32 and its sum with
the base output is rounded once to the base's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loracheck.scaling import effective_scale

FACTOR_DTYPE = torch.float32


def lora_scaling(rank: int, alpha: float, *, use_rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA: :func:`loracheck.scaling.effective_scale`, the one owner
    of the formula."""
    scale = effective_scale(rank, alpha, use_rslora=use_rslora)
    if scale is None:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    return scale


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 and kin): a linear layer whose weight is stored
    (in, out), y = x @ W + b. Recognised by shape, without importing transformers."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor)
            and weight.ndim == 2 and hasattr(module, "nf"))


class LoRADropout(nn.Module):
    """Dropout on the LoRA branch's input that draws its masks from its own generator.

    The base model's own dropout layers keep drawing from the global stream exactly as without
    the adapter, so train-mode outputs with and without LoRA compare like for like (the step-0
    identity holds bit for bit on models with dropout, such as OPT and BERT).

    The keep mask costs 16 random bits per element (an int64 draw serves four elements), a third
    of what ``bernoulli_`` spends: an element is dropped when its 16-bit draw falls below
    round(p · 2¹⁶), so P(drop) = round(p · 2¹⁶) / 2¹⁶ (0.05 → 0.0500031). The 1/(1 − p)
    rescaling is returned as a gain for the caller to fold into the LoRA scale.
    """

    def __init__(self, p: float, generator: torch.Generator | None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator
        self._threshold = -(1 << 15) + round(p * (1 << 16))

    def masked(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(x with the dropped elements zeroed, 1/(1 − p)) in train mode; (x, 1) in eval."""
        if not self.training or self.p == 0.0:
            return x, 1.0
        if self.p >= 1.0:
            return torch.zeros_like(x), 1.0
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device)
        draws.random_(-(1 << 63), None, generator=self.generator)
        bits = draws.view(torch.int16)[:n].view(x.shape)
        return x * (bits >= self._threshold), 1.0 / (1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, gain = self.masked(x)
        return out * gain if gain != 1.0 else out

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    Forward::

        y = base(x) + s · B(A(dropout(x)))

    Shapes, for ``base: nn.Linear(in_features, out_features)``::

        lora_A.weight: (r, in_features)    the down-projection
        lora_B.weight: (out_features, r)   the up-projection
        ΔW = s · B @ A: (out_features, in_features)

    A transformers ``Conv1D`` base stores its weight (in, out) (PEFT's ``fan_in_fan_out``): the
    factors keep the shapes above and ΔW is merged transposed.

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
        generator: where the dropout masks come from (see :class:`LoRADropout`); None uses
            the global stream, as ``nn.Dropout`` does.
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.rank = rank
        self.alpha = float(alpha)
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(rank, self.alpha, use_rslora=use_rslora)
        self.fan_in_fan_out = is_conv1d(base)
        weight = base.weight
        assert isinstance(weight, torch.Tensor)
        rows, cols = weight.shape
        self._in, self._out = (int(rows), int(cols)) if self.fan_in_fan_out else (int(cols),
                                                                                   int(rows))
        dev = weight.device
        self.lora_A = nn.Linear(self._in, rank, bias=False, device=dev, dtype=FACTOR_DTYPE)
        self.lora_B = nn.Linear(rank, self._out, bias=False, device=dev, dtype=FACTOR_DTYPE)
        nn.init.zeros_(self.lora_A.weight)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout: nn.Module = (LoRADropout(dropout, generator) if dropout > 0
                                        else nn.Identity())
        self.merged = False

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self._out

    @property
    def base_weight(self) -> torch.Tensor:
        """The base weight as stored: (out, in), or (in, out) for a Conv1D base."""
        weight = self.base_layer.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    # Model code reads ``layer.weight`` (T5 checks its dtype): the base's, as PEFT exposes it.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_weight

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(self.base_layer, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

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
        h = x.to(FACTOR_DTYPE)
        gain = 1.0
        if isinstance(self.lora_dropout, LoRADropout):
            h, gain = self.lora_dropout.masked(h)
        else:
            h = self.lora_dropout(h)
        # (..., in) -> (..., r) -> (..., out), in fp32; one GEMM adds s·B·(A·x) onto y.
        down = F.linear(h, self.lora_A.weight).reshape(-1, self.rank)
        flat = y.reshape(-1, self._out)
        if y.dtype == FACTOR_DTYPE:
            out = torch.addmm(flat, down, self.lora_B.weight.t(), alpha=self.scaling * gain)
        else:
            out = torch.addmm(flat.to(FACTOR_DTYPE), down, self.lora_B.weight.t(),
                              alpha=self.scaling * gain).to(y.dtype)
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · B @ A in the base weight's layout ((out, in), or (in, out) for Conv1D),
        computed in fp32 and returned in the base's dtype."""
        a = self.lora_A.weight.detach().float()
        b = self.lora_B.weight.detach().float()
        delta = (b @ a) * self.scaling
        return (delta.T if self.fan_in_fan_out else delta).to(self.base_weight.dtype)

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
        dev = base.weight.device
        self.lora_embedding_A = nn.Parameter(
            torch.zeros(rank, base.num_embeddings, device=dev, dtype=FACTOR_DTYPE)
        )
        self.lora_embedding_B = nn.Parameter(
            torch.zeros(base.embedding_dim, rank, device=dev, dtype=FACTOR_DTYPE)
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

    @property
    def base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

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
        update = (after_a @ self.lora_embedding_B.T) * self.scaling
        return (y.to(FACTOR_DTYPE) + update).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · (B @ A)ᵀ, shape (num_embeddings, dim), in the base's dtype."""
        a = self.lora_embedding_A.detach().float()
        b = self.lora_embedding_B.detach().float()
        return ((b @ a).T * self.scaling).to(self.base_layer.weight.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scaling={self.scaling:g}"


LoRAModule = LoRALinear | LoRAEmbedding
"""Either LoRA layer: both expose ``factor_a``, ``factor_b``, ``delta_weight`` and ``merged``."""
