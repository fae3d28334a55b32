"""Python training scripts -> LoraSpec, read with ``ast`` (never imported, never executed).

Sources, first in source order wins: ``LoraConfig(...)`` calls (plain, ``peft.LoraConfig``, or
inside ``get_peft_model(model, LoraConfig(...))``) and unsloth's
``FastLanguageModel.get_peft_model(model, r=..., ...)``. Keyword values are folded statically
(:mod:`loracheck.configs.pyexpr`: literals, arithmetic, names bound once in the enclosing scopes,
dataclass and argparse defaults); anything else is unknown: the field stays ``None``, its text
goes to ``unresolved`` (origin "expression") and ``extras["non_literal"]``. Scripts in syntax
newer than the interpreter are read too (:mod:`loracheck.configs.pysource`). A hand-written
LoRA module (a class whose name contains "lora") is scanned for how it initialises its factors
(``extras["custom_lora_b_init"]``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from loracheck.configs.documents import read_text
from loracheck.configs.fields import SpecBuilder
from loracheck.configs.lines import find_suppressions
from loracheck.configs.peft import EXTRAS as PEFT_EXTRAS
from loracheck.configs.peft import FIELDS as PEFT_FIELDS
from loracheck.configs.pyexpr import UNKNOWN, Folder
from loracheck.configs.pysource import Script, parse_python
from loracheck.configs.semantics import apply_defaults
from loracheck.errors import ArtifactError
from loracheck.model import LoraSpec, ValueOrigin

MAX_PYTHON_BYTES = 2 * 1024 * 1024
_UNSLOTH_CLASSES = frozenset({"FastLanguageModel", "FastModel", "FastVisionModel"})
_UNSLOTH_EXTRAS = frozenset(
    {
        "use_gradient_checkpointing",
        "random_state",
        "max_seq_length",
        "temporary_location",
        "finetune_vision_layers",
        "finetune_language_layers",
        "finetune_attention_modules",
        "finetune_mlp_modules",
        "qat_scheme",
    }
)
_NOT_GIVEN = object()


def read_python(path: Path) -> LoraSpec:
    """Parse a Python file and extract the first LoRA configuration it spells out."""
    name = str(path)
    text = read_text(path, MAX_PYTHON_BYTES)
    try:
        script = parse_python(text, name)
    except SyntaxError as err:
        raise ArtifactError(name, f"invalid Python: {err.msg}", line=err.lineno) from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ArtifactError(name, f"invalid Python: {type(err).__name__}") from None
    try:
        return _Reader(name, script, text, find_suppressions(text)).spec()
    except RecursionError:
        raise ArtifactError(name, "invalid Python: nested too deeply") from None


def _is_literal(node: ast.expr) -> bool:
    """Whether ``node`` is written as a literal (``16``, ``["q_proj"]``, ``-0.5``)."""
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _call_name(func: ast.expr) -> tuple[str, str]:
    """(callee's last name, dotted receiver or "") for ``a.b.C(...)`` -> ("C", "a.b")."""
    if isinstance(func, ast.Name):
        return func.id, ""
    if isinstance(func, ast.Attribute):
        return func.attr, _dotted(func.value)
    return "", ""


def _dotted(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _chain(node: ast.expr) -> list[str]:
    """Names along an attribute chain, ``self.B.weight.data`` -> [self, B, weight, data]."""
    dotted = _dotted(node)
    return dotted.split(".") if dotted else []


class _Reader:
    def __init__(
        self, path: str, script: Script, text: str, suppressions: dict[int, list[str]]
    ) -> None:
        self.path = path
        self.text = text
        self.tree = script.tree
        self.suppressions = suppressions
        self.folder = Folder(script.tree, script.opaque)

    def _source(self, node: ast.expr) -> str:
        """The expression as the file writes it (not as the parser saw a rewritten line)."""
        return ast.get_source_segment(self.text, node) or ast.unparse(node)

    def _literal(self, node: ast.expr) -> Any:
        """The statically folded value of ``node`` where it stands; else _NOT_GIVEN."""
        value = self.folder.fold(node)
        return _NOT_GIVEN if value is UNKNOWN else value

    def _lora_calls(self) -> list[tuple[str, ast.Call]]:
        found: list[tuple[str, ast.Call]] = []
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            callee, receiver = _call_name(node.func)
            if callee == "LoraConfig":
                found.append(("python", node))
            elif callee == "get_peft_model" and receiver.split(".")[-1] in _UNSLOTH_CLASSES:
                found.append(("unsloth", node))
        found.sort(key=lambda item: (item[1].lineno, item[1].col_offset))
        return found

    def spec(self) -> LoraSpec:
        calls = self._lora_calls()
        fmt = calls[0][0] if calls else "python"
        b = SpecBuilder(fmt, self.path)
        if calls:
            self._read_call(b, fmt, calls[0][1])
            if len(calls) > 1:
                b.extra("other_lora_configs", [c.lineno for _, c in calls[1:]])
            # LoraConfig's own defaults (r 8, lora_alpha 8) or unsloth's get_peft_model ones.
            apply_defaults(b, fmt)
        self._read_custom_classes(b)
        b.suppressions = self.suppressions
        return b.build()

    def _read_call(self, b: SpecBuilder, fmt: str, call: ast.Call) -> None:
        b.extra("config_call", ast.unparse(call.func), call.lineno)
        keywords: list[tuple[str, ast.expr, int]] = []
        for kw in call.keywords:
            if kw.arg is not None:
                keywords.append((kw.arg, kw.value, kw.lineno))
            elif isinstance(kw.value, ast.Dict):
                # LoraConfig(**{"r": 8, ...}): a literal dict's string keys count as keywords.
                for key_node, value_node in zip(kw.value.keys, kw.value.values, strict=True):
                    if isinstance(key_node, ast.Constant) and isinstance(key_node.value, str):
                        keywords.append((key_node.value, value_node, key_node.lineno))
            else:
                b.extra("unresolved_kwargs", ast.unparse(kw.value), kw.lineno)
        positional = call.args[1:] if fmt == "unsloth" else call.args
        if positional:
            b.extra("positional_args", len(positional), call.lineno)
        non_literal: dict[str, str] = {}
        for key, value_node, line in keywords:
            value = self._literal(value_node)
            if value is None and not _is_literal(value_node):
                value = _NOT_GIVEN  # e.g. an argparse option without a default: set at run time
            if key in PEFT_FIELDS:
                spec_field = PEFT_FIELDS[key]
                text = self._source(value_node)
                if value is _NOT_GIVEN:
                    b.lines[spec_field] = line
                    b.source_keys[spec_field] = key
                    b.mark_unresolved(spec_field, text, ValueOrigin.EXPRESSION)
                    non_literal[spec_field] = text
                else:
                    b.set(spec_field, value, line, key=key)
                    if not _is_literal(value_node) and b.has(spec_field):
                        b.origins[spec_field] = ValueOrigin.EXPRESSION
                        b.extra(f"expression.{spec_field}", text)
            elif key in PEFT_EXTRAS or (fmt == "unsloth" and key in _UNSLOTH_EXTRAS):
                shown = self._source(value_node) if value is _NOT_GIVEN else value
                b.extra(key, shown, line)
            else:
                b.unknown_key(key, line)
        if non_literal:
            b.extra("non_literal", non_literal)

    # --- hand-written LoRA modules ----------------------------------------------------------

    def _read_custom_classes(self, b: SpecBuilder) -> None:
        for node in ast.walk(self.tree):
            is_lora_class = isinstance(node, ast.ClassDef) and "lora" in node.name.lower()
            if is_lora_class and self._read_custom_class(b, node):  # type: ignore[arg-type]
                return

    def _read_custom_class(self, b: SpecBuilder, cls: ast.ClassDef) -> bool:
        inits: dict[str, tuple[str, int]] = {}
        std: tuple[float, int] | None = None
        nodes = sorted(
            (n for n in ast.walk(cls) if isinstance(n, (ast.Call, ast.Assign))),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for node in nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    factor = _factor(_chain(target)) if isinstance(target, ast.Attribute) else None
                    kind = _creation_kind(node.value)
                    if factor and kind and _chain(target)[-1] in _FACTOR_NAMES[factor]:
                        inits[factor] = (kind, node.lineno)
                continue
            callee, receiver = _call_name(node.func)
            kind = _INIT_KIND.get(callee)
            if kind is None:
                continue
            if receiver and _factor(receiver.split(".")) and receiver.split(".")[0] == "self":
                # self.B.weight.data.normal_(...): an in-place init on the factor itself.
                factor = _factor(receiver.split("."))
                args = node.args
            elif node.args and _factor(_chain(node.args[0])):
                # nn.init.normal_(self.A.weight, std=...): the factor is the first argument.
                factor = _factor(_chain(node.args[0]))
                args = node.args[1:]
            else:
                continue
            if factor is None:
                continue
            if callee in ("fill_", "constant_") and args:
                value = self._literal(args[0])
                kind = "zeros" if value == 0 else "constant"
            inits[factor] = (kind, node.lineno)
            if factor == "A" and callee in ("normal_", "trunc_normal_"):
                found = self._std_arg(node, args)
                if found is not None:
                    std = (found, node.lineno)
        if not inits:
            return False
        b.extra("custom_lora_class", cls.name, cls.lineno)
        for factor, (kind, line) in inits.items():
            b.extra(f"custom_lora_{factor.lower()}_init", kind, line)
        if std is not None:
            b.set("init_std", std[0], std[1], key="std")
        self._custom_defaults(b, cls)
        return True

    def _std_arg(self, call: ast.Call, args: list[ast.expr]) -> float | None:
        for kw in call.keywords:
            if kw.arg == "std":
                value = self._literal(kw.value)
                return float(value) if isinstance(value, (int, float)) else None
        if len(args) >= 2:  # normal_(mean, std)
            value = self._literal(args[1])
            return float(value) if isinstance(value, (int, float)) else None
        return None

    def _custom_defaults(self, b: SpecBuilder, cls: ast.ClassDef) -> None:
        """``def __init__(self, ..., r=8, alpha=16)`` defaults, into extras only.

        They are not the values a caller passes, and a hand-written forward may ignore alpha
        (LLMBook applies no α/r), so they never fill rank or alpha.
        """
        defaults: dict[str, Any] = {}
        for stmt in cls.body:
            if not (isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__"):
                continue
            args = stmt.args
            positional = args.posonlyargs + args.args
            with_default = positional[len(positional) - len(args.defaults):]
            pairs = list(zip(with_default, args.defaults, strict=True))
            pairs += [
                (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                if d is not None
            ]
            for arg, default in pairs:
                if arg.arg in _CUSTOM_ARGS:
                    value = self._literal(default)
                    if value is not _NOT_GIVEN:
                        defaults[arg.arg] = value
            if defaults:
                b.extra("custom_lora_defaults", defaults, stmt.lineno)


_FACTOR_NAMES = {
    "A": frozenset({"A", "lora_A", "lora_a", "lora_down", "down"}),
    "B": frozenset({"B", "lora_B", "lora_b", "lora_up", "up"}),
}
_CUSTOM_ARGS = {"r": "rank", "rank": "rank", "lora_r": "rank", "alpha": "alpha",
                "lora_alpha": "alpha", "dropout": "dropout", "lora_dropout": "dropout"}
_INIT_KIND = {
    "zero_": "zeros",
    "zeros_": "zeros",
    "fill_": "zeros",
    "constant_": "zeros",
    "normal_": "random",
    "uniform_": "random",
    "trunc_normal_": "random",
    "kaiming_uniform_": "random",
    "kaiming_normal_": "random",
    "xavier_uniform_": "random",
    "xavier_normal_": "random",
    "orthogonal_": "random",
}
_CREATE_ZEROS = frozenset({"zeros", "zeros_like", "new_zeros"})
_CREATE_RANDOM = frozenset({"randn", "rand", "randn_like", "rand_like", "normal", "Linear",
                            "Conv1d", "Conv2d", "Embedding"})


def _factor(names: list[str]) -> str | None:
    """"A" or "B" when an attribute chain goes through a LoRA factor's name."""
    for name in names[1:] if names and names[0] == "self" else names:
        for factor, spelled in _FACTOR_NAMES.items():
            if name in spelled:
                return factor
    return None


def _creation_kind(value: ast.expr) -> str | None:
    """How ``nn.Parameter(torch.zeros(...))`` / ``nn.Linear(...)`` initialises what it makes."""
    for node in ast.walk(value):
        if isinstance(node, ast.Call):
            callee, _ = _call_name(node.func)
            if callee in _CREATE_ZEROS:
                return "zeros"
            if callee in _CREATE_RANDOM:
                return "random"
    return None
