"""Benchmark `loracheck diff A B` on two synthetic Llama-2-7B-shaped r=16 all-linear adapters
(the generator of bench_inspect.py: 224 pairs), side by side with `loracheck inspect` on both
and with the naive approach (materialise both ΔW in float64 and subtract).

    python benchmarks/bench_diff.py [--workdir DIR] [--quick]

Prints, per pair of adapters: diff's wall time as a ratio to `inspect A B` (goal ≤ 2×) and
diff's peak RSS; then the naive approach, timed on layer 0 (its 7 modules) and extrapolated to
all 32 layers as stated, with the speed-up.

The pairs: a bf16 re-save of an fp32 adapter (the same random draws, rounded: diff's
factor-difference route), a copy of the file (bitwise-equal factors), and r=16 against r=8
(other shapes: the stacked route).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_inspect import LAYERS, PY, timed, write_adapter


def diff_cmd(a: Path, b: Path) -> list[str]:
    return [PY, "-m", "loracheck", "diff", str(a), str(b), "--format", "json"]


def inspect_both_cmd(a: Path, b: Path) -> list[str]:
    return [PY, "-m", "loracheck", "inspect", str(a), str(b), "--format", "json"]


def naive_seconds(a: Path, b: Path) -> tuple[float, dict[str, float]]:
    """What a user writes: torch loads both files, materialises both ΔW in float64 per module
    and takes the norm of the difference. Layer 0 timed, extrapolated to all layers."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    ta = load_file(str(a / "adapter_model.safetensors"))
    tb = load_file(str(b / "adapter_model.safetensors"))
    load_time = time.perf_counter() - start
    keys = sorted(k for k in ta if k.endswith("lora_A.weight") and ".layers.0." in k)
    per_module: dict[str, float] = {}
    for key in keys:
        start = time.perf_counter()
        bkey = key.replace("lora_A", "lora_B")
        delta_a = 2.0 * (ta[bkey].double() @ ta[key].double())
        delta_b = 2.0 * (tb[bkey].double() @ tb[key].double())
        torch.linalg.norm(delta_a - delta_b) / torch.linalg.norm(delta_a)
        per_module[key.split(".")[-3]] = time.perf_counter() - start
    return load_time + sum(per_module.values()) * LAYERS, per_module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="the bf16 re-save only, no naive")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lc-bench-diff-"))
    fp32 = write_adapter(work / "F32-r16", rank=16, dtype="F32")
    bf16 = write_adapter(work / "BF16-r16", rank=16, dtype="BF16")
    pairs = [("fp32 vs its bf16 re-save, r=16", fp32, bf16)]
    if not args.quick:
        r8 = write_adapter(work / "F32-r8", rank=8, dtype="F32")
        copy = work / "F32-r16-copy"  # another folder: `inspect` reads one path given twice once
        if not copy.exists():
            shutil.copytree(fp32, copy)
        pairs += [("fp32 vs a copy of the file, r=16", fp32, copy),
                  ("fp32 r=16 vs fp32 r=8", fp32, r8)]
    for _, a, b in pairs:  # warm the page cache
        for folder in (a, b):
            timed([PY, "-c", f"open({str(folder / 'adapter_model.safetensors')!r}, 'rb').read()"],
                  1)

    print("| pair | inspect A B s | diff A B s | ratio (goal <= 2) | diff peak RSS MiB |")
    print("|---|---|---|---|---|")
    for label, a, b in pairs:
        inspect_wall, _ = timed(inspect_both_cmd(a, b))
        diff_wall, rss = timed(diff_cmd(a, b))
        print(f"| {label} | {inspect_wall:.3f} | {diff_wall:.3f} | "
              f"{diff_wall / inspect_wall:.2f}x | {rss / 1024:.0f} |")

    if not args.quick:
        naive, per_module = naive_seconds(fp32, bf16)
        ours, _ = timed(diff_cmd(fp32, bf16))
        detail = ", ".join(f"{k} {v:.3f}s" for k, v in per_module.items())
        print(f"\nnaive (torch load both, materialise both ΔW in float64, subtract): layer 0 "
              f"timed ({detail}), extrapolated to {LAYERS} layers: {naive:.1f} s")
        print(f"loracheck diff on the same pair: {ours:.2f} s -> speed-up {naive / ours:.1f}x")


if __name__ == "__main__":
    main()
