"""`loracheck check` over the published configs of ../shared/corpus, beside the naive floor.

    python benchmarks/bench_corpus.py [--repeat 3]

The competitor is the least any linter must do: one Python process that parses every file
(PyYAML's SafeLoader, json, tomllib) and nothing else. loracheck additionally classifies each
file, resolves it with its trainer's defaults, and runs the rules. Prints wall times (best of
--repeat), files/s and the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "configs"
PARSE_ONLY = r"""
import json, sys, tomllib, yaml
from pathlib import Path
for p in sorted(Path(sys.argv[1]).rglob("*")):
    if not p.is_file():
        continue
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        list(yaml.load_all(text, Loader=yaml.SafeLoader))
    elif p.suffix == ".json":
        json.loads(text)
    elif p.suffix == ".toml":
        tomllib.loads(text)
"""


def best(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"no corpus at {CORPUS}")
        return 2
    files = sum(1 for p in CORPUS.rglob("*") if p.is_file())
    naive = best([sys.executable, "-c", PARSE_ONLY, str(CORPUS)], args.repeat)
    ours = best([sys.executable, "-m", "loracheck", "check", str(CORPUS), "--exit-zero",
                 "--jobs", "1"], args.repeat)
    print(f"{files} files")
    print(f"parse only (PyYAML/json/tomllib)  {naive:6.2f} s  {files / naive:7.0f} files/s")
    print(f"loracheck check --jobs 1          {ours:6.2f} s  {files / ours:7.0f} files/s")
    print(f"ratio loracheck / parse only      {ours / naive:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
