"""Reading a config file safely into a :class:`Doc`: its parsed value plus the line of each key.

Every failure is an :class:`~loracheck.errors.ArtifactError` (LC001). Parsers are imported
lazily, only for the format being read.

YAML is only ever constructed by PyYAML's ``SafeConstructor``. Its events come from libyaml's C
parser when PyYAML was built with it (the parser of ``yaml.CSafeLoader``, several times faster),
else from the pure-Python ``yaml.SafeLoader``; either way PyYAML's Python composer builds the
nodes, counting them as it goes (no more than MAX_YAML_NODES are ever built, alias references
included), bounded by the interpreter's recursion limit. (libyaml's own composer is not used:
it would build every node of a 2 MB document before one could be counted, and it recurses in C
without that guard, so deep nesting overflows a small thread stack.) The node graph is then
walked iteratively, key lines taken and alias expansion and nesting measured, before anything
is constructed, so a "billion laughs" document or a recursive anchor is refused in
milliseconds.

When the C parser meets an error, the pure-Python parser reads the text again and gives the
verdict; text that the two are known to read differently (control characters, tabs, byte order
marks, tags, odd block scalar headers, "?" with a flow collection) goes to the pure-Python
parser alone. So both loaders give the same values, key lines, limits, refusals and messages.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loracheck.configs.lines import (
    KeyPath,
    error_line,
    find_suppressions,
    json_key_lines,
    toml_key_lines,
)
from loracheck.errors import ArtifactError

if TYPE_CHECKING:
    import yaml

MAX_CONFIG_BYTES = 10 * 1024 * 1024
# Pure-Python YAML scanning runs at roughly 1 MB/s (libyaml's several times that); real LoRA
# configs are a few kB.
MAX_YAML_BYTES = 2 * 1024 * 1024
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 64
# Nodes visited when every alias is expanded: what yaml.safe_load would build.
MAX_YAML_EXPANDED = 100_000

_SUFFIX_KIND = {
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".py": "python",
}


def kind_of(path: Path) -> str | None:
    """The syntax a config path uses by its extension: json, yaml, toml, python; else None."""
    return _SUFFIX_KIND.get(path.suffix.lower())


@dataclass
class Doc:
    """A parsed config: the top-level value, key lines and inline suppressions."""

    path: str
    kind: str
    data: Any
    key_lines: dict[KeyPath, int] = field(default_factory=dict)
    suppressions: dict[int, list[str]] = field(default_factory=dict)
    _first: dict[str, tuple[KeyPath, Any]] | None = field(default=None, repr=False)

    def line(self, *path: str | int) -> int | None:
        """The 1-based line of the key at ``path``, when known."""
        return self.key_lines.get(tuple(path))

    def lookup(self, *path: str | int) -> tuple[bool, Any, int | None]:
        """(present, value, line) of the value at ``path`` (mapping keys and list indices)."""
        node: Any = self.data
        for part in path:
            in_dict = isinstance(part, str) and isinstance(node, dict) and part in node
            in_list = isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node)
            if in_dict or in_list:
                node = node[part]
            else:
                return False, None, None
        return True, node, self.line(*path)

    def walk(self) -> Iterator[tuple[KeyPath, Any]]:
        """Every (path, value) under a mapping key, depth first, in document order."""
        stack: list[tuple[KeyPath, Any]] = [((), self.data)]
        while stack:
            path, node = stack.pop()
            if path:
                yield path, node
            if isinstance(node, dict):
                children = [((*path, k), v) for k, v in node.items() if isinstance(k, str)]
                stack.extend(reversed(children))
            elif isinstance(node, list):
                stack.extend(reversed([((*path, i), v) for i, v in enumerate(node)]))

    def find_key(self, key: str) -> tuple[bool, Any, int | None, KeyPath]:
        """The first ``key`` at any depth (sections flattened, kohya style)."""
        if self._first is None:
            self._first = {}
            for path, value in self.walk():
                if isinstance(path[-1], str) and path[-1] not in self._first:
                    self._first[path[-1]] = (path, value)
        if key not in self._first:
            return False, None, None, ()
        path, value = self._first[key]
        return True, value, self.key_lines.get(path), path

    def all_keys(self) -> set[str]:
        """Every mapping key at any depth."""
        return {p[-1] for p, _ in self.walk() if isinstance(p[-1], str)}


def read_prefix(path: Path, limit: int) -> bytes:
    """Up to ``limit`` bytes from the start of a file: all of it when shorter. Unbuffered, and
    asked for what the file holds (+1, to see its end) before the rest of ``limit`` (only if it
    grew meanwhile): a read of ``limit`` bytes allocates them up front, a buffered one adds a
    copy and system calls, and both showed per small config file."""
    with open(path, "rb", buffering=0) as handle:
        want = min(os.fstat(handle.fileno()).st_size + 1, limit)
        chunks: list[bytes] = []
        got = 0
        while got < limit and (chunk := handle.read(want - got if got < want else limit - got)):
            chunks.append(chunk)
            got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_text(path: Path, cap: int = MAX_CONFIG_BYTES) -> str:
    """The file's text; refuses files over ``cap`` bytes and text that is not UTF-8."""
    name = str(path)
    try:
        raw = read_prefix(path, cap + 1)
    except OSError as err:
        raise ArtifactError(name, f"cannot read file: {err.strerror or err}") from None
    return decode_text(name, raw, cap)


def decode_text(name: str, raw: bytes, cap: int = MAX_CONFIG_BYTES) -> str:
    """The text of a config file's bytes (all of them); the refusals of :func:`read_text`."""
    if len(raw) > cap:
        raise ArtifactError(name, f"config file larger than {cap // (1024 * 1024)} MB refused")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ArtifactError(name, f"not UTF-8 text (byte {err.start})", line=line) from None


def config_cap(kind: str) -> int:
    return MAX_YAML_BYTES if kind == "yaml" else MAX_CONFIG_BYTES


def parse(path: Path, kind: str, text: str, *, yaml_loader: str | None = None) -> Doc:
    """Parse ``text`` of syntax ``kind`` (json, yaml, toml) into a Doc.

    ``yaml_loader`` forces one of :func:`available_yaml_loaders` ("c": libyaml's parser, or
    "python"; for tests and benchmarks); None is :func:`default_yaml_loader`.
    """
    name = str(path)
    if kind == "json":
        doc = _parse_json(name, text)
    elif kind == "yaml":
        doc = _parse_yaml(name, text, yaml_loader)
    elif kind == "toml":
        doc = _parse_toml(name, text)
    else:
        raise ArtifactError(name, f"not a config syntax loracheck reads: {kind}")
    if kind != "json":
        doc.suppressions = find_suppressions(text)
    return doc


def read_doc(path: Path, kind: str) -> Doc:
    """Read and parse a json/yaml/toml config file."""
    return parse(path, kind, read_text(path, config_cap(kind)))


def _parse_json(name: str, text: str) -> Doc:
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(name, f"invalid JSON: {err.msg}", line=err.lineno) from None
    except RecursionError:
        raise ArtifactError(name, "invalid JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer literal past the digit limit
        raise ArtifactError(name, f"invalid JSON: {err}") from None
    return Doc(name, "json", data, json_key_lines(text))


def _parse_toml(name: str, text: str) -> Doc:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = str(err)
        raise ArtifactError(name, f"invalid TOML: {msg}", line=error_line(msg)) from None
    except RecursionError:
        raise ArtifactError(name, "invalid TOML: nested too deeply") from None
    except ValueError as err:
        raise ArtifactError(name, f"invalid TOML: {err}") from None
    return Doc(name, "toml", data, toml_key_lines(text))


class _NodeLimit(Exception):
    """Raised inside the composer when a YAML document has too many nodes."""


# Text that libyaml may read differently from the pure-Python parser (found by differential
# fuzzing) goes to "python" alone: a character the Python reader refuses before parsing anything
# (outside yaml.reader.Reader.NON_PRINTABLE's set: libyaml finds such characters only when it
# reaches them); a tab (libyaml takes many as white space where PyYAML refuses them); a byte
# order mark (libyaml skips one anywhere); a "!" that may start a tag ("!:x" and "!" alone are
# tags to libyaml, errors or other tags to PyYAML; real configs carry none); a block scalar
# header not followed by a space or a line break (">#" and "|-#" are headers to libyaml, errors
# to PyYAML); "?" with a flow collection ("[0.25?]" is a plain scalar to libyaml, an error to
# PyYAML). Checked with bytes.translate and str.find, not regexes: a regex over every character
# would cost as much as libyaml's parse.
_ASCII_OK = bytes([0x0A, 0x0D, *range(0x20, 0x7F)])
_HIGH = bytes(range(0x80, 0x100))
_NON_ASCII_REFUSED = re.compile("[\x80-\x84\x86-\x9f\ud800-\udfff\ufeff\ufffe\uffff]")
_HEADER_END = re.compile(r"(?:[-+][1-9]?|[1-9][-+]?)?(?:[ \r\n\x85\u2028\u2029]|\Z)")
_FLOW = frozenset("[]{},")


def _c_reads_alike(text: str) -> bool:
    """False for text where libyaml and the pure-Python parser are known to part ways."""
    rest = text.encode("utf-8", "surrogatepass").translate(None, _ASCII_OK)
    if rest:
        if rest.translate(None, _HIGH):  # a control character or a tab
            return False
        if _NON_ASCII_REFUSED.search(rest.decode("utf-8", "surrogatepass")):
            return False
    i = text.find("!")
    while i >= 0:
        if i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"):
            return False
        i = text.find("!", i + 1)
    for indicator in "|>":
        i = text.find(indicator)
        while i >= 0:
            before = text[i - 1] if i else " "
            if (before.isspace() or before in _FLOW) and not _HEADER_END.match(text, i + 1):
                return False
            i = text.find(indicator, i + 1)
    return "?" not in text or ("[" not in text and "{" not in text)


# libyaml's own composer (C, ~2x faster than PyYAML's Python one on a config) counts no nodes
# and recurses in C without the interpreter's guard, so it takes only text on which neither can
# matter. Nodes: each takes a character of text bar a few empty ones ("?" alone composes a
# mapping, an empty key and an empty value; "{a,b}" one node per character), so text of fewer
# than half MAX_YAML_NODES characters stays below it. Depth: a nested block collection starts
# at a greater column than its parent, or at the same one once (a sequence as a mapping's
# value), and a flow one needs a bracket, so 2 x the longest line (split at "\n" only, the
# rarer breaks making it longer) + the brackets bounds the depth; 400 levels take ~110 KB of C
# stack (990 overflowed a 256 KiB thread).
_C_COMPOSE_MAX_CHARS = MAX_YAML_NODES // 2 - 8
_C_COMPOSE_MAX_DEPTH = 400


def _c_composes_safely(text: str) -> bool:
    """True when libyaml's composer can take ``text``: too short for the node limit and too
    shallow for the C stack (see above)."""
    if len(text) > _C_COMPOSE_MAX_CHARS:
        return False
    depth = 2 * max(map(len, text.split("\n"))) + text.count("[") + text.count("{") + 2
    return depth <= _C_COMPOSE_MAX_DEPTH


def available_yaml_loaders() -> tuple[str, ...]:
    """The YAML loaders this PyYAML offers, the default (fastest) first: ("c", "python") when
    PyYAML was built with libyaml, else ("python",)."""
    return tuple(name for name in _yaml_loader_classes() if name in ("c", "python"))


def default_yaml_loader() -> str:
    """The loader :func:`parse` uses for YAML: "c" when PyYAML has libyaml, else "python"."""
    return available_yaml_loaders()[0]


@functools.cache
def _yaml_loader_classes() -> dict[str, type[Any]]:
    """Loader classes by name ("c" first when there, then its "c-composed" variant), built
    once per process."""
    import yaml
    from yaml.composer import Composer

    class Counting:
        """Stops composing past MAX_YAML_NODES nodes (alias references count as one each)."""

        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                raise _NodeLimit
            return super().compose_node(parent, index)  # type: ignore[misc]

    class PythonLoader(Counting, yaml.SafeLoader):
        """yaml.SafeLoader, pure Python, counting nodes."""

    classes: dict[str, type[Any]] = {}
    if getattr(yaml, "__with_libyaml__", False) and hasattr(yaml, "CSafeLoader"):

        class CLoader(Counting, Composer, yaml.CSafeLoader):
            """libyaml's events, composed by PyYAML's Python composer (ahead of the C one in
            the MRO, so that nodes are counted while composing), built by SafeConstructor."""

            def __init__(self, stream: str) -> None:
                yaml.CSafeLoader.__init__(self, stream)
                Composer.__init__(self)

        class CComposed(yaml.CSafeLoader):
            """libyaml's events composed by libyaml, built by SafeConstructor: for text
            _c_composes_safely admits."""

        classes["c"] = CLoader
        classes["c-composed"] = CComposed
    classes["python"] = PythonLoader
    return classes


def _compose(cls: type[Any], text: str) -> tuple[Any, yaml.Node | None]:
    """(loader, root node of the first document, None if there is none) from a fresh loader."""
    import yaml

    loader = cls(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.composer.ComposerError as err:
            if "expected a single document" not in str(err):
                raise
            # Several documents: the first one is the config.
            loader.dispose()
            loader = cls(text)
            root = loader.get_node() if loader.check_node() else None
    except BaseException:
        loader.dispose()
        raise
    return loader, root


def _parse_yaml(name: str, text: str, loader: str | None = None) -> Doc:
    import yaml

    if loader is not None and loader not in available_yaml_loaders():
        raise ValueError(f"unknown or unavailable YAML loader {loader!r}; this PyYAML offers "
                         f"{', '.join(available_yaml_loaders())}")
    try:
        root, data, key_lines = _compose_and_construct(name, text, loader)
    except _NodeLimit:
        raise ArtifactError(
            name, f"YAML document with more than {MAX_YAML_NODES} nodes refused"
        ) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "syntax error"
        raise ArtifactError(name, f"invalid YAML: {problem}", line=line) from None
    except yaml.YAMLError as err:
        # ReaderError (control characters) has no mark; give its message.
        raise ArtifactError(name, f"invalid YAML: {err}".splitlines()[0]) from None
    except RecursionError:
        raise ArtifactError(name, "invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        # Constructor edge cases (bad timestamps, unhashable keys, ...).
        raise ArtifactError(name, f"invalid YAML: {err}") from None
    except (LookupError, AttributeError):
        # SafeConstructor on a value its explicit tag cannot hold (!!int "", !!bool x,
        # !!timestamp x) fails with IndexError, KeyError or AttributeError.
        raise ArtifactError(name, "invalid YAML: a value its tag (!!int, !!bool, ...) cannot "
                            "hold") from None
    if root is None:
        return Doc(name, "yaml", None)
    return Doc(name, "yaml", data, key_lines)


def _compose_and_construct(
    name: str, text: str, loader: str | None = None
) -> tuple[Any, Any, dict[KeyPath, int]]:
    """(root node, constructed value, key lines) of the first document; (None, ...) if empty."""
    import yaml

    classes = _yaml_loader_classes()
    composed = None
    if (loader or default_yaml_loader()) == "c" and _c_reads_alike(text):
        try:
            cls = classes["c-composed"] if _c_composes_safely(text) else classes["c"]
            composed = _compose(cls, text)
        except (yaml.YAMLError, RecursionError, ValueError):
            # libyaml words its errors (and may place them) differently: the pure-Python
            # parser reads the text again and gives the verdict. _NodeLimit is ours, the same
            # in both (the same composer counts the same events), and is not read twice.
            composed = None
    if composed is None:
        composed = _compose(classes["python"], text)
    reader, root = composed
    try:
        if root is None:
            return None, None, {}
        key_lines = _yaml_key_lines(name, root)
        return root, reader.construct_document(root), key_lines
    finally:
        reader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _yaml_key_lines(name: str, root: yaml.Node) -> dict[KeyPath, int]:
    """Key lines from the composed node graph; refuses alias blow-up before construction."""
    import yaml

    lines: dict[KeyPath, int] = {}
    visited = 0
    # (node, path, whether keys found here may overwrite earlier ones: merged keys may not)
    stack: list[tuple[yaml.Node, KeyPath, bool]] = [(root, (), True)]
    while stack:
        node, path, primary = stack.pop()
        visited += 1
        if visited > MAX_YAML_EXPANDED:
            raise ArtifactError(name, "YAML alias bomb refused (alias expansion too large)")
        if len(path) > MAX_YAML_DEPTH:
            # an anchor that contains itself (x: &a {y: *a}) nests without end; paths that long
            # would cost O(depth²) to walk
            raise ArtifactError(name, f"YAML nested deeper than {MAX_YAML_DEPTH} levels refused "
                                "(a recursive anchor?)")
        if isinstance(node, yaml.MappingNode):
            children: list[tuple[yaml.Node, KeyPath, bool]] = []
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    merged = (
                        value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else [value_node]
                    )
                    children.extend((m, path, False) for m in merged)
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    continue
                child = (*path, key)
                if primary or child not in lines:
                    lines[child] = key_node.start_mark.line + 1
                children.append((value_node, child, primary))
            stack.extend(reversed(children))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(
                reversed([(item, (*path, i), primary) for i, item in enumerate(node.value)])
            )
    return lines
