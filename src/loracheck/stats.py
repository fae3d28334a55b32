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

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from loracheck.model import DeltaStats, FactorStats

if TYPE_CHECKING:
    from loracheck.fused import PassValues

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
_QUIET = np.errstate(over="ignore", invalid="ignore", divide="ignore")


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


_EMPTY_FACTOR = FactorStats(numel=0, mean=0.0, std=0.0, absmax=0.0, zero_fraction=0.0,
                            nonfinite=0)


@_QUIET
def _factors(
    x64: np.ndarray,
    sq_row_norms: np.ndarray | None,
    *,
    kurtosis: bool,
    row_norms: bool,
    reroute: bool = True,
) -> list[FactorStats]:
    """Moments of k factors of one shape, x64 (k, rows, cols) in float64, in one vectorised
    pass per statistic; ``sq_row_norms`` (k, ·), a Gram diagonal, saves the Σx² pass. A factor
    whose sums are not finite (NaN/Inf entries, or Σx² overflowing) is redone alone over its
    finite entries (``reroute``)."""
    k = x64.shape[0]
    n = x64.shape[1] * x64.shape[2]
    if n == 0:
        return [_EMPTY_FACTOR] * k
    total = x64.sum(axis=(1, 2))
    sq_rows = sq_row_norms if sq_row_norms is not None else np.einsum("kij,kij->ki", x64, x64)
    sumsq = sq_rows.sum(axis=1)
    zeros = (x64 == 0).sum(axis=(1, 2))  # -0.0 == 0; NaN counts as non-zero
    mean = total / n
    var = sumsq / n - mean * mean
    # Σx²/n − μ² cancels when |μ| ≫ σ (DoRA magnitudes): redo those centred
    cancel = np.flatnonzero(var <= 1e-6 * (sumsq / n))
    if cancel.size:
        centred = x64[cancel] - mean[cancel, None, None]
        var[cancel] = np.einsum("kij,kij->k", centred, centred) / n
    var = np.maximum(var, 0.0)
    std = np.sqrt(var)
    lo = x64.min(axis=(1, 2)).tolist()
    hi = x64.max(axis=(1, 2)).tolist()
    kurt: list[float | None] = [None] * k
    if kurtosis:
        d = x64 - mean[:, None, None]
        np.multiply(d, d, out=d)
        fourth = np.einsum("kij,kij->k", d, d) / n
        kurt = [f / (v * v) if v > 0.0 else None
                for f, v in zip(fourth.tolist(), var.tolist(), strict=True)]
    rn_mean: list[float | None] = [None] * k
    rn_cv: list[float | None] = [None] * k
    if row_norms:
        rn_mean, rn_cv = _row_norms(sq_rows)
    finite = (np.isfinite(total) & np.isfinite(sumsq)).tolist()
    means_l, std_l, zeros_l = mean.tolist(), std.tolist(), zeros.tolist()
    out: list[FactorStats] = []
    for i in range(k):
        if reroute and not finite[i]:
            out.append(_nonfinite_factor(x64[i], zeros_l[i], kurtosis=kurtosis))
            continue
        low, high = lo[i], hi[i]
        out.append(FactorStats(
            numel=n, mean=means_l[i], std=std_l[i], absmax=max(high, -low),
            zero_fraction=zeros_l[i] / n, nonfinite=0, kurtosis=kurt[i],
            row_norm_mean=rn_mean[i], row_norm_cv=rn_cv[i], min=low, max=high,
        ))
    return out


def _row_norms(sq_rows: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Mean row norm and its coefficient of variation, per factor, from the squared row norms
    (k, rows): rn_cv = std(‖row‖)/mean(‖row‖), None when every row is zero."""
    norms = np.sqrt(np.maximum(sq_rows, 0.0))
    means = norms.mean(axis=1)
    spread = norms - means[:, None]  # two-pass, as numpy's std: cv ≈ 0 stays exact
    cvs = np.sqrt(np.einsum("ki,ki->k", spread, spread) / norms.shape[1])
    mean_norms: list[float] = means.tolist()
    cv = [c / m if m > 0.0 else None for c, m in zip(cvs.tolist(), mean_norms, strict=True)]
    return list(mean_norms), cv


def from_pass_values(values: PassValues, *, kurtosis: bool) -> FactorStats | None:
    """A factor's statistics from one fused pass over its stored bytes
    (:func:`loracheck.fused.side_pass_values`'s tuple): the same formulas as
    :func:`factor_stats`. With the pass's central sums (``kurtosis``, or any pass that took
    them) σ² = m2/n, which |μ| ≫ σ cannot cancel; without them σ² = Σx²/n − μ², as
    :func:`factor_stats` has it. The row norms come from the Gram's diagonal, summed in the
    kernel. None for a factor with NaN/Inf entries or sums that overflow, for one whose
    Σx²/n − μ² cancels, and for kurtosis without the central sums: :func:`side_stats` on the
    decoded values takes those."""
    n, total, zeros, nonfinite, lo, hi, m2, m4, sumsq, norm_mean, norm_spread = values
    if n == 0:
        return _EMPTY_FACTOR
    if nonfinite or not (math.isfinite(sumsq) and math.isfinite(total)):
        return None
    mean = total / n
    if m2 == m2:  # the pass took the central sums
        if not math.isfinite(m4):
            return None
        var = max(m2 / n, 0.0)
    else:
        mean_square = sumsq / n
        var = mean_square - mean * mean
        if kurtosis or (var <= 1e-6 * mean_square and mean_square > 0.0):
            return None  # kurtosis needs m4; a cancelling σ² needs the two-pass
        var = max(var, 0.0)
    return FactorStats(
        numel=n, mean=mean, std=math.sqrt(var), absmax=max(hi, -lo),
        zero_fraction=zeros / n, nonfinite=0,
        kurtosis=m4 / n / (var * var) if kurtosis and var > 0.0 else None,
        row_norm_mean=norm_mean, row_norm_cv=norm_spread / norm_mean if norm_mean > 0.0 else None,
        min=lo, max=hi,
    )


def _nonfinite_factor(x64: np.ndarray, zeros: int, *, kurtosis: bool) -> FactorStats:
    """The slow path, only for broken tensors: moments over the finite entries (no row norms),
    with the zero fraction and the count of NaN/Inf over all of them."""
    n = int(x64.size)
    finite = np.isfinite(x64)
    kept = x64[finite]
    nonfinite = n - int(kept.size)
    zero_fraction = zeros / n
    if kept.size == 0:
        return FactorStats(numel=n, mean=0.0, std=0.0, absmax=0.0, zero_fraction=zero_fraction,
                           nonfinite=nonfinite)
    (moments,) = _factors(kept.reshape(1, 1, -1), None, kurtosis=kurtosis, row_norms=False,
                          reroute=False)
    return dataclasses.replace(moments, numel=n, zero_fraction=zero_fraction,
                               nonfinite=nonfinite)


def factor_stats(x: np.ndarray, *, kurtosis: bool = False, row_norms: bool = False) -> FactorStats:
    """Statistics of one factor (any float dtype, any shape).

    Row norms are those of the rows of ``x`` viewed as 2-D (x.reshape(x.shape[0], -1)); pass
    ``b.T`` for a B factor to get the norms of its r columns (what orthonormal-structure checks
    want; :func:`pair_stats` does this). row_norm_cv = std(‖row‖)/mean(‖row‖).
    """
    x2 = _as_2d(np.asarray(x))
    return _factors(_f64(x2)[None], None, kurtosis=kurtosis, row_norms=row_norms)[0]


def _zero_delta(r: int) -> DeltaStats:
    return DeltaStats(frobenius=0.0, singular_values=(0.0,) * r, sigma_max=0.0,
                      effective_rank=0.0, stable_rank=0.0, alignment=0.0)


def _root_factors(g_a: np.ndarray) -> np.ndarray:
    """R with R·Rᵀ = G_A for each Gram in the batch (k, r, r): the Cholesky factor, and for a
    singular G_A (a rank-deficient A), V·diag(√w) from its eigendecomposition. Either gives
    σ(B·A)² = λ(Rᵀ·G_B·R), since A = R·Qᵀ with Q's columns orthonormal."""
    try:
        root: np.ndarray = np.linalg.cholesky(g_a)
        return root
    except np.linalg.LinAlgError:
        pass
    roots = np.empty_like(g_a)
    for i, g in enumerate(g_a):
        try:
            roots[i] = np.linalg.cholesky(g)
        except np.linalg.LinAlgError:
            w, v = np.linalg.eigh(g)
            roots[i] = v * np.sqrt(np.maximum(w, 0.0))
    return roots


# A Gram whose trace lies outside [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT] is rescaled before the
# solve: tr(G_B·G_A) and Rᵀ·G_B·R multiply two Grams, which overflows float64 for factors of
# magnitude ~1e78 (an F64 file may hold them) although each Gram is finite.
_SAFE_EXPONENT = 300


def _half_exponent(trace: float) -> int:
    """m with trace·4^-m near 1 when ``trace`` is finite, positive and outside the safe range;
    0 otherwise (nothing to rescale, or nothing that rescaling rescues)."""
    if not (math.isfinite(trace) and trace > 0.0):
        return 0
    exponent = math.frexp(trace)[1]
    return exponent // 2 if abs(exponent) > _SAFE_EXPONENT else 0


def _rescaled(d: DeltaStats, exponent: int) -> DeltaStats:
    """``d`` of Grams scaled by 4^-m_A and 4^-m_B, for the unscaled factors (exponent =
    m_A + m_B): ΔW's norms scale by 2^exponent, exactly; ranks and the alignment do not."""
    return dataclasses.replace(
        d, frobenius=math.ldexp(d.frobenius, exponent), sigma_max=math.ldexp(d.sigma_max, exponent),
        singular_values=tuple(math.ldexp(x, exponent) for x in d.singular_values))


@_QUIET
def _deltas(g_a: np.ndarray, g_b: np.ndarray, scalings: Sequence[float]) -> list[DeltaStats]:
    """ΔW statistics of k pairs of one rank from their Grams (k, r, r): one batched Cholesky
    and one batched eigvalsh over the k cores instead of two solves per pair."""
    k, r = g_a.shape[0], g_a.shape[1]
    s = [abs(float(x)) for x in scalings]
    cross_k = np.einsum("kij,kij->k", g_b, g_a)  # tr(G_B·G_A), both symmetric
    tr_a = np.einsum("kii->k", g_a).tolist()
    tr_b = np.einsum("kii->k", g_b).tolist()
    m_a, m_b = [_half_exponent(t) for t in tr_a], [_half_exponent(t) for t in tr_b]
    if any(m_a) or any(m_b):
        # Powers of two scale exactly: the pairs in range get the same bits as unscaled.
        scaled = _deltas(g_a * np.array([math.ldexp(1.0, -2 * m) for m in m_a])[:, None, None],
                         g_b * np.array([math.ldexp(1.0, -2 * m) for m in m_b])[:, None, None],
                         scalings)
        return [_rescaled(d, ma + mb) if ma + mb else d
                for d, ma, mb in zip(scaled, m_a, m_b, strict=True)]
    cross = cross_k.tolist()
    # A NaN or Inf in either Gram makes its pair's Σ G_B∘G_A non-finite (every term with it is
    # ±Inf or NaN): only such pairs need the full check (a finite sum that overflowed is not one).
    finite = [math.isfinite(c) for c in cross]
    if not all(finite):
        whole = (np.isfinite(g_a).all(axis=(1, 2)) & np.isfinite(g_b).all(axis=(1, 2))).tolist()
        finite = [w and math.isfinite(s_i) for w, s_i in zip(whole, s, strict=True)]
    elif not all(math.isfinite(s_i) for s_i in s):
        finite = [math.isfinite(s_i) for s_i in s]
    cross = [c if c > 0.0 or c != c else 0.0 for c in cross]  # np.maximum(·, 0.0), NaN kept
    solve = [i for i in range(k) if finite[i] and cross[i] > 0.0 and s[i] > 0.0] if r else []
    if not solve:
        return [_NAN_DELTA if not ok else _zero_delta(r) for ok in finite]
    every = len(solve) == k  # the usual case: no copies of the Grams
    root = _root_factors(g_a if every else g_a[solve])
    core = np.matmul(np.matmul(root.transpose(0, 2, 1), g_b if every else g_b[solve]), root)
    lam = np.linalg.eigvalsh((core + core.transpose(0, 2, 1)) * 0.5)
    scale = np.array(s if every else [s[i] for i in solve], dtype=np.float64)
    sig = np.sqrt(np.maximum(lam[:, ::-1], 0.0)) * scale[:, None]  # (solved, r), descending
    # The scalars of every solved pair at once (numpy on arrays; a loop of Python floats
    # per pair cost more than the solve at low rank):
    #   effective rank = exp(−Σ p·ln p), p = σ/Σσ over σ > 0 (0·ln 0 taken as 0)
    total = sig.sum(axis=1)
    p = sig / np.where(total > 0.0, total, 1.0)[:, None]
    effective = np.where(total > 0.0, np.exp(-(p * np.log(np.where(p > 0.0, p, 1.0))).sum(
        axis=1)), 0.0)
    solved_cross = np.array(cross if every else [cross[i] for i in solve])
    fro = scale * np.sqrt(solved_cross)
    sigma_max = sig[:, 0]
    stable = np.where(sigma_max > 0.0, fro * fro / np.where(sigma_max > 0.0, sigma_max, 1.0)
                      ** 2, 0.0)
    traces = np.array([tr_a[i] * tr_b[i] for i in solve])
    alignment = np.where(traces > 0.0, np.minimum(np.sqrt(solved_cross / np.where(
        traces > 0.0, traces, 1.0)), 1.0), 0.0)
    columns = zip(solve, sig.tolist(), fro.tolist(), effective.tolist(), stable.tolist(),
                  alignment.tolist(), strict=True)
    solved = {i: DeltaStats(frobenius=fro_i, singular_values=tuple(sig_i), sigma_max=sig_i[0],
                            effective_rank=eff_i, stable_rank=stable_i, alignment=align_i)
              for i, sig_i, fro_i, eff_i, stable_i, align_i in columns}
    if every:
        return list(solved.values())
    return [solved[i] if i in solved else _NAN_DELTA if not finite[i] else _zero_delta(r)
            for i in range(k)]


def _delta_from_grams(g_a: np.ndarray, g_b: np.ndarray, scaling: float) -> DeltaStats:
    return _deltas(g_a[None], g_b[None], (scaling,))[0]


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
    (stats,), grams = batch_side_stats(_f64(x)[None], side, kurtosis=kurtosis,
                                       row_norms=row_norms)
    return stats, grams[0]


@_QUIET
def batch_side_stats(
    x64: np.ndarray, side: str, *, kurtosis: bool = False, row_norms: bool = True
) -> tuple[list[FactorStats], np.ndarray]:
    """:func:`side_stats` of k factors of one shape at once: x64 (k, rows, cols) float64, and
    their Grams (k, r, r). Many small pairs cost one numpy call per statistic, not k."""
    xt = x64.transpose(0, 2, 1)
    grams = np.matmul(x64, xt) if side == "A" else np.matmul(xt, x64)
    diagonal = np.diagonal(grams, axis1=1, axis2=2)
    stats = _factors(x64, diagonal, kurtosis=kurtosis, row_norms=row_norms)
    return stats, grams


def batch_delta_from_grams(
    g_a: np.ndarray, g_b: np.ndarray, scalings: Sequence[float]
) -> list[DeltaStats]:
    """:func:`delta_from_grams` of k pairs of one rank: Grams (k, r, r), one scale each."""
    if g_a.shape != g_b.shape or g_a.ndim != 3 or len(scalings) != g_a.shape[0]:
        raise ValueError(f"Grams do not chain: {g_a.shape} and {g_b.shape}")
    return _deltas(g_a, g_b, scalings)


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
