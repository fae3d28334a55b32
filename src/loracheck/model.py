"""The typed model every stage shares: specs, layer records, adapters, diagnostics, reports.

Data flows one way: discover -> load -> :class:`Adapter` -> rules -> engine -> :class:`Report`
-> renderers. Nothing in this module reads files, imports torch or prints.

Orientation convention (all formats are normalised to it on load):
    A: (r, in_features)   the down-projection, ``lora_A`` / ``lora_down`` / ``lora_a``
    B: (out_features, r)  the up-projection,   ``lora_B`` / ``lora_up``   / ``lora_b``
    ΔW = s · B @ A        (out_features, in_features), s = the layer's effective scale
Conv kernels are flattened to this form (A: (r, in·kh·kw), B: (out, r)); mlx stores A as
(in, r) and B as (r, out) and is transposed on load; embeddings keep PEFT's layout
(A: (r, num_embeddings), B: (embedding_dim, r)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loracheck.diff_record import DiffRecord
    from loracheck.merge_record import MergeRecord
    from loracheck.probe_record import ProbeRecord


class Severity(str, Enum):
    """How bad a finding is; ordered info < warning < error."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


class Stage(str, Enum):
    """Where in its life an adapter is: freshly initialised or trained."""

    INIT = "init"
    TRAINED = "trained"
    UNKNOWN = "unknown"


class StageSource(str, Enum):
    """Where the stage in force came from."""

    # --stage on the command line.
    COMMAND_LINE = "command-line"
    # `stage` or `per-file-stage` in loracheck's settings (pyproject.toml, loracheck.toml).
    SETTINGS = "settings"
    # The weights against the init scheme's step-0 signature (B = 0 exactly, ...).
    WEIGHTS = "weights"
    # A trainer's record of steps taken (trainer_state.json, checkpoint-N, kohya ss_steps).
    TRAINING_EVIDENCE = "training-evidence"


class MethodKind(str, Enum):
    """What kind of fine-tuning a config or adapter describes; only LORA gets the LoRA rules.

    LORA   the LoRA family: LoRA, DoRA, rsLoRA, LoRA+, QLoRA, LoCon (one update s·B·A per module)
    OTHER  another parameter-efficient method (IA3, OFT, VeRA, LoHa, LoKr, prompt tuning …),
           named in ``LoraSpec.method_name``
    FULL   a full or frozen-layer fine-tune, or LoRA switched off (``lora_rank: 0``)
    NONE   not a LoRA-related training config at all (a file with no settings and no weights)
    """

    LORA = "lora"
    OTHER = "other"
    FULL = "full"
    NONE = "none"


class ValueOrigin(str, Enum):
    """Where a resolved config value came from.

    FILE             written in the file as a literal
    TRAINER_DEFAULT  absent from the file; the trainer's own default (cited in configs/semantics.py)
    EXPRESSION       a Python expression loracheck folded (``2 * lora_rank``), or could not
    PLACEHOLDER      a template placeholder (``${LORA_R}``, ``{{ lora_r }}``): unknown until
                     the template is rendered
    """

    FILE = "file"
    TRAINER_DEFAULT = "trainer default"
    EXPRESSION = "expression"
    PLACEHOLDER = "placeholder"


class InitScheme(str, Enum):
    """The initialisation scheme in force for the LoRA factors.

    Expectations (Linear layers, A: (r, in)):
        kaiming-uniform  A ~ U(±1/√in), std 1/√(3·in); B = 0  (PEFT default, kohya, torchtune, mlx)
        gaussian         A ~ N(0, (1/r)²);              B = 0     (PEFT "gaussian")
        normal           A ~ N(0, σ²), σ given (0.02);  B = 0     (LLMBook)
        orthogonal       A, B ≠ 0 with B @ A = 0                  (PEFT "orthogonal")
        pissa/olora/corda/loftq/lora-ga  B ≠ 0, structured, on a modified base ("data-driven")
        eva              A orthonormal rows; B = 0
        mica             A = 0; B orthonormal columns
        embedding        A = 0; B ~ N(0, 1)                       (PEFT embedding layers)
        random           both factors random (PEFT ``init_lora_weights=False``): breaks W' = W
    """

    KAIMING_UNIFORM = "kaiming-uniform"
    GAUSSIAN = "gaussian"
    NORMAL = "normal"
    ORTHOGONAL = "orthogonal"
    PISSA = "pissa"
    OLORA = "olora"
    CORDA = "corda"
    LOFTQ = "loftq"
    LORA_GA = "lora-ga"
    EVA = "eva"
    MICA = "mica"
    DATA_DRIVEN = "data-driven"
    EMBEDDING = "embedding"
    RANDOM = "random"
    UNKNOWN = "unknown"


# The schemes whose step-0 identity comes from B = 0 (linear layers).
B_ZERO_SCHEMES = frozenset(
    {InitScheme.KAIMING_UNIFORM, InitScheme.GAUSSIAN, InitScheme.NORMAL, InitScheme.EVA}
)
# The schemes that start with B != 0 on a base the scheme itself rewrote.
DATA_DRIVEN_SCHEMES = frozenset(
    {
        InitScheme.PISSA,
        InitScheme.OLORA,
        InitScheme.CORDA,
        InitScheme.LOFTQ,
        InitScheme.LORA_GA,
        InitScheme.DATA_DRIVEN,
    }
)


# The float fields of LoraSpec that an integer is widened into.
_FLOAT_FIELDS = ("alpha", "scale", "dropout", "init_std")


@dataclass(kw_only=True, slots=True)
class LoraSpec:
    """The LoRA hyper-parameters one config source declares, in one typed shape.

    Every field is ``None`` when the source does not say it. ``lines`` maps a field name to the
    1-based line of the key it came from (absent for binary sources). Values that were present but
    of the wrong type are kept, as text, in ``invalid`` (field name -> repr of the raw value) and
    the field itself stays ``None``: rules report them, loaders never raise on them.

    Keyword-only: an unknown field is a TypeError. The readers in :mod:`loracheck.configs`
    convert every value to its field's type; :meth:`__post_init__` only widens an integer given
    for a float field (``alpha=16`` is 16.0), so every source yields the same type.
    """

    # peft, axolotl, llama-factory, torchtune, trl, llmbox, kohya, kohya-metadata, mlx, python,
    # diffusers, unsloth, unknown
    source_format: str
    path: str = ""
    rank: int | None = None
    alpha: float | None = None
    # mlx-lm: the multiplier itself, used instead of alpha / r.
    scale: float | None = None
    dropout: float | None = None
    init_lora_weights: bool | str | None = None
    # The normal init's σ when a source declares one (LLMBook: 0.02).
    init_std: float | None = None
    use_rslora: bool | None = None
    use_dora: bool | None = None
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    modules_to_save: list[str] | None = None
    bias: str | None = None
    layers_to_transform: list[int] | None = None
    layers_pattern: list[str] | str | None = None
    fan_in_fan_out: bool | None = None
    task_type: str | None = None
    base_model: str | None = None
    # What the file fine-tunes: the LoRA family, another method (named), or a full fine-tune.
    method: MethodKind = MethodKind.LORA
    method_name: str = "LoRA"
    # Where each set field came from (absent: the file itself said it, as a literal).
    origins: dict[str, ValueOrigin] = field(default_factory=dict)
    # Fields whose value is unknown to a static reader (an expression loracheck cannot fold, a
    # template placeholder): field -> the source text. Never missing, never invalid.
    unresolved: dict[str, str] = field(default_factory=dict)
    # Sub-configs and trainer-specific keys that rules may need (loftq_config, network_args, ...).
    extras: dict[str, Any] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    # Inline `# loracheck: ignore[LC103]` comments: line -> codes (empty list = every code).
    suppressions: dict[int, list[str]] = field(default_factory=dict)
    # A diffusers pipeline file declares one LoraConfig per component ("unet", "text_encoder",
    # "transformer", ...): a module under "<component>." follows that component's spec
    # (:func:`loracheck.scaling.spec_for_module`); the top-level fields are the main component's.
    components: dict[str, LoraSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if type(value) is int:
                setattr(self, name, float(value))
        if any(type(v) is int for v in self.alpha_pattern.values()):
            self.alpha_pattern = {k: float(v) if type(v) is int else v
                                  for k, v in self.alpha_pattern.items()}

    @property
    def alpha_missing(self) -> bool:
        return (
            self.alpha is None
            and self.scale is None
            and "alpha" not in self.invalid
            and "alpha" not in self.unresolved
            and "scale" not in self.unresolved
        )

    def origin(self, field_name: str) -> ValueOrigin | None:
        """Where ``field_name``'s value came from; None when it is not set at all."""
        if field_name in self.unresolved:
            return self.origins.get(field_name, ValueOrigin.EXPRESSION)
        if getattr(self, field_name, None) is None:
            return None
        return self.origins.get(field_name, ValueOrigin.FILE)


@dataclass(frozen=True)
class FactorStats:
    """Statistics of one factor (A, B, or a DoRA magnitude), computed in one pass.

    Moments are over the finite entries only; ``nonfinite`` counts NaN and ±Inf. The row norms
    of B are those of its r columns (its rank-axis vectors, like A's rows).
    """

    numel: int
    mean: float
    std: float
    absmax: float
    zero_fraction: float
    nonfinite: int
    # Excess-free (Pearson) kurtosis, E[(x-μ)^4]/σ^4: uniform ≈ 1.8, normal ≈ 3. None if σ = 0.
    kurtosis: float | None = None
    # Largest |row norm| deviation from the mean row norm, used to spot orthonormal structure.
    row_norm_mean: float | None = None
    row_norm_cv: float | None = None
    # Extremes over the finite entries (a DoRA magnitude must have min > 0).
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DeltaStats:
    """Statistics of ΔW = s · B @ A, computed from the r×r core, never materialising ΔW."""

    frobenius: float
    singular_values: tuple[float, ...]
    sigma_max: float
    # exp(entropy of σ_i / Σσ): 1 for a rank-1 update, r for a flat spectrum. 0 when ΔW = 0.
    effective_rank: float
    # ‖ΔW‖_F² / σ_max²; 0 when ΔW = 0.
    stable_rank: float
    # ‖B @ A‖_F / (‖B‖_F · ‖A‖_F): 0 when B ⟂ A (orthogonal init), ≤ 1 always.
    alignment: float


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor lives: its key in the file, dtype name (safetensors spelling) and shape."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class LayerRecord:
    """One LoRA module: the canonical pair and everything measured on it."""

    name: str
    kind: str  # "linear" | "embedding" | "conv" | "loha" | "lokr"
    a: TensorRef | None
    b: TensorRef | None
    rank: int | None
    in_features: int | None
    out_features: int | None
    alpha: float | None
    # Where alpha came from: "config", "alpha_pattern", "tensor" (kohya .alpha), "metadata",
    # "mlx-scale", "default:<consumer>".
    alpha_source: str
    scaling: float | None
    alpha_tensor: TensorRef | None = None
    magnitude: TensorRef | None = None
    bias: TensorRef | None = None
    a_stats: FactorStats | None = None
    b_stats: FactorStats | None = None
    magnitude_stats: FactorStats | None = None
    delta: DeltaStats | None = None
    # How ``delta`` was obtained: "low-rank" (the r×r core of B·A, a Tucker core folded into
    # A), "kronecker" (LoKr: from the singular values of its two factors), "hadamard" (LoHa:
    # as a product of rank r₁·r₂ factors), "materialised" (ΔW built, for a small module), or
    # "not measured: <why>".
    delta_from: str | None = None

    @property
    def module_type(self) -> str:
        """The module's role, shared by its peers in other blocks: the last path segment that
        is not an index (``q_proj``, ``to_k``), or, for kohya's flattened names, what follows
        the last block index (``attn1_to_q``, ``self_attn_q_proj``, ``attn1_to_out_0``)."""
        if "." not in self.name and self.name.startswith("lora_"):
            tokens = self.name.split("_")
            digits = [i for i, t in enumerate(tokens) if t.isdigit()]
            if digits and digits[-1] == len(tokens) - 1:
                digits.pop()  # a trailing index belongs to the module itself (to_out_0)
            start = digits[-1] + 1 if digits else 2
            return "_".join(tokens[start:]) or self.name
        parts = [p for p in self.name.replace("/", ".").split(".") if p]
        for part in reversed(parts):
            if not part.isdigit():
                return part
        return self.name

    @property
    def nonfinite(self) -> int:
        return sum(
            s.nonfinite for s in (self.a_stats, self.b_stats, self.magnitude_stats) if s is not None
        )


@dataclass(frozen=True)
class ExtraTensor:
    """A tensor that is not a LoRA factor (modules_to_save, base embeddings, alpha scalars)."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    role: str  # "modules_to_save" | "base_layer" | "bias" | "token_adapter" | "variant" | "unknown"


@dataclass(frozen=True)
class InitInference:
    """The init scheme in force and why loracheck believes it."""

    scheme: InitScheme
    declared: bool
    evidence: str
    # σ expected for A under the scheme at a representative fan-in (None when not std-based),
    # and the σ measured on that layer's A (None when no layer was judged).
    expected_std: float | None = None
    measured_std: float | None = None


@dataclass(frozen=True)
class Fault:
    """A problem met while loading an artifact; the input rules (LC0xx, LC215) report these.

    ``code`` is the rule code it maps to: LC001 unreadable/corrupt, LC002 no LoRA content,
    LC003 Git LFS pointer, LC215 pickle checkpoint.
    """

    code: str
    path: str
    detail: str
    line: int | None = None
    location: str | None = None


@dataclass(frozen=True)
class Diagnostic:
    """One finding: a stable code, a severity, a place and a one-sentence message."""

    code: str
    name: str
    severity: Severity
    path: str
    message: str
    line: int | None = None
    col: int | None = None
    # A tensor key, a config key, or a module name: what in the file the finding is about.
    location: str | None = None
    help: str | None = None


@dataclass(frozen=True)
class RuleMeta:
    """What every output needs to know about a rule: identity, default severity and its docs.

    ``explanation`` is the rule's docstring: Markdown with the fixed sections What it does /
    Why is this bad? / Example / Use instead. ``status`` is "stable" or "removed" (retired codes
    stay listed). ``also``/``when``: the other severity some findings carry, and the cases.
    """

    code: str
    name: str
    severity: Severity
    summary: str
    explanation: str
    status: str = "stable"
    # A rule whose findings carry another severity by case: that severity, and when each
    # applies ("error when …; warning when …").
    also: Severity | None = None
    when: str = ""

    @property
    def severities(self) -> tuple[Severity, ...]:
        """Every severity the rule's findings can carry, mildest first."""
        found = {self.severity} | ({self.also} if self.also is not None else set())
        return tuple(sorted(found, key=lambda s: s.rank))


@dataclass
class Adapter:
    """Everything loracheck knows about one adapter unit (weights and/or config)."""

    path: str
    format: str
    files: list[str]
    spec: LoraSpec | None
    layers: list[LayerRecord] = field(default_factory=list)
    extra_tensors: list[ExtraTensor] = field(default_factory=list)
    # Factor keys that have no partner (A without B or B without A).
    orphans: list[TensorRef] = field(default_factory=list)
    # Tensors with a zero-size dimension or a 1-D factor (ZeRO-3 ungathered shards).
    empty_tensors: list[TensorRef] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # "lora" | "loha" | "lokr" | "mixed"
    variant: str = "lora"
    n_tensors: int = 0
    n_bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)
    init: InitInference | None = None
    stage: Stage = Stage.UNKNOWN
    stage_source: StageSource = StageSource.WEIGHTS
    # What the stage rests on, in words ("checkpoint-500/trainer_state.json: global_step 500").
    stage_evidence: str | None = None
    has_weights: bool = True
    # Configuration read alongside weights (kohya ss_* metadata parsed as a spec, for LC212).
    metadata_spec: LoraSpec | None = None
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def stage_forced(self) -> bool:
        """The stage was set by the user (command line or settings), not inferred."""
        return self.stage_source in (StageSource.COMMAND_LINE, StageSource.SETTINGS)

    @property
    def method(self) -> MethodKind:
        """The method the adapter's config (or its weights) names; LoRA unless something says
        otherwise."""
        return self._method()[0]

    @property
    def method_name(self) -> str:
        return self._method()[1]

    def _method(self) -> tuple[MethodKind, str]:
        for spec in (self.spec, self.metadata_spec):
            if spec is not None and spec.method is not MethodKind.LORA:
                return spec.method, spec.method_name
        if self.variant in ("loha", "lokr"):
            return MethodKind.OTHER, {"loha": "LyCORIS LoHa", "lokr": "LyCORIS LoKr"}[self.variant]
        if self.variant in LYCORIS_ALGORITHMS:
            return MethodKind.OTHER, LYCORIS_ALGORITHMS[self.variant]
        for spec in (self.spec, self.metadata_spec):
            if spec is not None:
                return spec.method, spec.method_name
        if not self.has_weights:
            return MethodKind.NONE, "not a LoRA config"
        return MethodKind.LORA, "LoRA"


# The variants of LyCORIS algorithms that are not low-rank pairs (keys.lycoris_algorithm finds
# them by their tensors' names), and the method name each is reported as.
LYCORIS_ALGORITHMS = {"lycoris-full": "LyCORIS full (diff)", "diag-oft": "LyCORIS diag-OFT",
                      "boft": "LyCORIS BOFT", "ia3": "LyCORIS (IA)³", "glora": "LyCORIS GLoRA"}


@dataclass
class Report:
    """The result of one run over many paths: adapters, diagnostics, summary.

    A ``verify`` run adds what it measured (``probe``) and its verdict (``passed``: no
    diagnostic reaches ``--fail-on``, the same test that sets the exit code).
    """

    adapters: list[Adapter] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    probe: ProbeRecord | None = None
    # A ``diff`` run: the two adapters (``adapters``: A, then B) compared module by module.
    diff: DiffRecord | None = None
    # A ``merged`` run: MERGED measured against BASE + the adapter, module by module.
    merged: MergeRecord | None = None
    passed: bool | None = None
    # Files looked at and left out: no LoRA content, and not named as a LoRA artifact.
    skipped: list[str] = field(default_factory=list)

    def count(self, severity: Severity) -> int:
        return sum(1 for d in self.diagnostics if d.severity == severity)
