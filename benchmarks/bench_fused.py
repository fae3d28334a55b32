"""Benchmark loracheck.fused.side_pass (the compiled single-pass kernel) side by side with numpy
(decode to float64, BLAS Gram, one pass per statistic) and with today's stats.side_stats, on
factors shaped like one Llama-2-7B all-linear layer.

    python benchmarks/bench_fused.py [--ranks 16 64 256] [--blas-threads N] [--repeat 5]

Per dtype and rank: ns per stored element over the layer's 14 factors (A (r, in) in "rows"
mode with the fourth moment, as kurtosis is taken for A; B (out, r) in "cols" mode), best of
``--repeat``, and the ratios. One thread each: BLAS is pinned to ``--blas-threads`` (default 1,
as loracheck pins it) before numpy loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--dtypes", nargs="+", default=["F16", "BF16", "F32"])
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.blas_threads)

    import numpy as np

    from loracheck import fused
    from loracheck.stats import side_stats

    hidden, inter = 4096, 11008
    # (fan_in, fan_out) of q, k, v, o, gate, up, down
    modules = [(hidden, hidden)] * 4 + [(hidden, inter)] * 2 + [(inter, hidden)]
    rng = np.random.default_rng(0)

    def encode(x: np.ndarray, dtype: str) -> np.ndarray:
        if dtype == "F16":
            return x.astype(np.float16).view(np.uint16)
        if dtype == "BF16":
            bits = x.astype(np.float32).view(np.uint32)
            return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return x.astype(np.float32)

    def as_float(raw: np.ndarray, dtype: str) -> np.ndarray:
        """What stats.side_stats is handed today: the factor as numpy floats (bf16 as f32)."""
        if dtype == "F16":
            return raw.view(np.float16)
        if dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    compiled = fused._compiled is not None and fused.KERNEL != "numpy"
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cores {os.cpu_count()}, "
          f"BLAS threads {args.blas_threads}")
    print(f"fused.KERNEL = {fused.KERNEL}")
    if not compiled:
        print("(the compiled kernel is not in use: both columns are numpy)")
    print("\nns per stored element, one 7B layer (14 factors), best of", args.repeat)
    print("| dtype | r | elements | side_pass | numpy pass | stats.side_stats "
          "| numpy / side_pass | side_stats / side_pass |")
    print("|---|---|---|---|---|---|---|---|")
    for rank in args.ranks:
        for dtype in args.dtypes:
            factors = []
            for fan_in, fan_out in modules:
                bound = 1 / np.sqrt(fan_in)
                a = encode(rng.uniform(-bound, bound, size=(rank, fan_in)), dtype)
                b = encode(rng.normal(0, 1e-3, size=(fan_out, rank)), dtype)
                factors += [(a, "rows", True), (b, "cols", False)]
            n = sum(raw.size for raw, _, _ in factors)

            def ours(factors: list[tuple[np.ndarray, str, bool]] = factors,
                     dtype: str = dtype) -> None:
                for raw, mode, fourth in factors:
                    fused.side_pass(raw, dtype, mode, fourth_moment=fourth)  # type: ignore[arg-type]

            def numpy_pass(factors: list[tuple[np.ndarray, str, bool]] = factors,
                           dtype: str = dtype) -> None:
                for raw, mode, fourth in factors:
                    fused.numpy_side_pass(raw, dtype, mode, fourth_moment=fourth)  # type: ignore[arg-type]

            def today(factors: list[tuple[np.ndarray, str, bool]] = factors,
                      dtype: str = dtype) -> None:
                for raw, mode, fourth in factors:
                    side_stats(as_float(raw, dtype), "A" if mode == "rows" else "B",
                               kurtosis=fourth)

            t_ours, t_np, t_today = best(ours), best(numpy_pass), best(today)
            scale = 1e9 / n
            print(f"| {dtype} | {rank} | {n / 1e6:.2f} M | {t_ours * scale:.2f} | "
                  f"{t_np * scale:.2f} | {t_today * scale:.2f} | {t_np / t_ours:.1f}x | "
                  f"{t_today / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
