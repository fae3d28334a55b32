"""What one ``loracheck diff A B`` run measured: a typed, frozen record, free of torch.

:mod:`loracheck.adapter_diff` fills a :class:`DiffRecord` from the factors of the two adapters;
the LC41x rules in :mod:`loracheck.rules.diff` judge it as pure functions; the engine applies
the settings to their findings and the shared renderers print it, as for ``check``.

Every number compares the updates ΔW = s·B·A of one module on the two sides: A is the
reference (the first path), B the adapter judged against it (the second path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class ToleranceSource(str, Enum):
    """Where the tolerance on ‖ΔW_A − ΔW_B‖ came from."""

    # What rounding each side's factors to their dtypes explains (adapter_diff.dtype_floor).
    DTYPES = "dtypes"
    # --tolerance T on the command line: ‖ΔW_A − ΔW_B‖ ≤ T·‖ΔW_A‖.
    COMMAND_LINE = "command-line"


class DiffMethod(str, Enum):
    """How ‖ΔW_A − ΔW_B‖ was computed (never by materialising either ΔW)."""

    # A and B bitwise equal on both sides: ‖ΔW_A − ΔW_B‖ = |s_A − s_B|·‖B·A‖ exactly.
    EQUAL_FACTORS = "equal-factors"
    # Same shapes: ΔW_A − ΔW_B = s_A·B_A·(A_A − A_B) + (s_A·B_A − s_B·B_B)·A_B, from the
    # Grams of the stacked factor differences (accurate relative to the difference itself).
    FACTOR_DIFFERENCE = "factor-difference"
    # Other shapes: U = [s_A·B_A, −s_B·B_B], V = [A_A; A_B], ‖U·V‖² = trace((UᵀU)(VVᵀ)).
    STACKED_GRAM = "stacked-gram"
    # A Gram route whose rounding could reach the answer: ‖R_U·R_Vᵀ‖ from the QR of U and Vᵀ.
    STACKED_QR = "stacked-qr"
    # A saved full tensor (ModuleKind.SAVED): ‖X_A − X_B‖ element by element, streamed in
    # blocks of both files in float64.
    FULL_TENSOR = "full-tensor"


class ModuleKind(str, Enum):
    """What a compared entry is."""

    # A LoRA module: the updates ΔW = s·B·A of both sides.
    LORA = "lora"
    # A full tensor saved beside the factors (a ``modules_to_save`` copy, a DoRA magnitude, an
    # embedding saved with ``save_embedding_layers``, a trained bias, lora_B's bias): the saved
    # values themselves, X_A against X_B.
    SAVED = "saved"


class MatchRule(str, Enum):
    """How the modules of the two sides were paired (keys.module_path)."""

    # The same module path on both sides (PEFT's base_model.model. removed).
    PATH = "path"
    # One side has kohya's flattened names: the dotted side's paths flattened the same way.
    FLATTENED = "flattened"


@dataclass(frozen=True)
class FactorFacts:
    """How the factors of a module compare, side by side (same shapes only)."""

    a_equal: bool  # A_A and A_B bitwise equal
    b_equal: bool  # B_A and B_B bitwise equal
    a_rel_diff: float  # ‖A_A − A_B‖ / ‖A_A‖ (0 when equal; inf when A_A = 0 ≠ A_B)
    # ‖s_A·B_A − s_B·B_B‖ / ‖s_A·B_A‖: B with each side's scale folded in
    b_rel_diff: float


@dataclass(frozen=True)
class Side:
    """One side of a module: its name in that file and what the loader found for it."""

    name: str
    rank: int | None
    scale: float | None  # LayerRecord.scaling, as the loader resolved it
    alpha: float | None
    alpha_source: str
    dtype: str  # the factors' dtype(s), "BF16" or "F32/BF16"
    in_features: int | None
    out_features: int | None
    shape: tuple[int, ...] | None = None  # a saved tensor's shape (None for a LoRA module)


@dataclass(frozen=True)
class ModuleDiff:
    """One matched module: each side's update and how far apart the two are.

    ``compared`` is False when the two cannot be compared (``why_not`` says why: shapes differ,
    a factor is missing or non-finite, a LyCORIS LoHa/LoKr module); the numbers are then NaN.
    """

    name: str  # the canonical module path (A's name without PEFT's wrapper)
    module_type: str  # A's LayerRecord.module_type, the grouping of the tables
    a: Side
    b: Side
    norm_a: float  # ‖ΔW_A‖_F
    norm_b: float  # ‖ΔW_B‖_F
    diff_norm: float  # ‖ΔW_A − ΔW_B‖_F
    # The largest ‖ΔW_A − ΔW_B‖ the tolerance allows, and that bound relative to ‖ΔW_A‖.
    tolerance_norm: float
    tolerance: float
    tolerance_source: ToleranceSource
    method: DiffMethod | None
    compared: bool = True
    why_not: str | None = None
    facts: FactorFacts | None = None
    # c = ⟨ΔW_A, ΔW_B⟩ / ‖ΔW_A‖² and ‖c·ΔW_A − ΔW_B‖ with its tolerance, measured when the
    # module differs and the two updates are nearly parallel (LC412); None otherwise.
    scale_fit: float | None = None
    fit_residual: float | None = None
    fit_tolerance: float | None = None
    nonfinite: bool = False
    # LORA: the updates ΔW of both sides; SAVED: a saved tensor X (every ΔW below reads X).
    kind: ModuleKind = ModuleKind.LORA
    # No exact path matched: paired by the unique longest common suffix of the two dotted
    # paths, covering at least the layer index, its container and the module names
    # (``layers.0.self_attn.q_proj``), or one side's whole path (adapter_diff.match_modules).
    matched_by_suffix: bool = False

    @property
    def rel_diff(self) -> float:
        """‖ΔW_A − ΔW_B‖ / ‖ΔW_A‖: 0 when both are zero, inf when only ΔW_A is."""
        if self.norm_a > 0:
            return self.diff_norm / self.norm_a
        return 0.0 if self.diff_norm == 0 else math.inf

    @property
    def norm_ratio(self) -> float:
        """‖ΔW_B‖ / ‖ΔW_A‖ (1 when both are zero)."""
        if self.norm_a > 0:
            return self.norm_b / self.norm_a
        return 1.0 if self.norm_b == 0 else math.inf

    @property
    def cosine(self) -> float | None:
        """⟨ΔW_A, ΔW_B⟩ / (‖ΔW_A‖·‖ΔW_B‖), from the three norms (the inner product is
        (‖ΔW_A‖² + ‖ΔW_B‖² − ‖ΔW_A − ΔW_B‖²)/2, exact where the updates are nearly equal);
        None when either update is zero."""
        a, b, d = self.norm_a, self.norm_b, self.diff_norm
        if not (a > 0 and b > 0) or not math.isfinite(d):
            return None
        # (a² + b² − d²)/2ab = 1 + ((a − b)² − d²)/2ab: near 1 only small terms are subtracted
        value = 1.0 + ((a - b) ** 2 - d * d) / (2.0 * a * b)
        return max(-1.0, min(1.0, value))

    @property
    def differs(self) -> bool:
        """The difference exceeds the tolerance in force (or the two cannot be compared)."""
        if not self.compared:
            return True
        return not self.diff_norm <= self.tolerance_norm

    @property
    def proportional(self) -> bool:
        """ΔW_B = c·ΔW_A within the tolerance, for c > 0 measured (LC412)."""
        return (self.scale_fit is not None and self.scale_fit > 0
                and self.fit_residual is not None and self.fit_tolerance is not None
                and self.fit_residual <= self.fit_tolerance)


@dataclass(frozen=True)
class DiffRecord:
    """Everything one diff run measured: the modules both sides hold, compared, and the
    modules only one side holds."""

    path_a: str
    path_b: str
    format_a: str
    format_b: str
    match: MatchRule
    # The pipeline component dropped from one side's names to match a side without any
    # ("unet" for kohya's lora_unet_ against a PEFT adapter of the UNet alone), or None.
    dropped_component: str | None
    tolerance_override: float | None  # --tolerance, None for the dtype default
    modules: tuple[ModuleDiff, ...]
    only_a: tuple[str, ...] = ()
    only_b: tuple[str, ...] = ()
    # Saved full tensors (ModuleKind.SAVED) only one side holds (LC411).
    saved_only_a: tuple[str, ...] = ()
    saved_only_b: tuple[str, ...] = ()

    @property
    def differing(self) -> tuple[ModuleDiff, ...]:
        return tuple(m for m in self.modules if m.differs)

    @property
    def lora_modules(self) -> tuple[ModuleDiff, ...]:
        return tuple(m for m in self.modules if m.kind is ModuleKind.LORA)

    @property
    def saved_modules(self) -> tuple[ModuleDiff, ...]:
        return tuple(m for m in self.modules if m.kind is ModuleKind.SAVED)

    @property
    def suffix_matched(self) -> tuple[ModuleDiff, ...]:
        """The entries paired by the longest common suffix of their paths."""
        return tuple(m for m in self.modules if m.matched_by_suffix)
