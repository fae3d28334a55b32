"""Factor and ΔW statistics against an independent float64 computation (materialised ΔW + SVD)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from builders import ALL_LINEAR, peft_adapter
from loracheck.keys import group_keys, to_canonical
from loracheck.model import DeltaStats, FactorStats, LoraSpec
from loracheck.scaling import effective_scale, resolve_rank_alpha
from loracheck.stats import (
    batch_delta_from_grams,
    batch_side_stats,
    delta_from_grams,
    delta_stats,
    factor_stats,
    pair_stats,
)

REL = 1e-4


def close(got: float, want: float, *, atol: float = 0.0) -> bool:
    return abs(got - want) <= REL * abs(want) + atol


def ref_factor(x: np.ndarray) -> dict[str, float]:
    x64 = np.asarray(x, dtype=np.float64).reshape(x.shape[0] if x.ndim > 1 else 1, -1)
    fin = x64[np.isfinite(x64)]
    mu = fin.mean()
    var = ((fin - mu) ** 2).mean()
    norms = np.sqrt((np.where(np.isfinite(x64), x64, 0.0) ** 2).sum(axis=1))
    return {
        "mean": mu,
        "std": math.sqrt(var),
        "absmax": np.abs(fin).max(),
        "zero_fraction": float((x64 == 0).mean()),
        "nonfinite": float((~np.isfinite(x64)).sum()),
        "kurtosis": ((fin - mu) ** 4).mean() / var**2 if var > 0 else math.nan,
        "row_norm_mean": norms.mean(),
        "row_norm_cv": norms.std() / norms.mean() if norms.mean() > 0 else math.nan,
    }


def check_factor(st: FactorStats, x: np.ndarray, *, rows: bool = True, kurt: bool = True) -> None:
    ref = ref_factor(x)
    scale = ref["std"] + abs(ref["mean"])
    assert st.numel == x.size
    assert st.nonfinite == ref["nonfinite"]
    assert st.zero_fraction == ref["zero_fraction"]
    # a mean near 0 is judged against the spread, not against itself
    assert close(st.mean, ref["mean"], atol=REL * scale)
    for name in ("std", "absmax"):
        assert close(getattr(st, name), ref[name]), name
    if kurt and ref["std"] > 0:
        assert st.kurtosis is not None and close(st.kurtosis, ref["kurtosis"])
    if rows:
        assert st.row_norm_mean is not None and close(st.row_norm_mean, ref["row_norm_mean"])
        if st.row_norm_cv is not None:
            assert close(st.row_norm_cv, ref["row_norm_cv"], atol=1e-7)


def ref_delta(a: np.ndarray, b: np.ndarray, s: float) -> dict[str, Any]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dw = s * (b64 @ a64)
    sig = np.linalg.svd(dw, compute_uv=False)[: a.shape[0]]
    fro = float(np.linalg.norm(dw))
    total = sig.sum()
    p = sig[sig > 0] / total if total > 0 else sig[:0]
    nb, na = np.linalg.norm(b64), np.linalg.norm(a64)
    return {
        "frobenius": fro,
        "sigma": sig,
        "sigma_max": sig[0],
        "effective_rank": math.exp(-(p * np.log(p)).sum()) if total > 0 else 0.0,
        "stable_rank": fro**2 / sig[0] ** 2 if sig[0] > 0 else 0.0,
        "alignment": np.linalg.norm(b64 @ a64) / (nb * na) if nb > 0 and na > 0 else 0.0,
        "scale": abs(s) * nb * na,
    }


def check_delta(d: DeltaStats, a: np.ndarray, b: np.ndarray, s: float) -> None:
    ref = ref_delta(a, b, s)
    # the Gram route is exact to ~1e-8·s‖B‖‖A‖ in absolute terms (it never forms B·A)
    tiny = 1e-7 * ref["scale"]
    assert close(d.frobenius, ref["frobenius"], atol=tiny)
    assert close(d.sigma_max, ref["sigma_max"], atol=tiny)
    assert len(d.singular_values) == a.shape[0]
    smax = ref["sigma_max"]
    for got, want in zip(d.singular_values, ref["sigma"], strict=True):
        if want >= 1e-3 * smax:
            # σ² carries an absolute error ~eps·(s‖B‖‖A‖)² from the float64 Grams
            assert (
                abs(got * got - want * want) <= 2 * REL * want * want + 1e-14 * ref["scale"] ** 2
            ), (got, want)
        else:
            assert abs(got - want) <= 1e-6 * smax + tiny
    if ref["frobenius"] > 1e-5 * ref["scale"]:
        assert close(d.effective_rank, ref["effective_rank"])
        assert close(d.stable_rank, ref["stable_rank"])
    assert close(d.alignment, ref["alignment"], atol=1e-7)


def same(x: FactorStats | DeltaStats, y: FactorStats | DeltaStats) -> None:
    """Two computations of the same statistics agree to rounding."""
    for key, vx in vars(x).items():
        vy = vars(y)[key]
        if isinstance(vx, tuple):
            np.testing.assert_allclose(vx, vy, rtol=1e-9, atol=1e-12 * (max(vx) if vx else 0))
        elif vx is None or vy is None:
            assert vx is vy, key
        else:
            assert vx == pytest.approx(vy, rel=1e-9, abs=1e-12), key


def adapter_pairs(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, float, np.ndarray | None]]:
    """(module, A, B, scaling, magnitude) of every pair of a PEFT adapter, canonical 2-D."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    spec = LoraSpec(
        source_format="peft",
        rank=cfg["r"],
        alpha=cfg["lora_alpha"],
        rank_pattern=cfg["rank_pattern"],
        alpha_pattern=cfg["alpha_pattern"],
    )
    tensors = load_file(str(path / "adapter_model.safetensors"))
    out = []
    for p in group_keys({k: tuple(v.shape) for k, v in tensors.items()}).pairs:
        assert p.a_key is not None and p.b_key is not None
        a, b = to_canonical(p, tensors[p.a_key], tensors[p.b_key])
        _, alpha, _ = resolve_rank_alpha(p.module, spec)
        s = effective_scale(a.shape[0], alpha, use_rslora=cfg["use_rslora"])
        assert s is not None
        mag = tensors[p.magnitude_key] if p.magnitude_key else None
        out.append((p.module, a, b, s, mag))
    return out


ADAPTERS: dict[str, dict[str, Any]] = {
    "trained": dict(target_modules=ALL_LINEAR, steps=5),
    "pattern_rslora": dict(
        target_modules=ALL_LINEAR,
        steps=3,
        use_rslora=True,
        r=8,
        rank_pattern={"q_proj": 2},
        alpha_pattern={"down_proj": 3.0},
    ),
    "dora_trained": dict(
        target_modules=["q_proj", "v_proj", "embed_tokens"], use_dora=True, steps=3
    ),
    "pissa": dict(init_lora_weights="pissa"),
    "orthogonal": dict(init_lora_weights="orthogonal"),
    "init": dict(),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stats")
    return {name: peft_adapter(root / name, **kw) for name, kw in ADAPTERS.items()}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_peft_adapter_stats(built: dict[str, Path], name: str) -> None:
    pairs = adapter_pairs(built[name])
    assert pairs
    for _module, a, b, s, mag in pairs:
        a_st, b_st, d = pair_stats(a, b, s)
        check_factor(a_st, a)
        check_factor(b_st, b.T, kurt=False)  # B's "rows" are its r columns
        check_delta(d, a, b, s)
        # the separate entry points agree with the shared one
        same(factor_stats(a, kurtosis=True, row_norms=True), a_st)
        same(factor_stats(b.T, row_norms=True), b_st)
        same(delta_stats(a, b, s), d)
        if mag is not None:
            check_factor(factor_stats(mag, kurtosis=True, row_norms=True), mag)
    if name == "init":
        assert all(pair_stats(a, b, s)[2].frobenius == 0.0 for _, a, b, s, _ in pairs)
    if name == "orthogonal":
        assert all(pair_stats(a, b, s)[2].alignment < 1e-5 for _, a, b, s, _ in pairs)


def _spectrum(rng: np.random.Generator, n: int, r: int, sv: np.ndarray) -> np.ndarray:
    q1, _ = np.linalg.qr(rng.normal(size=(n, r)))
    q2, _ = np.linalg.qr(rng.normal(size=(r, r)))
    return (q1 * sv) @ q2


@pytest.mark.parametrize(("r", "n_in", "n_out"), [(16, 4096, 1024), (64, 512, 2048)])
def test_ill_conditioned_spectrum(r: int, n_in: int, n_out: int) -> None:
    """Small singular values (down to 1e-3·σ_max and below) survive the Gram route."""
    rng = np.random.default_rng(r)
    a = _spectrum(rng, n_in, r, np.logspace(0, -3, r)).T.astype(np.float32)
    b = _spectrum(rng, n_out, r, np.logspace(0, -2, r)).astype(np.float32)
    d = delta_stats(a, b, 0.5)
    ref = ref_delta(a, b, 0.5)
    assert (ref["sigma"] < 1e-3 * ref["sigma_max"]).any()
    assert (ref["sigma"] >= 1e-3 * ref["sigma_max"]).sum() > r // 2
    check_delta(d, a, b, 0.5)


def test_flat_and_rank_one_spectra() -> None:
    rng = np.random.default_rng(3)
    a = np.eye(4, 32)
    b = np.eye(16, 4)
    d = delta_stats(a, b, 2.0)
    assert close(d.effective_rank, 4.0) and close(d.stable_rank, 4.0)
    assert close(d.frobenius, 4.0) and d.singular_values == (2.0, 2.0, 2.0, 2.0)
    u, v = rng.normal(size=(16, 1)), rng.normal(size=(1, 32))
    d1 = delta_stats(np.vstack([v, 0 * v]), np.hstack([u, u]), 1.0)
    assert close(d1.effective_rank, 1.0) and close(d1.stable_rank, 1.0)
    check_delta(d1, np.vstack([v, 0 * v]), np.hstack([u, u]), 1.0)


def test_zero_nonfinite_and_errors() -> None:
    rng = np.random.default_rng(4)
    a = rng.uniform(-0.1, 0.1, (4, 64)).astype(np.float32)
    zero = np.zeros((32, 4), np.float32)
    d = delta_stats(a, zero, 2.0)
    assert d == DeltaStats(0.0, (0.0,) * 4, 0.0, 0.0, 0.0, 0.0)
    z = factor_stats(zero, kurtosis=True, row_norms=True)
    assert (z.std, z.absmax, z.zero_fraction, z.kurtosis, z.row_norm_cv) == (0, 0, 1.0, None, None)
    neg_zero = -zero  # ±0 both count as zero
    assert factor_stats(neg_zero).zero_fraction == 1.0
    bad = a.copy()
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    bad[1, 5] = 0.0
    st = factor_stats(bad, kurtosis=True, row_norms=True)
    assert st.nonfinite == 3 and st.row_norm_mean is None
    check_factor(st, bad, rows=False)
    nan_d = delta_stats(bad, rng.normal(size=(32, 4)), 1.0)
    assert math.isnan(nan_d.frobenius) and nan_d.singular_values == ()
    all_bad = factor_stats(np.full((2, 3), np.nan, np.float32))
    assert all_bad.nonfinite == 6 and all_bad.std == 0.0
    with pytest.raises(ValueError, match="do not chain"):
        delta_stats(a, np.zeros((32, 5)), 1.0)
    empty = factor_stats(np.zeros((0, 4), np.float32))
    assert empty.numel == 0 and empty.std == 0.0


@pytest.mark.parametrize("magnitude", [1e78, 1e-100])
def test_float64_factors_at_the_ends_of_the_range(magnitude: float) -> None:
    """F64 factors whose Grams are finite but whose products are not (1e78: tr(G_B·G_A) and
    Rᵀ·G_B·R overflow) or underflow to zero (1e-100): ΔW's statistics still match an SVD, taken
    in units of magnitude² (where the reference's own squares stay in range), and a pair of
    ordinary magnitude in the same batch keeps its exact bits."""
    rng = np.random.default_rng(11)
    plain_a, plain_b = rng.normal(0, 1, (8, 96)), rng.normal(0, 1, (48, 8))
    a, b = plain_a * magnitude, plain_b * magnitude
    unit = magnitude * magnitude

    def in_units(d: DeltaStats) -> DeltaStats:
        return dataclasses.replace(d, frobenius=d.frobenius / unit, sigma_max=d.sigma_max / unit,
                                   singular_values=tuple(x / unit for x in d.singular_values))

    check_delta(in_units(delta_stats(a, b, 0.5)), plain_a, plain_b, 0.5)
    g = [(x @ x.T, y.T @ y) for x, y in ((a, b), (plain_a, plain_b))]
    batch = batch_delta_from_grams(np.stack([g[0][0], g[1][0]]), np.stack([g[0][1], g[1][1]]),
                                   [0.5, 0.5])
    check_delta(in_units(batch[0]), plain_a, plain_b, 0.5)
    same(batch[1], delta_from_grams(g[1][0], g[1][1], 0.5))


def test_large_mean_small_spread_and_dtypes() -> None:
    """DoRA magnitudes: |μ| ≫ σ must not cancel; float16 and float64 inputs work too."""
    rng = np.random.default_rng(5)
    mag = (1.0 + 1e-4 * rng.normal(size=4096)).astype(np.float32)
    check_factor(factor_stats(mag, kurtosis=True, row_norms=True), mag)
    for dtype in (np.float16, np.float64):
        x = rng.normal(0.0, 0.05, (8, 300)).astype(dtype)
        x[0, 0] = 0
        check_factor(factor_stats(x, kurtosis=True, row_norms=True), x)
        b = rng.normal(0.0, 0.05, (40, 8)).astype(dtype)
        check_delta(delta_stats(x, b, 1.5), x, b, 1.5)
    uni = rng.uniform(-1, 1, 200_000)
    kurt = factor_stats(uni, kurtosis=True).kurtosis
    assert kurt is not None and abs(kurt - 1.8) < 0.02
    gauss = factor_stats(rng.normal(size=200_000), kurtosis=True).kurtosis
    assert gauss is not None and abs(gauss - 3.0) < 0.05


@pytest.mark.parametrize(("r", "n_in", "n_out"), [(16, 256, 320), (64, 256, 384), (256, 512, 768)])
def test_batched_pairs_match_an_svd_on_adversarial_spectra(r: int, n_in: int, n_out: int) -> None:
    """One batch of pairs of one shape (as the loader solves them): spectra spanning 1e-6,
    clustered singular values, a rank-deficient A (a singular Gram: no Cholesky), a zero B and
    a NaN, each against the float64 SVD of its materialised ΔW and the pair-at-a-time path."""
    rng = np.random.default_rng(r)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    pairs.append((_spectrum(rng, n_in, r, np.logspace(0, -6, r)).T,
                  _spectrum(rng, n_out, r, np.logspace(0, -3, r))))
    clustered = np.concatenate([np.full(r // 2, 1.0), np.full(r - r // 2, 1.0 - 1e-9)])
    pairs.append((_spectrum(rng, n_in, r, clustered).T, _spectrum(rng, n_out, r, clustered)))
    deficient = _spectrum(rng, n_in, r, np.logspace(0, -2, r)).T
    deficient[r // 3] = 0.0  # A has a zero row: G_A is singular
    pairs.append((deficient, rng.normal(0, 0.02, (n_out, r))))
    pairs.append((rng.uniform(-0.1, 0.1, (r, n_in)), np.zeros((n_out, r))))
    broken = rng.normal(0, 0.02, (n_out, r))
    broken[0, 0] = np.nan
    pairs.append((rng.uniform(-0.1, 0.1, (r, n_in)), broken))
    a64 = np.stack([a for a, _ in pairs]).astype(np.float64)
    b64 = np.stack([b for _, b in pairs]).astype(np.float64)
    scales = [0.5, 2.0, 1.0, 1.0, 1.0]
    a_stats, g_a = batch_side_stats(a64, "A", kurtosis=True)
    b_stats, g_b = batch_side_stats(b64, "B")
    deltas = batch_delta_from_grams(g_a, g_b, scales)
    for (a, b), s, a_st, b_st, d in zip(pairs, scales, a_stats, b_stats, deltas, strict=True):
        alone = pair_stats(a, b, s)
        same(a_st, alone[0])
        same(b_st, alone[1])
        check_factor(a_st, a)
        if np.isfinite(b).all():
            check_factor(b_st, b.T, kurt=False)
            check_delta(d, a, b, s)
            same(d, alone[2])
        else:
            assert b_st.nonfinite == 1 and math.isnan(d.frobenius) and d.singular_values == ()
    ref = ref_delta(*pairs[0], 0.5)
    wide = ref["sigma"] >= 1e-3 * ref["sigma_max"]
    np.testing.assert_allclose(np.array(deltas[0].singular_values)[wide], ref["sigma"][wide],
                               rtol=1e-4)
    assert deltas[3] == DeltaStats(0.0, (0.0,) * r, 0.0, 0.0, 0.0, 0.0)


def test_a_batch_sorts_its_pairs_into_nan_zero_and_solved_by_each_pairs_own_grams() -> None:
    """One batch of one rank holding a pair of every kind: each pair's ΔW is judged by its own
    Grams and scale only. NaN or Inf in either Gram, or a NaN/Inf scale, gives the NaN
    statistics; a zero B or a zero scale the zero update; the healthy pairs around them match
    the float64 SVD of their materialised ΔW."""
    rng = np.random.default_rng(7)
    r, n_in, n_out = 4, 40, 24
    healthy = [(rng.normal(0, 0.1, (r, n_in)), rng.normal(0, 0.05, (n_out, r)))
               for _ in range(3)]
    nan_a = rng.normal(0, 0.1, (r, n_in))
    nan_a[1, 2] = np.nan
    inf_b = rng.normal(0, 0.05, (n_out, r))
    inf_b[3, 0] = np.inf
    pairs = [healthy[0], (nan_a, healthy[1][1]), healthy[1], (healthy[2][0], inf_b),
             (healthy[0][0], np.zeros((n_out, r))), healthy[2], healthy[0], healthy[1],
             healthy[2]]
    scales = [2.0, 1.0, 0.5, 1.0, 1.0, 1.0, float("nan"), 0.0, float("-inf")]
    with np.errstate(invalid="ignore"):
        g_a = np.stack([a @ a.T for a, _ in pairs])
        g_b = np.stack([b.T @ b for _, b in pairs])
    deltas = batch_delta_from_grams(g_a, g_b, scales)
    for i in (0, 2, 5):
        check_delta(deltas[i], *pairs[i], scales[i])
    for i in (1, 3, 6, 8):
        assert math.isnan(deltas[i].frobenius) and deltas[i].singular_values == (), i
    zero = DeltaStats(0.0, (0.0,) * r, 0.0, 0.0, 0.0, 0.0)
    assert deltas[4] == zero and deltas[7] == zero
    # every pair finite, one NaN scale: only that pair is NaN
    ok = batch_delta_from_grams(g_a[[0, 2, 5]], g_b[[0, 2, 5]], [2.0, float("nan"), 1.0])
    check_delta(ok[0], *pairs[0], 2.0)
    check_delta(ok[2], *pairs[5], 1.0)
    assert math.isnan(ok[1].frobenius) and ok[1].singular_values == ()


@pytest.mark.parametrize("on_a_worker", [False, True])
def test_pair_batch_flushes_each_rank_at_its_bounds_with_every_record_filled(
        on_a_worker: bool) -> None:
    """PairBatch groups Grams by rank and solves a group when it holds MAX_PAIRS pairs or
    MAX_BYTES of Grams (8 pairs at r = 256): every record gets the ΔW statistics of its own
    pair (against the float64 SVD), whatever group it was solved in, and whether the groups
    were solved on a worker thread, in halves (flush runs those no worker has started and
    waits for the others), or on the caller's."""
    import threading

    from loracheck.job_pool import JobPool
    from loracheck.model import LayerRecord
    from loracheck.pair_batch import MAX_BYTES, MAX_PAIRS, PairBatch

    rng = np.random.default_rng(3)
    calls: list[int] = []
    threads: set[str] = set()
    import loracheck.stats as stats_module

    real = stats_module.batch_delta_from_grams

    def counted(g_a: np.ndarray, g_b: np.ndarray, scalings: Any) -> list[DeltaStats]:
        calls.append(g_a.shape[0])
        threads.add(threading.current_thread().name)
        if threading.current_thread() is not threading.main_thread():
            on_worker.set()
        return real(g_a, g_b, scalings)

    on_worker = threading.Event()

    per_256 = MAX_BYTES // (2 * 256 * 256 * 8)
    pool = JobPool(1, "test-solve") if on_a_worker else None
    batch = PairBatch(None, pool)
    pairs: list[tuple[LayerRecord, np.ndarray, np.ndarray, float]] = []
    stats_module.batch_delta_from_grams = counted  # type: ignore[assignment]
    try:
        for i in range(MAX_PAIRS + 5 + 9):
            r = 4 if i < MAX_PAIRS + 5 else 256
            a = rng.normal(0, 0.1, (r, 300))
            b = rng.normal(0, 0.05, (280, r))
            record = LayerRecord(name=f"m{i}", kind="linear", a=None, b=None, rank=r,
                                 in_features=300, out_features=280, alpha=None,
                                 alpha_source="missing", scaling=1.5)
            batch.add_grams(record, a @ a.T, b.T @ b, 1.5)
            pairs.append((record, a, b, 1.5))
            if on_a_worker and i == MAX_PAIRS + 5 + per_256 - 1:  # the r = 256 group went out
                assert on_worker.wait(timeout=30)  # a worker took a half: not all left here
        batch.flush()
    finally:
        stats_module.batch_delta_from_grams = real  # type: ignore[assignment]
        if pool is not None:
            pool.close()
    groups = [MAX_PAIRS, 5, per_256, 9 - per_256]
    if on_a_worker:  # at r = 256 each group of two pairs or more is solved in two halves
        groups = [MAX_PAIRS, 5, per_256 // 2, per_256 - per_256 // 2, 9 - per_256]
    assert sorted(calls) == sorted(groups)
    assert threads == ({"test-solve-0", "MainThread"} if on_a_worker else {"MainThread"})
    for record, a, b, s in pairs:
        assert record.delta is not None and record.delta_from == "low-rank"
        check_delta(record.delta, a, b, s)
