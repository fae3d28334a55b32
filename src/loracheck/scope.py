"""Which findings of a unit to report when its files were named one by one.

pre-commit shuffles the staged files and splits them into batches (one per CPU unless the hook
is ``require_serial``), so an adapter's ``adapter_config.json`` and its weights may reach two
runs of loracheck. Each finding is therefore owned by one file and reported only by a run that
was given that file:

- a config finding (it holds with the config alone) belongs to the config;
- a weights finding belongs to the weights;
- a pair finding (on the config, but only when the weights are there: a target that matches no
  layer, a rank the tensors contradict) belongs to the weights, where it is reported.

Whatever the split, the union of the batches' reports is the report of one run given both
files, with no finding twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from loracheck.model import Diagnostic


def _key(diag: Diagnostic) -> tuple[str, str, int | None, str | None]:
    return (diag.code, diag.path, diag.line, diag.location)


def scope_to_named(
    named: frozenset[Path],
    config: Path,
    weights: Path,
    pair: Sequence[Diagnostic],
    config_alone: Sequence[Diagnostic],
) -> list[Diagnostic]:
    """The findings of a config + weights unit owned by the ``named`` files.

    ``pair`` are the findings of the unit read whole, ``config_alone`` those of its config read
    without the weights. Pair findings are moved to the weights file (their config line is
    dropped: the line belongs to another file).
    """
    config_path, weights_path = str(config), str(weights)
    alone = {_key(d) for d in config_alone}
    out: list[Diagnostic] = []
    if config in named:
        out.extend(config_alone)
    if weights in named:
        for diag in pair:
            if diag.path == config_path:
                if _key(diag) in alone:
                    continue  # the config's own finding, owned by the config
                diag = replace(diag, path=weights_path, line=None, col=None)
            out.append(diag)
    return out
