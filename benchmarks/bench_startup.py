"""Start-up of the CLI: `check` on a folder of config files, `inspect` on a tiny adapter and on
a config file, and proof from `python -X importtime` that torch is never imported.

    python benchmarks/bench_startup.py

Side by side in one run: a bare interpreter, `python -c "import numpy"` (the floor any
numeric tool pays), and loracheck's commands, with their bytecode cached as an installed
package has it (benchmarks/_env.py). Goals: check on configs <= 0.3 s,
inspect on a config <= 0.3 s, inspect on a tiny adapter <= 0.5 s.
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


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lc-startup-") as work:
        use_installed_env(Path(work) / "pycache")
        table()


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
