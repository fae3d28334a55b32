"""Settings for `check`: the profile, rule selection, severities and thresholds.

Sources, lowest precedence first: the shipped profile (``default`` unless one is named), the
``[tool.loracheck]`` table of a ``pyproject.toml`` or the top level of a ``loracheck.toml`` found
upward from the checked paths (as ruff finds its configuration), then command-line options.
An unknown key or a bad value raises :class:`~loracheck.errors.UsageError` with one line.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from loracheck.errors import UsageError
from loracheck.model import InitScheme, Severity

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SHIPPED_PROFILES = ("default", "llmbook")
CONFIG_FILES = ("loracheck.toml", ".loracheck.toml", "pyproject.toml")
_SELECTOR = re.compile(r"^(ALL|LC\d{0,3})$")


@dataclass(frozen=True)
class Thresholds:
    """The numbers the rules compare against; a profile sets them, settings may override."""

    scale_min: float = 1.0 / 16.0
    scale_max: float = 16.0
    max_dropout: float = 0.3
    max_rank: int = 256
    std_tolerance: float = 0.15
    outlier_factor: float = 20.0
    rank_collapse_divisor: float = 8.0
    fp16_overflow_margin: float = 2.0


# TOML spelling (kebab-case) -> field name and the type a value must have.
_THRESHOLD_KEYS: Mapping[str, tuple[str, type]] = {
    f.name.replace("_", "-"): (f.name, int if f.name == "max_rank" else float)
    for f in fields(Thresholds)
}


@dataclass(frozen=True)
class Recipe:
    """The LoRA settings a profile stands for: what `verify` injects when no config is given.
    ``target_modules`` None means the architecture's default, as PEFT chooses it
    (:mod:`loracheck.default_targets`)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Profile:
    """A named set of expectations: thresholds, the init assumed when none is declared, and the
    LoRA recipe the profile stands for."""

    name: str = "default"
    description: str = ""
    thresholds: Thresholds = field(default_factory=Thresholds)
    init_scheme: InitScheme | None = None
    init_std: float | None = None
    recipe: Recipe = field(default_factory=Recipe)


@dataclass(frozen=True)
class Settings:
    """Everything the engine needs besides the adapter; immutable once loaded."""

    profile: Profile = field(default_factory=Profile)
    select: tuple[str, ...] = ("ALL",)
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    # (glob, codes or prefixes); globs are relative to ``root``.
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # code or prefix -> severity; the longest matching prefix wins.
    severity: Mapping[str, Severity] = field(default_factory=dict)
    fail_on: Severity = Severity.ERROR
    # "auto" (inferred from the weights and the trainer's files), "init" or "trained"; and
    # (glob, stage) pairs that set it per path, the first matching glob winning.
    stage: str = "auto"
    per_file_stage: tuple[tuple[str, str], ...] = ()
    # The folder of the configuration file (per-file-ignores are relative to it).
    root: Path | None = None
    config_file: Path | None = None

    @property
    def thresholds(self) -> Thresholds:
        return self.profile.thresholds


# --- profiles -----------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: invalid TOML: {err}") from None


def _number(where: str, key: str, value: object, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: `{key}` must be a number, not {value!r}")
    if kind is int and not isinstance(value, int):
        raise UsageError(f"{where}: `{key}` must be an integer, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{where}: `{key}` must be a finite number >= 0, not {value!r}")
    return value


def _thresholds(where: str, table: object, base: Thresholds) -> Thresholds:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: `thresholds` must be a table")
    changes: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _THRESHOLD_KEYS:
            known = ", ".join(sorted(_THRESHOLD_KEYS))
            raise UsageError(f"{where}: unknown threshold `{key}` (known: {known})")
        name, kind = _THRESHOLD_KEYS[key]
        changes[name] = _number(where, key, value, kind)
    result = replace(base, **changes)
    if result.scale_min > result.scale_max:
        raise UsageError(f"{where}: `scale-min` is larger than `scale-max`")
    return result


def _profile_from_toml(where: str, data: Mapping[str, Any], base: Profile) -> Profile:
    profile = base
    for key, value in data.items():
        if key == "name":
            if not isinstance(value, str):
                raise UsageError(f"{where}: `name` must be a string")
            profile = replace(profile, name=value)
        elif key == "description":
            if not isinstance(value, str):
                raise UsageError(f"{where}: `description` must be a string")
            profile = replace(profile, description=value)
        elif key == "thresholds":
            profile = replace(profile, thresholds=_thresholds(where, value, profile.thresholds))
        elif key == "init":
            profile = _profile_init(where, value, profile)
        elif key == "lora":
            profile = replace(profile, recipe=_recipe(where, value, profile.recipe))
        else:
            raise UsageError(f"{where}: unknown profile key `{key}`")
    return profile


def _recipe(where: str, table: object, recipe: Recipe) -> Recipe:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: `lora` must be a table")
    for key, value in table.items():
        if key == "rank":
            rank = _number(where, "lora.rank", value, int)
            if rank < 1:
                raise UsageError(f"{where}: `lora.rank` must be at least 1")
            recipe = replace(recipe, rank=int(rank))
        elif key == "alpha":
            recipe = replace(recipe, alpha=float(_number(where, "lora.alpha", value, float)))
        elif key == "dropout":
            dropout = float(_number(where, "lora.dropout", value, float))
            if not 0.0 <= dropout < 1.0:
                raise UsageError(f"{where}: `lora.dropout` must be in [0, 1)")
            recipe = replace(recipe, dropout=dropout)
        elif key == "target-modules":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{where}: `lora.target-modules` must be a list of strings")
            recipe = replace(recipe, target_modules=tuple(value))
        else:
            raise UsageError(f"{where}: unknown key `lora.{key}`")
    return recipe


def _profile_init(where: str, table: object, profile: Profile) -> Profile:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: `init` must be a table")
    scheme, std = profile.init_scheme, profile.init_std
    for key, value in table.items():
        if key == "scheme":
            if not isinstance(value, str):
                raise UsageError(f"{where}: `init.scheme` must be a string")
            if value == "":
                scheme = None
            else:
                try:
                    scheme = InitScheme(value)
                except ValueError:
                    known = ", ".join(s.value for s in InitScheme)
                    raise UsageError(
                        f"{where}: unknown init scheme {value!r} (known: {known})"
                    ) from None
        elif key == "std":
            std = float(_number(where, "init.std", value, float))
        else:
            raise UsageError(f"{where}: unknown key `init.{key}`")
    return replace(profile, init_scheme=scheme, init_std=std)


def load_profile(name_or_path: str | None) -> Profile:
    """A shipped profile by name (``default``, ``llmbook``) or a profile TOML file by path.

    A profile file may set any subset of the keys; the rest come from ``default``.
    """
    default = _profile_from_toml("profile default", _shipped("default"), Profile())
    if name_or_path is None or name_or_path == "default":
        return default
    if name_or_path in SHIPPED_PROFILES:
        return _profile_from_toml(f"profile {name_or_path}", _shipped(name_or_path), default)
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        known = ", ".join(SHIPPED_PROFILES)
        raise UsageError(f"unknown profile {name_or_path!r} (shipped: {known}, or a .toml file)")
    if not path.is_file():
        raise UsageError(f"profile file {name_or_path} does not exist")
    data = _read_toml(path)
    if "name" not in data:
        data = {**data, "name": path.stem}
    return _profile_from_toml(str(path), data, default)


def _shipped(name: str) -> dict[str, Any]:
    from importlib.resources import files

    text = (files("loracheck") / "profiles" / f"{name}.toml").read_text(encoding="utf-8")
    data: dict[str, Any] = tomllib.loads(text)
    return data


# --- configuration files ------------------------------------------------------------------------


def find_config(paths: Sequence[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``loracheck.toml`` / ``.loracheck.toml`` / ``pyproject.toml`` with a
    ``[tool.loracheck]`` table, upward from the common folder of ``paths`` (cwd when none)."""
    start = _common_folder(paths)
    for folder in (start, *start.parents):
        for name in CONFIG_FILES:
            candidate = folder / name
            if not os.path.isfile(candidate):  # never raises (an unsearchable folder: False)
                continue
            data = _read_toml(candidate)
            if name == "pyproject.toml":
                tool = data.get("tool", {})
                if isinstance(tool, dict) and "loracheck" in tool:
                    table = tool["loracheck"]
                    if not isinstance(table, dict):
                        raise UsageError(f"{candidate}: [tool.loracheck] must be a table")
                    return candidate, table
                continue
            return candidate, data
    return None


def _common_folder(paths: Sequence[Path]) -> Path:
    folders = []
    for p in paths:
        try:
            resolved = p.resolve()
        except (OSError, RuntimeError):
            # A symlink loop (RuntimeError before Python 3.13, OSError after): the path itself
            # is reported by the loader; its folder is still where settings are looked up.
            resolved = Path(os.path.abspath(p))
        folders.append(resolved if os.path.isdir(resolved) else resolved.parent)
    if not folders:
        return Path.cwd().resolve()
    common = folders[0]
    for folder in folders[1:]:
        while common != folder and common not in folder.parents:
            common = common.parent
    return common


def _selectors(where: str, key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: `{key}` must be a list of rule codes or prefixes")
    from loracheck.rules.registry import is_known_selector

    out = []
    for item in value:
        code = item.strip().upper()
        if not _SELECTOR.match(code) or not is_known_selector(code):
            raise UsageError(f"{where}: `{key}` has {item!r}, which selects no rule code")
        out.append(code)
    return tuple(out)


def _severity(where: str, key: str, value: object) -> Severity:
    if isinstance(value, Severity):
        return value
    if isinstance(value, str):
        try:
            return Severity(value.lower())
        except ValueError:
            pass
    raise UsageError(f"{where}: `{key}` must be one of error, warning, info, not {value!r}")


_SETTINGS_KEYS = (
    "profile", "select", "extend-select", "ignore", "extend-ignore", "per-file-ignores",
    "severity", "fail-on", "thresholds", "stage", "per-file-stage",
)
STAGES = ("auto", "init", "trained")


def _stage(where: str, key: str, value: object) -> str:
    if isinstance(value, str) and value in STAGES:
        return value
    raise UsageError(f"{where}: `{key}` must be one of {', '.join(STAGES)}, not {value!r}")


def _apply_table(where: str, table: Mapping[str, Any], settings: Settings) -> Settings:
    unknown = [k for k in table if k not in _SETTINGS_KEYS]
    if unknown:
        known = ", ".join(_SETTINGS_KEYS)
        raise UsageError(f"{where}: unknown key `{unknown[0]}` (known: {known})")
    if "select" in table:
        settings = replace(settings, select=_selectors(where, "select", table["select"]))
    if "extend-select" in table:
        more = _selectors(where, "extend-select", table["extend-select"])
        settings = replace(settings, extend_select=settings.extend_select + more)
    for key in ("ignore", "extend-ignore"):
        if key in table:
            more = _selectors(where, key, table[key])
            settings = replace(settings, ignore=settings.ignore + more)
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise UsageError(f"{where}: `per-file-ignores` must be a table of glob = [codes]")
        pairs = tuple(
            (glob, _selectors(where, f"per-file-ignores.{glob}", codes))
            for glob, codes in pfi.items()
        )
        settings = replace(settings, per_file_ignores=settings.per_file_ignores + pairs)
    if "severity" in table:
        sev = table["severity"]
        if not isinstance(sev, dict):
            raise UsageError(f"{where}: `severity` must be a table of code = level")
        merged = dict(settings.severity)
        for code, level in sev.items():
            (selector,) = _selectors(where, "severity", [code])
            merged[selector] = _severity(where, f"severity.{code}", level)
        settings = replace(settings, severity=merged)
    if "fail-on" in table:
        settings = replace(settings, fail_on=_severity(where, "fail-on", table["fail-on"]))
    if "stage" in table:
        settings = replace(settings, stage=_stage(where, "stage", table["stage"]))
    if "per-file-stage" in table:
        pfs = table["per-file-stage"]
        if not isinstance(pfs, dict):
            raise UsageError(f"{where}: `per-file-stage` must be a table of glob = stage")
        pairs_stage = tuple((glob, _stage(where, f"per-file-stage.{glob}", value))
                            for glob, value in pfs.items())
        settings = replace(settings, per_file_stage=settings.per_file_stage + pairs_stage)
    if "thresholds" in table:
        profile = settings.profile
        th = _thresholds(where, table["thresholds"], profile.thresholds)
        settings = replace(settings, profile=replace(profile, thresholds=th))
    return settings


def load_settings(
    paths: Sequence[Path],
    *,
    profile: str | None = None,
    select: Sequence[str] | None = None,
    extend_select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    per_file_ignores: Mapping[str, Sequence[str]] | None = None,
    severity: Mapping[str, str] | None = None,
    fail_on: str | Severity | None = None,
    thresholds: Mapping[str, float] | None = None,
    config_file: Path | None = None,
    isolated: bool = False,
) -> Settings:
    """Resolve the settings for checking ``paths``.

    ``profile`` on the command line beats the file's ``profile``; ``select`` replaces the file's
    selection, ``extend_select`` and ``ignore`` add to it. ``config_file`` names the file to use
    instead of searching; ``isolated`` ignores every file.
    """
    found: tuple[Path, dict[str, Any]] | None = None
    if config_file is not None:
        data = _read_toml(config_file)
        if config_file.name == "pyproject.toml":
            data = data.get("tool", {}).get("loracheck", {})
        found = (config_file, data)
    elif not isolated:
        found = find_config(paths)
    table: dict[str, Any] = dict(found[1]) if found else {}
    where = str(found[0]) if found else "settings"
    file_profile = table.get("profile")
    if file_profile is not None and not isinstance(file_profile, str):
        raise UsageError(f"{where}: `profile` must be a string")
    if (
        isinstance(file_profile, str)
        and found is not None
        and file_profile not in SHIPPED_PROFILES
        and not Path(file_profile).is_absolute()
    ):
        file_profile = str(found[0].parent / file_profile)
    settings = Settings(
        profile=load_profile(profile if profile is not None else file_profile),
        root=found[0].parent if found else None,
        config_file=found[0] if found else None,
    )
    settings = _apply_table(where, {k: v for k, v in table.items() if k != "profile"}, settings)
    cli: dict[str, Any] = {}
    if select:
        cli["select"] = list(select)
    if extend_select:
        cli["extend-select"] = list(extend_select)
    if ignore:
        cli["ignore"] = list(ignore)
    if per_file_ignores:
        cli["per-file-ignores"] = {k: list(v) for k, v in per_file_ignores.items()}
    if severity:
        cli["severity"] = dict(severity)
    if fail_on is not None:
        cli["fail-on"] = fail_on
    if thresholds:
        cli["thresholds"] = dict(thresholds)
    return _apply_table("command line", cli, settings)
