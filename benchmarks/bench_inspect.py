"""Benchmark `loracheck inspect` on a synthetic Llama-2-7B-shaped adapter, side by side with
merely reading the bytes, with numpy/BLAS forming the same Grams, and with the naive approach
(torch: materialise ΔW, full SVD).

    python benchmarks/bench_inspect.py [--workdir DIR] [--quick]

Prints, for each dtype/rank: the marginal wall time of `inspect` over a tiny adapter, as a
ratio to the time a Python process takes to read the file's bytes once (warm cache, minus the
bare interpreter start), each wall the best of 11 rounds that run the four commands in turn;
at r=256, inspect's wall time as a ratio to a numpy process that decodes the same bytes to
float64 and forms the same Grams with BLAS on every core (the flop floor of the method);
where the time goes (the compiled pass alone, loading with rules, the JSON renderer, each in a
warm process), and the records, rules and JSON beside the statistics in CPU seconds, with the
JSON renderer's compiled line writer beside json's own encoder; start-up times and whether
torch was imported; the speed-up over the naive approach (timed on a few layers and
extrapolated to all 224, as stated); peak RSS with 32 and 128 layers and at r=256; and how
much CPU time the host stole from this virtual machine meanwhile. Issue 14's goals:
marginal/read <= 2x at r=16 (fp16, bf16, fp32), <= 4x for fp16 r=64, inspect/Grams <= 1.5x
at r=256, start-up <= 0.3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _env import use_installed_env

HIDDEN, INTER, LAYERS = 4096, 11008, 32
MODULES = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (HIDDEN, INTER),
    "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}
PY = sys.executable


def _encode(arr: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return arr.astype(np.float32).tobytes()
    if dtype == "F16":
        return arr.astype(np.float16).tobytes()
    bits = arr.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def write_adapter(folder: Path, *, rank: int, dtype: str, layers: int = LAYERS) -> Path:
    """A PEFT adapter folder shaped like Llama-2-7B all-linear LoRA, written tensor by tensor."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    order: list[tuple[str, tuple[int, int], str]] = []
    offset = 0
    for layer in range(layers):
        for mod, (fan_in, fan_out) in MODULES.items():
            base = f"base_model.model.model.layers.{layer}.{mod}"
            for key, shape, role in ((f"{base}.lora_A.weight", (rank, fan_in), "A"),
                                     (f"{base}.lora_B.weight", (fan_out, rank), "B")):
                nbytes = shape[0] * shape[1] * size
                header[key] = {"dtype": dtype, "shape": list(shape),
                               "data_offsets": [offset, offset + nbytes]}
                order.append((key, shape, role))
                offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _key, shape, role in order:
            if role == "A":
                bound = 1 / np.sqrt(shape[1])
                arr = rng.uniform(-bound, bound, size=shape)
            else:
                arr = rng.normal(0, 1e-3, size=shape)
            f.write(_encode(arr, dtype))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.05,
              "target_modules": [m.split(".")[-1] for m in MODULES], "init_lora_weights": True,
              "use_rslora": False, "use_dora": False, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def timed(cmd: list[str], repeat: int = 3,
          env: dict[str, str] | None = None) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs and the peak RSS (KiB) of the child."""
    best, peak = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr.read().decode()[-500:]}")
        best, peak = min(best, elapsed), max(peak, usage.ru_maxrss)
    return best, peak


ROUNDS = 11


def interleaved(cmds: list[list[str]], rounds: int = ROUNDS) -> list[float]:
    """The best wall time of each command over ``rounds`` rounds that run them in turn."""
    best = [float("inf")] * len(cmds)
    for _ in range(rounds):
        for i, cmd in enumerate(cmds):
            best[i] = min(best[i], timed(cmd, 1)[0])
    return best


def read_bytes_cmd(path: Path) -> list[str]:
    code = (f"f = open({str(path)!r}, 'rb')\n"
            "while f.read(1 << 24): pass\n")
    return [PY, "-c", code]


def grams_floor_cmd(path: Path) -> list[str]:
    """numpy with BLAS on every core: decode each factor of the file to float64 and form its
    r×r Gram, nothing else (what inspect's statistics cannot do without)."""
    code = f"""
import json, struct, numpy as np
path = {str(path)!r}
with open(path, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode='r', offset=8 + n)
kinds = {{'F16': np.float16, 'F32': np.float32, 'BF16': np.uint16}}
for key, info in header.items():
    if key == '__metadata__':
        continue
    begin, end = info['data_offsets']
    raw = data[begin:end].view(kinds[info['dtype']]).reshape(info['shape'])
    if info['dtype'] == 'BF16':
        x = (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        x = raw.astype(np.float64)
    g = x @ x.T if 'lora_A' in key else x.T @ x
"""
    return [PY, "-c", code]


BREAKDOWN = """
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from loracheck.engine import check_adapter
from loracheck.fused import COMPILED, side_pass_many, side_pass_values
from loracheck.render import json_out
from loracheck.render.json_out import render_json
from loracheck.runner import RunOptions, run
from loracheck.safetensors_io import SafetensorsFile
from loracheck.stats import batch_delta_from_grams

folder = sys.argv[1]
path = folder + '/adapter_model.safetensors'

def best(fn, rounds=5, clock=time.perf_counter):
    out = float('inf')
    for _ in range(rounds):
        start = clock()
        fn()
        out = min(out, clock() - start)
    return out

def items(st):
    for key, entry in st.entries.items():
        raw = st.read_raw(key).reshape(entry.shape)
        if raw.dtype.kind == 'f' and raw.dtype.itemsize == 2:
            raw = raw.view(np.uint16)  # the pass reads fp16 as its bits, as inspect does
        mode = 'rows' if 'lora_A' in key else 'cols'
        r = raw.shape[0] if mode == 'rows' else raw.shape[1]
        # A's pass takes the central sums (kurtosis), B's does not, as inspect's
        yield raw, entry.dtype, mode, np.empty((r, r)), mode == 'rows'

def kernel():
    with SafetensorsFile.open(path) as st:
        for item in items(st):
            side_pass_values(*item)

def kernel_all_cores():
    # every factor in chunks of 64, one side_pass_many call each, on a pool of one thread per
    # CPU: what the pass alone costs when nothing else runs beside it
    with SafetensorsFile.open(path) as st:
        every = list(items(st))
        chunks = [every[i:i + 64] for i in range(0, len(every), 64)]
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(side_pass_many, chunks))

def grams():
    # every pair's two Grams, A's and B's, as the pass gives them
    with SafetensorsFile.open(path) as st:
        out = {}
        for item, key in zip(items(st), st.entries):
            side_pass_values(*item)
            out[key] = item[3]
    keys = sorted(k for k in out if 'lora_A' in k)
    return (np.stack([out[k] for k in keys]),
            np.stack([out[k.replace('lora_A', 'lora_B')] for k in keys]))

def solves(g_a, g_b):
    # ΔW's statistics from the Grams, in groups of 32 as inspect solves them
    for i in range(0, len(g_a), 32):
        batch_delta_from_grams(g_a[i:i + 32], g_b[i:i + 32], [1.0] * len(g_a[i:i + 32]))

def gram_fmas():
    # the products i <= j of every factor's float64 Gram: r(r+1)/2 per vector x(k)
    with SafetensorsFile.open(path) as st:
        total = 0
        for key, entry in st.entries.items():
            rows, cols = entry.shape
            r, n = (rows, cols) if 'lora_A' in key else (cols, rows)
            total += r * (r + 1) // 2 * n
    return total

def dgemm_rate():
    # float64 FMAs per second of BLAS dgemm on one core (1024², into one output array)
    x = np.random.default_rng(0).normal(size=(1024, 1024))
    y, z = x.T.copy(), np.empty_like(x)
    return 1024 ** 3 / best(lambda: np.matmul(x, y, out=z))

def render_with_json_module(report):
    writer = json_out.LINE_WRITER
    json_out.LINE_WRITER = None
    try:
        return render_json(report)
    finally:
        json_out.LINE_WRITER = writer

report, settings = run([folder], RunOptions())
g_a, g_b = grams()
print(json.dumps({
    'kernel': best(kernel) if COMPILED else float('nan'),
    'kernel_all': best(kernel_all_cores) if COMPILED else float('nan'),
    'run': best(lambda: run([folder], RunOptions())),
    'json': best(lambda: render_json(report)),
    # CPU seconds of all threads: the statistics (the pass on every core, as run takes it --
    # two threads reading at once cost more CPU seconds than one alone -- and the solves) and
    # run's whole cost, whose difference is the records, the loader's Python and the rules
    # (page faults are in both: the pass maps the file afresh each round, as run does)
    'kernel_cpu': best(kernel_all_cores, clock=time.process_time) if COMPILED else float('nan'),
    'solves_cpu': best(lambda: solves(g_a, g_b), clock=time.process_time),
    'run_cpu': best(lambda: run([folder], RunOptions()), clock=time.process_time),
    'rules': best(lambda: check_adapter(report.adapters[0], settings)),
    'json_module': best(lambda: render_with_json_module(report)),
    'same_json': render_json(report) == render_with_json_module(report),
    'gram_fmas': gram_fmas(),
    'dgemm_rate': dgemm_rate(),
}))
"""


def breakdown(folder: Path) -> dict[str, float]:
    """In one warm process: the compiled pass alone over every factor of the file (on one
    thread, and in chunks on one thread per CPU; the file opened by loracheck's reader and
    mapped afresh each round, so its pages are faulted in as inspect's are, but never
    dropped), `runner.run` (load, statistics, rules)
    and the JSON renderer, each the best of 5: where inspect's marginal time goes."""
    # BLAS on one thread, as the CLI sets it (cli.py)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([PY, "-c", BREAKDOWN, str(folder)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"breakdown failed: {proc.stderr[-800:]}")
    return {k: float(v) for k, v in json.loads(proc.stdout).items()}


def blas_env() -> dict[str, str]:
    cores = str(os.cpu_count() or 1)
    return {**os.environ, "OPENBLAS_NUM_THREADS": cores, "OMP_NUM_THREADS": cores,
            "MKL_NUM_THREADS": cores}


def inspect_cmd(path: Path) -> list[str]:
    return [PY, "-m", "loracheck", "inspect", str(path), "--format", "json"]


def naive_seconds_per_layer(folder: Path, n_layers: int = 3) -> float:
    """The approach a user writes: torch loads the file, materialises ΔW, runs a full SVD."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    load_time = time.perf_counter() - start
    keys = sorted(k for k in tensors if k.endswith("lora_A.weight"))
    # One of each module shape, so the extrapolation is fair to the mix of 4096 and 11008.
    picks = [k for k in keys if ".layers.0." in k][: max(n_layers, 7)]
    per_module = {}
    for key in picks:
        a = tensors[key].double()
        b = tensors[key.replace("lora_A", "lora_B")].double()
        start = time.perf_counter()
        delta = b @ a
        torch.linalg.svdvals(delta)
        torch.linalg.norm(delta)
        per_module[key.split(".")[-3]] = time.perf_counter() - start
    per_layer = sum(per_module.values())
    return load_time + per_layer * LAYERS, per_module  # type: ignore[return-value]


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) jiffies of every CPU since boot, from /proc/stat ((0, 0) elsewhere): the
    time a virtual machine's host gave to others while this one wanted to run."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def main() -> None:
    steal_start, all_start = cpu_ticks()
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fp16 r=16 only, no naive SVD")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lc-bench-"))
    use_installed_env(work / "pycache")
    tiny = write_adapter(work / "tiny", rank=4, dtype="F32", layers=1)
    cases = [("F16", 16), ("BF16", 16), ("F32", 16), ("F16", 64)]
    if args.quick:
        cases = [("F16", 16)]

    bare, _ = timed([PY, "-c", "pass"], 5)
    tiny_wall, _ = timed(inspect_cmd(tiny), 5)
    probe = subprocess.run(
        [PY, "-c", "import sys, contextlib, io\nfrom loracheck.cli import main\n"
         "with contextlib.redirect_stdout(io.StringIO()):\n"
         f"    main(['inspect', {str(tiny)!r}])\nprint('torch' in sys.modules)"],
        capture_output=True, text=True, check=True)
    from loracheck.fused import KERNEL

    print(f"{os.cpu_count()} CPUs; statistics kernel: {KERNEL}")
    print(f"bare interpreter start: {bare * 1000:.0f} ms")
    print(f"inspect tiny adapter (wall): {tiny_wall * 1000:.0f} ms   (goal <= 300 ms); "
          f"torch imported: {probe.stdout.strip()}")

    print("\n| adapter | file MB | read bytes s | inspect s | marginal s | ratio (goal <= 2) |")
    print("|---|---|---|---|---|---|")
    big_for_naive = None
    parts: list[tuple[str, float, dict[str, float]]] = []
    for dtype, rank in cases:
        folder = write_adapter(work / f"{dtype}-r{rank}", rank=rank, dtype=dtype)
        weights = folder / "adapter_model.safetensors"
        timed(read_bytes_cmd(weights), 1)  # warm the page cache
        # The four walls interleaved, best of each over ROUNDS rounds: the marginal is a
        # difference of start-up-sized walls, and a burst of other load on a shared machine
        # then lands on all four alike instead of on one of them.
        bare_w, read_wall, tiny_w, big_wall = interleaved(
            [[PY, "-c", "pass"], read_bytes_cmd(weights), inspect_cmd(tiny),
             inspect_cmd(folder)])
        marginal = big_wall - tiny_w
        read_cost = read_wall - bare_w
        mb = weights.stat().st_size / 1e6
        print(f"| {dtype} r={rank} | {mb:.0f} | {read_cost:.3f} | {big_wall:.3f} | "
              f"{marginal:.3f} | {marginal / read_cost:.2f}x |")
        if dtype == "F16" and rank == 16:
            big_for_naive = (folder, big_wall)
        parts.append((f"{dtype} r={rank}", read_cost, breakdown(folder)))

    print("\nwhere the time goes, in one warm process (best of 5; read = the row above's):")
    print(f"| adapter | read s | compiled pass alone, 1 thread s | the pass, {os.cpu_count()} "
          "threads s | run (load, stats, rules) s | JSON render s | float64 Gram FMA floor s "
          "(/ read) |")
    print("|---|---|---|---|---|---|---|")
    for name, read_cost, part in parts:
        # The Grams' i <= j products at dgemm's in-cache rate on every core: what no pass that
        # forms float64 Grams can beat on this machine (the decode, the other statistics and
        # the solves come on top).
        floor = part["gram_fmas"] / (part["dgemm_rate"] * (os.cpu_count() or 1))
        print(f"| {name} | {read_cost:.3f} | {part['kernel']:.3f} | {part['kernel_all']:.3f} | "
              f"{part['run']:.3f} | {part['json']:.3f} | {floor:.3f} ({floor / read_cost:.2f}x) |")
    print(f"(dgemm in cache, one core: {parts[0][2]['dgemm_rate'] / 1e9:.1f}e9 FMA/s)")

    # Issue 14, point 4: what is not statistics, beside the statistics, in CPU seconds.
    print("\nthe per-layer Python beside the statistics, 224 layers (CPU s of all threads, "
          "best of 5; statistics = the pass on every core + the ΔW solves; records = run's CPU "
          "minus the statistics' and the rules'):")
    print("| adapter | statistics s | records s | rules s | JSON s (compiled lines) | "
          "JSON s (json module) | json module / compiled | byte-identical | "
          "(records + rules + JSON) / statistics |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _, part in parts:
        statistics = part["kernel_cpu"] + part["solves_cpu"]
        records = part["run_cpu"] - statistics - part["rules"]
        other = records + part["rules"] + part["json"]
        print(f"| {name} | {statistics:.3f} | {records:.3f} | {part['rules']:.4f} | "
              f"{part['json']:.4f} | {part['json_module']:.4f} | "
              f"{part['json_module'] / part['json']:.1f}x | {bool(part['same_json'])} | "
              f"{other / statistics:.2f} |")

    assert big_for_naive is not None
    folder, ours = big_for_naive
    # Peak RSS must not grow with the layer count.
    four = write_adapter(work / "F16-r16-x4", rank=16, dtype="F16", layers=4 * LAYERS)
    _, rss1 = timed(inspect_cmd(folder), 1)
    _, rss4 = timed(inspect_cmd(four), 1)
    print(f"\npeak RSS, fp16 r=16: {rss1 / 1024:.0f} MiB with {LAYERS} layers, "
          f"{rss4 / 1024:.0f} MiB with {4 * LAYERS} layers (ratio {rss4 / rss1:.2f})")

    if not args.quick:
        high = write_adapter(work / "F16-r256", rank=256, dtype="F16")
        weights = high / "adapter_model.safetensors"
        timed(read_bytes_cmd(weights), 1)
        floor, _ = timed(grams_floor_cmd(weights), 2, env=blas_env())
        wall, rss_high = timed(inspect_cmd(high), 2)
        print(f"\nF16 r=256 ({weights.stat().st_size / 1e6:.0f} MB, {os.cpu_count()} CPUs): "
              f"inspect {wall:.2f} s, numpy/BLAS forming the same float64 Grams on every core "
              f"{floor - bare:.2f} s -> ratio {wall / (floor - bare):.2f}x (goal <= 1.5x); "
              f"peak RSS {rss_high / 1024:.0f} MiB")
        for child in high.iterdir():
            child.unlink()
        high.rmdir()

        naive, per_module = naive_seconds_per_layer(folder)
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in per_module.items())
        print(f"\nnaive (torch load + materialised ΔW + full SVD, float64): layer 0 timed "
              f"({detail}), extrapolated to {LAYERS} layers: {naive:.0f} s")
        print(f"loracheck inspect on the same adapter: {ours:.2f} s -> speed-up "
              f"{naive / ours:.0f}x (goal >= 1000x)")

    steal_end, all_end = cpu_ticks()
    if all_end > all_start:
        # A noisy host shows here: walls of a run with much stolen time are not comparable.
        print(f"\nCPU time stolen by the host during this run: "
              f"{100 * (steal_end - steal_start) / (all_end - all_start):.1f}%")


if __name__ == "__main__":
    main()
