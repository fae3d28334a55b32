"""Parse any Python 3.8–3.14 script with the running interpreter's ``ast`` (3.10 or newer).

The syntax newer than the interpreter is rewritten, never executed, into an equivalent shape the
older parser accepts, keeping every line number:

* PEP 701 f-strings (3.12: the same quote nested inside a replacement field, backslashes and
  comments there) and PEP 750 t-strings (3.14) become a plain string of the same length;
  loracheck never needs their value (an f-string is not a literal).
* PEP 695/696 type parameters (``class C[T]:``, ``def f[T = int]()``) are dropped and
  ``type X = ...`` becomes ``X = ...``; ``except*`` (3.11) becomes ``except``; PEP 758's
  ``except A, B:`` (3.14) gets its parentheses.

Only when the plain parse fails are the rewrites tried, and the first error is the one reported
when they do not help either.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

_PREFIX = re.compile(r"[rRbBuUfFtT]{0,2}(?='|\")")
_NAME_CHAR = re.compile(r"\w")  # str.isalpha() letters are \w too, so names always advance


Position = tuple[int, int]  # (1-based line, UTF-8 byte column), as ast reports them


@dataclass(frozen=True)
class Script:
    """A parsed script; ``opaque``: where an f/t-string was blanked, so that a string literal
    found there is not a value."""

    tree: ast.Module
    opaque: frozenset[Position] = frozenset()


def parse_python(text: str, filename: str) -> Script:
    """``ast.parse`` of ``text``, retried on the rewritten text when it is newer syntax.

    Raises SyntaxError (the original one) when neither parses.
    """
    try:
        return Script(_parse(text, filename))
    except SyntaxError as first:
        try:
            rewritten, blanked = _rewrite(text)
        except _ScanError:
            raise first from None
        if rewritten == text:
            raise
        try:
            return Script(_parse(rewritten, filename), frozenset(blanked))
        except SyntaxError:
            raise first from None


def _parse(text: str, filename: str) -> ast.Module:
    # Compiler warnings about the script (invalid escapes, "1.inf") are not ours to print.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(text, filename=filename)


class _ScanError(Exception):
    """The text is not even lexically Python (an unterminated string)."""


def rewrite_new_syntax(text: str) -> str:
    """``text`` with f/t-strings blanked and post-3.10 statement syntax rewritten."""
    return _rewrite(text)[0]


def _rewrite(text: str) -> tuple[str, list[Position]]:
    blanked, starts = _blank_all(text)
    lines = blanked.split("\n")
    out = [_rewrite_line(line) for line in lines]
    return "\n".join(out), [_position(text, i) for i in starts]


def _position(text: str, index: int) -> Position:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, len(text[line_start:index].encode("utf-8"))


_TYPE_ALIAS = re.compile(r"^(\s*)type\s+([A-Za-z_]\w*)\s*(\[)?")
_DEF_CLASS = re.compile(r"^(\s*(?:async\s+)?(?:def|class)\s+[A-Za-z_]\w*)\s*\[")
_EXCEPT_STAR = re.compile(r"^(\s*)except\s*\*")
_EXCEPT_TUPLE = re.compile(r"^(\s*)except\s+([^():,]+(?:,[^():,]+)+)\s*:")
_AS_ALIAS = re.compile(r"\s+as\s+(\w+)\s*$")


def _rewrite_line(line: str) -> str:
    match = _TYPE_ALIAS.match(line)
    if match:
        rest = line[match.end():]
        if match.group(3):
            rest = _skip_brackets("[" + rest)
        if rest.lstrip().startswith("="):
            return f"{match.group(1)}{match.group(2)} {rest.lstrip()}"
    match = _DEF_CLASS.match(line)
    if match:
        return match.group(1) + _skip_brackets(line[match.end() - 1:])
    match = _EXCEPT_STAR.match(line)
    if match:
        return f"{match.group(1)}except " + line[match.end():]
    match = _EXCEPT_TUPLE.match(line)
    if match:
        names = match.group(2)
        alias = _AS_ALIAS.search(names)
        if alias:
            names = names[: alias.start()]
        suffix = f" as {alias.group(1)}" if alias else ""
        return f"{match.group(1)}except ({names.strip()}){suffix}:" + line[match.end():]
    return line


def _skip_brackets(text: str) -> str:
    """``text`` (starting at "[") after its matching "]"; unchanged when unbalanced."""
    depth = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return text[i + 1:]
    return text


def blank_fstrings(text: str) -> str:
    """Every f-string and t-string replaced by a plain string literal (of the same length on
    one line; a multi-line one keeps its newlines, so every later line keeps its number)."""
    return _blank_all(text)[0]


def _blank_all(text: str) -> tuple[str, list[int]]:
    """The blanked text and the offsets in ``text`` where each blanked literal starts."""
    starts: list[int] = []
    out: list[str] = []
    i, n = 0, len(text)
    last = 0
    while i < n:
        char = text[i]
        if char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if char in "'\"" or (char.isalpha() and (i == 0 or not _NAME_CHAR.match(text[i - 1]))):
            match = _PREFIX.match(text, i)
            if match is not None:
                prefix = match.group(0)
                end = _scan_string(text, match.end(), prefix)
                if any(c in prefix.lower() for c in "ft"):
                    out.append(text[last:i])
                    out.append(_blank(text[i:end]))
                    starts.append(i)
                    last = end
                i = end
                continue
            if char.isalpha():
                i += 1
                while i < n and _NAME_CHAR.match(text[i]):
                    i += 1
                continue
        i += 1
    out.append(text[last:])
    return "".join(out), starts


def _blank(literal: str) -> str:
    newlines = literal.count("\n")
    if newlines == 0:
        return '"' + " " * (len(literal) - 2) + '"'
    body = "\n" * newlines
    return '"""' + body + '"""'


def _scan_string(text: str, start: int, prefix: str) -> int:
    """The index just past the string literal whose opening quote is at ``start``."""
    quote = text[start]
    triple = text.startswith(quote * 3, start)
    closing = quote * 3 if triple else quote
    i = start + len(closing)
    formatted = any(c in prefix.lower() for c in "ft")
    n = len(text)
    while i < n:
        if text.startswith(closing, i):
            return i + len(closing)
        char = text[i]
        if char == "\\":
            i += 2  # an escaped quote never closes a string, raw or not
            continue
        if char == "\n" and not triple and not formatted:
            raise _ScanError
        if formatted and char == "{":
            if text.startswith("{{", i):
                i += 2
                continue
            i = _scan_field(text, i + 1)
            continue
        i += 1
    raise _ScanError


def _scan_field(text: str, start: int) -> int:
    """The index just past the "}" closing a replacement field whose body starts at ``start``
    (PEP 701: any expression, nested strings of any quote, a format spec with nested fields)."""
    depth = 0
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char in "([{":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "}":
            if depth == 0:
                return i + 1
            depth -= 1
        elif char == ":" and depth == 0:
            return _scan_spec(text, i + 1)
        elif char == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif char in "'\"" or char.isalpha():
            # A quote always opens a string; a letter may start its prefix (f"…", rb'…').
            starts = char in "'\"" or i == 0 or not _NAME_CHAR.match(text[i - 1])
            match = _PREFIX.match(text, i) if starts else None
            if match is not None:
                i = _scan_string(text, match.end(), match.group(0))
                continue
            i += 1
            while i < n and _NAME_CHAR.match(text[i]):
                i += 1
            continue
        i += 1
    raise _ScanError


def _scan_spec(text: str, start: int) -> int:
    """Past the "}" ending a format spec, which may hold nested replacement fields."""
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char == "{":
            i = _scan_field(text, i + 1)
            continue
        if char == "}":
            return i + 1
        i += 1
    raise _ScanError
