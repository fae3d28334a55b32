"""What a rule sees (:class:`RuleContext`), what it yields (:class:`Finding`), and the
:func:`rule` decorator that attaches a rule's identity to its function.

Also the shared judgement every rule needs: the init scheme in force for a layer, which factor
must be zero at step 0, and whether ΔW is exactly zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING

from loracheck.model import (
    B_ZERO_SCHEMES,
    Adapter,
    InitScheme,
    LayerRecord,
    LoraSpec,
    MethodKind,
    RuleMeta,
    Severity,
    Stage,
)

if TYPE_CHECKING:
    from loracheck.basemodel import BaseModelInfo
    from loracheck.diff_record import DiffRecord
    from loracheck.merge_record import MergeRecord
    from loracheck.probe_record import ProbeRecord
    from loracheck.settings import Profile, Thresholds

SECTIONS = ("## What it does", "## Why is this bad?", "## Example", "## Use instead")
HELP_URL = "https://github.com/loracheck/loracheck/blob/main/rules/{code}.md"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".gguf")


@dataclass(frozen=True)
class Finding:
    """One thing a rule found: a message, and where (a key or module, a line, a file).

    ``path`` defaults to the adapter's path; ``severity`` to the rule's default (rules whose
    severity depends on the case, such as LC103, set it).
    """

    message: str
    location: str | None = None
    line: int | None = None
    path: str | None = None
    severity: Severity | None = None


@dataclass(frozen=True)
class RuleContext:
    """The inputs of every rule: the adapter, the profile, the stage and the base model; for
    the probe rules (LC3xx), what ``verify`` measured on the live model."""

    adapter: Adapter
    profile: Profile
    base: BaseModelInfo | None = None
    probe: ProbeRecord | None = None
    # diff: the two adapters compared module by module (LC41x)
    diff: DiffRecord | None = None
    # merged: MERGED against BASE + the adapter, module by module (LC40x)
    merged: MergeRecord | None = None

    @property
    def thresholds(self) -> Thresholds:
        return self.profile.thresholds

    @property
    def stage(self) -> Stage:
        """The stage in force: the forced one, else the one inferred by the loader."""
        return self.adapter.stage

    @property
    def spec(self) -> LoraSpec | None:
        return self.adapter.spec

    @property
    def config_path(self) -> str:
        spec = self.adapter.spec
        return spec.path if spec is not None and spec.path else self.adapter.path

    @property
    def weights_path(self) -> str:
        for name in self.adapter.files:
            if name.lower().endswith(WEIGHT_SUFFIXES):
                return name
        return self.adapter.path

    def config_finding(
        self, message: str, field_name: str | None, *, severity: Severity | None = None,
        location: str | None = None,
    ) -> Finding:
        """A finding on the config file, at the line of ``field_name`` when known."""
        spec = self.adapter.spec
        line = spec.lines.get(field_name) if spec is not None and field_name else None
        return Finding(message, location or field_name, line, self.config_path, severity)

    def weight_finding(
        self, message: str, location: str | None, *, severity: Severity | None = None
    ) -> Finding:
        return Finding(message, location, None, self.weights_path, severity)


CheckFn = Callable[[RuleContext], Iterator[Finding]]


class Subject(str, Enum):
    """What a rule judges, and so which command runs it: the artifacts ``check`` and
    ``inspect`` read, or the typed record one of the measuring commands fills."""

    ARTIFACT = "artifact"  # check, inspect: the adapter (and --model's headers)
    PROBE = "probe"  # verify: a ProbeRecord (LC3xx)
    DIFF = "diff"  # diff: a DiffRecord (LC41x)
    MERGED = "merged"  # merged: a MergeRecord (LC40x)


# The methods a rule judges: LoRA rules judge the LoRA family only; input rules judge any file.
LORA_ONLY = frozenset({MethodKind.LORA})
ANY_METHOD = frozenset(MethodKind)
# Cheap structural checks (non-finite values) that hold for any method's weights.
LORA_AND_OTHER = frozenset({MethodKind.LORA, MethodKind.OTHER})


@dataclass(frozen=True)
class Rule:
    """A rule: its metadata, its check function, the methods it judges (``methods``: the
    engine runs it only on adapters of those kinds) and its :class:`Subject` (an artifact, or
    the record a measuring command filled). Calling it runs the check."""

    meta: RuleMeta
    check: CheckFn
    methods: frozenset[MethodKind] = LORA_ONLY
    subject: Subject = Subject.ARTIFACT

    @property
    def code(self) -> str:
        return self.meta.code

    def __call__(self, ctx: RuleContext) -> Iterator[Finding]:
        return self.check(ctx)


def faults_of(ctx: RuleContext, code: str) -> Iterator[Finding]:
    """The loader's recorded faults with ``code``, as findings: how the input rules (LC0xx,
    LC215) report."""
    for fault in ctx.adapter.faults:
        if fault.code == code:
            yield Finding(fault.detail, fault.location, fault.line, fault.path or None)


def summary_of(doc: str) -> str:
    """The first sentence of the "What it does" section: the rule's one-line summary."""
    text = doc.split(SECTIONS[0], 1)[-1].split("##", 1)[0]
    flat = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s|$)", flat)
    return match.group(1) if match else flat


def rule(
    code: str, name: str, severity: Severity, methods: frozenset[MethodKind] = LORA_ONLY,
    *, subject: Subject = Subject.ARTIFACT, also: Severity | None = None, when: str = "",
) -> Callable[[CheckFn], Rule]:
    """Attach a code, a kebab-case name, a default severity, the methods it judges and its
    subject; ``also`` names the other severity some of its findings carry and ``when`` says
    which."""

    def wrap(fn: CheckFn) -> Rule:
        doc = _dedent(fn.__doc__ or "")
        meta = RuleMeta(code, name, severity, summary_of(doc), doc, also=also, when=when)
        return Rule(meta, fn, methods, subject)

    return wrap


def _dedent(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)


# --- init schemes and zero factors ---------------------------------------------------------------

_KAIMING_FORMATS = ("peft", "kohya", "lycoris", "torchtune", "mlx", "litgpt")


@dataclass(frozen=True)
class SchemeInForce:
    """The init scheme a rule judges a layer against, and where that belief comes from."""

    scheme: InitScheme
    origin: str  # "declared" | "profile" | "inferred" | "format" | "unknown"
    std: float | None = None  # σ for the normal scheme


def declared_scheme(spec: LoraSpec | None) -> InitScheme | None:
    """The scheme a config states (PEFT's default True when a PEFT config omits the key), None
    when nothing known is stated: format defaults rank below the profile in
    :func:`scheme_in_force`, and an init name loracheck does not know is LC105's business."""
    from loracheck.initscheme import explicit_scheme

    scheme = explicit_scheme(spec)
    if scheme is None and spec is not None and spec.source_format == "peft":
        return InitScheme.KAIMING_UNIFORM
    return None if scheme is InitScheme.UNKNOWN else scheme


def scheme_in_force(ctx: RuleContext) -> SchemeInForce:
    """Declared init first, then the profile's expectation, then the loader's inference, then
    the convention of the file format; UNKNOWN when nothing says."""
    adapter = ctx.adapter
    inferred = adapter.init
    declared = declared_scheme(adapter.spec)
    spec_std = adapter.spec.init_std if adapter.spec is not None else None
    if inferred is not None and inferred.declared:
        std = spec_std or inferred.expected_std
        if inferred.scheme == InitScheme.NORMAL and std is None:
            std = ctx.profile.init_std
        return SchemeInForce(inferred.scheme, "declared", std)
    if declared is not None:
        std = spec_std if declared == InitScheme.NORMAL else None
        return SchemeInForce(declared, "declared", std or _normal_std(ctx, declared))
    if ctx.profile.init_scheme is not None:
        return SchemeInForce(ctx.profile.init_scheme, "profile", ctx.profile.init_std)
    if inferred is not None and inferred.scheme != InitScheme.UNKNOWN:
        std = inferred.expected_std if inferred.scheme == InitScheme.NORMAL else None
        return SchemeInForce(inferred.scheme, "inferred", std)
    fmt = adapter.format.lower()
    if "llmbook" in fmt:
        return SchemeInForce(InitScheme.NORMAL, "format", 0.02)
    if fmt.startswith(_KAIMING_FORMATS):
        return SchemeInForce(InitScheme.KAIMING_UNIFORM, "format")
    return SchemeInForce(InitScheme.UNKNOWN, "unknown")


def _normal_std(ctx: RuleContext, scheme: InitScheme) -> float | None:
    return ctx.profile.init_std if scheme == InitScheme.NORMAL else None


def zero_factor(layer: LayerRecord, scheme: InitScheme) -> str | None:
    """Which factor must be exactly zero at step 0: "A", "B", "BA" (orthogonal: B·A = 0) or
    None when the scheme gives identity some other way (data-driven, random, unknown)."""
    if layer.kind == "embedding":
        return None if scheme == InitScheme.RANDOM else "A"
    if layer.kind not in ("linear", "conv"):
        return None
    if scheme == InitScheme.MICA:
        return "A"
    if scheme == InitScheme.ORTHOGONAL:
        return "BA"
    if scheme in B_ZERO_SCHEMES or scheme == InitScheme.UNKNOWN:
        return "B"
    return None


def is_zero(layer: LayerRecord, factor: str) -> bool | None:
    """Whether A or B is exactly zero (None when not measured)."""
    stats = layer.a_stats if factor == "A" else layer.b_stats
    if stats is None or stats.numel == 0:
        return None
    return stats.zero_fraction >= 1.0 and stats.nonfinite == 0


def delta_is_zero(layer: LayerRecord) -> bool | None:
    """ΔW = 0 exactly: A = 0, B = 0 or ‖ΔW‖_F == 0 (None when not measured)."""
    if is_zero(layer, "A") or is_zero(layer, "B"):
        return True
    if layer.delta is not None:
        return layer.delta.frobenius == 0.0
    if layer.a_stats is None or layer.b_stats is None:
        return None
    return False


def delta_negligible(layer: LayerRecord, tol: float = 1e-4) -> bool:
    """ΔW zero or numerically zero relative to its factors (orthogonal init: B ⟂ A)."""
    if delta_is_zero(layer):
        return True
    d = layer.delta
    if d is None or not math.isfinite(d.frobenius):
        return True
    return d.alignment < tol


def measured(layer: LayerRecord) -> bool:
    return layer.a_stats is not None and layer.b_stats is not None


def short_name(module: str) -> str:
    """A module name without PEFT's ``base_model.model.`` wrapper."""
    for prefix in ("base_model.model.", "base_model."):
        if module.startswith(prefix):
            return module[len(prefix):]
    return module


def file_name(path: str) -> str:
    return PurePath(path).name


def fmt_num(x: float) -> str:
    """A number as short as it can be while staying exact enough to act on."""
    if x == 0 or not math.isfinite(x):
        return str(x)
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def name_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
