"""Start-up of the CLI: `check` on a folder of config files, `inspect` on a tiny adapter and on
a config file, and proof from `python -X importtime` that torch is never imported.

    python benchmarks/bench_startup.py

Side by side in one run: a bare interpreter, `python -c "import numpy"` (the floor any
numeric tool pays), and loracheck's commands, with their bytecode cached as an installed
package has it (benchmarks/_env.py). Goals: check on configs <= 0.3 s,
inspect on a config <= 0.3 s, inspect on a tiny adapter <= 0.5 s.

Then the cyclic garbage collector in one CLI process, side by side: with it on, as
importing loracheck.cli leaves it (its collections and their time, from gc.callbacks), and
as the console script runs (loracheck/_entry.py: off); and, with it off, how many objects a
check of the shared corpus leaves in reference cycles.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import use_installed_env

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def best(cmd: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return min(times)


def imported_modules(cmd_args: list[str]) -> set[str]:
    proc = subprocess.run([PY, "-X", "importtime", "-m", "loracheck", *cmd_args],
                          capture_output=True, text=True, check=False)
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


# One CLI command in a child process, its collections timed with gc.callbacks; argv[1] picks
# the entry: "cli" (the collector on, as before _entry.py) or "entry" (the console script's).
GC_CHILD = """
import contextlib, gc, io, sys, time
spent = [0, 0.0, 0.0]
def timed(phase, info):
    if phase == 'start':
        spent[2] = time.perf_counter()
    else:
        spent[0] += 1
        spent[1] += time.perf_counter() - spent[2]
gc.callbacks.append(timed)
if sys.argv[1] == 'entry':
    import loracheck._entry as entry
    main = entry.main
else:
    from loracheck.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(sys.argv[2:])
print(spent[0], spent[1], gc.collect() if not gc.isenabled() else -1)
"""


def collector_table() -> None:
    adapter = ROOT / "examples" / "adapters" / "healthy"
    corpus = ROOT.parent / "shared" / "corpus" / "configs"
    print("\n| cyclic collector | command | collections | their time | left in cycles |")
    print("|---|---|---|---|---|")
    runs = [("on (import loracheck.cli)", "cli", ["inspect", str(adapter), "--format", "json"]),
            ("off (console script)", "entry", ["inspect", str(adapter), "--format", "json"])]
    if corpus.is_dir():
        runs.append(("off (console script)", "entry", ["check", str(corpus)]))
    for label, entry, args in runs:
        out = subprocess.run([PY, "-c", GC_CHILD, entry, *args], capture_output=True, text=True,
                             check=True).stdout.split()
        count, seconds, left = int(out[0]), float(out[1]), int(out[2])
        print(f"| {label} | `{args[0]} {Path(args[1]).name}` | {count} | "
              f"{seconds * 1000:.1f} ms | {left if left >= 0 else ''} |")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lc-startup-") as work:
        use_installed_env(Path(work) / "pycache")
        table()
        collector_table()


def table() -> None:
    configs = ROOT / "examples" / "configs"
    adapter = ROOT / "examples" / "adapters" / "healthy"
    one_config = next(iter(sorted(configs.glob("*.yaml"))), None) if configs.is_dir() else None
    rows = [
        ("python -c pass", [PY, "-c", "pass"], None),
        ("python -c 'import numpy'", [PY, "-c", "import numpy"], None),
        ("loracheck check examples/configs/", [PY, "-m", "loracheck", "check", str(configs)],
         0.3),
        ("loracheck inspect <tiny adapter>", [PY, "-m", "loracheck", "inspect", str(adapter)],
         0.5),
    ]
    if one_config is not None:
        rows.append((f"loracheck inspect {one_config.name}",
                     [PY, "-m", "loracheck", "inspect", str(one_config)], 0.3))
    print("| command | best wall of 7 | goal |")
    print("|---|---|---|")
    for label, cmd, goal in rows:
        wall = best(cmd)
        verdict = "" if goal is None else (f"<= {goal} s " + ("ok" if wall <= goal else "MISSED"))
        print(f"| `{label}` | {wall * 1000:.0f} ms | {verdict} |")
    for args in (["check", str(configs)], ["inspect", str(adapter)]):
        mods = imported_modules(args)
        heavy = sorted(m for m in mods if m.split(".")[0] in {"torch", "transformers", "peft"})
        print(f"`loracheck {args[0]}` imports {len(mods)} modules; torch/transformers/peft: "
              f"{heavy or 'none'}")


if __name__ == "__main__":
    main()
