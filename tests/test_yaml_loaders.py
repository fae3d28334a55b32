"""Both YAML loaders of loracheck.configs.documents (issue 12, point 6): libyaml's C parser and
the pure-Python one give the same values, key lines, limits, refusals and messages.

Every test runs once per loader, forced through ``parse(..., yaml_loader=...)``; the C case is
skipped only where PyYAML was built without libyaml.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loracheck.configs import documents
from loracheck.configs.documents import (
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    Doc,
    available_yaml_loaders,
    default_yaml_loader,
    parse,
)
from loracheck.errors import ArtifactError

LOADERS = [
    pytest.param("c", marks=pytest.mark.skipif(
        "c" not in available_yaml_loaders(), reason="PyYAML built without libyaml")),
    "python",
]
BOTH = pytest.mark.skipif("c" not in available_yaml_loaders(),
                          reason="PyYAML built without libyaml")

# A few published configs of each trainer (../shared/corpus/configs), block and flow style.
REAL = [
    "axolotl-ai-cloud+axolotl/examples/llama-3/lora-1b.yml",
    "axolotl-ai-cloud+axolotl/examples/llama-3/instruct-lora-8b.yml",
    "axolotl-ai-cloud+axolotl/examples/qwen2_5-vl/lora-7b.yaml",
    "hiyouga+LLaMA-Factory/examples/train_lora/qwen3_lora_sft.yaml",
    "hiyouga+LLaMA-Factory/examples/train_lora/qwen3_lora_dpo.yaml",
    "pytorch+torchtune/recipes/configs/llama3_1/70B_lora.yaml",
]


def read(text: str, loader: str) -> Doc:
    return parse(Path("cfg.yaml"), "yaml", text, yaml_loader=loader)


def refusal(text: str, loader: str) -> tuple[str, int | None]:
    with pytest.raises(ArtifactError) as info:
        read(text, loader)
    assert info.value.code == "LC001"
    return info.value.detail, info.value.line


def outcome(text: str, loader: str) -> tuple[Any, ...]:
    try:
        doc = read(text, loader)
    except ArtifactError as err:
        return ("refused", err.code, err.detail, err.line)
    return ("read", doc.data, doc.key_lines, doc.suppressions)


@pytest.fixture
def composers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The loader classes that composed each document, in order."""
    used: list[str] = []
    compose = documents._compose

    def spy(cls: type[Any], text: str) -> Any:
        used.append(cls.__name__)
        return compose(cls, text)

    monkeypatch.setattr(documents, "_compose", spy)
    yield used


def test_the_default_is_the_c_loader_when_libyaml_is_there() -> None:
    expected = "c" if getattr(yaml, "__with_libyaml__", False) else "python"
    assert default_yaml_loader() == expected
    assert available_yaml_loaders()[-1] == "python"
    with pytest.raises(ValueError, match="unknown or unavailable YAML loader"):
        read("a: 1\n", "ruby")


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("relative", REAL)
def test_real_configs(loader: str, relative: str, corpus: Path,
                      composers: list[str]) -> None:
    text = (corpus / relative).read_text(encoding="utf-8")
    doc = read(text, loader)
    # The C case really went through libyaml (these configs are not ones routed to Python),
    # composed by libyaml itself (they are short and shallow).
    assert composers == ["CComposed" if loader == "c" else "PythonLoader"]
    assert doc.data == yaml.safe_load(text)
    lines = text.splitlines()
    assert doc.key_lines
    for path, line in doc.key_lines.items():
        key = path[-1]
        assert isinstance(key, str)
        assert f"{key}:" in lines[line - 1], (path, line)
    for key in doc.data:
        top = [i + 1 for i, s in enumerate(lines) if s.startswith(f"{key}:")]
        assert doc.key_lines[(key,)] == top[0]
    if loader == "c":
        reference = read(text, "python")
        assert (doc.data, doc.key_lines, doc.suppressions) == (
            reference.data, reference.key_lines, reference.suppressions)


@BOTH
@pytest.mark.parametrize("c_composer", [True, False], ids=["libyaml-composed", "py-composed"])
def test_every_corpus_yaml_reads_the_same_with_both(
    corpus: Path, c_composer: bool, monkeypatch: pytest.MonkeyPatch, composers: list[str],
) -> None:
    """libyaml's events composed by libyaml (the short and shallow configs, most of them) and
    by PyYAML's composer (forced here for all) read as the pure-Python loader does."""
    if not c_composer:
        monkeypatch.setattr(documents, "_c_composes_safely", lambda text: False)
    paths = sorted(p for p in corpus.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(paths) > 100
    for path in paths:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
        for variant in (text, text.replace("\n", "\r\n")):
            assert outcome(variant, "c") == outcome(variant, "python"), path
    share = composers.count("CComposed") / composers.count("PythonLoader")
    assert share > 0.9 if c_composer else share == 0


def node_count_and_depth(root: yaml.Node) -> tuple[int, int]:
    """Nodes (each once, as composed) and the deepest nesting of a composed document."""
    seen: set[int] = set()
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        deepest = max(deepest, depth)
        if isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
    return len(seen), deepest


def densest(pattern: str, wrap: str = "{}") -> str:
    """``pattern`` repeated as often as the C composer's length bound allows, in ``wrap``."""
    reps = (documents._C_COMPOSE_MAX_CHARS - len(wrap) + 2) // len(pattern)
    return wrap.replace("{}", pattern * reps)


@BOTH
@pytest.mark.parametrize("text", [
    # the most nodes per character found: empty keys and values, flow pairs, bare entries
    densest("?\n"), densest("? "), densest("a,", "{{}}"), densest("?,", "{{}}"),
    densest("-\n"), densest("a\n- ", "a:\n- {}"),
    # the deepest per character: compact block nesting, flow brackets, a sequence at its
    # mapping's column
    "- " * 99 + "x", "- " * 199 + "x", "[" * 190 + "]" * 190, "{a: " * 130 + "}" * 130,
    "".join(" " * i + f"k{i}:\n" + " " * i + "-\n" for i in range(0, 60, 2)),
    "- " * 95 + "[" * 190 + "]" * 190,
])
def test_text_the_c_composer_takes_stays_inside_both_limits(text: str) -> None:
    """What _c_composes_safely admits has fewer than MAX_YAML_NODES nodes (libyaml's composer
    counts none) and nests no deeper than its C-stack bound (measured by PyYAML's composer)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        assert not documents._c_composes_safely(text)  # deeper than the interpreter allows
        return
    except yaml.YAMLError:
        pytest.skip("not YAML")
    assert root is not None
    nodes, depth = node_count_and_depth(root)
    if documents._c_composes_safely(text):
        assert nodes < MAX_YAML_NODES
        assert depth <= documents._C_COMPOSE_MAX_DEPTH
    else:
        # the bound only ever errs on the safe side: refused here, then the text is long or
        # deep
        assert (len(text) > documents._C_COMPOSE_MAX_CHARS
                or depth > documents._C_COMPOSE_MAX_DEPTH // 4 or nodes > 100), text[:40]


def test_long_or_deep_text_goes_to_the_counting_composer() -> None:
    assert documents._c_composes_safely("lora_r: 8\n" * 400)
    assert not documents._c_composes_safely("lora_r: 8\n" * 600)  # past half the node limit
    assert not documents._c_composes_safely("x: " + "[" * 300 + "]" * 300)
    assert not documents._c_composes_safely("x: " + "y" * 200)  # a 203-character line


def billion_laughs() -> str:
    """Nine levels of ten aliases: 10⁹ leaves from 700 bytes."""
    lines = ["lora_r: 8", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def nested_block(levels: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(levels)) + f"{'  ' * levels}v: 1\n"


DEEPER = f"YAML nested deeper than {MAX_YAML_DEPTH} levels refused (a recursive anchor?)"
# name -> (text, (detail, line) of the refusal)
REFUSED: dict[str, tuple[str, tuple[str, int | None]]] = {
    "recursive-anchor": ("lora_r: 8\nx: &a {y: *a}\n", (DEEPER, None)),
    "recursive-sequence": ("lora_r: 8\nx: &x [*x]\n", (DEEPER, None)),
    "billion-laughs": (billion_laughs(),
                       ("YAML alias bomb refused (alias expansion too large)", None)),
    "nested-block-65": (nested_block(MAX_YAML_DEPTH + 1), (DEEPER, None)),
    "nested-flow-70": ("lora_r: " + "[" * 70 + "]" * 70 + "\n", (DEEPER, None)),
    "nested-100000": ("lora_r: " + "[" * 100_000 + "]" * 100_000 + "\n",
                      ("invalid YAML: nested too deeply", None)),
    "too-many-nodes": ("".join(f"k{i}: {i}\n" for i in range(MAX_YAML_NODES)),
                       (f"YAML document with more than {MAX_YAML_NODES} nodes refused", None)),
    "python-tag": ('adapter: lora\nlora_r: 8\nx: !!python/object/apply:os.system ["echo hi"]\n',
                   ("invalid YAML: could not determine a constructor for the tag "
                    "'tag:yaml.org,2002:python/object/apply:os.system'", 3)),
    "unclosed-flow": ("lora_r: 8\nlora_alpha: [16\nlora_dropout: 0.1\n",
                      ("invalid YAML: expected ',' or ']', but got ':'", 3)),
    "bad-indent": ("adapter: lora\nlora_r: 8\n  lora_alpha: [16\n",
                   ("invalid YAML: mapping values are not allowed here", 3)),
    "undefined-alias": ("a: *nowhere\n", ("invalid YAML: found undefined alias 'nowhere'", 1)),
    "control-character": ("lora_r: 8\nx: a\x01b\n",
                          ("invalid YAML: unacceptable character #x0001: special characters "
                           "are not allowed", None)),
    # libyaml takes this tab as white space; PyYAML refuses it
    "tab": ("lora_r: 8\nx:\t[1,\t2]\n\ty: 1\n",
            ("invalid YAML: found character '\\t' that cannot start any token", 2)),
    # a plain scalar to libyaml, an error to PyYAML
    "question-mark-in-flow": ("lora_r: 8\nlayers: [0.25?, 0.5]\n",
                              ("invalid YAML: expected ',' or ']', but got '?'", 2)),
    "bad-tagged-value": ("lora_r: !!int ''\n",
                         ("invalid YAML: a value its tag (!!int, !!bool, ...) cannot hold",
                          None)),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_same_refusals(loader: str, case: str) -> None:
    text, expected = REFUSED[case]
    start = time.perf_counter()
    got = refusal(text, loader)
    assert time.perf_counter() - start < 2.0
    assert got == expected


@pytest.mark.parametrize("loader", LOADERS)
def test_the_node_limit_is_exact(loader: str) -> None:
    """A sequence of n items is n + 1 nodes; an alias reference counts as one."""
    items = MAX_YAML_NODES - 1
    assert len(read("- x\n" * items, loader).data) == items
    detail, _ = refusal("- x\n" * (items + 1), loader)
    assert detail == f"YAML document with more than {MAX_YAML_NODES} nodes refused"
    aliased = "- &a x\n" + "- *a\n" * (items - 1)
    assert len(read(aliased, loader).data) == items
    assert refusal(aliased + "- *a\n", loader)[0] == detail


@pytest.mark.parametrize("loader", LOADERS)
def test_nesting_up_to_the_limit_is_read(loader: str) -> None:
    doc = read(nested_block(MAX_YAML_DEPTH - 1), loader)
    assert doc.line(*(f"k{i}" for i in range(MAX_YAML_DEPTH - 1)), "v") == MAX_YAML_DEPTH
    ten = "lora_r: 8\nl0: &l0 [a, b]\nl1: &l1 [*l0, *l0]\nl2: [*l1, *l1, *l1]\n"
    assert read(ten, loader).data["l2"] == [[["a", "b"]] * 2] * 3


HEAD = "adapter: lora\nlora_r: 8\n"
UNSAFE = [
    HEAD + 'x: !!python/object/apply:os.system ["touch {m}"]\n',
    HEAD + "x: !!python/object/apply:os.system\n  args: ['touch {m}']\n",
    '{{"adapter": "lora", "x":!!python/object/apply:os.system ["touch {m}"]}}\n',
    HEAD + "x: !!python/object/new:os.system ['touch {m}']\n",
    HEAD + "x: !!python/name:os.system\n",
    HEAD + "x: !<tag:yaml.org,2002:python/object/apply:os.system> ['touch {m}']\n",
    "%TAG !p! tag:yaml.org,2002:python/\n---\n" + HEAD
    + "x: !p!object/apply:os.system ['touch {m}']\n",
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("template", UNSAFE)
def test_unsafe_tags_are_never_constructed(loader: str, template: str, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    text = template.format(m=marker)
    detail, line = refusal(text, loader)
    assert detail.startswith("invalid YAML: could not determine a constructor for the tag")
    assert "python" in detail
    assert not marker.exists()
    assert (detail, line) == refusal(text, "python")


@BOTH
@pytest.mark.parametrize("composer", ["CComposed", "CLoader"])
@pytest.mark.parametrize("template", UNSAFE)
def test_the_c_parser_forced_onto_tagged_text_constructs_nothing(
    template: str, composer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    composers: list[str],
) -> None:
    """Tagged text goes to the Python parser; were it read by libyaml (composed by libyaml or
    by PyYAML), SafeConstructor still refuses every python/ tag."""
    monkeypatch.setattr(documents, "_c_reads_alike", lambda text: True)
    monkeypatch.setattr(documents, "_c_composes_safely", lambda text: composer == "CComposed")
    marker = tmp_path / "MARKER"
    text = template.format(m=marker)
    detail, line = refusal(text, "c")
    assert composers[0] == composer
    assert detail.startswith("invalid YAML: could not determine a constructor for the tag")
    assert not marker.exists()
    assert (detail, line) == refusal(text, "python")


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("text", "data", "lines"), [
    ("lora_r: 8\n---\nlora_r: 4\n", {"lora_r": 8}, {("lora_r",): 1}),
    ("base: &b\n  lora_r: 8\nlora_alpha: 16\n<<: *b\n",
     {"base": {"lora_r": 8}, "lora_alpha": 16, "lora_r": 8},
     {("base",): 1, ("base", "lora_r"): 2, ("lora_alpha",): 3, ("lora_r",): 2}),
    ("a: 1\r\nb:\r\n  - c: 2\r\n", {"a": 1, "b": [{"c": 2}]},
     {("a",): 1, ("b",): 2, ("b", 0, "c"): 3}),
    ("a: 'x'\rb: \"\u00e9\"\u2028c: 3\n", {"a": "x", "b": "é", "c": 3},
     {("a",): 1, ("b",): 2, ("c",): 3}),
    ("# only a comment\n", None, {}),
    ("", None, {}),
])
def test_the_same_values_and_lines(loader: str, text: str, data: Any,
                                   lines: dict[tuple[str | int, ...], int]) -> None:
    doc = read(text, loader)
    assert (doc.data, doc.key_lines) == (data, lines)


@BOTH
@pytest.mark.parametrize("make", [
    lambda: "a: [1, 2\n",
    lambda: "a: b: c\n",
    lambda: "a: 'unclosed\n",
    lambda: "- a\nb: 1\n",
    lambda: "a: 1\n---\n]\n",
    lambda: "a: &x 1\nb: &x 2\n",
    lambda: "%YAML 1.3\n---\na: 1\n",
    lambda: '"' + "k" * 1100 + '": 1\n',
])
def test_c_parser_errors_are_worded_as_the_python_ones(make: Callable[[], str]) -> None:
    text = make()
    assert outcome(text, "c") == outcome(text, "python")


SMALL_STACK = """
import sys, threading
from pathlib import Path
from loracheck.configs.documents import parse
from loracheck.errors import ArtifactError
threading.stack_size(256 * 1024)
out = []
def go():
    for text in ("x: " + "[" * 990 + "]" * 990, "x: " + "{a: " * 990 + "}" * 990,
                 "- " * 5000 + "x", "".join(" " * i + "k:" + chr(10) for i in range(3000))):
        try:
            parse(Path("x.yaml"), "yaml", text, yaml_loader=sys.argv[1])
            out.append("read")
        except ArtifactError as err:
            out.append(err.detail)
thread = threading.Thread(target=go)
thread.start()
thread.join()
print(sorted(set(out)))
"""


@pytest.mark.parametrize("loader", LOADERS)
def test_deep_nesting_in_a_thread_with_a_small_stack_is_refused_not_a_crash(loader: str) -> None:
    """libyaml's own composer recurses in C without the interpreter's guard (990 nested
    brackets overflow a 256 KiB thread stack there); loracheck composes in Python."""
    proc = subprocess.run([sys.executable, "-c", SMALL_STACK, loader], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['invalid YAML: nested too deeply']"
