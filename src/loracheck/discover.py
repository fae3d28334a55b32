"""Discovery: the paths a user (or pre-commit) hands over become adapter units.

A unit is what loracheck analyses as one thing: a PEFT folder (config + weights), an mlx-lm
folder, a single weights file (with its sibling config when there is one), or a training
config file. Naming either file of a PEFT pair analyses the pair once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from loracheck.errors import UsageError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MLX_WEIGHTS = "adapters.safetensors"
TORCHTUNE_COPY = "adapter_model.pt"
# litgpt's finetune_lora saves the LoRA weights as lit_model.pth.lora (torch.save of
# {"model": state dict}), its settings in hyperparameters.yaml beside it (litgpt 0.5,
# litgpt/finetune/lora.py save_lora_checkpoint, save_hyperparameters).
LITGPT_SUFFIX = ".pth.lora"
LITGPT_CONFIG = "hyperparameters.yaml"
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
    ``explicit`` is True when the user named this file or folder directly and it looks like a
    LoRA artifact (:func:`lora_shaped`): then a file with no LoRA content is reported (LC002)
    instead of skipped quietly.
    """

    path: str
    kind: str
    weights: Path | None
    config: Path | None
    explicit: bool
    # The files of this unit the user named one by one (a config, its weights, or both), whose
    # findings alone are reported, each finding once whichever files a batch names (see
    # loracheck.scope); None when the unit came from a folder: all of its findings.
    named: frozenset[Path] | None = None


# Words in a file name that say it is meant to be an adapter or a training config: such a file
# with no LoRA content is reported (LC002) when named; other named files holding no LoRA
# content (package.json, docker-compose.yml, README.md) are skipped, as ruff skips files it
# has no rules for.
LORA_NAME_WORDS = (
    "lora", "adapter", "peft", "train", "finetune", "fine_tune", "fine-tune", "sft", "dpo",
    "orpo", "kto", "ppo", "grpo", "axolotl", "llamafactory", "llama_factory", "torchtune",
    "unsloth", "swift", "litgpt", "kohya", "mlx", "dora", "ia3", "lycoris", "lokr", "loha",
)


def lora_shaped(path: Path) -> bool:
    """Whether a file's name or type says it should hold LoRA content: a weights file, an
    adapter's own file, or a name with one of :data:`LORA_NAME_WORDS`."""
    name = path.name.lower()
    if name.endswith(WEIGHT_SUFFIXES) or name.endswith(LITGPT_SUFFIX):
        return True
    if name in (PEFT_CONFIG, MLX_WEIGHTS, LITGPT_CONFIG):
        return True
    return any(word in name for word in LORA_NAME_WORDS)


def _display(path: Path) -> str:
    return str(path)


# Path.is_file()/is_dir()/exists() raise PermissionError when a parent folder cannot be searched;
# discovery must not: such a path becomes a unit and the loader reports it as unreadable (LC001).
def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def _is_file(path: Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def _is_dir(path: Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def _missing(path: Path) -> bool:
    """True when ``path`` does not exist (a dangling symlink exists; an unsearchable parent
    folder does not make a path missing)."""
    try:
        os.lstat(path)
    except OSError as err:
        return err.errno in (errno.ENOENT, errno.ENOTDIR)
    except ValueError:  # an embedded NUL byte
        return True
    return False


@dataclass(frozen=True)
class Listing:
    """What the walk's scandir of one folder said: every name in it, and the names that are
    regular files by the listing's own file types (a symlink is neither: it is asked of the
    file system, which follows it)."""

    names: frozenset[str]
    regular: frozenset[str]


def _has_file(folder: Path, name: str, listing: Listing | None) -> bool:
    """Whether ``folder / name`` is a regular file (a symlink to one counts). ``listing``, what
    the walk saw in ``folder``, answers without a system call for a name that is not there or
    that it saw as a regular file; any other name is asked of the file system (a symlink, or a
    name the listing saw as a folder, a FIFO or a device)."""
    if listing is not None:
        if name in listing.regular:
            return True
        if name not in listing.names:
            return False
    return _is_file(folder / name)


def _folder_unit(folder: Path, explicit: bool, listing: Listing | None = None,
                 config: Path | None = None) -> Unit | None:
    """The PEFT or mlx unit a folder holds, if it holds one (``listing``: see _has_file;
    ``config``: its adapter_config.json's path, when the caller has it already)."""
    config = config or folder / PEFT_CONFIG
    has_config = _has_file(folder, PEFT_CONFIG, listing)
    for name in PEFT_WEIGHTS:
        if _has_file(folder, name, listing):
            return Unit(_display(folder), "peft", folder / name, config if has_config else None,
                        explicit)
    if _has_file(folder, MLX_WEIGHTS, listing):
        return Unit(_display(folder), "mlx", folder / MLX_WEIGHTS,
                    config if has_config else None, explicit)
    if has_config:
        # A config without weights (e.g. weights not pulled yet): checked as a config.
        return Unit(_display(config), "config", None, config, explicit)
    return None


def _file_unit(path: Path, explicit: bool,
               listing: Listing | None = None) -> Unit | None:
    """The unit a file belongs to (``listing``: the names beside it, see _has_file)."""
    name = path.name
    folder = path.parent
    if name in PEFT_WEIGHTS:
        # The weights file named, even where the folder holds the other one too.
        config = folder / PEFT_CONFIG
        return Unit(_display(folder), "peft", path,
                    config if _has_file(folder, PEFT_CONFIG, listing) else None, explicit)
    if name == PEFT_CONFIG:
        return _folder_unit(folder, explicit, listing, config=path)
    if name == MLX_WEIGHTS:
        return _folder_unit(folder, explicit, listing)
    if name in IGNORED_FILES:
        return None
    suffix = path.suffix.lower()
    if name.endswith(LITGPT_SUFFIX):
        config = folder / LITGPT_CONFIG
        return Unit(_display(path), "weights", path,
                    config if _has_file(folder, LITGPT_CONFIG, listing) else None, explicit)
    if suffix in WEIGHT_SUFFIXES:
        # A folder's adapter_config.json describes its PEFT weights file when there is one
        # (torchtune writes adapter_model.pt in its own keys beside adapter_model.safetensors
        # in PEFT's, and the merged model-*.safetensors too): other weights stand alone.
        sibling = folder / PEFT_CONFIG
        owned = any(_has_file(folder, name, listing) for name in PEFT_WEIGHTS)
        own_config = sibling if not owned and _has_file(folder, PEFT_CONFIG, listing) else None
        return Unit(_display(path), "weights", path, own_config, explicit)
    if suffix in CONFIG_SUFFIXES:
        return Unit(_display(path), "config", None, path, explicit)
    return None


def _walk(root: Path) -> Iterator[tuple[Path, list[str], Listing]]:
    """The folders under ``root`` (itself first) that hold regular files, each with the names
    of those files and its :class:`Listing` (so that siblings cost no system call), in a
    deterministic order (depth first, names sorted). No symlinks (to files or folders), FIFOs,
    sockets or devices (opening a FIFO blocks until a writer comes): the file type comes with
    the folder listing, so there is no system call per file. Iterative, so any depth works
    (``os.walk`` recurses on Python < 3.12 and hits the recursion limit near 1,000 nested
    folders); a folder met twice (a bind mount loop) is walked once."""
    stack = [root]
    seen: set[tuple[int, int]] = set()
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        files = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        subfolders.append(folder / entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
            except OSError:
                continue
        if files:
            yield folder, files, Listing(frozenset(e.name for e in entries), frozenset(files))
        stack.extend(reversed(subfolders))


def discover(paths: Sequence[str | Path], *, handed_over: bool = False) -> list[Unit]:
    """Turn paths (files or folders, walked recursively) into units, each once, in input order.

    Raises UsageError for a path that does not exist (exit code 2). Files found while walking
    are candidates only: whether they hold LoRA content is decided by the loader, which skips
    quietly what is not LoRA unless the unit is explicit. ``handed_over`` says that the files
    were handed over by a tool (pre-commit passes every staged file that matches the hook's
    pattern): they are candidates too, not explicit.
    """
    units: list[Unit] = []
    seen: dict[tuple[str, Path | None, Path | None], int] = {}

    def add(unit: Unit | None) -> None:
        if unit is None:
            return
        key = (unit.kind, unit.weights, unit.config)
        if key not in seen:
            seen[key] = len(units)
            units.append(unit)
            return
        # The same unit met again (both files of a pair named, or a file and its folder):
        # what was named adds up; a folder covers everything.
        index = seen[key]
        old = units[index]
        named = None if old.named is None or unit.named is None else old.named | unit.named
        units[index] = replace(old, named=named, explicit=old.explicit or unit.explicit)

    for raw in paths:
        path = Path(raw)
        if _missing(path):
            raise UsageError(f"{raw}: no such file or directory")
        if _is_dir(path):
            folder_unit = _folder_unit(path, explicit=True)
            if folder_unit is not None and folder_unit.kind != "config":
                add(folder_unit)
            # Names already covered in their folder: the named folder's own unit, and the other
            # file of a pair met first (a unit's files are siblings).
            root_handled: set[str] = set()
            if folder_unit is not None and folder_unit.weights is not None:
                root_handled.add(folder_unit.weights.name)
                if folder_unit.config is not None:
                    root_handled.add(folder_unit.config.name)
            for folder, files, listing in _walk(path):
                handled = root_handled if folder == path else set()
                for name in files:
                    if name in handled:
                        continue
                    if name == TORCHTUNE_COPY and _has_file(folder, PEFT_WEIGHTS[0], listing):
                        # torchtune saves each adapter twice: adapter_model.pt in its own keys
                        # and adapter_model.safetensors in PEFT's (torchtune 0.6, FullModelHF-
                        # Checkpointer.save_checkpoint); the folder's PEFT unit covers it.
                        continue
                    walked = _file_unit(folder / name, explicit=False, listing=listing)
                    add(walked)
                    if walked is not None and walked.weights is not None and (
                            walked.config is not None):
                        # its other file, met next, would give the same unit again
                        handled.update((walked.weights.name, walked.config.name))
        else:
            explicit = not handed_over and lora_shaped(path)
            unit = _file_unit(path, explicit=explicit)
            if unit is not None and unit.weights is not None and unit.config is not None:
                unit = replace(unit, named=frozenset({path}))
            # A named file of no known kind is a unit too: LC002 when it looks like a LoRA
            # artifact, else skipped (and listed by `check -v`).
            add(unit or Unit(_display(path), "unknown", None, None, explicit=explicit))
    # A config met while walking that a weights unit already carries (litgpt's
    # hyperparameters.yaml beside lit_model.pth.lora) is checked with those weights, once.
    paired = {u.config for u in units if u.weights is not None and u.config is not None}
    return [u for u in units if not (u.kind == "config" and not u.explicit and u.config in paired)]


def is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES or path.name.endswith(LITGPT_SUFFIX)
