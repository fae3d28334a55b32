"""The ``loracheck`` console script and ``python -m loracheck``: one command, then the process
ends.

The cyclic garbage collector is off while the command line starts and, but for ``verify``,
for the whole command. Start-up imports (typer, rich, numpy, the rules) create ~50,000
long-lived objects, and the collector's passes over them took 9-13 ms of every run, with the
GIL held (measured with ``gc.callbacks``: 65-71 young and 6-7 middle collections per
``inspect``); a check of the whole shared corpus with it off leaves ~550 objects in reference
cycles (measured), and reference counting frees everything else as usual. ``verify`` trains
for as many steps as asked in one process: there the start-up objects are frozen out of the
collector's reach (``gc.freeze``) and it runs again. Importing :mod:`loracheck.cli` (as the
tests do) leaves the collector alone.

The interpreter's switch interval is 0.1 ms instead of 5 ms, but for ``verify``. ``inspect``
runs the compiled pass on a worker thread while the main thread runs the per-layer Python;
each time the worker comes back out of compiled code it waits for the GIL, up to the interval
while the main thread runs Python. Measured in one process on the 7B-shaped adapters of
``benchmarks/bench_inspect.py``, 2 CPUs: fp16 and bf16 r=16 1.0-1.6 ms faster of ~44 ms
(the worker's chunks 1.67 -> 1.57 ms, and it ran 200 chunks in ten runs rather than 180),
fp32 r=16 and fp16 r=64 unchanged.
"""

import gc
import sys

gc.disable()

from loracheck.cli import main  # noqa: E402  (after the collector is off: its imports are most)


def run() -> int:
    if sys.argv[1:2] == ["verify"]:
        gc.freeze()
        gc.enable()
    else:
        sys.setswitchinterval(1e-4)
    return main()
