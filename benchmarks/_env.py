"""The environment the benchmarks run loracheck in: bytecode cached, as an installed package has.

pip compiles an installed package's bytecode; a checkout run with PYTHONDONTWRITEBYTECODE set
(as some shells and CI images do) would compile every module from source on every start-up
instead, and time that. The benchmarks give loracheck's processes a cache folder of their own
under their temporary folder and let Python write to it.
"""

from __future__ import annotations

import os
from pathlib import Path


def installed_env(pycache: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this environment) with bytecode written to and read from ``pycache``."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def use_installed_env(pycache: Path) -> None:
    """Give this process's children :func:`installed_env` from now on."""
    env = installed_env(pycache)
    os.environ.clear()
    os.environ.update(env)
