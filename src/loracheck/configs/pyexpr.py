"""Folding the value of a Python expression statically: literals, arithmetic and bound names.

A value is known when it is built from literals with arithmetic (``2 * 16``, ``-0.05``,
``16 ** 0.5``), containers of such values, ``int``/``float``/``min``/``max``/``abs``/``round``
of them, and names bound exactly once in the enclosing scopes to such a value:

* a plain or annotated assignment (``lora_rank = 16``, ``rank: int = 16``) in the same function
  or at module level, a function parameter's default (``def train(rank=16)``),
* a dataclass-style class attribute read through an instance (``args.lora_r`` where some class
  body says ``lora_r: int = 16`` or ``lora_r: int = field(default=16)``),
* an argparse option's default (``parser.add_argument("--lora_r", type=int, default=16)`` read
  as ``args.lora_r``).

Everything else (calls, f-strings, names bound twice, reads from files or the environment) is
unknown: :func:`Folder.fold` returns :data:`UNKNOWN` and the reader keeps the expression's text.
Nothing is ever evaluated by Python itself.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

UNKNOWN: Any = object()

_MAX_DEPTH = 32
# Results past these sizes are not config values; refusing them bounds time and memory.
_MAX_ABS = 1e18
_MAX_ITEMS = 10_000

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CALLS: dict[str, Callable[..., Any]] = {
    "int": int,
    "float": float,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "sqrt": math.sqrt,
}
Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Folder:
    """Folds expressions of one module; scopes are computed once, lazily per scope."""

    def __init__(self, tree: ast.Module, opaque: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.tree = tree
        # Where the parser saw a blanked f-string: a literal there is no value.
        self.opaque = opaque
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self._bindings: dict[int, dict[str, ast.expr | None]] = {}
        # Parameters without a default, bound at the one call site that names the function:
        # (scope id, name) -> the argument expression and the caller's scopes.
        self._call_args: dict[tuple[int, str], tuple[ast.expr, list[Scope]]] = {}
        self._values: dict[tuple[int, str], Any] = {}
        self.attributes = self._class_attributes()
        self.options = self._argparse_defaults()

    # --- public -------------------------------------------------------------------------------

    def fold(self, node: ast.expr) -> Any:
        """The value of ``node`` where it stands in the module, or UNKNOWN."""
        try:
            return self._fold(node, self._scopes(node), 0)
        except (ArithmeticError, ValueError, TypeError, RecursionError, MemoryError):
            return UNKNOWN

    # --- scopes ---------------------------------------------------------------------------------

    def _scopes(self, node: ast.AST) -> list[Scope]:
        """Enclosing function scopes from the innermost out, then the module."""
        chain: list[Scope] = []
        current: ast.AST | None = self.parents.get(node)
        while current is not None:
            if isinstance(current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                chain.append(current)
            current = self.parents.get(current)
        chain.append(self.tree)
        return chain

    def _scope_bindings(self, scope: Scope) -> dict[str, ast.expr | None]:
        """name -> its one bound expression (None: bound more than once, or not to a value)."""
        key = id(scope)
        if key in self._bindings:
            return self._bindings[key]
        found: dict[str, ast.expr | None] = {}

        def bind(name: str, value: ast.expr | None) -> None:
            found[name] = None if name in found else value

        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = scope.args
            positional = args.posonlyargs + args.args
            defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
            defaults += list(args.defaults)
            call, calls = self._calls_of(scope)
            params: list[tuple[ast.arg, ast.expr | None, int | None]] = [
                (a, d, i) for i, (a, d) in enumerate(zip(positional, defaults, strict=True))
            ]
            params += [(a, d, None) for a, d in zip(args.kwonlyargs, args.kw_defaults,
                                                    strict=True)]
            for arg, default, index in params:
                given = _argument(call, arg.arg, index) if call is not None else None
                if given is not None and call is not None:
                    self._call_args[(key, arg.arg)] = (given, self._scopes(call))
                    bind(arg.arg, given)
                elif calls <= 1:
                    bind(arg.arg, default)  # never called here, or called without it
                else:
                    bind(arg.arg, None)  # called several times: which value is unknown
        body = [scope.body] if isinstance(scope, ast.Lambda) else scope.body
        for node in self._scope_nodes(body):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bind(target.id, node.value)
                    else:
                        for name in _stored_names(target):
                            bind(name, None)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if node.value is not None:
                    bind(node.target.id, node.value)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                parent = self.parents.get(node)
                if not isinstance(parent, (ast.Assign, ast.AnnAssign)):
                    bind(node.id, None)  # for-loop targets, with-as, augmented assignment …
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                for name in node.names:
                    bind(name, None)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:  # `from conf import LORA_R`: set elsewhere, unknown
                    bind((alias.asname or alias.name).split(".")[0], None)
        self._bindings[key] = found
        return found

    def _calls_of(self, scope: Scope) -> tuple[ast.Call | None, int]:
        """(the one plain call of a module-level function, how many times its name is used).

        The call is returned only when the name is used exactly once, as that call, with no
        ``*args``/``**kwargs`` (``train(lora_r=args.lora_r)``); a method, a nested function or
        a lambda counts as used an unknown number of times.
        """
        if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return None, 2
        if self.parents.get(scope) is not self.tree:
            return None, 2
        uses = [n for n in ast.walk(self.tree)
                if isinstance(n, ast.Name) and n.id == scope.name and isinstance(n.ctx, ast.Load)]
        if len(uses) != 1:
            return None, len(uses)
        call = self.parents.get(uses[0])
        if not isinstance(call, ast.Call) or call.func is not uses[0]:
            return None, 2  # handed on (fire.Fire(main), a callback): called from elsewhere
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
            kw.arg is None for kw in call.keywords
        ):
            return None, 2
        return call, 1

    def _scope_nodes(self, body: Any) -> list[ast.AST]:
        """Every node of a scope's body, nested functions and classes excluded."""
        stack: list[ast.AST] = list(body) if isinstance(body, list) else [body]
        out: list[ast.AST] = []
        while stack:
            node = stack.pop()
            out.append(node)
            for child in ast.iter_child_nodes(node):
                nested = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
                if isinstance(child, nested):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        out.append(ast.Name(id=child.name, ctx=ast.Store()))
                    continue
                stack.append(child)
        return out

    def _class_attributes(self) -> dict[str, ast.expr | None]:
        """Dataclass fields by name, across the module's ``@dataclass`` classes (a name
        declared by two of them is unknown)."""
        found: dict[str, ast.expr | None] = {}
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.ClassDef) or not _is_dataclass(node):
                continue
            for stmt in node.body:
                target: ast.expr | None = None
                value: ast.expr | None = None
                if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    target, value = stmt.target, stmt.value
                elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                    target, value = stmt.targets[0], stmt.value
                if isinstance(target, ast.Name) and value is not None:
                    value = _field_default(value)
                    name = target.id
                    found[name] = None if name in found else value
        return found

    def _argparse_defaults(self) -> dict[str, ast.expr | None]:
        """``add_argument("--lora-r", default=16)`` -> {"lora_r": <16>}."""
        found: dict[str, ast.expr | None] = {}
        for node in ast.walk(self.tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"):
                continue
            dest: str | None = None
            for arg in node.args:
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(text, str) and text.startswith("--"):
                    dest = text[2:].replace("-", "_")
                    break
            default: ast.expr | None = None
            for kw in node.keywords:
                if kw.arg == "dest" and isinstance(kw.value, ast.Constant):
                    dest = str(kw.value.value)
                elif kw.arg == "default":
                    default = kw.value
                elif kw.arg == "action" and default is None and isinstance(kw.value, ast.Constant):
                    # store_true / store_false default to the opposite of what they store
                    flag = {"store_true": False, "store_false": True}.get(str(kw.value.value))
                    default = ast.Constant(flag) if flag is not None else None
            if default is None:
                default = ast.Constant(None)  # argparse's default for an option
            kind = next((kw.value.id for kw in node.keywords if kw.arg == "type"
                         and isinstance(kw.value, ast.Name)), None)
            if (kind in ("int", "float") and isinstance(default, ast.Constant)
                    and isinstance(default.value, str)):
                # argparse converts a string default with `type`: default="16" is 16.
                default = ast.Call(func=ast.Name(id=kind, ctx=ast.Load()), args=[default],
                                   keywords=[])
            if dest is not None:
                found[dest] = None if dest in found else default
        return found

    # --- folding --------------------------------------------------------------------------------

    def _fold(self, node: ast.expr, scopes: list[Scope], depth: int) -> Any:
        if depth > _MAX_DEPTH:
            return UNKNOWN
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and self.opaque and self._covers_opaque(node):
                return UNKNOWN
            return value if isinstance(value, (int, float, str, bool, type(None))) else UNKNOWN
        if isinstance(node, ast.Name):
            return self._name(node.id, scopes, depth)
        if isinstance(node, ast.UnaryOp):
            operand = self._fold(node.operand, scopes, depth + 1)
            if not _number(operand) or abs(operand) > _MAX_ABS:
                return UNKNOWN
            if isinstance(node.op, ast.USub):
                return -operand
            return operand if isinstance(node.op, ast.UAdd) else UNKNOWN
        if isinstance(node, ast.BinOp):
            return self._binop(node, scopes, depth)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            if len(node.elts) > _MAX_ITEMS:
                return UNKNOWN
            items = [self._fold(e, scopes, depth + 1) for e in node.elts]
            if any(item is UNKNOWN for item in items):
                return UNKNOWN
            if isinstance(node, ast.Set):
                try:
                    return set(items)
                except TypeError:
                    return UNKNOWN
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Dict):
            return self._dict(node, scopes, depth)
        if isinstance(node, ast.Call):
            return self._call(node, scopes, depth)
        if isinstance(node, ast.Attribute):
            return self._attribute(node, scopes, depth)
        if isinstance(node, ast.IfExp):
            # `x.split(",") if x else [...]`: the branch the known condition takes.
            test = self._fold(node.test, scopes, depth + 1)
            if test is UNKNOWN:
                return UNKNOWN
            return self._fold(node.body if test else node.orelse, scopes, depth + 1)
        return UNKNOWN

    def _covers_opaque(self, node: ast.Constant) -> bool:
        start = (node.lineno, node.col_offset)
        end = (node.end_lineno or node.lineno, node.end_col_offset or node.col_offset)
        return any(start <= pos < end for pos in self.opaque)

    def _name(self, name: str, scopes: list[Scope], depth: int) -> Any:
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        for index, scope in enumerate(scopes):
            bindings = self._scope_bindings(scope)
            if name in bindings:
                bound = bindings[name]
                if bound is None:
                    return UNKNOWN
                key = (id(scope), name)
                if key in self._values:
                    return self._values[key]
                # A name met again while it is being folded (`r = r + 1`) is unknown; each name
                # is folded once, so `a = b + b; b = c + c; …` stays linear.
                self._values[key] = UNKNOWN
                # The bound expression is read where it stands: its own scope and those outside
                # (a call-site argument: the caller's scopes).
                where = self._call_args.get(key)
                value = (self._fold(where[0], where[1], depth + 1) if where is not None
                         else self._fold(bound, scopes[index:], depth + 1))
                self._values[key] = value
                return value
        return UNKNOWN

    def _binop(self, node: ast.BinOp, scopes: list[Scope], depth: int) -> Any:
        left = self._fold(node.left, scopes, depth + 1)
        right = self._fold(node.right, scopes, depth + 1)
        op = _BINOPS.get(type(node.op))
        if op is None or left is UNKNOWN or right is UNKNOWN:
            return UNKNOWN
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right if len(left) + len(right) <= _MAX_ITEMS else UNKNOWN
        if not (_number(left) and _number(right)):
            return UNKNOWN
        # Operands past the size of any config value would make big-int arithmetic slow.
        if abs(left) > _MAX_ABS or abs(right) > _MAX_ABS:
            return UNKNOWN
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            return UNKNOWN
        value = op(left, right)
        return value if _number(value) and abs(value) <= _MAX_ABS else UNKNOWN

    def _dict(self, node: ast.Dict, scopes: list[Scope], depth: int) -> Any:
        if len(node.keys) > _MAX_ITEMS:
            return UNKNOWN
        out: dict[Any, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                return UNKNOWN
            k = self._fold(key, scopes, depth + 1)
            v = self._fold(value, scopes, depth + 1)
            if k is UNKNOWN or v is UNKNOWN or not isinstance(k, (str, int)):
                return UNKNOWN
            out[k] = v
        return out

    def _call(self, node: ast.Call, scopes: list[Scope], depth: int) -> Any:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) and func.attr == "sqrt" else None)
        if name not in _CALLS or node.keywords or not node.args or len(node.args) > 8:
            return UNKNOWN
        args = [self._fold(a, scopes, depth + 1) for a in node.args]
        if not all(_number(a) or (name in ("int", "float") and isinstance(a, str))
                   for a in args):
            return UNKNOWN
        if any(_number(a) and abs(a) > _MAX_ABS for a in args) or any(
            isinstance(a, str) and len(a) > 64 for a in args
        ):
            return UNKNOWN
        if name == "round" and len(args) > 1 and abs(args[1]) > 32:
            return UNKNOWN  # round(5, -10**9) builds 10**(10**9)
        value = _CALLS[name](*args)
        return value if _number(value) and abs(value) <= _MAX_ABS else UNKNOWN

    def _attribute(self, node: ast.Attribute, scopes: list[Scope], depth: int) -> Any:
        """``args.lora_r``: an argparse default or a dataclass field default of that name."""
        if not isinstance(node.value, (ast.Name, ast.Attribute)):
            return UNKNOWN
        for table in (self.options, self.attributes):
            if node.attr in table:
                bound = table[node.attr]
                if bound is None:
                    return UNKNOWN
                key = (id(table), node.attr)
                if key not in self._values:
                    self._values[key] = UNKNOWN
                    self._values[key] = self._fold(bound, [self.tree], depth + 1)
                return self._values[key]
        return UNKNOWN


def _field_default(value: ast.expr) -> ast.expr | None:
    """``field(default=16)`` -> 16; another call -> None; a plain value as it is."""
    if isinstance(value, ast.Call):
        callee = value.func.id if isinstance(value.func, ast.Name) else (
            value.func.attr if isinstance(value.func, ast.Attribute) else "")
        if callee == "field":
            for kw in value.keywords:
                if kw.arg == "default":
                    return kw.value
            return None
    return value


def _stored_names(target: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _argument(call: ast.Call, name: str, index: int | None) -> ast.expr | None:
    """The argument ``call`` passes for parameter ``name`` (at position ``index``)."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if index is not None and index < len(call.args):
        return call.args[index]
    return None


def _is_dataclass(node: ast.ClassDef) -> bool:
    """``@dataclass``, ``@dataclasses.dataclass(...)``, ``@define`` and pydantic-style
    ``BaseModel`` subclasses: classes whose body attributes are field defaults."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.id if isinstance(target, ast.Name) else (
            target.attr if isinstance(target, ast.Attribute) else "")
        if name in ("dataclass", "define", "attrs", "frozen"):
            return True
    return any((b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")) in
               ("BaseModel", "BaseSettings") for b in node.bases)
