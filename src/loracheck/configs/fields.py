"""Typed field assignment for a :class:`LoraSpec` under construction.

Readers hand raw values to :class:`SpecBuilder`; a value of the wrong type never raises: the
field stays ``None``, ``invalid[field]`` keeps ``repr(raw)`` and ``lines[field]`` still points
at the key. ``lax`` mimics pydantic's lax coercion ("16" -> 16) for sources validated by it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from loracheck.model import MethodKind, ValueOrigin

if TYPE_CHECKING:
    from loracheck.model import LoraSpec

_TRUE = {"true", "yes", "on", "1", "t", "y"}
_FALSE = {"false", "no", "off", "0", "f", "n"}


class InvalidValue(Exception):
    """A raw value that does not fit the field's type."""


# Integers no consumer can hold (torch and numpy sizes are int64) are refused, so that rules never
# meet a rank whose float conversion overflows.
_INT_LIMIT = 2**63


def to_int(raw: Any, lax: bool = False) -> int:
    """An int; bools and non-integral numbers are refused (lax: integral floats, digit strings)."""
    value = _to_int(raw, lax)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise InvalidValue
    return value


def _to_int(raw: Any, lax: bool) -> int:
    if isinstance(raw, bool):
        raise InvalidValue
    if isinstance(raw, int):
        return raw
    if lax and isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    if lax and isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise InvalidValue from None
            if math.isfinite(value) and value.is_integer():
                return int(value)
    raise InvalidValue


def to_float(raw: Any, lax: bool = False) -> float:
    """A finite float from an int or float (lax: numeric strings); NaN/Inf are refused."""
    if isinstance(raw, bool):
        raise InvalidValue
    if isinstance(raw, (int, float)):
        try:
            value = float(raw)
        except OverflowError:
            raise InvalidValue from None
    elif lax and isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise InvalidValue from None
    else:
        raise InvalidValue
    if not math.isfinite(value):
        raise InvalidValue
    return value


def to_bool(raw: Any, lax: bool = False) -> bool:
    """A bool (lax: the usual true/false spellings and 0/1)."""
    if isinstance(raw, bool):
        return raw
    if lax and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    if lax and isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise InvalidValue


def to_str(raw: Any, lax: bool = False) -> str:
    if isinstance(raw, str):
        return raw
    raise InvalidValue


def to_str_list(raw: Any, lax: bool = False) -> list[str]:
    """A list of strings; a set (Python scripts, PEFT accepts one) becomes a sorted list."""
    if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
        return list(raw)
    if isinstance(raw, (set, frozenset)) and all(isinstance(x, str) for x in raw):
        return sorted(raw)
    raise InvalidValue


def to_str_or_list(raw: Any, lax: bool = False) -> list[str] | str:
    """A list of names or one string (a regex for target_modules, a name for layers_pattern)."""
    if isinstance(raw, str):
        return raw
    return to_str_list(raw)


def to_int_list(raw: Any, lax: bool = False) -> list[int]:
    """A list of ints; a single int becomes a one-element list (PEFT accepts both)."""
    if isinstance(raw, (list, tuple)):
        return [to_int(x, lax) for x in raw]
    return [to_int(raw, lax)]


def to_init(raw: Any, lax: bool = False) -> bool | str:
    if isinstance(raw, (bool, str)):
        return raw
    raise InvalidValue


def to_rank_pattern(raw: Any, lax: bool = False) -> dict[str, int]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise InvalidValue
    return {k: to_int(v, lax) for k, v in raw.items()}


def to_alpha_pattern(raw: Any, lax: bool = False) -> dict[str, float]:
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise InvalidValue
    return {k: to_float(v, lax) for k, v in raw.items()}


# LoraSpec field -> converter.
CONVERTERS: dict[str, Any] = {
    "rank": to_int,
    "alpha": to_float,
    "scale": to_float,
    "dropout": to_float,
    "init_lora_weights": to_init,
    "init_std": to_float,
    "use_rslora": to_bool,
    "use_dora": to_bool,
    "target_modules": to_str_or_list,
    "exclude_modules": to_str_or_list,
    "rank_pattern": to_rank_pattern,
    "alpha_pattern": to_alpha_pattern,
    "modules_to_save": to_str_list,
    "bias": to_str,
    "layers_to_transform": to_int_list,
    "layers_pattern": to_str_or_list,
    "fan_in_fan_out": to_bool,
    "task_type": to_str,
    "base_model": to_str,
}


# Template placeholders a config is rendered from before its trainer reads it: ${VAR}, $VAR,
# {{ jinja }}, {% jinja %}, %(name)s. The value is unknown, not wrong.
# Each alternative is linear: a bounded name, or a closing delimiter found with str.find.
_SHELL_VAR = re.compile(
    r"\$\{[A-Za-z_][\w.:-]{0,200}\}|^\$[A-Za-z_]\w{0,200}$|%\([A-Za-z_]\w{0,200}\)[sd]"
)


def _is_placeholder(text: str) -> bool:
    if _SHELL_VAR.search(text):
        return True
    for opening, closing in (("{{", "}}"), ("{%", "%}")):
        start = text.find(opening)
        if start >= 0 and text.find(closing, start + 2) >= 0:
            return True
    return False


def placeholder_text(raw: Any) -> str | None:
    """The raw text when ``raw`` (a string, or a list holding one) is a template placeholder."""
    if isinstance(raw, str):
        return raw if _is_placeholder(raw) else None
    if isinstance(raw, (list, tuple)):
        for item in raw:
            if isinstance(item, str) and _is_placeholder(item):
                return _short_repr(list(raw))
    return None


def split_names(raw: str) -> list[str]:
    """A comma-separated list of names ("q_proj, v_proj") as a list, empty items dropped."""
    return [part.strip() for part in raw.split(",") if part.strip()]


class SpecBuilder:
    """Collects fields, lines, extras and problems, then builds one LoraSpec."""

    def __init__(self, source_format: str, path: str, *, lax: bool = False) -> None:
        self.source_format = source_format
        self.path = path
        self.lax = lax
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.invalid: dict[str, str] = {}
        self.extras: dict[str, Any] = {}
        self.unknown: list[str] = []
        self.suppressions: dict[int, list[str]] = {}
        # spec field -> the source's own key name, for messages ("lora_r", "network_dim").
        self.source_keys: dict[str, str] = {}
        self.origins: dict[str, ValueOrigin] = {}
        self.unresolved: dict[str, str] = {}
        self.method = MethodKind.LORA
        self.method_name = "LoRA"

    def set(
        self,
        spec_field: str,
        raw: Any,
        line: int | None = None,
        *,
        key: str | None = None,
        lax: bool | None = None,
    ) -> bool:
        """Convert and store ``raw`` as ``spec_field``; on a type mismatch record it in invalid.

        ``None`` (YAML ``null``, JSON ``null``, Python ``None``) counts as "not said", except
        for rank and alpha where a present null is a wrong value. Returns whether it was stored.
        """
        if line is not None:
            self.lines[spec_field] = line
        if key is not None:
            self.source_keys[spec_field] = key
        if raw is None:
            if spec_field in ("rank", "alpha"):
                self.invalid[spec_field] = repr(raw)
            return False
        placeholder = placeholder_text(raw)
        if placeholder is not None:
            self.mark_unresolved(spec_field, placeholder, ValueOrigin.PLACEHOLDER)
            return False
        convert = CONVERTERS[spec_field]
        try:
            value = convert(raw, self.lax if lax is None else lax)
        except (InvalidValue, ValueError, TypeError, OverflowError):
            self.invalid[spec_field] = _short_repr(raw)
            self.values.pop(spec_field, None)
            return False
        self.values[spec_field] = value
        self.invalid.pop(spec_field, None)
        self.unresolved.pop(spec_field, None)
        self.origins.pop(spec_field, None)
        return True

    def mark_unresolved(
        self, spec_field: str, text: str, origin: ValueOrigin = ValueOrigin.EXPRESSION
    ) -> None:
        """``spec_field`` is set in the file to something only its run time knows."""
        self.values.pop(spec_field, None)
        self.invalid.pop(spec_field, None)
        self.unresolved[spec_field] = _short_repr(text) if not isinstance(text, str) else text
        self.origins[spec_field] = origin

    def said(self, spec_field: str) -> bool:
        """Whether the file says anything about ``spec_field`` (valid, invalid or unknown)."""
        return (spec_field in self.values or spec_field in self.invalid
                or spec_field in self.unresolved)

    def default(self, spec_field: str, value: Any) -> None:
        """Fill ``spec_field`` with the trainer's default when the file does not say it."""
        if self.said(spec_field) or value is None:
            return
        self.values[spec_field] = value
        self.origins[spec_field] = ValueOrigin.TRAINER_DEFAULT

    def set_method(self, kind: MethodKind, name: str) -> None:
        self.method = kind
        self.method_name = name

    def has(self, spec_field: str) -> bool:
        return spec_field in self.values

    def get(self, spec_field: str) -> Any:
        return self.values.get(spec_field)

    def extra(self, key: str, value: Any, line: int | None = None) -> None:
        """Keep a source-specific value in extras (its line under the same key in lines)."""
        self.extras[key] = value
        if line is not None:
            self.lines[key] = line

    def unknown_key(self, key: str, line: int | None = None) -> None:
        if key not in self.unknown:
            self.unknown.append(key)
        # Unknown keys' lines are kept under their own name unless that names a spec field.
        if line is not None and key not in CONVERTERS and key not in self.extras:
            self.lines.setdefault(key, line)

    def build(self) -> LoraSpec:
        from loracheck.model import LoraSpec

        extras = dict(self.extras)
        if self.source_keys:
            extras["source_keys"] = dict(self.source_keys)
        return LoraSpec(
            source_format=self.source_format,
            path=self.path,
            **self.values,
            method=self.method,
            method_name=self.method_name,
            origins=dict(self.origins),
            unresolved=dict(self.unresolved),
            extras=_plain(extras),
            unknown_keys=list(self.unknown),
            invalid=dict(self.invalid),
            lines=dict(self.lines),
            suppressions=dict(self.suppressions),
        )


def _short_repr(raw: Any, limit: int = 200) -> str:
    try:
        text = repr(raw)
    except (ValueError, RecursionError):  # ints past the digit limit, very deep nesting
        return f"<{type(raw).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy (tuples -> lists, sets -> sorted lists, odd objects -> str)."""
    if depth > 20:
        return _short_repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return [_plain(v, depth + 1) for v in value]
    return _short_repr(value)
