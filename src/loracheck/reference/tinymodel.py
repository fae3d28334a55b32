"""The built-in model of ``loracheck verify``: a tiny Llama-shaped decoder in pure torch.

Pre-norm blocks of RMSNorm → causal self-attention with rotary positions (``q_proj``,
``k_proj``, ``v_proj``, ``o_proj``) → RMSNorm → SwiGLU MLP (``gate_proj``, ``up_proj``,
``down_proj``), over a byte-level vocabulary of 256. Module names match transformers' Llama
(``model.layers.0.self_attn.q_proj``, ``model.embed_tokens``, ``lm_head``), so the same
target lists apply to both. Weights are random, drawn from a seeded generator: the model
exists to be adapted, not to be good.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The built-in probe: a short text, repeated, so that a few steps of LoRA can learn its
# byte statistics from a random base.
PROBE_TEXT = (
    "LoRA adds a low-rank update to a frozen weight: y = W x + s B A x. "
    "At step zero B is zero, so the model is unchanged; training moves B, then A. "
) * 8


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the built-in decoder (defaults: about 0.5 M parameters)."""

    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    intermediate: int = 352
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02


class RMSNorm(nn.Module):
    """x / rms(x) · g, with rms(x) = √(mean(x²) + ε) over the last dimension, computed in
    fp32 as transformers' LlamaRMSNorm does (in fp16, d rsqrt/dm overflows for small x)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bsz, seq, dim = x.shape
        # (b, t, d) -> (b, h, t, d/h)
        q = self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, seq, self.n_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(bsz, seq, dim))
        return y


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return y


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        y: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return y


class Backbone(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        head_dim = cfg.dim // cfg.n_heads
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(cfg.max_seq_len).float(), inv)
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq, head_dim)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        seq = ids.shape[-1]
        cos = self.rope_cos[:seq].to(self.norm.weight.dtype)
        sin = self.rope_sin[:seq].to(self.norm.weight.dtype)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)  # type: ignore[no-any-return]


class TinyDecoder(nn.Module):
    """``logits = lm_head(model(ids))``; ids (b, t) → logits (b, t, vocab)."""

    def __init__(self, cfg: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or TinyConfig()
        self.model = Backbone(self.config)
        self.lm_head = nn.Linear(self.config.dim, self.config.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model(ids))  # type: ignore[no-any-return]

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head


def build_tiny(seed: int = 0, cfg: TinyConfig | None = None) -> TinyDecoder:
    """The built-in decoder with weights drawn from ``seed`` (same seed, same weights)."""
    cfg = cfg or TinyConfig()
    model = TinyDecoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name:
                continue
            param.copy_(torch.randn(param.shape, generator=gen) * cfg.init_std)
    model.eval()
    return model


def encode_bytes(text: str) -> list[int]:
    """Token ids of the byte-level vocabulary: the UTF-8 bytes of ``text``."""
    return list(text.encode("utf-8"))
