"""One factor's statistics in one pass over its stored bytes: the compiled kernel, or numpy.

:func:`side_pass` takes the stored 2-D tensor's raw view and gives, over its n entries x,

    sum = Σx (finite x),  zeros = #(x == ±0),  nonfinite = #(NaN, ±Inf),
    min, max over the finite x (NaN when there is none),
    gram = X·Xᵀ ("rows") or Xᵀ·X ("cols") in float64, from the exactly decoded values,
    m2 = Σ(x − μ)², m4 = Σ(x − μ)⁴ over the finite x, μ = sum / (n − nonfinite)
         (only with ``fourth_moment``; 0.0 when no entry is finite).

The compiled kernel (``loracheck._fused``, built from ``_fused.c`` by ``pip install``, optional)
decodes fp16/bf16 exactly to float64 in cache-sized blocks and takes everything above in one
pass; where it did not build, or ``LORACHECK_KERNEL=numpy`` is set, the same numbers come from
numpy on the decoded float64 copy. The two agree to rounding (the summation order differs):
Gram entries within 1e-13·‖xᵢ‖·‖xⱼ‖, sums within 1e-13·Σ|x|, m2 and m4 within 1e-12 relative.
m2/m4 are centred per block and merged exactly, so they are as good as a two-pass over the
whole factor unless |μ| ≫ σ (then ask numpy's two-pass on the decoded values).

:data:`KERNEL` names what runs: "compiled (avx512f)", "compiled (avx2+fma)",
"compiled (baseline)" or "numpy".
``LORACHECK_KERNEL``: "numpy" forces numpy, "baseline" the compiled portable variant.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Literal

import numpy as np

Mode = Literal["rows", "cols"]

_DTYPES = {"F16": (0, np.uint16), "BF16": (1, np.uint16), "F32": (2, np.float32),
           "F64": (3, np.float64)}
_MODES = {"rows": 0, "cols": 1}


def _load_compiled() -> ModuleType | None:
    try:
        from loracheck import _fused  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _fused
    return module


_compiled = _load_compiled()
_choice = os.environ.get("LORACHECK_KERNEL", "").strip().lower()
_use_compiled = _compiled is not None and _choice != "numpy"
_variant = 1 if _choice == "baseline" else 0

# Whether side_pass runs the compiled kernel (the loader then reads stored bytes directly).
COMPILED: bool = _use_compiled
# The extension's other function, whichever kernel runs: drop_pages(mapping, start, length),
# madvise(MADV_DONTNEED) without the GIL (see safetensors_io.SafetensorsFile.dropper).
DROP_PAGES: Callable[[object, int, int], bool] | None = (
    _compiled.drop_pages if _compiled is not None else None)
# The stored dtypes side_pass reads.
FUSED_DTYPES = frozenset(_DTYPES)

KERNEL: str = (f"compiled ({'baseline' if _variant else _compiled.variant()})"
               if _use_compiled and _compiled is not None else "numpy")


@dataclasses.dataclass(frozen=True)
class SidePass:
    """What one pass over a factor gives (see the module docstring for the formulas)."""

    n: int  # entries in the factor, rows·cols
    sum: float  # Σx over the finite entries
    zeros: int  # entries == ±0
    nonfinite: int  # NaN and ±Inf entries
    min: float  # over the finite entries; NaN when none is finite
    max: float
    gram: np.ndarray  # (r, r) float64, C-contiguous, exactly symmetric
    m2: float | None  # Σ(x − μ)² over the finite entries, with fourth_moment
    m4: float | None  # Σ(x − μ)⁴ over the finite entries, with fourth_moment


def _check(raw: np.ndarray, dtype: str, mode: str) -> tuple[int, int]:
    if dtype not in _DTYPES:
        raise ValueError(f"side_pass: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    if mode not in _MODES:
        raise ValueError(f"side_pass: mode {mode!r} is not 'rows' or 'cols'")
    want = _DTYPES[dtype][1]
    if raw.dtype != want or raw.ndim != 2 or not raw.flags.c_contiguous:
        raise ValueError(f"side_pass: {dtype} wants a C-contiguous 2-D {np.dtype(want)} view, "
                         f"not {raw.dtype} {raw.shape}")
    return raw.shape[0], raw.shape[1]


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """The raw view decoded exactly to float64 (numpy)."""
    with np.errstate(invalid="ignore"):  # a signalling NaN stays a NaN
        if dtype == "F16":
            return raw.view(np.float16).astype(np.float64)
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return raw.astype(np.float64)


def side_pass(raw: np.ndarray, dtype: str, mode: Mode, *, fourth_moment: bool = False
              ) -> SidePass:
    """One factor's statistics and float64 Gram from its stored bytes.

    ``raw``: the stored 2-D tensor, C-contiguous, uint16 for "F16"/"BF16", float32 for "F32",
    float64 for "F64". ``mode`` "rows": G = X·Xᵀ (A stored (r, in)); "cols": G = Xᵀ·X (B stored
    (out, r)). The compiled kernel releases the GIL, so threads can run factors in parallel.
    """
    if _use_compiled:
        return compiled_side_pass(raw, dtype, mode, fourth_moment=fourth_moment,
                                  variant=_variant)
    return numpy_side_pass(raw, dtype, mode, fourth_moment=fourth_moment)


def compiled_side_pass(raw: np.ndarray, dtype: str, mode: Mode, *, fourth_moment: bool = False,
                       variant: int = 0) -> SidePass:
    """:func:`side_pass` by the compiled kernel (``variant`` 0 the best for this CPU, 1 the
    portable baseline, 2 AVX2 where the CPU has it, else the baseline); ImportError when it is
    not built."""
    if _compiled is None:
        raise ImportError("loracheck._fused is not built")
    rows, cols = _check(raw, dtype, mode)
    r = rows if mode == "rows" else cols
    gram = np.empty((r, r), dtype=np.float64)
    n, total, zeros, nonfinite, lo, hi, m2, m4, *_ = _compiled.side_pass(
        raw, rows, cols, _DTYPES[dtype][0], _MODES[mode], int(fourth_moment), gram, variant)
    return SidePass(n=n, sum=total, zeros=zeros, nonfinite=nonfinite, min=lo, max=hi, gram=gram,
                    m2=m2 if fourth_moment else None, m4=m4 if fourth_moment else None)


# (n, sum, zeros, nonfinite, min, max, m2, m4, sumsq, norm_mean, norm_spread): SidePass's
# fields but the Gram (m2, m4 NaN without the fourth moment), then from the Gram's diagonal
# Σx² = tr G and the mean and population std of the r norms √G_ii, each summed in index order.
PassValues = tuple[int, float, int, int, float, float, float, float, float, float, float]


def side_pass_values(raw: np.ndarray, dtype: str, mode: Mode, gram: np.ndarray,
                     fourth_moment: bool) -> PassValues:
    """:func:`side_pass` by the compiled kernel (COMPILED must be True), lean for the loader's
    per-pair loop: the Gram goes into ``gram`` (a C-contiguous (r, r) float64 the caller
    made) and the rest comes back as a plain tuple (:data:`PassValues`), without a
    :class:`SidePass`. ``raw`` must be what :func:`side_pass` takes (checked by the kernel:
    TypeError or ValueError otherwise)."""
    assert _compiled is not None
    rows, cols = raw.shape
    values: PassValues = _compiled.side_pass(raw, rows, cols, _DTYPES[dtype][0], _MODES[mode],
                                             int(fourth_moment), gram, _variant)
    return values


# One factor for side_pass_many: (raw, dtype, mode, gram, fourth_moment), as
# side_pass_values takes them.
PassItem = tuple[np.ndarray, str, Mode, np.ndarray, bool]


def side_pass_many(items: Sequence[PassItem]) -> list[PassValues]:
    """:func:`side_pass_values` of every item by the compiled kernel (COMPILED must be True),
    one after another with the GIL released once for all of them: a thread measuring a few
    factors in one call does not wait for the GIL between them. Each result is bit-identical
    to that item's own side_pass_values; the results come in the items' order."""
    assert _compiled is not None
    values: list[PassValues] = _compiled.side_pass_many(
        [(raw, raw.shape[0], raw.shape[1], _DTYPES[dtype][0], _MODES[mode], int(moments), gram)
         for raw, dtype, mode, gram, moments in items], _variant)
    return values


def numpy_side_pass(raw: np.ndarray, dtype: str, mode: Mode, *, fourth_moment: bool = False
                    ) -> SidePass:
    """:func:`side_pass` in numpy: decode to float64, BLAS Gram, one pass per statistic."""
    _check(raw, dtype, mode)
    x = decode(raw, dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        gram = np.ascontiguousarray(x @ x.T if mode == "rows" else x.T @ x)
        finite = np.isfinite(x)
        kept = x[finite] if not finite.all() else x.ravel()
        total = float(kept.sum())
        lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (np.nan, np.nan)
        m2 = m4 = None
        if fourth_moment:
            m2 = m4 = 0.0
            if kept.size:
                d = kept - total / kept.size
                d *= d
                m2, m4 = float(d.sum()), float(d @ d)
    return SidePass(n=int(x.size), sum=total, zeros=int(np.count_nonzero(x == 0)),
                    nonfinite=int(x.size - kept.size), min=lo, max=hi, gram=gram, m2=m2, m4=m4)
