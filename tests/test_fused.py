"""loracheck.fused: the compiled single-pass factor statistics and the numpy fallback, each
against an independent float64 computation (decoded by numpy here, Gram by float64 matmul,
sums by math.fsum).

Tolerances: Gram entries within 1e-13·‖xᵢ‖·‖xⱼ‖ (absolute), Σx within 1e-13·Σ|x|, m2 and m4
within 1e-12 relative; counts, min and max exact.
"""

from __future__ import annotations

import importlib
import math
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest

from loracheck import fused

DTYPES = ("F16", "BF16", "F32", "F64")
# (r, other side): both modes run every shape, so 1×n, n×1 and ranks off the tile sizes
# (4, 8, 16 lanes; 2×4 and 4×16 tiles) all occur, with lengths off the block sizes.
SHAPES = [(1, 37), (37, 1), (1, 1), (3, 1000), (4, 64), (16, 4099), (17, 515), (64, 300),
          (256, 129), (5, 0), (0, 4)]
SPECIAL = {  # per dtype: subnormal, huge (finite)
    "F16": (2.0 ** -24 * 3, 65504.0),
    "BF16": (2.0 ** -133 * 5, 3.0e38),
    "F32": (1.0e-40, 3.0e38),
    "F64": (5.0e-324, 1.0e300),
}


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """The raw stored view of float64 values in ``dtype`` (bf16 rounded to nearest even)."""
    if dtype == "F16":
        return x.astype(np.float16).view(np.uint16)
    if dtype == "BF16":
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        nan = np.isnan(x)
        rounded[nan] = 0x7FC0  # keep NaN a NaN (rounding could carry it to Inf)
        return rounded.astype(np.uint16)
    return x.astype(np.float32 if dtype == "F32" else np.float64)


def reference_decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F16":
        return raw.view(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore"):  # signalling NaN words
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return raw.astype(np.float64)


IMPLS = ["compiled", "compiled-baseline", "compiled-avx2", "numpy"]


def run(impl: str, raw: np.ndarray, dtype: str, mode: str, moments: bool) -> fused.SidePass:
    if impl == "numpy":
        return fused.numpy_side_pass(raw, dtype, mode, fourth_moment=moments)
    if fused._compiled is None:
        pytest.skip("loracheck._fused is not built (see test_kernel_is_built_where_...)")
    variant = {"compiled": 0, "compiled-baseline": 1, "compiled-avx2": 2}[impl]
    return fused.compiled_side_pass(raw, dtype, mode, fourth_moment=moments,
                                    variant=variant)


def check(got: fused.SidePass, raw: np.ndarray, dtype: str, mode: str, moments: bool) -> None:
    x = reference_decode(raw, dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = x @ x.T if mode == "rows" else x.T @ x
    assert got.gram.shape == ref.shape and got.gram.dtype == np.float64
    assert np.array_equal(got.gram, got.gram.T, equal_nan=True)
    # Non-finite exactly where the reference is; elsewhere within 1e-13·‖xᵢ‖·‖xⱼ‖.
    assert np.array_equal(np.isfinite(got.gram), np.isfinite(ref))
    norms = np.sqrt(np.abs(np.diag(ref)))
    ok = np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        err = np.abs(got.gram - ref)[ok]
        bound = 1e-13 * np.outer(norms, norms)  # 0·Inf: a zero row, whose entries are 0
    assert (err <= np.nan_to_num(bound, nan=0.0)[ok]).all(), err.max()

    finite = x[np.isfinite(x)]
    assert got.n == x.size
    assert got.zeros == int(np.count_nonzero(x == 0))
    assert got.nonfinite == x.size - finite.size
    if finite.size:
        assert got.min == finite.min() and got.max == finite.max()
    else:
        assert math.isnan(got.min) and math.isnan(got.max)
    exact = math.fsum(finite.tolist())
    if math.isfinite(exact):
        assert abs(got.sum - exact) <= 1e-13 * math.fsum(np.abs(finite).tolist())
    else:
        assert got.sum == exact
    if not moments:
        assert got.m2 is None and got.m4 is None
        return
    assert got.m2 is not None and got.m4 is not None
    if not finite.size:
        assert got.m2 == 0.0 and got.m4 == 0.0
        return
    mu = exact / finite.size
    d = finite - mu
    with np.errstate(over="ignore"):
        ref_m2 = math.fsum((d * d).tolist())
        ref_m4 = math.fsum((d * d * d * d).tolist())
    for value, ref_value in ((got.m2, ref_m2), (got.m4, ref_m4)):
        if math.isfinite(ref_value):  # 1e300 in float64: Σd⁴ overflows, Inf or NaN
            assert abs(value - ref_value) <= 1e-12 * ref_value
        else:
            assert not math.isfinite(value)


def factor(shape: tuple[int, int], mode: str, seed: int, *, mean: float = 0.0,
           scale: float = 1e-2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, other = shape
    stored = (r, other) if mode == "rows" else (other, r)
    return rng.normal(mean, scale, size=stored)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_trained_like_factors(impl: str, dtype: str, mode: str) -> None:
    for i, shape in enumerate(SHAPES):
        raw = encode(factor(shape, mode, i, mean=1e-3), dtype)
        check(run(impl, raw, dtype, mode, True), raw, dtype, mode, True)
        check(run(impl, raw, dtype, mode, False), raw, dtype, mode, False)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_special_values(impl: str, dtype: str, mode: str) -> None:
    """±0, subnormals and huge finite values (exact), then NaN and ±Inf: counted, kept out of
    Σx/min/max/moments, and making the Gram non-finite where they enter it."""
    sub, huge = SPECIAL[dtype]
    for shape in [(16, 1031), (3, 77), (17, 40), (64, 33)]:
        x = factor(shape, mode, 7)
        flat = x.reshape(-1)
        flat[::11] = 0.0
        flat[1::13] = -0.0
        flat[2::17] = sub
        flat[3::19] = -sub
        flat[5] = huge
        flat[6] = -huge
        raw = encode(x, dtype)
        check(run(impl, raw, dtype, mode, True), raw, dtype, mode, True)
        flat[8] = np.nan
        flat[9] = np.inf
        flat[-1] = -np.inf
        raw = encode(x, dtype)
        check(run(impl, raw, dtype, mode, True), raw, dtype, mode, True)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_entries_non_finite(impl: str) -> None:
    raw = encode(np.full((4, 9), np.nan), "F16")
    got = run(impl, raw, "F16", "rows", True)
    check(got, raw, "F16", "rows", True)
    assert got.nonfinite == 36 and got.sum == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_every_fp16_and_bf16_bit_pattern_decodes_exactly(impl: str) -> None:
    """All 65536 words as one factor: min, max, zeros and non-finite counts are exact only
    if every value (subnormals, Inf, NaN included) is decoded exactly."""
    words = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    for dtype in ("F16", "BF16"):
        for mode in ("rows", "cols"):
            check(run(impl, words, dtype, mode, False), words, dtype, mode, False)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_mean_factor(impl: str) -> None:
    """A DoRA-magnitude-like factor (|μ|/σ = 1000): the block-centred moments stay exact."""
    raw = encode(factor((1, 4096), "rows", 3, mean=1.0, scale=1e-3), "F32")
    check(run(impl, raw, "F32", "rows", True), raw, "F32", "rows", True)


# Ranks around every tile and block size of the compiled kernels: the dot kernel's 4×4
# (AVX-512) and 2×4 tiles (r ≤ 16), the outer kernel's 8×16 (AVX-512), 4×8 (AVX2) and 2×8
# (baseline) tiles with the diagonal squares' lower halves skipped, the switch from AVX2 to
# AVX-512 above r = 8, and lengths around the outer kernel's 64-vector blocks.
TILE_RANKS = (1, 2, 3, 5, 7, 8, 9, 12, 13, 15, 16, 17, 23, 24, 25, 31, 33, 63, 64, 65, 130)


@pytest.mark.parametrize("impl", ["compiled", "compiled-baseline", "compiled-avx2"])
@pytest.mark.parametrize("dtype", ["F16", "F32"])
@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_ranks_around_the_tile_sizes(impl: str, dtype: str, mode: str) -> None:
    for r in TILE_RANKS:
        for i, length in enumerate((3, 64, 65, 300)):
            raw = encode(factor((r, length), mode, 100 * r + i, mean=1e-3), dtype)
            check(run(impl, raw, dtype, mode, True), raw, dtype, mode, True)


@pytest.mark.parametrize("impl", ["compiled", "compiled-baseline", "compiled-avx2"])
@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_non_finite_in_a_later_block(impl: str, mode: str) -> None:
    """NaN/Inf in the middle and last of several blocks: only those blocks take the slow
    path, and the statistics still cover every block."""
    for r in (3, 16, 17, 64, 130):
        x = factor((r, 300), mode, r)
        flat = x.reshape(-1)
        flat[flat.size // 2] = np.inf
        flat[-1] = np.nan
        raw = encode(x, "BF16")
        check(run(impl, raw, "BF16", mode, True), raw, "BF16", mode, True)


def test_bad_views_are_refused() -> None:
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="C-contiguous 2-D uint16"):
        fused.side_pass(x, "F16", "rows")
    with pytest.raises(ValueError, match="C-contiguous"):
        fused.side_pass(x.T, "F32", "rows")
    with pytest.raises(ValueError, match="mode"):
        fused.side_pass(x, "F32", "diag")
    with pytest.raises(ValueError, match="dtype"):
        fused.side_pass(x, "F8", "rows")


@pytest.mark.skipif(fused._compiled is None, reason="loracheck._fused is not built")
def test_two_threads_at_once() -> None:
    """The kernel releases the GIL: two threads measuring two factors get the same numbers
    as one after the other."""
    raws = [encode(factor((16, 20000), "rows", s), "F16") for s in (1, 2)]
    alone = [fused.compiled_side_pass(r, "F16", "rows", fourth_moment=True) for r in raws]
    together: list[fused.SidePass | None] = [None, None]

    def work(i: int) -> None:
        for _ in range(5):
            together[i] = fused.compiled_side_pass(raws[i], "F16", "rows", fourth_moment=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        assert b is not None
        assert np.array_equal(a.gram, b.gram) and (a.sum, a.m4) == (b.sum, b.m4)


@pytest.mark.skipif(fused._compiled is None, reason="loracheck._fused is not built")
def test_many_passes_in_one_call_equal_one_call_each() -> None:
    """side_pass_many (one GIL release for a chunk of factors) gives, item by item, exactly
    what side_pass_values gives for that item alone: every dtype and mode, ranks below and
    above the AVX-512 cut (r <= 8 runs AVX2), an empty factor and one holding NaN/Inf. The
    passes share one scratch: a padded rank after a larger one (rows r..rp of S, D's padding
    columns) must not read what the one before left there."""
    items: list[fused.PassItem] = []
    for i, (dtype, mode, shape) in enumerate([
            ("F16", "rows", (16, 4099)), ("BF16", "cols", (515, 17)), ("F32", "rows", (4, 300)),
            ("F64", "cols", (129, 64)), ("F16", "cols", (0, 8)), ("BF16", "rows", (3, 1000)),
            ("F16", "rows", (64, 4099)), ("F16", "rows", (13, 4099)),
            ("F32", "cols", (64, 1000)), ("F32", "cols", (13, 1000)),
            ("F16", "cols", (130, 300)), ("BF16", "rows", (9, 300)), ("F16", "cols", (5, 64))]):
        raw = encode(factor(shape, mode, i), dtype)
        items.append((raw, dtype, mode, np.empty((shape[0], shape[0])), i % 2 == 0))
    broken = encode(factor((8, 700), "rows", 9), "F16")
    broken[3, 5], broken[6, 1] = 0x7E00, 0x7C00  # NaN, +Inf
    items.append((broken, "F16", "rows", np.empty((8, 8)), True))
    many = fused.side_pass_many(items)
    assert len(many) == len(items)
    for (raw, dtype, mode, gram, moments), got in zip(items, many, strict=True):
        alone = np.empty_like(gram)
        want = fused.side_pass_values(raw, dtype, mode, alone, moments)
        assert np.array_equal(gram, alone, equal_nan=True)
        assert [x for x in got if x == x] == [x for x in want if x == x]  # NaN where NaN
        assert [x != x for x in got] == [x != x for x in want]
        assert (got[6] != got[6]) == (not moments)  # m2 is NaN without the central sums
    assert many[-1][3] == 2  # the broken factor's NaN and Inf, counted
    assert fused.side_pass_many([]) == []


@pytest.mark.skipif(fused._compiled is None, reason="loracheck._fused is not built")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["rows", "cols"])
def test_the_gram_diagonal_statistics_match_numpy(dtype: str, mode: str) -> None:
    """Σx², and the mean and population std of the r rank-axis norms (A's rows, B's columns),
    from the Gram's diagonal: numpy's on the decoded factor, to 1e-13 relative; a zero
    factor gives zeros."""
    for i, shape in enumerate(s for s in SHAPES if s[0] > 0):
        raw = encode(factor(shape, mode, i, mean=1e-3), dtype)
        x = reference_decode(raw, dtype)
        values = fused.side_pass_values(raw, dtype, mode, np.empty((shape[0], shape[0])),
                                        False)
        norms = np.linalg.norm(x, axis=1 if mode == "rows" else 0)
        for got, want in ((values[8], float((x * x).sum())), (values[9], float(norms.mean())),
                          (values[10], float(norms.std()))):
            assert abs(got - want) <= 1e-13 * abs(want), (shape, got, want)
    zero = encode(np.zeros((16, 40) if mode == "rows" else (40, 16)), dtype)
    assert fused.side_pass_values(zero, dtype, mode, np.empty((16, 16)), True)[8:] == (
        0.0, 0.0, 0.0)


@pytest.mark.skipif(fused._compiled is None, reason="loracheck._fused is not built")
def test_many_passes_refuse_a_bad_item_whole() -> None:
    """One bad item refuses the call, before any pass runs (nothing half-written)."""
    good = encode(factor((4, 100), "rows", 1), "F32")
    gram = np.full((4, 4), -1.0)
    with pytest.raises(ValueError, match="gram_out"):
        fused.side_pass_many([(good, "F32", "rows", gram, True),
                              (good, "F32", "rows", np.empty(3), True)])
    assert (gram == -1.0).all()
    with pytest.raises(TypeError, match="tuple"):
        fused._compiled.side_pass_many([[good, 4, 100, 2, 0, 1, gram]], 0)


def _compiler_present() -> bool:
    cc = sysconfig.get_config_var("CC")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return bool(cc) and shutil.which(shlex.split(cc)[0]) is not None and header.is_file()


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler or Python.h here")
def test_kernel_is_built_where_a_compiler_is() -> None:
    """The extension is optional in the build, so a broken build would pass silently:
    where a compiler and Python.h exist, it must have been built."""
    module = importlib.import_module("loracheck._fused")
    assert module.variant() in {"baseline", "avx2+fma", "avx512f"}


def _kernel_in_subprocess(choice: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LORACHECK_KERNEL"}
    if choice is not None:
        env["LORACHECK_KERNEL"] = choice
    out = subprocess.run([sys.executable, "-c", "from loracheck import fused; print(fused.KERNEL)"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_environment_selects_the_numpy_fallback() -> None:
    assert _kernel_in_subprocess("numpy") == "numpy"
    default = _kernel_in_subprocess(None)
    if fused._compiled is None:
        assert default == "numpy"
    else:
        assert default == f"compiled ({fused._compiled.variant()})"
        assert _kernel_in_subprocess("baseline") == "compiled (baseline)"


def _records_close(a: object, b: object) -> None:
    """Two measurements of the same factors agree to rounding (they add in another order)."""
    import dataclasses as dc

    for field in dc.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, float) and isinstance(y, float):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12, nan_ok=True), field.name
        elif isinstance(x, tuple) and x and isinstance(x[0], float):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * max(x))
        else:
            assert x == y, field.name


@pytest.mark.parametrize("which", ["peft-fp32", "peft-bf16", "peft-fp16", "mlx", "torchtune",
                                   "litgpt", "nan", "kohya-conv-fp16"])
def test_loader_gives_the_same_records_with_and_without_the_kernel(
        which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every layer the loader measures from stored bytes (compiled pass) matches the numpy
    path on the decoded values: real writers' files in every dtype, mlx's transposed layout,
    and a factor with NaN (which the pass hands back to numpy)."""
    from builders import peft_adapter
    from loracheck.discover import discover
    from loracheck.load import load_unit

    if not fused.COMPILED:
        pytest.skip("the compiled kernel is not built here")
    fixtures = Path(__file__).parent / "fixtures" / "writers"
    if which.startswith("peft"):
        import torch

        path = peft_adapter(tmp_path / "a", steps=2, target_modules="all-linear")
        if which != "peft-fp32":
            from safetensors.torch import load_file, save_file

            weights = path / "adapter_model.safetensors"
            tensors = load_file(str(weights))
            dtype = torch.bfloat16 if which == "peft-bf16" else torch.float16
            save_file({k: v.to(dtype) for k, v in tensors.items()}, str(weights))
    elif which == "kohya-conv-fp16":
        from builders import write_safetensors

        rng = np.random.default_rng(3)
        name = "lora_unet_down_blocks_0_resnets_0_conv1"  # 3×3 conv: down (r, in, 3, 3)
        path = write_safetensors(tmp_path / "k.safetensors", {
            f"{name}.lora_down.weight": rng.normal(0, 0.05, (8, 32, 3, 3)).astype(np.float16),
            f"{name}.lora_up.weight": rng.normal(0, 0.01, (64, 8, 1, 1)).astype(np.float16),
            f"{name}.alpha": np.array(4.0, dtype=np.float16),
        }, {"ss_network_module": "networks.lora", "ss_network_dim": "8"})
    elif which == "nan":
        from safetensors.torch import load_file, save_file

        path = peft_adapter(tmp_path / "a", steps=2)
        weights = path / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        first = sorted(k for k in tensors if "lora_A" in k)[0]
        tensors[first][0, 0] = float("nan")
        save_file(tensors, str(weights))
    else:
        path = next(p for p in sorted((fixtures / which).iterdir()) if p.is_dir())
    unit = next(u for u in discover([path]) if u.weights is not None)
    calls: list[str] = []
    real = fused.side_pass_values  # the loader's lean entry to the kernel

    def counted(*args: object, **kwargs: object) -> fused.PassValues:
        calls.append(str(args[1]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fused, "side_pass_values", counted)
    compiled = load_unit(unit)
    assert compiled is not None
    if which == "litgpt":  # a pickle: no stored-bytes view, numpy measures it
        assert calls == []
    else:  # the fused pass measured the factors (all but a NaN one and its partner)
        assert len(calls) >= 2 * len(compiled.layers) - (2 if which == "nan" else 0), calls
    monkeypatch.setattr(fused, "COMPILED", False)
    plain = load_unit(unit)
    assert compiled is not None and plain is not None and compiled.layers
    assert [layer.name for layer in compiled.layers] == [layer.name for layer in plain.layers]
    for lc, lp in zip(compiled.layers, plain.layers, strict=True):
        for name in ("a_stats", "b_stats", "delta"):
            x, y = getattr(lc, name), getattr(lp, name)
            assert (x is None) == (y is None), name
            if x is not None:
                _records_close(x, y)
    assert compiled.init is not None and plain.init is not None
    _records_close(compiled.init, plain.init)
    assert compiled.stage == plain.stage


@pytest.mark.skipif(fused._compiled is None, reason="loracheck._fused is not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_b_sigma_from_the_sum_of_squares_and_its_two_pass_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """B's pass takes no central sums: σ² = Σx²/n − μ². A B whose mean dwarfs its spread
    (that difference cancels) is decoded and measured two-pass instead, a zero B is not; each
    σ within 1e-12 relative of numpy's std of the decoded factor (0 exactly for zeros)."""
    from builders import write_safetensors
    from loracheck import load, stats
    from loracheck.discover import discover
    from loracheck.model import FactorStats

    rng = np.random.default_rng(7)
    bs = {"zero": np.zeros((4096, 16)), "offset": 0.5 + 1e-5 * rng.normal(size=(4096, 16)),
          "trained": 1e-3 * rng.normal(size=(4096, 16))}
    tensors = {}
    for name, b in bs.items():
        tensors[f"base_model.model.{name}.q_proj.lora_A.weight"] = rng.normal(
            0, 0.02, size=(16, 4096)).astype(np.float32)
        tensors[f"base_model.model.{name}.q_proj.lora_B.weight"] = b.astype(np.float32)
    (unit,) = discover([write_safetensors(tmp_path / "b.safetensors", tensors)])
    decoded: list[tuple[str, float]] = []  # the factors measured on their decoded values
    side_stats = stats.side_stats

    def counted(x: np.ndarray, side: str, **kwargs: bool) -> tuple[FactorStats, np.ndarray]:
        decoded.append((side, float(x.mean())))
        return side_stats(x, side, **kwargs)

    monkeypatch.setattr(stats, "side_stats", counted)
    adapter = load.load_unit(unit, load.LoadOptions(threads=threads))
    assert adapter is not None and len(adapter.layers) == 3
    assert [(side, round(mean, 3)) for side, mean in decoded] == [("B", 0.5)]
    for layer in adapter.layers:
        want = np.asarray(bs[layer.name.split(".")[0]], dtype=np.float32).astype(np.float64)
        assert layer.b_stats is not None
        assert abs(layer.b_stats.std - want.std()) <= 1e-12 * want.std()
        assert layer.b_stats.mean == pytest.approx(want.mean(), rel=1e-12, abs=0.0)
