"""``loracheck merged``'s measurement: MERGED against BASE + the adapter, streamed, in float64,
without torch.

Each adapter module's factors come from the loader (:func:`loracheck.load.load_unit`, whose
sink hands over one canonical pair at a time, A (r, in) and B (out, r), with the layer record
that carries the effective scale s). Its weight in MERGED and BASE is read in blocks of whole
rows (:meth:`loracheck.model_folder.ModelFolder.row_blocks`); per block the update the adapter
predicts is formed for those rows only, U = s·L[rows]·R, where the stored weight holds
ΔW = s·L·R:

    out×in     (Linear)                        L = B,   R = A
    in×out     (Conv1D, fan_in_fan_out)        L = Aᵀ,  R = Bᵀ   (PEFT: transpose(B@A))
    embedding  (num_embeddings × dim)          L = Aᵀ,  R = Bᵀ   (PEFT: transpose(B@A, True))
    conv       (out × in·kh·kw)                L = B,   R = A

so B·A is never built beyond one block (r·out·in work in all). DoRA is merged as PEFT 0.21.2
does it (peft/tuners/lora/variants.py DoraLinearVariant.merge_safe, with the norm of
peft/tuners/lora/dora.py DoraLinearLayer.get_weight_norm: ``transpose(W, fan_in_fan_out) +
s·B·A``, ``torch.linalg.norm(·, dim=1)``): W' = m / ‖W + s·B·A‖ · (W + s·B·A), the norm taken
over the input features of each output row of the (out, in) weight — over the stored columns
of an out×in weight, over the stored rows of an in×out one (two passes there: the norms first).

The rounding floor. PEFT merges M = round(W + Ũ), Ũ the update as torch computed it (in
float32 on CPU, then rounded to the adapter's dtype). So |M_i − W_i − U_i| ≤ bound_i with

    bound_i = ½ ULP(M_i) in the coarser of M's and W's dtypes (:func:`merge_half_ulp`)
            + (u_a + u_W + u₃₂)·|U_i|              rounding Ũ to the adapter's dtype and to
                                                   W's (``delta.to(orig_dtype)``), and s·(BA)
            + γ_r·|s|·‖L_i,:‖·max_j ‖R_:,j‖        the float32 (or lower) product B·A,
                                                   γ_r = r·u/(1−r·u) (Cauchy–Schwarz)

(u the unit roundoff: 2⁻⁸ bf16, 2⁻¹¹ fp16, 2⁻²⁴ fp32). Half ULPs come from each element's raw
exponent bits moved into a float (:func:`half_ulp`): a few integer passes, no table lookup.
The floor is √Σ bound_i²; ``violations`` counts the elements past their own bound.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loracheck.errors import ArtifactError, UsageError
from loracheck.merge_record import (
    BiasMerge,
    ChangedTensor,
    MergeRecord,
    ModuleMerge,
    ModuleStatus,
    SavedCopy,
)
from loracheck.model import Adapter, LayerRecord
from loracheck.model_folder import BLOCK_ELEMENTS, ModelFolder, decode_block
from loracheck.rules.context import short_name

F64 = npt.NDArray[np.float64]
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FloatFormat:
    """A stored float format: its significand bits (and so its unit roundoff)."""

    mantissa: int  # stored significand bits

    @property
    def unit_roundoff(self) -> float:
        return 2.0 ** -(self.mantissa + 1)


FORMATS: dict[str, FloatFormat] = {
    "BF16": FloatFormat(7), "F16": FloatFormat(10), "F32": FloatFormat(23),
    "F64": FloatFormat(52),
}
U32 = FORMATS["F32"].unit_roundoff


def half_ulp(raw: npt.NDArray[Any], dtype: str) -> npt.NDArray[Any]:
    """Half an ULP of each element of ``raw`` (undecoded, as ``RAW_DTYPES`` views it) in its
    own dtype, from the exponent bits alone: the exponent field is moved into a float32 (for
    F64 a float64) whose value is the half ULP, so it costs a few integer passes and no table
    lookup. Values below the smallest normal float32 get 2⁻¹²⁶ (a bound, never less than the
    truth); Inf and NaN get a finite number (callers count non-finite values themselves)."""
    if dtype == "BF16":  # 8 exponent bits at bit 7, 7 significand bits: 2^(e − 127 − 8)
        bits = raw.view("<u2").astype(np.uint32)
        bits &= 0x7F80
        bits <<= 16
        np.maximum(bits, 9 << 23, out=bits)
        bits -= 8 << 23
        return bits.view(np.float32)
    if dtype == "F16":  # 5 exponent bits at bit 10, 10 significand bits: 2^(e − 15 − 11)
        bits = raw.view("<u2").astype(np.uint32)
        bits &= 0x7C00
        bits <<= 13
        np.maximum(bits, 1 << 23, out=bits)  # subnormals: the spacing of e = 1
        bits += 101 << 23
        return bits.view(np.float32)
    if dtype == "F32":  # 2^(e − 127 − 24)
        narrow: npt.NDArray[Any] = np.bitwise_and(raw.view("<u4"), np.uint32(0x7F800000))
        np.maximum(narrow, np.uint32(25 << 23), out=narrow)
        narrow -= np.uint32(24 << 23)
        return narrow.view(np.float32)
    if dtype == "F64":  # 2^(e − 1023 − 53)
        wide: npt.NDArray[Any] = np.bitwise_and(raw.view("<u8"),
                                                np.uint64(0x7FF0000000000000))
        np.maximum(wide, np.uint64(54 << 52), out=wide)
        wide -= np.uint64(53 << 52)
        return wide.view(np.float64)
    raise ValueError(f"no half ULP for dtype {dtype}")


# Half the spacing of each format's subnormals: the least half ULP it has.
_LEAST_HALF_ULP = {"BF16": 2.0 ** -134, "F16": 2.0 ** -25, "F32": 2.0 ** -150, "F64": 0.0}


def merge_half_ulp(raw: npt.NDArray[Any], dtype: str, base_dtype: str) -> npt.NDArray[Any]:
    """Half an ULP of each element of M (``raw``, in ``dtype``) in the coarser of M's and W's
    dtypes. A merge rounds in W's dtype (``W + ΔW`` in place) before any cast to M's, so an
    fp32 checkpoint of a bf16 merge holds values rounded to bf16: their spacing is bf16's at
    the same exponent, 2^(23 − 7) fp32 ULPs (and never under bf16's least spacing)."""
    half = half_ulp(raw, dtype)
    fine, coarse = FORMATS[dtype], FORMATS.get(base_dtype)
    if coarse is None or coarse.mantissa >= fine.mantissa:
        return half
    half *= half.dtype.type(2.0 ** (fine.mantissa - coarse.mantissa))
    np.maximum(half, half.dtype.type(_LEAST_HALF_ULP[base_dtype]), out=half)
    return half


@dataclass
class _Sums:
    """The running sums of one module (float64; counts as ints)."""

    dd: float = 0.0  # ‖D‖²
    du: float = 0.0  # ⟨D, U⟩
    uu: float = 0.0  # ‖U‖²
    ee: float = 0.0  # ‖D − U‖²
    ff: float = 0.0  # Σ bound²
    violations: int = 0
    changed: int = 0
    merged_nonfinite: int = 0
    base_nonfinite: int = 0

    def add(self, other: _Sums) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True)
class _Factors:
    """ΔW = s·L·R in the stored orientation, and what the bound needs of it."""

    left: F64  # (rows, r)
    right: F64  # (r, cols), times s
    scale: float
    u_update: float  # u_a + u_W + u₃₂
    # γ_r·|s|·‖L_i,:‖·max_j ‖R_:,j‖ per stored row: the product's rounding, bounded per row.
    row_bound: F64


@dataclass
class _Dora:
    """DoRA's magnitude and, once known, the norms of W + s·B·A per output row."""

    magnitude: F64  # (out,)
    per_stored_row: bool  # out×in: the norm of each stored row; in×out: of each column
    norms: F64 | None = None
    u_compute: float = U32

    def factor(self, start: int, n: int) -> F64:
        """m / ‖W + s·B·A‖, shaped to multiply a block of stored rows."""
        assert self.norms is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.per_stored_row:
                out: F64 = (self.magnitude[start:start + n] / self.norms[start:start + n])[
                    :, None]
            else:
                out = (self.magnitude / self.norms)[None, :]
        return out


def _pool() -> ThreadPoolExecutor | None:
    workers = min(2, os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loracheck-merged") \
        if workers > 1 else None


def _map(pool: ThreadPoolExecutor | None, fn: Callable[[Any], _Sums],
         items: Iterator[Any]) -> _Sums:
    total = _Sums()
    if pool is None:
        for item in items:
            total.add(fn(item))
        return total
    # A bounded window of blocks in flight: each task holds views only until it runs.
    pending: list[Any] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 8:
            total.add(pending.pop(0).result())
    for future in pending:
        total.add(future.result())
    return total


def _map_any(pool: ThreadPoolExecutor | None, fn: Callable[[Any], Any],
             items: Iterator[Any]) -> Iterator[Any]:
    """``fn`` over ``items`` on the pool, at most 8 in flight, results in order."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: list[Any] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= 8:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


def _block(merged: ModelFolder, base: ModelFolder, key: str, cols: int
           ) -> Iterator[tuple[int, npt.NDArray[Any], npt.NDArray[Any]]]:
    rows_m = merged.row_blocks(key, cols)
    rows_w = base.row_blocks(key, cols)
    for (start, m_raw), (_, w_raw) in zip(rows_m, rows_w, strict=True):
        yield start, m_raw, w_raw


def _update_block(f: _Factors, start: int, n: int) -> F64:
    u: F64 = f.left[start:start + n] @ f.right  # ``right`` carries the scale
    return u


def _predicted(f: _Factors, dora: _Dora | None, w: F64, start: int) -> tuple[F64, F64]:
    """(U, the part of the bound that scales with it) for one block: U = s·L·R, or for DoRA
    E − W with E = m / ‖W + s·B·A‖ · (W + s·B·A)."""
    u = _update_block(f, start, w.shape[0])
    if dora is None:
        scaled = np.abs(u)
        scaled *= f.u_update
        return u, scaled
    u += w
    u *= dora.factor(start, w.shape[0])  # E
    # Four roundings in the compute dtype: W + s·B·A, its norm, m / norm, the product.
    scaled = np.abs(u)
    scaled *= 5.0 * dora.u_compute
    u -= w
    return u, scaled


def _rounding_bound(m_raw: npt.NDArray[Any], start: int, *, dtype: str, base_dtype: str,
                    f: _Factors, dora: _Dora | None) -> F64:
    """What rounding explains per element of a block of rows, beyond the update's own
    rounding: half an ULP of the merge (:func:`merge_half_ulp`) plus each row's bound from the
    factors (times the DoRA factor of the row)."""
    rows = f.row_bound[start:start + m_raw.shape[0], None]
    if dora is not None:
        rows = rows * np.abs(dora.factor(start, m_raw.shape[0]))
    bound: F64 = merge_half_ulp(m_raw, dtype, base_dtype) + rows
    return bound


def _module_sums(m_raw: npt.NDArray[Any], w_raw: npt.NDArray[Any], start: int, *,
                 dtype: str, base_dtype: str, f: _Factors, dora: _Dora | None) -> _Sums:
    """Every sum of one block of rows, each element visited by a handful of vector passes."""
    out = _Sums()
    m = decode_block(m_raw, dtype)
    w = decode_block(w_raw, base_dtype)
    u, bound = _predicted(f, dora, w, start)
    d = m
    d -= w  # D, in place of M
    bound += _rounding_bound(m_raw, start, dtype=dtype, base_dtype=base_dtype, f=f, dora=dora)
    flat_d, flat_u, flat_b = d.ravel(), u.ravel(), bound.ravel()
    out.dd = float(flat_d @ flat_d)
    out.du = float(flat_d @ flat_u)
    out.uu = float(flat_u @ flat_u)
    d -= u  # D − U, in place of D
    out.ee = float(flat_d @ flat_d)
    out.ff = float(flat_b @ flat_b)
    if not all(math.isfinite(x) for x in (out.dd, out.du, out.ee, out.ff)):
        return _masked_sums(m_raw, w_raw, start, dtype=dtype, base_dtype=base_dtype, f=f,
                            dora=dora)
    np.abs(d, out=d)
    out.violations = int(np.count_nonzero(d > bound))
    out.changed = int(m_raw.size - np.count_nonzero(_same_bits(m_raw, w_raw, dtype,
                                                                base_dtype)))
    return out


def _same_bits(m_raw: npt.NDArray[Any], w_raw: npt.NDArray[Any], dtype: str,
               base_dtype: str) -> npt.NDArray[np.bool_]:
    """M_i == W_i (by value: −0 equals +0 only through the decoded comparison)."""
    if dtype == base_dtype:
        same: npt.NDArray[np.bool_] = m_raw == w_raw
        return same
    by_value: npt.NDArray[np.bool_] = np.equal(decode_block(m_raw, dtype),
                                               decode_block(w_raw, base_dtype))
    return by_value


@dataclass
class _FastSums:
    """The sums of the fast path: ‖D‖², Lᵀ·D (r × cols), Σ ½ULP(M)², moved elements."""

    dd: float = 0.0
    ltd: F64 | None = None
    hh: float = 0.0
    changed: int = 0
    finite: bool = True

    def add(self, other: _FastSums) -> None:
        self.dd += other.dd
        self.hh += other.hh
        self.changed += other.changed
        self.finite = self.finite and other.finite
        if other.ltd is not None:
            self.ltd = other.ltd if self.ltd is None else self.ltd + other.ltd


def _fast_sums(m_raw: npt.NDArray[Any], w_raw: npt.NDArray[Any], start: int, *,
               dtype: str, f: _Factors) -> _FastSums:
    """One block of a 16-bit merge (M and W both BF16 or both F16), without forming U: D is
    exact in float32 (two 16-bit values differ by a float32 unless 16 binades apart, where the
    error is below 2⁻¹⁶ ULP of M), ⟨D, U⟩ comes from Lᵀ·D, ‖U‖² from the factors' Grams."""
    if dtype == "BF16":
        m32 = m_raw.view("<u2").astype(np.uint32)
        m32 <<= 16
        w32 = w_raw.view("<u2").astype(np.uint32)
        w32 <<= 16
        d32 = m32.view(np.float32) - w32.view(np.float32)
    else:
        d32 = m_raw.astype(np.float32) - w_raw.astype(np.float32)
    d = d32.astype(np.float64)
    flat = d.ravel()
    out = _FastSums(dd=float(flat @ flat))
    half = half_ulp(m_raw, dtype).ravel()
    out.hh = float(half @ half)  # float32 sums: a floor needs no more
    out.finite = math.isfinite(out.dd) and math.isfinite(out.hh)
    if out.finite:
        out.ltd = f.left[start:start + d.shape[0]].T @ d
        out.changed = int(m_raw.size - np.count_nonzero(_same_bits(m_raw, w_raw, dtype, dtype)))
    return out


def _masked_sums(m_raw: npt.NDArray[Any], w_raw: npt.NDArray[Any], start: int, *,
                 dtype: str, base_dtype: str, f: _Factors, dora: _Dora | None) -> _Sums:
    """The sums of a block that holds NaN or ±Inf (in M, W or U): counted, and left out."""
    out = _Sums()
    m = decode_block(m_raw, dtype)
    w = decode_block(w_raw, base_dtype)
    u, bound = _predicted(f, dora, w, start)
    out.merged_nonfinite = int(np.count_nonzero(~np.isfinite(m)))
    out.base_nonfinite = int(np.count_nonzero(~np.isfinite(w)))
    finite = np.isfinite(m) & np.isfinite(w) & np.isfinite(u)
    bound = bound + _rounding_bound(m_raw, start, dtype=dtype, base_dtype=base_dtype, f=f,
                                    dora=dora)
    d = np.where(finite, m - w, 0.0)
    u = np.where(finite, u, 0.0)
    bound = np.where(finite, bound, 0.0)
    e = d - u
    out.dd, out.du, out.uu = float(np.vdot(d, d)), float(np.vdot(d, u)), float(np.vdot(u, u))
    out.ee, out.ff = float(np.vdot(e, e)), float(np.vdot(bound, bound))
    out.violations = int(np.count_nonzero(np.abs(e) > bound))
    out.changed = int(np.count_nonzero(finite & (d != 0)))
    return out


def _must_change(merged: ModelFolder, base: ModelFolder, key: str, cols: int, dtype: str,
                 f: _Factors, dora: _Dora | None) -> int:
    """Elements whose predicted update exceeds one ULP of W in M's dtype: a round-to-nearest
    merge moves every one of them off W. A second pass, run only for a module where no
    element moved (the LC401 question)."""
    count = 0
    for start, w_raw in base.row_blocks(key, cols):
        w = decode_block(w_raw, dtype)
        u, _ = _predicted(f, dora, w, start)
        ulp = half_ulp(w_raw, dtype).astype(np.float64)
        ulp *= 2.0
        count += int(np.count_nonzero(np.abs(u) > ulp))
    base.release(key)
    return count


def _dora_norms(merged: ModelFolder, base: ModelFolder, key: str, cols: int, dtype: str,
                f: _Factors, dora: _Dora) -> None:
    """‖W + s·B·A‖ per output row (the first pass of a DoRA module)."""
    n_out = dora.magnitude.shape[0]
    acc = np.zeros(n_out)
    for start, w_raw in base.row_blocks(key, cols):
        v = decode_block(w_raw, dtype)
        v += _update_block(f, start, v.shape[0])
        if dora.per_stored_row:
            acc[start:start + v.shape[0]] = np.einsum("ij,ij->i", v, v)
        else:
            acc += np.einsum("ij,ij->j", v, v)
    dora.norms = np.sqrt(acc)


# --- module resolution ---------------------------------------------------------------------


def _flat(name: str) -> str:
    return name.replace(".", "_")


class _Resolver:
    """Adapter module names → weight keys of a model folder: dotted names through the base
    model lookup (PEFT's prefix, a missing or extra ``model.`` level, tied output embeddings),
    kohya's flattened names by flattening the model's module paths the same way."""

    def __init__(self, folder: ModelFolder) -> None:
        self._info = folder.info()
        modules = self._info.modules
        self._flat: dict[str, str] = {}
        for module in modules:
            self._flat.setdefault(_flat(module), module)

    def find(self, name: str) -> tuple[str, bool] | None:
        """(weight key, tied) for an adapter module, None when the folder has no such weight."""
        short = short_name(name)
        found = self._info.find(short) if "." in short or not short.startswith("lora_") \
            else None
        if found is not None:
            module = found[0]
            tied = module.rsplit(".", 1)[-1] != short.rsplit(".", 1)[-1]
            return f"{module}.weight", tied
        tokens = short.split("_")
        for cut in range(1, len(tokens)):
            flat = self._flat.get("_".join(tokens[cut:]))
            if flat is not None:
                return f"{flat}.weight", False
        return None


# --- one module ----------------------------------------------------------------------------


def _layout(layer: LayerRecord, shape: tuple[int, ...], fan_in_fan_out: bool
            ) -> tuple[str, int] | None:
    """(layout, columns of the stored 2-D view) of the stored weight, None when it does not
    fit the factors."""
    n_in, n_out = layer.in_features, layer.out_features
    if not n_in or not n_out or not shape:
        return None
    if layer.kind == "embedding":
        # A (r, num_embeddings), B (dim, r): the weight is (num_embeddings, dim).
        return ("embedding", shape[1]) if shape == (n_in, n_out) else None
    if len(shape) > 2:
        return ("conv", math.prod(shape[1:])) if (
            shape[0] == n_out and math.prod(shape[1:]) == n_in) else None
    if len(shape) != 2:
        return None
    if shape == (n_out, n_in) and (n_in != n_out or not fan_in_fan_out):
        return "out×in", n_in
    if shape == (n_in, n_out):
        return "in×out", n_out
    return None


def _factors(layout: str, a: F64, b: F64, scale: float, rank: int, adapter_dtype: str,
             dtype: str) -> _Factors:
    a = a.reshape(a.shape[0], -1)
    if layout in ("out×in", "conv"):
        left, right = b, a
    else:
        left, right = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
    u_a = FORMATS[adapter_dtype].unit_roundoff if adapter_dtype in FORMATS else U32
    u_c = max(u_a, U32)
    gamma = rank * u_c / (1 - rank * u_c) * abs(scale)
    # ΔW may be rounded twice before the addition: to the adapter's dtype (get_delta_weight)
    # and to the weight's (PEFT's Embedding.merge and safe_merge: ``delta.to(orig_dtype)``).
    u_update = u_a + FORMATS[dtype].unit_roundoff + U32
    right_max = float(np.sqrt(np.einsum("ij,ij->j", right, right)).max(initial=0.0))
    row_bound = np.sqrt(np.einsum("ij,ij->i", left, left)) * (gamma * right_max)
    return _Factors(np.ascontiguousarray(left), np.ascontiguousarray(right * scale), scale,
                    u_update, row_bound)


@dataclass
class _Context:
    merged: ModelFolder
    base: ModelFolder
    resolve_merged: _Resolver
    resolve_base: _Resolver
    fan_in_fan_out: bool
    adapter_reader: Any
    pool: ThreadPoolExecutor | None
    modules: list[ModuleMerge] = field(default_factory=list)
    used_keys: set[str] = field(default_factory=set)


def _missing(layer: LayerRecord, ctx: _Context) -> ModuleMerge:
    found = ctx.resolve_base.find(layer.name)
    if found is None:
        return ModuleMerge(short_name(layer.name), None, ModuleStatus.MISSING, layer.kind,
                           rank=layer.rank, scale=layer.scaling,
                           detail="neither BASE nor MERGED has a weight for this module")
    key = found[0]
    ctx.used_keys.add(key)
    module = key[: -len(".weight")]
    wrapped = [k for k in (f"{module}.base_layer.weight",) if k in ctx.merged.tensors]
    detail = (f"MERGED has {wrapped[0]} instead: a PEFT-wrapped model was saved, not a merged "
              "one") if wrapped else f"BASE has {key}, MERGED does not"
    return ModuleMerge(short_name(layer.name), key, ModuleStatus.MISSING, layer.kind,
                       rank=layer.rank, scale=layer.scaling, detail=detail)


def unmeasured(layer: LayerRecord, ctx: _Context, detail: str) -> ModuleMerge:
    """A module whose merge loracheck does not measure (LoHa, LoKr, …): its weight is found and
    claimed (so it is not reported as an unexpected change) and compared with BASE's, which
    tells a merged module (``changed`` > 0) from one left as BASE's."""
    name = short_name(layer.name)
    common: dict[str, Any] = {"kind": layer.kind, "rank": layer.rank, "scale": layer.scaling,
                              "adapter_dtype": layer.a.dtype if layer.a else None,
                              "detail": detail}
    found = ctx.resolve_merged.find(layer.name) or ctx.resolve_base.find(layer.name)
    if found is None:
        return ModuleMerge(name, None, ModuleStatus.UNSUPPORTED, **common)
    key, tied = found
    ctx.used_keys.add(key)
    mt, wt = ctx.merged.tensors.get(key), ctx.base.tensors.get(key)
    if mt is None or wt is None:
        return ModuleMerge(name, key, ModuleStatus.UNSUPPORTED, tied=tied, **common)
    common.update(dtype=mt.dtype, base_dtype=wt.dtype, shape=mt.shape, base_shape=wt.shape,
                  numel=mt.numel, tied=tied)
    if mt.shape != wt.shape:
        common["detail"] = f"MERGED {list(mt.shape)}, BASE {list(wt.shape)}"
        return ModuleMerge(name, key, ModuleStatus.SHAPE_MISMATCH, **common)
    moved = _compare(ctx.merged, ctx.base, key)
    return ModuleMerge(name, key, ModuleStatus.UNSUPPORTED,
                       changed=moved.changed if moved is not None else 0, **common)


# 16-bit merges take the fast path (no per-element U: ``violations`` is not counted); fp32
# and fp64 merges, whose residual is too close to the float64 rounding of ‖D‖² for the
# expanded form, and DoRA, take the per-element one.
FAST_DTYPES = frozenset({"BF16", "F16"})


def _fast_module(ctx: _Context, key: str, cols: int, dtype: str, f: _Factors) -> _Sums | None:
    """The module's sums from the fast path; None when a block is not finite (the
    per-element path then counts and leaves out the non-finite values)."""
    def one(item: tuple[int, npt.NDArray[Any], npt.NDArray[Any]]) -> _FastSums:
        start, m_raw, w_raw = item
        return _fast_sums(m_raw, w_raw, start, dtype=dtype, f=f)

    total = _FastSums()
    for part in _map_any(ctx.pool, one, _block(ctx.merged, ctx.base, key, cols)):
        total.add(part)
    if not total.finite or total.ltd is None:
        return None
    right = f.right  # s·R
    du = float(np.einsum("ij,ij->", total.ltd, right))
    uu = float(np.einsum("ij,ij->", f.left.T @ f.left, right @ right.T))
    ee = max(0.0, total.dd - 2.0 * du + uu)
    cols_n = right.shape[1]
    floor = (math.sqrt(total.hh) + f.u_update * math.sqrt(uu)
             + math.sqrt(float(f.row_bound @ f.row_bound) * cols_n))
    return _Sums(dd=total.dd, du=du, uu=uu, ee=ee, ff=floor * floor, violations=-1,
                 changed=total.changed)


def measure_module(layer: LayerRecord, a: F64, b: F64, ctx: _Context) -> ModuleMerge:
    """One module's merge, measured (or why it cannot be)."""
    name = short_name(layer.name)
    common: dict[str, Any] = {"kind": layer.kind, "rank": layer.rank, "scale": layer.scaling,
                              "adapter_dtype": layer.a.dtype if layer.a else None}
    if layer.kind not in ("linear", "embedding", "conv"):
        return unmeasured(layer, ctx, f"{layer.kind} modules are not measured")
    found = ctx.resolve_merged.find(layer.name)
    if found is None:
        return _missing(layer, ctx)
    key, tied = found
    ctx.used_keys.add(key)
    if key not in ctx.base.tensors:
        return ModuleMerge(name, key, ModuleStatus.MISSING, detail=f"BASE has no {key}",
                           **common)
    mt, wt = ctx.merged.tensors[key], ctx.base.tensors[key]
    common.update(dtype=mt.dtype, base_dtype=wt.dtype, shape=mt.shape, base_shape=wt.shape,
                  numel=mt.numel, tied=tied)
    if mt.shape != wt.shape:
        return ModuleMerge(name, key, ModuleStatus.SHAPE_MISMATCH,
                           detail=f"MERGED {list(mt.shape)}, BASE {list(wt.shape)}", **common)
    if mt.dtype not in FORMATS or wt.dtype not in FORMATS:
        return ModuleMerge(name, key, ModuleStatus.UNSUPPORTED,
                           detail=f"dtype {mt.dtype}/{wt.dtype} is not measured", **common)
    layout = _layout(layer, mt.shape, ctx.fan_in_fan_out)
    if layout is None or layer.rank is None:
        kind = "vocabulary" if layer.kind == "embedding" or tied else "shape"
        return ModuleMerge(name, key, ModuleStatus.SHAPE_MISMATCH, detail=(
            f"{kind}: the adapter's factors make a ({layer.out_features} out, "
            f"{layer.in_features} in) update, MERGED holds {list(mt.shape)}"), **common)
    layout_name, cols = layout
    scale = layer.scaling if layer.scaling is not None else 1.0
    f = _factors(layout_name, a, b, scale, layer.rank, common["adapter_dtype"] or "F32",
                 wt.dtype)
    dora = None
    if layer.magnitude is not None and ctx.adapter_reader is not None:
        magnitude = np.asarray(ctx.adapter_reader.read(layer.magnitude.key),
                               dtype=np.float64).reshape(-1)
        u_a = FORMATS.get(common["adapter_dtype"] or "F32", FORMATS["F32"]).unit_roundoff
        dora = _Dora(magnitude, layout_name in ("out×in", "conv"), u_compute=max(u_a, U32))
        _dora_norms(ctx.merged, ctx.base, key, cols, wt.dtype, f, dora)

    sums: _Sums | None = None
    if dora is None and mt.dtype == wt.dtype and mt.dtype in FAST_DTYPES:
        sums = _fast_module(ctx, key, cols, mt.dtype, f)

    def one(item: tuple[int, npt.NDArray[Any], npt.NDArray[Any]]) -> _Sums:
        start, m_raw, w_raw = item
        return _module_sums(m_raw, w_raw, start, dtype=mt.dtype, base_dtype=wt.dtype, f=f,
                            dora=dora)

    if sums is None:
        sums = _map(ctx.pool, one, _block(ctx.merged, ctx.base, key, cols))
    ctx.merged.release(key)
    ctx.base.release(key)
    must_change = None
    if wt.dtype == mt.dtype and sums.changed == 0 and sums.uu > 0:
        must_change = _must_change(ctx.merged, ctx.base, key, cols, wt.dtype, f, dora)
    ratio = sums.du / sums.uu if sums.uu > 0 else None
    fitted = math.sqrt(max(0.0, sums.dd - sums.du * sums.du / sums.uu)) if sums.uu > 0 \
        else math.sqrt(sums.dd)
    return ModuleMerge(
        name, key, ModuleStatus.MEASURED, layout=layout_name, dora=dora is not None,
        update_norm=math.sqrt(sums.uu), delta_norm=math.sqrt(sums.dd),
        fitted_scale=None if ratio is None else ratio * scale,
        ratio=None if ratio is None or layer.scaling is None else ratio,
        residual_norm=math.sqrt(sums.ee), fitted_residual_norm=fitted,
        floor_norm=math.sqrt(sums.ff),
        violations=sums.violations if sums.violations >= 0 else None, changed=sums.changed,
        must_change=must_change,
        merged_nonfinite=sums.merged_nonfinite, base_nonfinite=sums.base_nonfinite,
        adapter_nonfinite=layer.nonfinite, bias=_bias_merge(layer, key, scale, ctx),
        **common)


def _bias_merge(layer: LayerRecord, key: str, scale: float, ctx: _Context) -> BiasMerge | None:
    """``lora_bias=True``: PEFT 0.21.2 merges lora_B's bias into the layer's with the weight
    (peft/tuners/lora/layer.py, ``Linear.merge``: ``base_layer.bias.data +=
    self.lora_B[active_adapter].bias * self.scaling[active_adapter]``, or with ``safe_merge``
    ``new_bias = base_layer.bias + lora_B.bias * scaling`` then ``new_bias.to(orig_dtype)``;
    ``Conv.merge`` alike). So M_b = round(W_b + round_a(s·b)): each element within half an ULP
    of M_b (in the coarser of M's and W's dtypes) plus (u_a + u_W + u₃₂)·|s·b|. Biases are
    vectors, read whole."""
    if layer.bias is None or ctx.adapter_reader is None or not key.endswith(".weight"):
        return None
    bias_key = f"{key[: -len('.weight')]}.bias"
    ctx.used_keys.add(bias_key)
    mt, wt = ctx.merged.tensors.get(bias_key), ctx.base.tensors.get(bias_key)
    if mt is None or wt is None:
        where = "MERGED" if mt is None else "BASE"
        return BiasMerge(bias_key, detail=f"{where} has no {bias_key} (lora_bias needs one)")
    b = np.asarray(ctx.adapter_reader.read(layer.bias.key), dtype=np.float64).reshape(-1)
    if mt.shape != wt.shape or mt.numel != b.size:
        return BiasMerge(bias_key, mt.numel, detail=(
            f"{bias_key} is {list(mt.shape)} in MERGED, {list(wt.shape)} in BASE, the "
            f"adapter's lora_B bias {list(layer.bias.shape)}"))
    if mt.dtype not in FORMATS or wt.dtype not in FORMATS:
        return BiasMerge(bias_key, mt.numel,
                         detail=f"dtype {mt.dtype}/{wt.dtype} is not measured")
    m = ctx.merged.read(bias_key).reshape(-1)
    w = ctx.base.read(bias_key).reshape(-1)
    update = scale * b
    error = np.abs(m - w - update)
    u_a = FORMATS.get(layer.bias.dtype, FORMATS["F32"]).unit_roundoff
    bound = merge_half_ulp(ctx.merged.raw(bias_key).reshape(-1), mt.dtype, wt.dtype) + (
        u_a + FORMATS[wt.dtype].unit_roundoff + U32) * np.abs(update)
    with np.errstate(invalid="ignore"):
        violations = int(np.count_nonzero(~(error <= bound)))  # NaN counts
    finite = error[np.isfinite(error)]
    return BiasMerge(bias_key, mt.numel, violations=violations,
                     changed=int(np.count_nonzero(m != w)),
                     max_error=float(finite.max()) if finite.size else math.nan)


# --- everything else: structure, other weights, modules_to_save ----------------------------


def _compare(merged: ModelFolder, base: ModelFolder, key: str) -> ChangedTensor | None:
    """None when MERGED's tensor equals BASE's (bit for bit, or within M's rounding when the
    dtypes differ); else what changed."""
    mt, wt = merged.tensors[key], base.tensors[key]
    cols = mt.shape[-1] if mt.shape else 1
    if mt.dtype == wt.dtype:
        # Bit for bit, a block at a time (a whole-tensor comparison would allocate its size).
        pairs = zip(merged.row_blocks(key, cols, block=1 << 20),
                    base.row_blocks(key, cols, block=1 << 20), strict=True)
        same = all(np.array_equal(mb, wb) for (_, mb), (_, wb) in pairs)
        merged.release(key)
        base.release(key)
        if same:
            return None
    if mt.dtype not in FORMATS or wt.dtype not in FORMATS:
        changed = int(np.count_nonzero(merged.raw(key) != base.raw(key))) \
            if mt.dtype == wt.dtype else mt.numel
        return ChangedTensor(key, mt.dtype, mt.shape, changed, math.nan, None)
    changed = nonfinite = 0
    max_abs = diff2 = base2 = 0.0
    for (_, mb), (_, wb) in zip(merged.row_blocks(key, cols), base.row_blocks(key, cols),
                                strict=True):
        m, w = decode_block(mb, mt.dtype), decode_block(wb, wt.dtype)
        bad = ~np.isfinite(m) & np.isfinite(w)
        nonfinite += int(np.count_nonzero(bad))
        ok = np.isfinite(m) & np.isfinite(w)
        d = np.where(ok, m - w, 0.0)
        tol = 0.0 if mt.dtype == wt.dtype else half_ulp(mb, mt.dtype)
        changed += int(np.count_nonzero(np.abs(d) > tol)) + int(np.count_nonzero(bad))
        if d.size:
            max_abs = max(max_abs, float(np.abs(d).max()))
        diff2 += float(np.vdot(d, d))
        wf = np.where(np.isfinite(w), w, 0.0)
        base2 += float(np.vdot(wf, wf))
    merged.release(key)
    base.release(key)
    if not changed:
        return None
    rel = math.sqrt(diff2 / base2) if base2 > 0 else None
    return ChangedTensor(key, mt.dtype, mt.shape, changed, max_abs, rel, nonfinite)


def _copy_blocks(reader: Any, key: str, cols: int) -> Iterator[tuple[int, F64]]:
    """The adapter's tensor ``key`` as float64 blocks of whole rows (as
    :meth:`ModelFolder.row_blocks` cuts them): a safetensors copy is sliced from its mapping,
    a pickled one is one record, decoded once in its own dtype."""
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    if hasattr(reader, "read_raw"):
        dtype = reader.entries[key].dtype
        raw = reader.read_raw(key).reshape(-1, cols)
        for start in range(0, raw.shape[0], step):
            yield start, decode_block(raw[start:start + step], dtype)
        return
    whole = np.asarray(reader.read(key)).reshape(-1, cols)
    for start in range(0, whole.shape[0], step):
        yield start, whole[start:start + step].astype(np.float64)


def _saved_copy(extra_key: str, merged: ModelFolder, base: ModelFolder, resolver: _Resolver,
                reader: Any) -> SavedCopy:
    """A ``modules_to_save`` tensor of the adapter against MERGED's, streamed in row blocks
    with BASE's (whether MERGED still holds it): a few blocks in memory, whatever its size."""
    param = short_name(extra_key).replace(".modules_to_save.default", "")
    module, _, leaf = param.rpartition(".")
    found = resolver.find(module) if module else None
    key = f"{found[0][: -len('.weight')]}.{leaf}" if found is not None else param
    if key not in merged.tensors:
        return SavedCopy(module, None, extra_key, False, False,
                         detail=f"MERGED has no {key}")
    mt = merged.tensors[key]
    shape = tuple(reader.entries[extra_key].shape)
    if shape != mt.shape:
        return SavedCopy(module, key, extra_key, False, False,
                         detail=f"the saved copy is {list(shape)}, MERGED {list(mt.shape)}")
    cols = shape[-1] if shape else 1
    wt = base.tensors.get(key)
    equals_base = wt is not None and wt.shape == mt.shape
    base_blocks = base.row_blocks(key, cols) if equals_base else None
    matches, max_abs = True, 0.0
    for (_, copy), (_, m_raw) in zip(_copy_blocks(reader, extra_key, cols),
                                     merged.row_blocks(key, cols), strict=True):
        m = decode_block(m_raw, mt.dtype)
        diff = np.abs(m - copy)
        with np.errstate(invalid="ignore"):
            if mt.dtype in FORMATS:
                matches = matches and bool(np.all(diff <= half_ulp(m_raw, mt.dtype)))
            else:
                matches = matches and bool(np.all(diff == 0))
        if diff.size:
            top = float(np.fmax.reduce(diff.ravel()))  # NaN only when every element is NaN
            max_abs = max(max_abs, top) if top == top else max_abs
        if base_blocks is not None and wt is not None:
            _, w_raw = next(base_blocks)
            equals_base = equals_base and bool(np.array_equal(decode_block(w_raw, wt.dtype), m))
    merged.release(key)
    base.release(key)
    if hasattr(reader, "release"):
        reader.release(extra_key)
    return SavedCopy(module, key, extra_key, matches, equals_base, max_abs=max_abs)


def _saved_tensors(adapter: Adapter) -> list[str]:
    """The adapter's tensors of modules it saves whole: those the key grammar names so
    (``…modules_to_save…``, a PEFT file's bare ``.weight``), and every tensor (bias too) of a
    module the config's ``modules_to_save`` lists; PEFT matches those names by suffix
    (peft/utils/other.py ``_set_trainable``: ``key.endswith(target_key)``), and adds
    ``classifier``/``score`` for SEQ_CLS."""
    declared = tuple(adapter.spec.modules_to_save or ()) if adapter.spec is not None else ()
    out = []
    for extra in adapter.extra_tensors:
        if extra.role == "modules_to_save":
            out.append(extra.key)
            continue
        if extra.role not in ("bias", "unknown") or not declared:
            continue
        module = short_name(extra.key).replace(".modules_to_save.default", "").rpartition(".")[0]
        if module and "base_layer" not in module.split(".") and any(
                module.endswith(name) for name in declared):
            out.append(extra.key)
    return out


def _structure(merged: ModelFolder, base: ModelFolder, used: set[str]
               ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """LoRA factor keys and ``base_layer`` names left in MERGED."""
    from loracheck.keys import group_keys

    grouping = group_keys({k: t.shape for k, t in merged.tensors.items()})
    lora: set[str] = set(grouping.orphans)
    for pair in grouping.pairs:
        lora.update(k for k in (pair.a_key, pair.b_key, pair.magnitude_key) if k)
    wrapped = {k for k in merged.tensors if ".base_layer." in f".{k}."}
    lora.update(k for k in merged.tensors
                if any(f".{part}" in k for part in ("lora_A", "lora_B", "lora_magnitude_vector",
                                                     "lora_embedding_A", "lora_embedding_B")))
    return tuple(sorted(lora - wrapped)), tuple(sorted(wrapped))


def _adapter_reader(adapter: Adapter) -> Any:
    """A reader of the adapter's weights file, for DoRA magnitudes and saved copies."""
    from loracheck.discover import is_pickle

    for name in adapter.files:
        path = Path(name)
        if path.suffix == ".safetensors":
            from loracheck.safetensors_io import SafetensorsFile

            return SafetensorsFile.open(path)
        if is_pickle(path):
            from loracheck.pickle_io import TorchCheckpoint

            return TorchCheckpoint.open(path)
    return None


def measure_merge(merged_path: str, base_path: str, adapter_path: str, *,
                  progress: Progress | None = None) -> tuple[Adapter, MergeRecord]:
    """Stream MERGED and BASE against ADAPTER; UsageError for a path that is not what its
    role needs, ArtifactError (LC001) for a broken file."""
    from loracheck.discover import discover
    from loracheck.load import load_unit

    started = time.perf_counter()
    units = [u for u in discover([adapter_path]) if u.weights is not None]
    if len(units) != 1:
        raise UsageError(f"--adapter {adapter_path}: expected one adapter with weights, found "
                         f"{len(units)}")
    merged = ModelFolder.open(merged_path, role="MERGED")
    try:
        base = ModelFolder.open(base_path, role="--base")
    except BaseException:
        merged.close()
        raise
    pool = _pool()
    reader = None
    try:
        info = units[0]
        fan_in_fan_out = False
        ctx = _Context(merged, base, _Resolver(merged), _Resolver(base), fan_in_fan_out, None,
                       pool)

        def sink(layer: LayerRecord, a: F64, b: F64) -> None:
            ctx.modules.append(measure_module(layer, a, b, ctx))

        def step(done: int, total: int) -> None:
            if progress is not None:
                progress("modules", done, total)

        adapter = _load_adapter(info, ctx, sink, step, load_unit)
        reader = ctx.adapter_reader
        seen = {m.module for m in ctx.modules}
        for layer in adapter.layers:  # pairs the loader could not hand over (no factors)
            if short_name(layer.name) not in seen:
                ctx.modules.append(unmeasured(layer, ctx, (
                    f"{layer.kind} modules are not measured" if layer.kind not in (
                        "linear", "embedding", "conv") else "the factors could not be read")))
        record = _rest(adapter, ctx, progress, started)
    finally:
        if pool is not None:
            pool.shutdown()
        if reader is not None:
            reader.close()
        merged.close()
        base.close()
    return adapter, record


def _load_adapter(unit: Any, ctx: _Context, sink: Callable[[LayerRecord, F64, F64], None],
                  step: Callable[[int, int], None], load_unit: Any) -> Adapter:
    """Load the adapter with ``sink`` measuring each module as its pair streams by."""
    from loracheck.configs import read_spec
    from loracheck.load import LoadOptions

    spec = None
    if unit.config is not None:
        try:
            spec = read_spec(unit.config)
        except ArtifactError:
            spec = None
    ctx.fan_in_fan_out = bool(spec is not None and spec.fan_in_fan_out)
    # The reader is opened before the loader runs: DoRA magnitudes are read inside the sink.
    probe = Adapter(path=unit.path, format="unknown", files=[str(unit.weights)], spec=None)
    ctx.adapter_reader = _adapter_reader(probe)
    adapter: Adapter | None = load_unit(unit, LoadOptions(), progress=step, sink=sink)
    if adapter is None:
        raise UsageError(f"--adapter {unit.path}: no LoRA content")
    if adapter.faults and not ctx.modules:
        fault = adapter.faults[0]
        raise ArtifactError(fault.path, fault.detail, code=fault.code)
    return adapter


def _rest(adapter: Adapter, ctx: _Context, progress: Progress | None, started: float
          ) -> MergeRecord:
    merged, base = ctx.merged, ctx.base
    modules_t = time.perf_counter() - started
    lora_keys, wrapped = _structure(merged, base, ctx.used_keys)
    leftover = set(lora_keys) | set(wrapped)
    saved: list[SavedCopy] = []
    saved_keys: set[str] = set()
    if ctx.adapter_reader is not None:
        for extra_key in _saved_tensors(adapter):
            copy = _saved_copy(extra_key, merged, base, ctx.resolve_merged, ctx.adapter_reader)
            saved.append(copy)
            if copy.key is not None:
                saved_keys.add(copy.key)
    # lora_bias: the bias of an adapted module moved with it and was checked with it.
    skip = ctx.used_keys | saved_keys
    only_base = sorted(k for k in base.tensors if k not in merged.tensors and k not in skip)
    only_merged = sorted(k for k in merged.tensors if k not in base.tensors and k not in leftover
                         and k not in skip)
    common = [k for k in merged.tensors if k in base.tensors and k not in skip]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    changed: list[ChangedTensor] = []
    for index, key in enumerate(common):
        m_shape, w_shape = merged.tensors[key].shape, base.tensors[key].shape
        if m_shape != w_shape:
            mismatched.append((key, w_shape, m_shape))
        else:
            found = _compare(merged, base, key)
            if found is not None:
                changed.append(found)
        if progress is not None:
            progress("other tensors", index + 1, len(common))
    total = time.perf_counter() - started
    tensors = merged.tensors.values()
    return MergeRecord(
        merged=merged.path, base=base.path, adapter=adapter.path, modules=tuple(ctx.modules),
        lora_keys=lora_keys, base_layer_keys=wrapped, only_in_base=tuple(only_base),
        only_in_merged=tuple(only_merged), shape_mismatches=tuple(mismatched),
        changed=tuple(changed), saved_copies=tuple(saved), unindexed=merged.unindexed,
        n_tensors=len(merged.tensors),
        n_params=sum(t.numel for t in tensors), n_bytes=sum(t.nbytes for t in tensors),
        timing={"modules_s": modules_t, "other_s": total - modules_t, "total_s": total})


__all__ = ["BLOCK_ELEMENTS", "FORMATS", "measure_merge", "measure_module"]
