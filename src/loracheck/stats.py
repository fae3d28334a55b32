"""Per-layer statistics of LoRA factors and of their update ΔW = s·B·A, without materialising ΔW.

Factor moments (over the n finite entries x_k of a factor):
    μ = Σx/n,  σ² = Σx²/n − μ²  (two-pass Σ(x−μ)²/n when that cancels),
    kurtosis = E[(x−μ)⁴]/σ⁴   (Pearson: normal ≈ 3, uniform ≈ 1.8).

Update spectrum from the r×r Gram matrices, in float64:
    G_A = A·Aᵀ,  G_B = Bᵀ·B,   ‖ΔW‖_F² = s²·tr(G_B·G_A) = s²·Σ_ij (G_B ∘ G_A)_ij.
With G_A = V·diag(w)·Vᵀ (eigh) and R = V·diag(√w), A = R·Qᵀ for some Q with orthonormal columns,
so σ(B·A) = σ(B·R) and σ_i(ΔW)² = |s|²·λ_i(Rᵀ·G_B·R), a symmetric PSD r×r eigenproblem.
    effective rank = exp(−Σ p_i·ln p_i), p_i = σ_i/Σσ     (0 when ΔW = 0)
    stable rank    = ‖ΔW‖_F²/σ_max²                       (0 when ΔW = 0)
    alignment      = ‖B·A‖_F/(‖B‖_F·‖A‖_F) = √(tr(G_B·G_A)/(tr G_B·tr G_A))   (0 if a factor is 0)

numpy only; no torch. Each factor is copied once to float64 (an r×n block, cache-sized per layer)
because a float32 Gram loses the singular values below ~1e-3·σ_max.
"""

from __future__ import annotations

import math

import numpy as np

from loracheck.model import DeltaStats, FactorStats

_NAN_DELTA = DeltaStats(
    frobenius=math.nan,
    singular_values=(),
    sigma_max=math.nan,
    effective_rank=math.nan,
    stable_rank=math.nan,
    alignment=math.nan,
)


# Huge finite factors overflow float64 in Σx² or a Gram: the result is Inf/NaN, which the
# statistics carry and LC203 reports; numpy's RuntimeWarning on stderr would only add noise.
_QUIET = np.errstate(over="ignore", invalid="ignore")


def _as_2d(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


def _f64(x: np.ndarray) -> np.ndarray:
    """x as float64, keeping its memory order so that a transposed view stays cheap to ravel."""
    return x if x.dtype == np.float64 else x.astype(np.float64, order="K")


def _count_nonzero(x: np.ndarray) -> int:
    """Entries ≠ ±0 (NaN counts as non-zero). A vectorised ``== 0`` and a count of the bool
    mask is about 3x faster than numpy's float count_nonzero; -0.0 == 0 holds, as wanted."""
    return int(x.size - np.count_nonzero(x == 0))


@_QUIET
def _factor(
    x: np.ndarray,
    x64: np.ndarray,
    sq_row_norms: np.ndarray | None,
    *,
    kurtosis: bool,
    row_norms: bool,
) -> FactorStats:
    """Moments of one factor; ``sq_row_norms`` (a Gram diagonal) saves the Σx² pass."""
    n = int(x.size)
    if n == 0:
        return FactorStats(numel=0, mean=0.0, std=0.0, absmax=0.0, zero_fraction=0.0, nonfinite=0)
    flat = x64.ravel(order="K")
    total = float(flat.sum())
    sumsq = float(sq_row_norms.sum()) if sq_row_norms is not None else float(flat @ flat)
    nonfinite = 0
    if not (math.isfinite(sumsq) and math.isfinite(total)):
        # slow path, only for broken tensors: moments over the finite entries
        finite = np.isfinite(flat)
        nonfinite = n - int(np.count_nonzero(finite))
        flat = flat[finite]
        total = float(flat.sum())
        sumsq = float(flat @ flat)
        sq_row_norms = None
        row_norms = False
    m = int(flat.size)
    zero_fraction = (n - _count_nonzero(x)) / n
    if m == 0:
        return FactorStats(
            numel=n, mean=0.0, std=0.0, absmax=0.0, zero_fraction=zero_fraction, nonfinite=nonfinite
        )
    mean = total / m
    var = sumsq / m - mean * mean
    if var <= 1e-6 * (sumsq / m):
        # Σx²/n − μ² cancels when |μ| ≫ σ (DoRA magnitudes): redo it centred
        centred = flat - mean
        var = float(centred @ centred) / m
    var = max(var, 0.0)
    std = math.sqrt(var)
    src = x if nonfinite == 0 else flat
    lo, hi = float(src.min()), float(src.max())
    absmax = max(hi, -lo)
    kurt: float | None = None
    if kurtosis and var > 0.0:
        d = flat - mean
        np.multiply(d, d, out=d)
        kurt = float(d @ d) / m / (var * var)
    rn_mean: float | None = None
    rn_cv: float | None = None
    if row_norms:
        sq = sq_row_norms if sq_row_norms is not None else np.einsum("ij,ij->i", x64, x64)
        norms = np.sqrt(np.maximum(sq, 0.0))
        rn_mean = float(norms.mean())
        rn_cv = float(norms.std() / rn_mean) if rn_mean > 0.0 else None
    return FactorStats(
        numel=n,
        mean=mean,
        std=std,
        absmax=absmax,
        zero_fraction=zero_fraction,
        nonfinite=nonfinite,
        kurtosis=kurt,
        row_norm_mean=rn_mean,
        row_norm_cv=rn_cv,
        min=lo,
        max=hi,
    )


def factor_stats(x: np.ndarray, *, kurtosis: bool = False, row_norms: bool = False) -> FactorStats:
    """Statistics of one factor (any float dtype, any shape).

    Row norms are those of the rows of ``x`` viewed as 2-D (x.reshape(x.shape[0], -1)); pass
    ``b.T`` for a B factor to get the norms of its r columns (what orthonormal-structure checks
    want; :func:`pair_stats` does this). row_norm_cv = std(‖row‖)/mean(‖row‖).
    """
    x2 = _as_2d(np.asarray(x))
    return _factor(x2, _f64(x2), None, kurtosis=kurtosis, row_norms=row_norms)


@_QUIET
def _delta_from_grams(g_a: np.ndarray, g_b: np.ndarray, scaling: float) -> DeltaStats:
    if not (np.isfinite(g_a).all() and np.isfinite(g_b).all()) or not math.isfinite(scaling):
        return _NAN_DELTA
    r = g_a.shape[0]
    tr_a = float(np.trace(g_a))
    tr_b = float(np.trace(g_b))
    cross = max(float(np.einsum("ij,ij->", g_b, g_a)), 0.0)  # tr(G_B·G_A), both symmetric
    s = abs(float(scaling))
    fro = s * math.sqrt(cross)
    if r == 0 or cross == 0.0 or s == 0.0:
        return DeltaStats(
            frobenius=0.0,
            singular_values=(0.0,) * r,
            sigma_max=0.0,
            effective_rank=0.0,
            stable_rank=0.0,
            alignment=0.0,
        )
    w, v = np.linalg.eigh(g_a)
    root = v * np.sqrt(np.maximum(w, 0.0))
    core = root.T @ g_b @ root
    lam = np.linalg.eigvalsh((core + core.T) * 0.5)
    sig = np.sqrt(np.maximum(lam[::-1], 0.0)) * s
    sigma_max = float(sig[0])
    total = float(sig.sum())
    pos = sig[sig > 0.0] / total
    eff = math.exp(-float(pos @ np.log(pos))) if total > 0.0 else 0.0
    stable = fro * fro / (sigma_max * sigma_max) if sigma_max > 0.0 else 0.0
    align = min(math.sqrt(cross / (tr_a * tr_b)), 1.0) if tr_a > 0.0 and tr_b > 0.0 else 0.0
    return DeltaStats(
        frobenius=fro,
        singular_values=tuple(float(x) for x in sig),
        sigma_max=sigma_max,
        effective_rank=eff,
        stable_rank=stable,
        alignment=align,
    )


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"factors do not chain: A {a.shape} (r, in), B {b.shape} (out, r)")


@_QUIET
def delta_stats(a: np.ndarray, b: np.ndarray, scaling: float) -> DeltaStats:
    """Statistics of ΔW = s·B·A from canonical 2-D factors A (r, in) and B (out, r).

    Raises ValueError when A and B do not chain. NaN fields (and no singular values) when a
    factor holds NaN/Inf.
    """
    _check_pair(a, b)
    a64, b64 = _f64(a), _f64(b)
    return _delta_from_grams(a64 @ a64.T, b64.T @ b64, scaling)


@_QUIET
def side_stats(
    x: np.ndarray, side: str, *, kurtosis: bool = False, row_norms: bool = True
) -> tuple[FactorStats, np.ndarray]:
    """One factor's statistics and its float64 r×r Gram matrix, independent of the other factor.

    ``side`` "A": x is (r, in) and the Gram is A·Aᵀ; "B": x is (out, r) and the Gram is Bᵀ·B,
    so B's "row" norms are those of its r columns. Σx² comes from the Gram's diagonal. The two
    sides of a pair can be computed concurrently; :func:`delta_from_grams` joins them.
    """
    if x.ndim != 2:
        raise ValueError(f"factor {side} must be 2-D, not {x.shape}")
    x64 = _f64(x)
    gram = x64 @ x64.T if side == "A" else x64.T @ x64
    stats = _factor(x, x64, np.diagonal(gram), kurtosis=kurtosis, row_norms=row_norms)
    return stats, gram


def delta_from_grams(g_a: np.ndarray, g_b: np.ndarray, scaling: float) -> DeltaStats:
    """ΔW = s·B·A from the Grams G_A = A·Aᵀ and G_B = Bᵀ·B (both r×r): σ(B·A) = σ(G_B^½·G_A^½)."""
    if g_a.shape != g_b.shape:
        raise ValueError(f"Grams do not chain: {g_a.shape} and {g_b.shape}")
    return _delta_from_grams(g_a, g_b, scaling)


def pair_stats(
    a: np.ndarray,
    b: np.ndarray,
    scaling: float,
    *,
    kurtosis: bool = True,
    row_norms: bool = True,
) -> tuple[FactorStats, FactorStats, DeltaStats]:
    """(A stats, B stats, ΔW stats) in one go, sharing the float64 copies and Gram matrices.

    Prefer this over :func:`factor_stats` + :func:`delta_stats`: Σx² and the row norms come from
    the Gram diagonals. Kurtosis is computed for A only. The "row" norms of B are the norms of
    its r columns (diag Bᵀ·B), the rank-axis vectors, like A's rows.
    """
    _check_pair(a, b)
    a_st, g_a = side_stats(a, "A", kurtosis=kurtosis, row_norms=row_norms)
    b_st, g_b = side_stats(b, "B", row_norms=row_norms)
    return a_st, b_st, _delta_from_grams(g_a, g_b, scaling)


# A LoHa/LoKr module whose ΔW has at most this many elements may be materialised in float64
# (32 MiB) when its factor structure gives no cheaper route.
MATERIALISE_MAX = 1 << 22


def _from_singular_values(sig: np.ndarray, fro: float, alignment: float) -> DeltaStats:
    sig = np.sort(np.asarray(sig, dtype=np.float64))[::-1]
    if sig.size == 0 or fro == 0.0 or float(sig[0]) == 0.0:
        return DeltaStats(0.0, tuple(0.0 for _ in sig), 0.0, 0.0, 0.0, alignment)
    sigma_max = float(sig[0])
    total = float(sig.sum())
    pos = sig[sig > 0.0] / total
    eff = math.exp(-float(pos @ np.log(pos)))
    return DeltaStats(fro, tuple(float(x) for x in sig), sigma_max, eff,
                      fro * fro / (sigma_max * sigma_max), alignment)


def _singular_values(x: np.ndarray) -> np.ndarray:
    """σ of a 2-D float64 matrix through the Gram of its smaller side."""
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    lam = np.linalg.eigvalsh(gram)
    return np.sqrt(np.maximum(lam, 0.0))


@_QUIET
def kron_delta(w1: np.ndarray, w2: np.ndarray, scaling: float) -> DeltaStats:
    """ΔW = s·(W₁ ⊗ W₂) (LyCORIS LoKr; a conv W₂ (o, i, k, k) flattened to (o, i·k·k)) from
    the two small factors: σ(ΔW) = s·{σᵢ(W₁)·σⱼ(W₂)} and ‖ΔW‖_F = s·‖W₁‖_F·‖W₂‖_F."""
    a = _f64(w1).reshape(w1.shape[0], -1)
    b = _f64(w2).reshape(w2.shape[0], -1)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or not math.isfinite(scaling):
        return _NAN_DELTA
    s = abs(float(scaling))
    fro = s * float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    sig = s * np.outer(_singular_values(a), _singular_values(b)).ravel()
    return _from_singular_values(sig, fro, float("nan"))


@_QUIET
def hadamard_delta(w1a: np.ndarray, w1b: np.ndarray, w2a: np.ndarray, w2b: np.ndarray,
                   scaling: float) -> DeltaStats | None:
    """ΔW = s·(W1a·W1b) ⊙ (W2a·W2b) (LyCORIS LoHa; a conv's b factors flattened to
    (r, in·k·k)). The Hadamard product of ranks r₁ and r₂ is U·Vᵀ with U (out, r₁r₂) holding
    the columns w1a[:, p]·w2a[:, q] and V (in, r₁r₂) the rows w1b[p]·w2b[q]: its statistics
    come from the r₁r₂ × r₁r₂ Grams of U and V. When r₁r₂ reaches the smaller side, ΔW itself
    is smaller: it is materialised if it has at most :data:`MATERIALISE_MAX` elements, else
    None (not measured)."""
    a1, b1 = _f64(w1a), _f64(w1b).reshape(w1b.shape[0], -1)
    a2, b2 = _f64(w2a), _f64(w2b).reshape(w2b.shape[0], -1)
    if not all(np.isfinite(x).all() for x in (a1, b1, a2, b2)) or not math.isfinite(scaling):
        return _NAN_DELTA
    out, inner = a1.shape[0], b1.shape[1]
    k = a1.shape[1] * a2.shape[1]
    if k < min(out, inner):
        u = (a1[:, :, None] * a2[:, None, :]).reshape(out, k)
        v = (b1[:, None, :] * b2[None, :, :]).reshape(k, inner)  # the rows of Vᵀ
        return _delta_from_grams(v @ v.T, u.T @ u, scaling)
    if out * inner > MATERIALISE_MAX:
        return None
    delta = (a1 @ b1) * (a2 @ b2) * float(scaling)
    return _from_singular_values(_singular_values(delta), float(np.linalg.norm(delta)),
                                 float("nan"))


@_QUIET
def full_delta(delta: np.ndarray, *, decompose: bool) -> DeltaStats:
    """ΔW given whole (LyCORIS full/``diff``): its norm, and its singular values when
    ``decompose`` (a large one keeps only the norm: no singular values)."""
    d = _f64(delta)
    if not np.isfinite(d).all():
        return _NAN_DELTA
    fro = float(np.linalg.norm(d))
    if not decompose:
        return DeltaStats(fro, (), float("nan"), float("nan"), float("nan"), float("nan"))
    return _from_singular_values(_singular_values(d), fro, float("nan"))
