"""Load held: `loracheck check` over a tree of many small adapters and configs.

    python benchmarks/bench_many_files.py

Writes 100 and 1,000 units (half tiny PEFT-style adapters, half YAML configs), runs
`loracheck check --jobs N` over each tree, and prints files/s and peak RSS for both, so that
memory can be seen to stay flat in the number of files. The report must be identical across
two runs (deterministic order) whatever the scheduling.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PY = sys.executable


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


def make_tree(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        if i % 2:
            (root / f"cfg{i:04d}.yaml").write_text(
                f"adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 0.05\n"
                f"lora_target_linear: true\nbase_model: m{i}\n")
        else:
            write_adapter(root / f"adapter{i:04d}", rng)
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


def run(root: Path, jobs: int, fmt: str) -> tuple[float, int, str]:
    cmd = [PY, "-c", MEASURE, PY, "-m", "loracheck", "check", str(root), "--jobs", str(jobs),
           "--format", fmt]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), out[2]


def main() -> None:
    jobs = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="lc-many-"))
    print("| files | format | jobs | wall s | files/s | peak RSS MiB | report digest (2 runs) |")
    print("|---|---|---|---|---|---|---|")
    for n in (100, 1000):
        root = make_tree(work / str(n), n)
        # text keeps only the findings; json carries every layer of every adapter, so its
        # memory is the size of the report it prints.
        for fmt in ("text", "json"):
            wall, rss, digest = run(root, jobs, fmt)
            _, _, digest2 = run(root, jobs, fmt)
            print(f"| {n} | {fmt} | {jobs} | {wall:.2f} | {n / wall:.0f} | {rss / 1024:.0f} | "
                  f"{digest} {'==' if digest == digest2 else '!='} {digest2} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
