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
"""

import gc
import sys

gc.disable()

from loracheck.cli import main  # noqa: E402  (after the collector is off: its imports are most)


def run() -> int:
    if sys.argv[1:2] == ["verify"]:
        gc.freeze()
        gc.enable()
    return main()
