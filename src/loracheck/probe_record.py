"""What one ``loracheck verify`` run measured: a typed, frozen record, free of torch.

:mod:`loracheck.verify` fills a :class:`ProbeRecord` on a live model; the LC3xx rules in
:mod:`loracheck.rules.probe` judge it as pure functions (testable without torch); the engine
applies the settings to their findings and the shared renderers print them, as for ``check``.

Tolerances on outputs are relative to the outputs' size: ``|Δ| ≤ tol`` with
``tol = OUTPUT_TOL[dtype] · max(1, max |reference|)``, stored with each measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from loracheck.model import Diagnostic

# Relative tolerance on outputs per dtype name (see the module docstring).
OUTPUT_TOL: Mapping[str, float] = {"float32": 2e-5, "bfloat16": 5e-2, "float16": 5e-3}


class Task(str, Enum):
    """What the probed model computes, and so which objective the probe trains."""

    CAUSAL_LM = "causal-lm"
    SEQ_CLS = "seq-cls"
    SEQ2SEQ = "seq2seq"
    FEATURES = "features"  # a backbone without a head (AutoModel): hidden states only
    VISION = "vision"


class IdentityMode(str, Enum):
    """Which step-0 outputs must equal the base model's."""

    EXACT = "exact"  # a zero factor in fp32: bit for bit, train and eval mode
    WITHIN_TOLERANCE = "tolerance"  # train and eval mode, within the dtype's tolerance
    EVAL_ONLY = "eval"  # a non-zero init with dropout: only eval mode is an identity
    NOT_EXPECTED = "none"  # a trained adapter was loaded: it is meant to change the outputs


@dataclass(frozen=True)
class Identity:
    """Step-0 outputs of the adapted model against the base (max absolute difference)."""

    mode: IdentityMode
    eval_max_abs: float
    train_max_abs: float
    tolerance: float


@dataclass(frozen=True)
class FactorGradient:
    """One factor after one backward pass: its largest |gradient| (None: no gradient at all)."""

    module: str
    factor: str  # "A" or "B"
    backward: int  # 1 or 2
    grad_absmax: float | None
    trainable: bool
    partner_zero: bool  # the other factor is exactly zero, so this gradient must be zero


@dataclass(frozen=True)
class Unsupported:
    """An adapter feature the reference LoRA cannot reproduce: the probe refuses the adapter
    rather than verify it as something else."""

    feature: str
    detail: str
    location: str | None = None


@dataclass(frozen=True)
class Losses:
    """The probe's objective on its fixed batch: eval-mode loss before and after training,
    and the train-mode loss of every step."""

    steps: tuple[float, ...]
    eval_before: float | None
    eval_after: float | None
    min_drop: float  # the relative drop of the eval loss that a learning adapter reaches

    @property
    def drop(self) -> float | None:
        """(before − after) / |before|; None when either is missing, zero or not finite."""
        before, after = self.eval_before, self.eval_after
        if before is None or after is None or before == 0:
            return None
        if before != before or after != after or abs(before) == float("inf"):
            return None
        return (before - after) / abs(before)


@dataclass(frozen=True)
class Merge:
    """Merged vs unmerged outputs, a second merge, and unmerge restoring W."""

    max_abs: float
    tolerance: float
    second_merge_changed: int
    unmerge_failures: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Reload:
    """The adapter saved in PEFT's format and loaded into a fresh model."""

    max_abs: float | None
    tolerance: float
    problems: tuple[tuple[str, str], ...] = ()
    saved_check: tuple[Diagnostic, ...] = ()  # `loracheck check`'s errors on the saved folder
    saved_to: str | None = None


@dataclass(frozen=True)
class ProbeRecord:
    """Everything one verify run measured, and what it ran on.

    A run that stops early (the adapter does not fit the model, or uses a feature the reference
    cannot reproduce) leaves the later measurements ``None``: nothing was measured, so nothing
    is judged.
    """

    model: str
    task: Task
    device: str
    dtype: str
    init: str
    rank: int | None
    alpha: float | None
    dropout: float
    scales: tuple[float, ...]  # the effective scale s of every adapted module
    n_modules: int
    probe_steps: int
    lr: float
    adapter: str | None = None
    fit_problems: tuple[tuple[str, str], ...] = ()
    unsupported: tuple[Unsupported, ...] = ()
    identity: Identity | None = None
    trainable: int | None = None
    expected_trainable: int | None = None
    leaked: tuple[str, ...] = ()  # base parameters that require grad
    base_changed: tuple[str, ...] = ()  # base parameters that changed during the probe
    gradients: tuple[FactorGradient, ...] = ()
    losses: Losses | None = None
    merge: Merge | None = None
    reload: Reload | None = None
    nonfinite: tuple[str, ...] = ()
    timing: Mapping[str, float] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        """The probe did not run: the adapter does not fit, or is refused."""
        return bool(self.fit_problems or self.unsupported) or self.n_modules == 0
