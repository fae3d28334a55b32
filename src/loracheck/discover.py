"""Discovery: the paths a user (or pre-commit) hands over become adapter units.

A unit is what loracheck analyses as one thing: a PEFT folder (config + weights), an mlx-lm
folder, a single weights file (with its sibling config when there is one), or a training
config file. Naming either file of a PEFT pair analyses the pair once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loracheck.errors import UsageError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MLX_WEIGHTS = "adapters.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".toml", ".py")
# Folders a recursive walk never enters: VCS data, caches, environments.
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
     "node_modules", ".venv", "venv", ".tox", ".hypothesis"}
)
# Files in a PEFT/trainer folder that are never adapter content (and never to be unpickled).
IGNORED_FILES = frozenset(
    {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
     "generation_config.json", "model.safetensors.index.json", "vocab.json"}
)


@dataclass(frozen=True)
class Unit:
    """One thing to analyse.

    ``kind`` is "peft" (folder with adapter_config.json), "mlx" (adapters.safetensors folder),
    "weights" (a single weights file) or "config" (a training config file).
    ``explicit`` is True when the user named this file or folder directly: then a file with no
    LoRA content is reported (LC002) instead of skipped quietly.
    """

    path: str
    kind: str
    weights: Path | None
    config: Path | None
    explicit: bool


def _display(path: Path) -> str:
    return str(path)


def _folder_unit(folder: Path, explicit: bool) -> Unit | None:
    """The PEFT or mlx unit a folder holds, if it holds one."""
    config = folder / PEFT_CONFIG
    for name in PEFT_WEIGHTS:
        weights = folder / name
        if weights.is_file():
            return Unit(_display(folder), "peft", weights, config if config.is_file() else None,
                        explicit)
    mlx = folder / MLX_WEIGHTS
    if mlx.is_file():
        return Unit(_display(folder), "mlx", mlx, config if config.is_file() else None, explicit)
    if config.is_file():
        # A config without weights (e.g. weights not pulled yet): checked as a config.
        return Unit(_display(config), "config", None, config, explicit)
    return None


def _file_unit(path: Path, explicit: bool) -> Unit | None:
    name = path.name
    folder = path.parent
    if name in (PEFT_CONFIG, MLX_WEIGHTS, *PEFT_WEIGHTS):
        return _folder_unit(folder, explicit)
    if name in IGNORED_FILES:
        return None
    suffix = path.suffix.lower()
    if suffix in WEIGHT_SUFFIXES:
        sibling = folder / PEFT_CONFIG
        return Unit(_display(path), "weights", path, sibling if sibling.is_file() else None,
                    explicit)
    if suffix in CONFIG_SUFFIXES:
        return Unit(_display(path), "config", None, path, explicit)
    return None


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` in a deterministic order; never follows symlinked folders."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def discover(paths: Sequence[str | Path]) -> list[Unit]:
    """Turn paths (files or folders, walked recursively) into units, each once, in input order.

    Raises UsageError for a path that does not exist (exit code 2). Files found while walking
    are candidates only: whether they hold LoRA content is decided by the loader, which skips
    quietly what is not LoRA unless the unit is explicit.
    """
    units: list[Unit] = []
    seen: set[tuple[str, Path | None, Path | None]] = set()

    def add(unit: Unit | None) -> None:
        if unit is None:
            return
        key = (unit.kind, unit.weights, unit.config)
        if key not in seen:
            seen.add(key)
            units.append(unit)

    for raw in paths:
        path = Path(raw)
        if not path.exists() and not path.is_symlink():
            raise UsageError(f"{raw}: no such file or directory")
        if path.is_dir():
            folder_unit = _folder_unit(path, explicit=True)
            if folder_unit is not None and folder_unit.kind != "config":
                add(folder_unit)
            handled: set[Path] = set()
            if folder_unit is not None and folder_unit.weights is not None:
                handled.add(folder_unit.weights)
                if folder_unit.config is not None:
                    handled.add(folder_unit.config)
            for file in _walk(path):
                if file in handled or file.is_symlink():
                    continue
                add(_file_unit(file, explicit=False))
        else:
            add(_file_unit(path, explicit=True)
                or Unit(_display(path), "unknown", None, None, explicit=True))
    return units


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES
