"""What one ``loracheck merged`` run measured: a typed, frozen record, free of torch.

:mod:`loracheck.merge_measure` fills a :class:`MergeRecord` by streaming MERGED and BASE; the
LC40x rules in :mod:`loracheck.rules.merged` judge it as pure functions; the engine applies the
settings and the shared renderers print it.

Per adapter module, with D = M − W (merged minus base, float64) and U the update the adapter
predicts (U = s·B·A; for DoRA U = m·(W + s·B·A)/‖W + s·B·A‖_row − W):

    ratio             ⟨D, U⟩ / ‖U‖²            1 for a healthy merge (= c/s for LoRA)
    fitted scale c    ⟨D, B·A⟩ / ‖B·A‖²        the scale the merge actually used
    residual          ‖D − U‖                  what the adapter does not explain
    fitted residual   ‖D − ratio·U‖            what is left once the scale is fitted
    floor             √Σ bound_i²              what rounding explains: bound_i is half an ULP of
                                               M_i in the coarser of M's and W's dtypes (a bf16
                                               merge saved as fp32 holds bf16 values), plus the
                                               rounding of the update
                                               in the adapter's dtype and of its product in
                                               float32 (see merge_measure)

All norms are absolute; the relative ones (÷ ‖U‖) are properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class ModuleStatus(str, Enum):
    """Whether a module's merge could be measured, and if not, why."""

    MEASURED = "measured"
    MISSING = "missing"  # no weight for the module in MERGED (or in BASE)
    SHAPE_MISMATCH = "shape-mismatch"  # M, W and the factors do not agree on a shape
    UNSUPPORTED = "unsupported"  # a kind loracheck does not measure (LoHa, LoKr, …)


@dataclass(frozen=True)
class BiasMerge:
    """An adapted module's bias under ``lora_bias=True``: MERGED's bias against BASE's plus
    s·lora_B.bias (PEFT merges the bias with the weight)."""

    key: str  # the bias in MERGED and BASE
    numel: int = 0
    # Elements with |M_b − W_b − s·b| past their own rounding bound (0 for a merge by PEFT).
    violations: int = 0
    changed: int = 0  # elements where MERGED's bias differs from BASE's
    max_error: float = 0.0  # max |M_b − W_b − s·b|
    detail: str = ""  # why the bias could not be compared (absent, another shape)


@dataclass(frozen=True)
class ModuleMerge:
    """One adapter module against its weight in MERGED and BASE."""

    module: str  # the adapter's module name, PEFT's prefix stripped
    key: str | None  # the weight's key in MERGED (and BASE)
    status: ModuleStatus
    kind: str = "linear"  # linear | embedding | conv
    # How the stored weight holds ΔW: "out×in", "in×out" (Conv1D / fan_in_fan_out),
    # "embedding" (num_embeddings × dim), "conv" (out × in·kh·kw).
    layout: str = "out×in"
    tied: bool = False  # the weight is another module's (lm_head tied to embed_tokens)
    dora: bool = False
    rank: int | None = None
    scale: float | None = None  # the expected s (the loader's LayerRecord.scaling)
    dtype: str | None = None  # M's dtype
    base_dtype: str | None = None
    adapter_dtype: str | None = None
    shape: tuple[int, ...] = ()  # M's shape
    base_shape: tuple[int, ...] = ()
    numel: int = 0
    update_norm: float = 0.0  # ‖U‖
    delta_norm: float = 0.0  # ‖D‖
    fitted_scale: float | None = None  # c
    ratio: float | None = None  # ⟨D, U⟩ / ‖U‖²
    residual_norm: float = 0.0  # ‖D − U‖
    fitted_residual_norm: float = 0.0  # ‖D − ratio·U‖
    floor_norm: float = 0.0  # √Σ bound_i²
    # Elements beyond their own rounding bound |D_i − U_i| > bound_i (0 for a merge by PEFT);
    # None where the fast path of 16-bit merges measured the module (no per-element U).
    violations: int | None = 0
    changed: int = 0  # elements where M ≠ W (also for an unsupported module, when compared)
    # Elements whose update exceeds one ULP of W in M's dtype: any merge changes them
    # (None when M and W have different dtypes).
    must_change: int | None = None
    merged_nonfinite: int = 0
    base_nonfinite: int = 0
    adapter_nonfinite: int = 0
    # With lora_bias: the module's bias (None when the adapter's lora_B has no bias).
    bias: BiasMerge | None = None
    detail: str = ""  # why a module was not measured

    @property
    def measured(self) -> bool:
        return self.status is ModuleStatus.MEASURED

    def _rel(self, value: float) -> float | None:
        return value / self.update_norm if self.update_norm > 0 else None

    @property
    def residual(self) -> float | None:
        """‖D − U‖ / ‖U‖ (None when U = 0)."""
        return self._rel(self.residual_norm)

    @property
    def fitted_residual(self) -> float | None:
        return self._rel(self.fitted_residual_norm)

    @property
    def floor(self) -> float | None:
        """The rounding floor relative to ‖U‖."""
        return self._rel(self.floor_norm)

    @property
    def finite(self) -> bool:
        return self.merged_nonfinite == 0


@dataclass(frozen=True)
class ChangedTensor:
    """A tensor outside the adapter's modules whose values differ between BASE and MERGED."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    changed: int  # elements that differ
    max_abs: float  # max |M − W| over the finite elements
    relative: float | None  # ‖M − W‖ / ‖W‖ (None when W = 0)
    nonfinite: int = 0  # non-finite elements in MERGED where BASE is finite


@dataclass(frozen=True)
class SavedCopy:
    """A module the adapter saves whole (``modules_to_save``), against MERGED's weight."""

    module: str
    key: str | None  # the weight in MERGED; None when MERGED has none
    adapter_key: str
    matches: bool  # MERGED holds the adapter's copy (within M's rounding)
    equals_base: bool  # MERGED still holds BASE's weight
    max_abs: float | None = None  # max |M − copy|
    detail: str = ""


@dataclass(frozen=True)
class MergeRecord:
    """Everything one ``loracheck merged`` run measured, and what it ran on."""

    merged: str
    base: str
    adapter: str
    modules: tuple[ModuleMerge, ...] = ()
    # LoRA factor keys (lora_A, lora_B, lora_magnitude_vector, …) left in MERGED.
    lora_keys: tuple[str, ...] = ()
    # ``base_layer`` names in MERGED: a PEFT-wrapped model was saved, not a merged one.
    base_layer_keys: tuple[str, ...] = ()
    only_in_base: tuple[str, ...] = ()
    only_in_merged: tuple[str, ...] = ()
    # Tensors outside the modules whose shapes differ: (key, base shape, merged shape).
    shape_mismatches: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    changed: tuple[ChangedTensor, ...] = ()
    saved_copies: tuple[SavedCopy, ...] = ()
    # Tensors in MERGED's shards that model.safetensors.index.json's weight_map does not list.
    unindexed: tuple[str, ...] = ()
    n_tensors: int = 0  # tensors in MERGED
    n_params: int = 0  # elements in MERGED
    n_bytes: int = 0
    timing: Mapping[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> tuple[ModuleMerge, ...]:
        return tuple(m for m in self.modules if m.measured)
