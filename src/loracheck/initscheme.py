"""Which init scheme produced an adapter's factors, and whether it has been trained since.

Expectations for A (r, in) of a Linear layer at init (formats.md §3, §8):
    kaiming-uniform  A ~ U(±1/√in):  std 1/√(3·in), kurtosis 1.8, |A| ≤ 1/√in;   B = 0
    gaussian         A ~ N(0, 1/r²): std 1/r,        kurtosis 3;                  B = 0
    normal(σ)        A ~ N(0, σ²):   std σ for every fan-in, kurtosis 3;          B = 0
    eva              A has orthonormal rows (row norms 1);                         B = 0
    random           A as kaiming; B ~ U(±1/√r): std 1/√(3r), |B| ≤ 1/√r          (B ≠ 0)
    orthogonal       A, B ~ N(0, 0.1²/2)-like, B·A = 0 (alignment 0)
    pissa/loftq      A = √S·Vᵀ, B = U·√S: balanced, ‖A‖_F = ‖B‖_F
    olora            B = Q (orthonormal columns), A = R (upper trapezoidal: A[i, j] = 0 for j < i)
    lora-ga          A has orthonormal rows, B small and non-zero
    mica             A = 0; B has orthonormal columns and stays frozen
    embedding        A = 0, B ~ N(0, 1)   (every PEFT embedding layer, whatever the scheme)

The per-layer tests read only the :class:`FactorStats`/:class:`DeltaStats` a loader stored; the
"row" norms of B are those of its r columns (see :func:`loracheck.stats.pair_stats`).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loracheck.model import (
    B_ZERO_SCHEMES,
    DATA_DRIVEN_SCHEMES,
    FactorStats,
    InitInference,
    InitScheme,
    LayerRecord,
    LoraSpec,
    Stage,
)

# PEFT's orthogonal init: (randn·Q)/10 over r/2 of r directions, std ≈ 0.1/√2 (formats.md §8).
ORTHOGONAL_STD = 0.1 / math.sqrt(2.0)
LLMBOOK_STD = 0.02
# Formats whose trainer has a single init: what they use when the config does not say.
_FORMAT_DEFAULTS: dict[str, InitScheme] = {
    "kohya": InitScheme.KAIMING_UNIFORM,
    "kohya-metadata": InitScheme.KAIMING_UNIFORM,
    "torchtune": InitScheme.KAIMING_UNIFORM,
    "mlx": InitScheme.KAIMING_UNIFORM,
    "llmbook": InitScheme.NORMAL,
}
# Kurtosis boundary between uniform (1.8) and normal (3.0) samples.
_KURT_SPLIT = 2.4
# A std within this factor of the expectation counts as a match (training drifts it a little).
_STD_TOL = 1.35
# Orthonormal / balanced / B·A = 0 tests hold to float32 rounding at init.
_EXACT = 1e-4
# Structure tests that must survive a few training steps: unit row norms (EVA A, OLoRA B) and
# the PiSSA balance ‖A‖_F = ‖B‖_F.
_LOOSE = 0.05
_LOOSE_BALANCE = 0.15
# PEFT's orthogonal A has rank r/2, so its row norms spread (cv 0.25-0.45 measured); the rows of
# a random or SVD-derived A have nearly equal norms (cv < 0.1).
_ORTHOGONAL_ROW_CV = 0.2


def declared_scheme(spec: LoraSpec | None) -> InitScheme | None:
    """The scheme a config declares (PEFT's ``init_lora_weights`` spelling), else its format's.

    True → kaiming-uniform, False → random, "gaussian", "pissa"/"pissa_niter_K", "olora",
    "corda", "loftq", "eva", "orthogonal", "mica", "lora_ga" (PEFT's comparisons: pissa/corda by
    prefix, olora/mica/gaussian case-insensitive). An unrecognised string → UNKNOWN. No value →
    ``init_std`` (normal) or the format's only init (kohya, torchtune, mlx: kaiming-uniform;
    llmbook: normal 0.02); None when nothing says.
    """
    scheme = explicit_scheme(spec)
    if scheme is not None or spec is None:
        return scheme
    return _FORMAT_DEFAULTS.get(spec.source_format)


def explicit_scheme(spec: LoraSpec | None) -> InitScheme | None:
    """The scheme a config states itself, through ``init_lora_weights`` or ``init_std``; None
    when it states none (format defaults are :func:`declared_scheme`'s business)."""
    if spec is None:
        return None
    value = spec.init_lora_weights
    if value is True:
        return InitScheme.KAIMING_UNIFORM
    if value is False:
        return InitScheme.RANDOM
    if isinstance(value, str):
        return _scheme_from_string(value)
    if spec.init_std is not None:
        return InitScheme.NORMAL
    return None


def _scheme_from_string(value: str) -> InitScheme:
    low = value.lower()
    if value.startswith("pissa"):
        return InitScheme.PISSA
    if value.startswith("corda"):
        return InitScheme.CORDA
    exact = {
        "loftq": InitScheme.LOFTQ,
        "eva": InitScheme.EVA,
        "orthogonal": InitScheme.ORTHOGONAL,
        "lora_ga": InitScheme.LORA_GA,
    }
    if value in exact:
        return exact[value]
    folded = {"gaussian": InitScheme.GAUSSIAN, "olora": InitScheme.OLORA, "mica": InitScheme.MICA}
    return folded.get(low, InitScheme.UNKNOWN)


def expected_a_std(
    scheme: InitScheme, in_features: int, rank: int, init_std: float | None = None
) -> float | None:
    """σ expected for A at init: kaiming/random 1/√(3·in), gaussian 1/r, normal σ (0.02 when not
    given), orthogonal 0.1/√2; None for schemes defined by structure rather than a std."""
    if scheme in (InitScheme.KAIMING_UNIFORM, InitScheme.RANDOM):
        return 1.0 / math.sqrt(3.0 * in_features) if in_features > 0 else None
    if scheme is InitScheme.GAUSSIAN:
        return 1.0 / rank if rank > 0 else None
    if scheme is InitScheme.NORMAL:
        return init_std if init_std is not None else LLMBOOK_STD
    if scheme is InitScheme.ORTHOGONAL:
        return ORTHOGONAL_STD
    return None


@dataclass(frozen=True)
class _Layer:
    """The measurements of one judgeable layer."""

    rec: LayerRecord
    a: FactorStats
    b: FactorStats
    in_f: int
    rank: int


_StageTest = Callable[[_Layer], bool]


def _judgeable(layers: Sequence[LayerRecord], kinds: tuple[str, ...]) -> list[_Layer]:
    out: list[_Layer] = []
    for rec in layers:
        if rec.kind not in kinds or rec.a_stats is None or rec.b_stats is None:
            continue
        if rec.a_stats.nonfinite or rec.b_stats.nonfinite:
            continue
        in_f = rec.in_features or 0
        rank = rec.rank or 0
        if in_f <= 0 or rank <= 0:
            continue
        out.append(_Layer(rec, rec.a_stats, rec.b_stats, in_f, rank))
    return out


def _is_zero(s: FactorStats) -> bool:
    return s.numel > 0 and s.absmax == 0.0 and s.nonfinite == 0


def _frob2(s: FactorStats) -> float:
    n = s.numel - s.nonfinite
    return n * (s.std * s.std + s.mean * s.mean)


def _unit_rows(s: FactorStats, tol: float) -> bool:
    """Rows (columns for B) of unit norm, all alike: an orthonormal-looking factor."""
    if s.row_norm_mean is None or s.row_norm_cv is None:
        return False
    return abs(s.row_norm_mean - 1.0) <= tol and s.row_norm_cv <= tol


def _balanced(layer: _Layer, tol: float) -> bool:
    fa, fb = _frob2(layer.a), _frob2(layer.b)
    return fa > 0.0 and fb > 0.0 and abs(math.sqrt(fa / fb) - 1.0) <= tol


def _trapezoidal_zeros(layer: _Layer) -> bool:
    """OLoRA's A = R of a QR: at least r(r−1)/2 exact zeros below the diagonal."""
    need = layer.rank * (layer.rank - 1) / 2.0
    return layer.rank > 1 and layer.a.zero_fraction * layer.a.numel >= need - 0.5


def _ratio_ok(measured: float, expected: float) -> bool:
    return expected > 0.0 and measured > 0.0 and 1.0 / _STD_TOL <= measured / expected <= _STD_TOL


def _alignment(layer: _Layer) -> float | None:
    d = layer.rec.delta
    return None if d is None or math.isnan(d.alignment) else d.alignment


def _classify_b_zero_family(layer: _Layer) -> InitScheme:
    """Scheme of a layer whose B started at 0, judged from A (works after a little training)."""
    a = layer.a
    if _unit_rows(a, _LOOSE):
        return InitScheme.EVA
    kurt = a.kurtosis
    kaiming = 1.0 / math.sqrt(3.0 * layer.in_f)
    if kurt is not None and kurt < _KURT_SPLIT:
        return InitScheme.KAIMING_UNIFORM if _ratio_ok(a.std, kaiming) else InitScheme.UNKNOWN
    if _ratio_ok(a.std, 1.0 / layer.rank):
        return InitScheme.GAUSSIAN
    if kurt is None and _ratio_ok(a.std, kaiming):
        return InitScheme.KAIMING_UNIFORM
    return InitScheme.NORMAL if kurt is not None else InitScheme.UNKNOWN


def _classify_layer(layer: _Layer) -> InitScheme:
    """One linear/conv layer's most likely scheme, init or a few steps into training."""
    a, b = layer.a, layer.b
    a_zero, b_zero = _is_zero(a), _is_zero(b)
    if a_zero and b_zero:
        return InitScheme.UNKNOWN
    if a_zero:
        return InitScheme.MICA if _unit_rows(b, _EXACT) else InitScheme.UNKNOWN
    if b_zero:
        return _classify_b_zero_family(layer)
    align = _alignment(layer)
    if align is not None and align < _EXACT:
        return InitScheme.ORTHOGONAL
    if _unit_rows(b, _EXACT):
        # OLoRA at init keeps R's zeros; MiCA's frozen B stays exactly orthonormal while A trains
        return InitScheme.OLORA if _trapezoidal_zeros(layer) else InitScheme.MICA
    if _balanced(layer, _EXACT):
        return InitScheme.DATA_DRIVEN
    if _unit_rows(a, _EXACT):
        return InitScheme.LORA_GA
    bound_b = 1.0 / math.sqrt(layer.rank)
    if _ratio_ok(b.std, bound_b / math.sqrt(3.0)) and b.absmax <= 1.25 * bound_b:
        return InitScheme.RANDOM
    if (
        _ratio_ok(a.std, ORTHOGONAL_STD)
        and _ratio_ok(b.std, ORTHOGONAL_STD)
        and a.row_norm_cv is not None
        and a.row_norm_cv >= _ORTHOGONAL_ROW_CV
    ):
        return InitScheme.ORTHOGONAL
    if _unit_rows(b, _LOOSE):
        return InitScheme.OLORA
    if _balanced(layer, _LOOSE_BALANCE):
        return InitScheme.DATA_DRIVEN
    # B has moved away from 0: judge by A, which drifts much less
    return _classify_b_zero_family(layer)


def _representative(items: list[_Layer]) -> _Layer:
    """The first layer with the most common fan-in."""
    common = Counter(x.in_f for x in items).most_common(1)[0][0]
    return next(x for x in items if x.in_f == common)


def _evidence(
    layer: _Layer, scheme: InitScheme, init_std: float | None
) -> tuple[str, float | None]:
    a, b = layer.a, layer.b
    kurt = f" (kurtosis {a.kurtosis:.2f})" if a.kurtosis is not None else ""
    exp = expected_a_std(scheme, layer.in_f, layer.rank, init_std)
    where = f"at in={layer.in_f}, r={layer.rank} ({layer.rec.name})"
    if exp is not None:
        text = f"A std {a.std:.4g} vs {scheme.value} {exp:.4g} {where}{kurt}"
    else:
        text = f"A std {a.std:.4g}, B std {b.std:.4g} {where}{kurt}"
    if _is_zero(b):
        text += "; B = 0"
    elif _is_zero(a):
        text += "; A = 0"
    align = _alignment(layer)
    if align is not None and not (_is_zero(a) or _is_zero(b)):
        text += f"; alignment ‖BA‖/(‖B‖‖A‖) {align:.3g}"
    if a.row_norm_mean is not None and b.row_norm_mean is not None:
        text += f"; row norms A {a.row_norm_mean:.3g}, B cols {b.row_norm_mean:.3g}"
    return text, exp


def _embedding_evidence(items: list[_Layer]) -> str:
    layer = items[0]
    return (
        f"embedding layers only: A zero fraction {layer.a.zero_fraction:.3g}, "
        f"B std {layer.b.std:.4g} ({layer.rec.name})"
    )


def infer_init(layers: Sequence[LayerRecord], spec: LoraSpec | None) -> InitInference:
    """The init scheme in force: the declared one if any, else the one the weights show.

    Inference classifies every linear/conv layer (see :func:`_classify_layer`: exact structure
    first, then std vs each scheme's expectation at the layer's fan-in and kurtosis) and takes
    the majority; ties and disagreement below 60 % give UNKNOWN. Embedding layers (A = 0 by
    design) never vote; an adapter of embeddings only is EMBEDDING. The evidence always states
    the measured-vs-expected comparison on a representative layer (the most common fan-in).
    """
    init_std = spec.init_std if spec is not None else None
    declared = declared_scheme(spec)
    linear = _judgeable(layers, ("linear", "conv"))
    if declared is not None and declared is not InitScheme.UNKNOWN:
        source = _declared_source(spec, declared)
        if linear:
            rep = _representative(linear)
            text, exp = _evidence(rep, declared, init_std)
            return InitInference(declared, True, f"{source}; {text}", exp, rep.a.std)
        return InitInference(declared, True, source, None)
    if not linear:
        emb = _judgeable(layers, ("embedding",))
        if emb:
            return InitInference(InitScheme.EMBEDDING, False, _embedding_evidence(emb), None)
        return InitInference(InitScheme.UNKNOWN, False, "no LoRA factor statistics to judge", None)
    votes = Counter(_classify_layer(x) for x in linear)
    scheme, count = votes.most_common(1)[0]
    if count < 0.6 * len(linear):
        scheme = InitScheme.UNKNOWN
    if scheme is InitScheme.NORMAL:
        # a common σ across fan-ins is what tells normal(σ) from kaiming's 1/√(3·in)
        stds = [x.a.std for x in linear if _classify_layer(x) is InitScheme.NORMAL]
        init_std = known_normal_std(statistics.median(stds))
    rep_pool = [x for x in linear if _classify_layer(x) is scheme] or linear
    rep = _representative(rep_pool)
    text, exp = _evidence(rep, scheme, init_std)
    tally = ", ".join(f"{s.value} {n}" for s, n in votes.most_common())
    return InitInference(
        scheme, False, f"inferred from {len(linear)} layers ({tally}); {text}", exp, rep.a.std
    )


# Normal-init σ values a recipe is known by: a measured σ within 10% is reported as that one.
KNOWN_NORMAL_STDS = {0.02: "LLMBook"}


def known_normal_std(measured: float) -> float:
    """The known σ (:data:`KNOWN_NORMAL_STDS`) within 10% of ``measured``, else ``measured``."""
    for std in KNOWN_NORMAL_STDS:
        if measured > 0 and abs(measured / std - 1.0) <= 0.1:
            return std
    return measured


def scheme_label(init: InitInference) -> str:
    """The scheme as people name it: ``normal σ = 0.02 (LLMBook)``, ``normal σ = 0.013``,
    ``gaussian σ = 1/r``, or the scheme's own name."""
    if init.scheme is InitScheme.NORMAL and init.expected_std:
        std = init.expected_std
        known = KNOWN_NORMAL_STDS.get(round(std, 6))
        return f"normal σ = {std:.3g}" + (f" ({known})" if known else "")
    if init.scheme is InitScheme.GAUSSIAN:
        return "gaussian σ = 1/r"
    return str(init.scheme.value)


def _declared_source(spec: LoraSpec | None, scheme: InitScheme) -> str:
    if spec is None:
        return "declared"
    if spec.init_lora_weights is not None:
        return f"declared by init_lora_weights={spec.init_lora_weights!r}"
    if spec.init_std is not None:
        return f"declared by init_std={spec.init_std:g}"
    return f"the {spec.source_format} default"


def infer_stage(layers: Sequence[LayerRecord], scheme: InitScheme) -> Stage:
    """INIT when every layer still shows the scheme's step-0 signature exactly, else TRAINED.

    Signatures (tested on each linear/conv layer; embeddings by A = 0 unless scheme is random):
        B-zero schemes (kaiming, gaussian, normal, eva)  B == 0 exactly
        mica, embedding                                   A == 0 exactly
        orthogonal                                        alignment < 1e-4 (B·A = 0 up to float32)
        random                                            |A| ≤ 1/√in and |B| ≤ 1/√r (the uniform
                                                          bounds; Adam steps push entries past them)
        pissa, loftq, data-driven                         ‖A‖_F = ‖B‖_F to 1e-4 (balanced SVD split)
        olora                                             B orthonormal columns and A's QR zeros
        lora-ga                                           A orthonormal rows
        corda, unknown                                    INIT if a factor is 0 in every layer,
                                                          else UNKNOWN (no closed-form signature)
    No judgeable layer → UNKNOWN.
    """
    linear = _judgeable(layers, ("linear", "conv"))
    emb = _judgeable(layers, ("embedding",))
    if not linear and not emb:
        return Stage.UNKNOWN
    if scheme is not InitScheme.RANDOM and any(not _is_zero(x.a) for x in emb):
        return Stage.TRAINED
    if not linear:
        return Stage.INIT if emb and scheme is not InitScheme.RANDOM else Stage.UNKNOWN
    test = _stage_test(scheme)
    if test is None:
        if all(_is_zero(x.a) or _is_zero(x.b) for x in linear):
            return Stage.INIT
        return Stage.UNKNOWN
    return Stage.INIT if all(test(x) for x in linear) else Stage.TRAINED


def _stage_test(scheme: InitScheme) -> _StageTest | None:
    if scheme in B_ZERO_SCHEMES:
        return lambda x: _is_zero(x.b)
    if scheme in (InitScheme.MICA, InitScheme.EMBEDDING):
        return lambda x: _is_zero(x.a)
    if scheme is InitScheme.ORTHOGONAL:
        return _orthogonal_init
    if scheme is InitScheme.RANDOM:
        return _random_init
    if scheme is InitScheme.OLORA:
        return lambda x: _unit_rows(x.b, _EXACT) and _trapezoidal_zeros(x)
    if scheme is InitScheme.LORA_GA:
        return lambda x: _unit_rows(x.a, _EXACT)
    if scheme in DATA_DRIVEN_SCHEMES and scheme is not InitScheme.CORDA:
        return lambda x: _balanced(x, _EXACT)
    return None


def _orthogonal_init(x: _Layer) -> bool:
    align = _alignment(x)
    return align is not None and align < _EXACT


def _random_init(x: _Layer) -> bool:
    slack = 1.0 + 1e-6
    return (
        x.a.absmax <= slack / math.sqrt(x.in_f)
        and x.b.absmax <= slack / math.sqrt(x.rank)
        and not _is_zero(x.b)
    )
