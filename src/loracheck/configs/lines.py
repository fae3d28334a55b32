"""Where things are in a config's text: the line of each key, and inline suppression comments.

``tomllib`` and ``json`` report no positions, so keys are located by scanning the text; the
scanners assume text the real parser already accepted. Paths are tuples of mapping keys (str)
and sequence indices (int); lines are 1-based.
"""

from __future__ import annotations

import contextlib
import json
import re

KeyPath = tuple[str | int, ...]

# `# loracheck: ignore` (every code) or `# loracheck: ignore[LC103, LC108]`.
_SUPPRESS = re.compile(r"#\s*loracheck\s*:\s*ignore\b(?:\[([^\]\n]*)\])?", re.IGNORECASE)
_CODE = re.compile(r"[A-Z]+[0-9]+")


def find_suppressions(text: str) -> dict[int, list[str]]:
    """Inline ``# loracheck: ignore[...]`` comments: line -> codes (empty list = every code)."""
    found: dict[int, list[str]] = {}
    if "loracheck" not in text.lower():
        return found
    for lineno, line in enumerate(text.splitlines(), start=1):
        if "#" not in line:
            continue
        for match in _SUPPRESS.finditer(line):
            listed = match.group(1)
            if listed is None:
                found[lineno] = []
                continue
            codes = [c.strip().upper() for c in listed.split(",")]
            codes = [c for c in codes if _CODE.fullmatch(c)]
            if not codes:
                # `ignore[]` or junk inside the brackets: treat as bare, like most linters do.
                found[lineno] = []
                continue
            if lineno in found and found[lineno] == []:
                continue
            merged = found.setdefault(lineno, [])
            merged.extend(c for c in codes if c not in merged)
    return found


_JSON_TOKEN = re.compile(r'("(?:[^"\\\n]|\\.)*")|([{}\[\],:])|(\n)')


def json_key_lines(text: str) -> dict[KeyPath, int]:
    """The line of every object key in a JSON text (the last one wins on duplicates, as in json)."""
    lines: dict[KeyPath, int] = {}
    # Each frame is [kind, current key or index]; kind "o" (object) or "a" (array).
    stack: list[list[object]] = []
    line = 1
    pending: tuple[str, int] | None = None
    for match in _JSON_TOKEN.finditer(text):
        string, punct, newline = match.groups()
        if newline:
            line += 1
            continue
        if string is not None:
            pending = (string, line)
            continue
        if punct == ":" and pending is not None and stack and stack[-1][0] == "o":
            raw = pending[0]
            key = raw[1:-1]
            if "\\" in key:  # only an escape needs the JSON decoder
                with contextlib.suppress(ValueError):
                    key = json.loads(raw)
            stack[-1][1] = key
            path = tuple(f[1] for f in stack)
            lines[path] = pending[1]  # type: ignore[index]
        elif punct in ("{", "["):
            stack.append(["o" if punct == "{" else "a", None if punct == "{" else 0])
        elif punct in ("}", "]"):
            if stack:
                stack.pop()
        elif punct == "," and stack and stack[-1][0] == "a":
            stack[-1][1] = int(stack[-1][1]) + 1  # type: ignore[call-overload]
        pending = None
    return lines


_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]#]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_KEY = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
    r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'))*)\s*="""
)
_TOML_PART = re.compile(r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'""")


def _toml_parts(dotted: str) -> list[str]:
    parts = []
    for raw in _TOML_PART.findall(dotted):
        if raw.startswith('"'):
            try:
                parts.append(str(json.loads(raw)))
            except ValueError:
                parts.append(raw[1:-1])
        elif raw.startswith("'"):
            parts.append(raw[1:-1])
        else:
            parts.append(raw)
    return parts


def toml_key_lines(text: str) -> dict[KeyPath, int]:
    """The line of every ``key = value`` and table header in a TOML text.

    Array-of-tables entries get their index in the path (``[[a]]`` twice: ``("a", 0)``,
    ``("a", 1)``). Keys inside multi-line strings are skipped; inline tables are not entered.
    """
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    aot_counts: dict[tuple[str, ...], int] = {}
    in_multiline: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        header = _TOML_HEADER.match(line)
        if header and not _TOML_KEY.match(line):
            parts = tuple(_toml_parts(header.group(2)))
            if header.group(1) == "[[":
                index = aot_counts.get(parts, 0)
                aot_counts[parts] = index + 1
                table = (*parts, index)
            else:
                table = parts
            lines.setdefault(table, lineno)
            continue
        key = _TOML_KEY.match(line)
        if key:
            key_path: KeyPath = (*table, *_toml_parts(key.group(1)))
            lines[key_path] = lineno
            rest = line[key.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
                    break
    return lines


def error_line(message: str) -> int | None:
    """The line a parser's message names, ``(at line 3, column 5)`` or ``line 3``; else None."""
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None
