"""Load held: `loracheck check` over trees of many tiny adapters and YAML configs.

    python benchmarks/bench_many_files.py            # 1,000 and 10,000 units (a few minutes)
    python benchmarks/bench_many_files.py --quick    # 1,000 units only, one run per row

Prints three tables:

1. YAML parse time per config, loracheck's reader with libyaml's C parser ("c") beside its
   pure-Python one and plain ``yaml.safe_load`` (the competitor), as ratios; on the tiny config
   the trees hold and, where ../shared/corpus is there, on its published YAML configs.
2. configs/s and adapters/s: trees of only configs and of only tiny PEFT adapters, 1,000 and
   10,000 units, ``--jobs 1`` and the default (auto: one worker per CPU), with the start-up of
   an empty run and the rate once start-up is taken off. The 10,000-unit trees run once per
   mode; the pure-Python YAML loader is timed on 1,000 configs only.
3. A mixed tree (half adapters, half configs) in text and JSON, peak RSS and the digest of the
   report of two runs: memory stays flat in the number of files and the report is the same
   whatever the scheduling.

The issue's goals (issue 12, point 6): >= 3,000 config files/s and >= 1,500 tiny adapters/s on
2 cores. The loracheck runs compile their bytecode once into a temporary
PYTHONPYCACHEPREFIX (as an installed package has), even where PYTHONDONTWRITEBYTECODE is set.
Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _env import installed_env

PY = sys.executable
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "configs"
CONFIG_TEXT = ("adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 0.05\n"
               "lora_target_linear: true\nbase_model: m{i}\n")


def write_adapter(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            bound = 1 / np.sqrt(64)
            for key, arr in ((f"{base}.lora_A.weight", rng.uniform(-bound, bound, (4, 64))),
                             (f"{base}.lora_B.weight", rng.normal(0, 1e-2, (64, 4)))):
                blob = arr.astype(np.float32).tobytes()
                header[key] = {"dtype": "F32", "shape": list(arr.shape),
                               "data_offsets": [offset, offset + len(blob)]}
                blobs.append(blob)
                offset += len(blob)
    raw = json.dumps(header).encode()
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
         "target_modules": ["q_proj", "v_proj"], "init_lora_weights": True}))


def make_tree(root: Path, n: int, kind: str = "mixed") -> Path:
    """``n`` units: "configs" (YAML files), "adapters" (folders) or "mixed" (half each)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        config = kind == "configs" or (kind == "mixed" and i % 2 == 1)
        if config:
            (root / f"cfg{i:05d}.yaml").write_text(CONFIG_TEXT.format(i=i))
        else:
            write_adapter(root / f"adapter{i:05d}", rng)
    # Written back to disk now, so that the kernel's writeback of the fresh files does not land
    # in the first timed run.
    os.sync()
    return root


# Runs the command in a fresh intermediate process, so that RUSAGE_CHILDREN's peak RSS
# (the largest of loracheck and its workers) belongs to this one measurement alone.
MEASURE = """
import resource, subprocess, sys, time, hashlib
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True)
wall = time.perf_counter() - start
if proc.returncode not in (0, 1):
    sys.exit(proc.stderr.decode()[-800:])
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(wall, rss, hashlib.sha256(proc.stdout).hexdigest()[:12])
"""

# `loracheck` with its YAML reader forced onto the pure-Python parser (the seam of
# loracheck.configs.documents), for the end-to-end comparison.
PYTHON_YAML = """
import sys
from loracheck.configs import documents
documents.default_yaml_loader = lambda: "python"
from loracheck._entry import run  # the console script's entry, as the default run takes
sys.exit(run())
"""


def run(root: Path, jobs: int | None, fmt: str, env: dict[str, str],
        yaml_loader: str = "default") -> tuple[float, int, str]:
    """(wall s, peak RSS KiB, report digest) of one `loracheck check` over ``root``."""
    entry = ["-c", PYTHON_YAML] if yaml_loader == "python" else ["-m", "loracheck"]
    cmd = [PY, "-c", MEASURE, PY, *entry, "check", str(root), "--format", fmt]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.split()
    return float(out[0]), int(out[1]), out[2]


def per_call_us(fn: Callable[[], object], seconds: float = 0.4) -> float:
    """Best of five batches, in µs per call."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > seconds / 5:
            break
        calls *= 2
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def parse_table(quick: bool) -> None:
    import yaml

    from loracheck.configs import documents
    from loracheck.errors import ArtifactError

    loaders = documents.available_yaml_loaders()
    print(f"PyYAML {yaml.__version__}, libyaml: {'yes' if 'c' in loaders else 'no'}; "
          f"loracheck's default YAML loader: {documents.default_yaml_loader()}")
    print()
    print("| YAML per config | files | loracheck c µs | loracheck python µs | yaml.safe_load µs "
          "| CSafeLoader alone µs | python / c | safe_load / c |")
    print("|---|---|---|---|---|---|---|---|")
    sets = [("tiny config (the trees')", [CONFIG_TEXT.format(i=7)])]
    if CORPUS.is_dir():
        texts = [p.read_text(encoding="utf-8-sig", errors="replace")
                 for p in sorted(CORPUS.rglob("*")) if p.suffix in (".yaml", ".yml")]
        sets.append((f"../shared/corpus ({sum(map(len, texts)) // len(texts)} B mean; "
                     f"{sum(not documents._c_reads_alike(t) for t in texts)} read by python "
                     f"alone)", texts))
    path = Path("cfg.yaml")

    def parse_all(texts: list[str], loader: str) -> Callable[[], object]:
        def go() -> None:
            for text in texts:
                with contextlib.suppress(ArtifactError):  # a refused file costs its time too
                    documents.parse(path, "yaml", text, yaml_loader=loader)
        return go

    def plain(texts: list[str], load: Callable[[str], object]) -> Callable[[], object]:
        def go() -> None:
            for text in texts:
                with contextlib.suppress(yaml.YAMLError):
                    load(text)
        return go

    def c_alone(text: str) -> object:
        return yaml.load(text, Loader=yaml.CSafeLoader)

    budget = 0.2 if quick else 0.6
    for label, texts in sets:
        n = len(texts)
        py = per_call_us(parse_all(texts, "python"), budget) / n
        safe = per_call_us(plain(texts, yaml.safe_load), budget) / n
        if "c" in loaders:
            c = per_call_us(parse_all(texts, "c"), budget) / n
            raw = per_call_us(plain(texts, c_alone), budget) / n
            print(f"| {label} | {n} | {c:.0f} | {py:.0f} | {safe:.0f} | {raw:.0f} | "
                  f"{py / c:.1f}x | {safe / c:.1f}x |")
        else:
            print(f"| {label} | {n} | - | {py:.0f} | {safe:.0f} | - | - | - |")


def throughput_table(work: Path, quick: bool, env: dict[str, str]) -> None:
    from loracheck.configs.documents import default_yaml_loader

    default = default_yaml_loader()
    cpus = os.cpu_count() or 1
    empty = work / "empty"
    empty.mkdir()
    run(empty, 1, "text", env)  # compiles the bytecode once
    startup = min(run(empty, 1, "text", env)[0] for _ in range(3))
    print()
    print(f"`loracheck check` on an empty folder (start-up): {startup:.2f} s; "
          f"{cpus} CPUs; goals: >= 3000 configs/s, >= 1500 adapters/s on 2 cores")
    print()
    print("| units | kind | YAML loader | jobs | wall s | units/s | units/s past start-up "
          "| peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    sizes = (1000,) if quick else (1000, 10_000)
    for n in sizes:
        for kind in ("configs", "adapters"):
            root = make_tree(work / f"{kind}{n}", n, kind)
            modes: list[tuple[str, int | None]] = [("default", 1), ("default", None)]
            if kind == "configs" and n == 1000:
                modes.append(("python", 1))
            for loader, jobs in modes:
                # 10,000 units once per mode; 1,000 units best of two (of one with --quick)
                repeat = 1 if quick or n > 1000 else 2
                wall, rss, _ = min(run(root, jobs, "text", env, loader) for _ in range(repeat))
                shown = default if loader == "default" else loader
                if kind == "adapters":
                    shown = "-"
                jobs_shown = str(jobs) if jobs is not None else f"auto ({cpus})"
                past = n / (wall - startup) if wall > startup else float("inf")
                print(f"| {n} | {kind} | {shown} | {jobs_shown} | {wall:.2f} | {n / wall:.0f} | "
                      f"{past:.0f} | {rss / 1024:.0f} |")
            shutil.rmtree(root, ignore_errors=True)


def mixed_table(work: Path, quick: bool, env: dict[str, str]) -> None:
    cpus = os.cpu_count() or 1
    print()
    print("| files | format | jobs | wall s | files/s | peak RSS MiB | report digest (2 runs) |")
    print("|---|---|---|---|---|---|---|")
    for n in (100,) if quick else (100, 1000):
        root = make_tree(work / f"mixed{n}", n)
        # text keeps only the findings; json carries every layer of every adapter, so its
        # memory is the size of the report it prints.
        for fmt in ("text", "json"):
            wall, rss, digest = run(root, cpus, fmt, env)
            _, _, digest2 = run(root, cpus, fmt, env)
            print(f"| {n} | {fmt} | {cpus} | {wall:.2f} | {n / wall:.0f} | {rss / 1024:.0f} | "
                  f"{digest} {'==' if digest == digest2 else '!='} {digest2} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1,000 units only, one run per row (under a minute)")
    args = parser.parse_args()
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lc-many-"))
    try:
        env = installed_env(work / "pycache")
        parse_table(args.quick)
        throughput_table(work, args.quick, env)
        mixed_table(work, args.quick, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n(benchmark ran {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
