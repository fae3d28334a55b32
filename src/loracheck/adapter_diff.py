"""``loracheck diff A B``: are two adapters the same update, module by module?

Data flow: discover -> load (each side streamed once through :func:`loracheck.load.load_unit`,
whose sink hands over each factor pair in canonical orientation, A (r, in), B (out, r)) ->
:class:`~loracheck.diff_record.DiffRecord` -> the LC41x rules. No torch, and neither ΔW is ever
materialised: the factors of A's side are kept (float32 copies, exact for bf16/fp16/fp32; float64
for float64 files) and each of B's pairs is compared as it is read, so memory stays near one
adapter's factors.

Matching: the modules of both sides by :func:`loracheck.keys.module_path` (PEFT's wrapper
removed, diffusers/kohya components split off, kohya's flattened names compared with the dotted
side flattened the same way, never un-flattened); dotted paths left unmatched by the unique
longest common suffix that covers the layer index and the module names (a writer that drops the
``model.`` level, a VLM's ``model.language_model.``), never between tied candidates.

Saved full tensors (``modules_to_save`` copies, DoRA magnitudes, lora_B biases, embeddings saved
with ``save_embedding_layers``) are entries of their own kind (ModuleKind.SAVED): ‖X_A − X_B‖ /
‖X_A‖ streamed a block at a time from both files, against what rounding each element to its
dtype explains (:func:`compare_saved`).

Per module, in float64, with s the effective scale each loader resolved (LayerRecord.scaling):

* same shapes: ΔW_A − ΔW_B = U·V with U = [s_A·B_A, s_A·B_A − s_B·B_B], V = [A_A − A_B; A_B].
  Every term of trace((UᵀU)(VVᵀ)) is of the size of the difference, so nothing large cancels
  when the two updates are nearly equal (a re-save, a conversion); bitwise-equal factors give
  ‖ΔW_A − ΔW_B‖ = |s_A − s_B|·‖B·A‖ directly;
* other shapes (ranks differ): U = [s_A·B_A, −s_B·B_B], V = [A_A; A_B];
* whenever the rounding of the Gram route could reach 10⁻¹² of the answer (its terms much
  larger than the result: :func:`_gram_error`), ‖U·V‖ = ‖R_U·R_Vᵀ‖ from the QR factorisations
  of U and Vᵀ instead, accurate to a few units of rounding of ‖U‖·‖V‖.

‖ΔW_A‖ and ‖ΔW_B‖ are the loader's (``LayerRecord.delta``, the numbers ``inspect`` prints); the
cosine similarity follows from the three norms (:attr:`ModuleDiff.cosine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from loracheck.diff_record import (
    DiffMethod,
    DiffRecord,
    FactorFacts,
    MatchRule,
    ModuleDiff,
    ModuleKind,
    Side,
    ToleranceSource,
)
from loracheck.discover import Unit, discover
from loracheck.errors import ArtifactError, UsageError
from loracheck.keys import ModulePath, module_path
from loracheck.model import Adapter, LayerRecord, TensorRef

if TYPE_CHECKING:
    import numpy as np

    from loracheck.pickle_io import TorchCheckpoint
    from loracheck.safetensors_io import SafetensorsFile

Progress = Callable[[str, int, int], None]

# Unit roundoff u of each factor dtype (safetensors spelling): rounding to nearest moves x by at
# most u·|x| (half an ULP) while x is normal ...
UNIT_ROUNDOFF: Mapping[str, float] = {
    "F64": 2.0**-53, "F32": 2.0**-24, "F16": 2.0**-11, "BF16": 2.0**-8,
    "F8_E4M3": 2.0**-4, "F8_E5M2": 2.0**-3,
}
# ... and by at most half the subnormal spacing below the normal range (fp16: 2⁻²⁵ absolute,
# which matters for the small B of an early checkpoint; bf16 and wider: negligible).
SUBNORMAL_HALF_SPACING: Mapping[str, float] = {"F16": 2.0**-25, "F8_E4M3": 2.0**-10,
                                               "F8_E5M2": 2.0**-17}
# The dtype tolerance is this many times the quadrature floor (see :func:`dtype_floor`).
DTYPE_MARGIN = 3.0
# loracheck's own float64 arithmetic: differences below this fraction of the updates are noise.
COMPUTE_FLOOR = 1e-12
# The Gram route is kept while its estimated relative error of ‖ΔW_A − ΔW_B‖ stays below this.
GRAM_ACCURACY = 1e-12
_U64 = 2.0**-53


# --- matching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Matching:
    """The module pairs (A's name, B's name) in A's order, and the modules of one side only.
    ``by_suffix``: A's names of the pairs matched by the longest common suffix of their paths."""

    pairs: tuple[tuple[str, str], ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    rule: MatchRule
    dropped_component: str | None
    by_suffix: frozenset[str] = frozenset()


def _components(paths: Sequence[ModulePath]) -> set[str | None]:
    return {p.component for p in paths}


def _least_suffix(parts: tuple[str, ...]) -> int | None:
    """How many trailing components a suffix match must cover on a path: from the container
    of the last layer index on (``layers.0.self_attn.q_proj``); None for a path without an
    index, which matches only as a whole (``embed_tokens`` against ``model.embed_tokens``)."""
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return len(parts) - max(i - 1, 0)
    return None


def _suffix_pairs(left: dict[str, tuple[str | None, tuple[str, ...]]],
                  right: dict[str, tuple[str | None, tuple[str, ...]]]) -> dict[str, str]:
    """The modules of ``left`` (name -> (component, dotted parts)) paired with those of
    ``right`` by the unique longest common suffix of their parts, within one component: the
    longest suffix of a left path that any right path ends with must be shared with exactly one
    right path, whose own longest match is that left path alone, and it must cover the index
    (:func:`_least_suffix`) or be one of the two paths whole."""
    def suffixes(side: dict[str, tuple[str | None, tuple[str, ...]]]
                 ) -> dict[tuple[str | None, tuple[str, ...]], list[str]]:
        out: dict[tuple[str | None, tuple[str, ...]], list[str]] = {}
        for name, (component, parts) in side.items():
            for k in range(1, len(parts) + 1):
                out.setdefault((component, parts[-k:]), []).append(name)
        return out

    def best(name: str, side: dict[str, tuple[str | None, tuple[str, ...]]],
             other: dict[str, tuple[str | None, tuple[str, ...]]],
             index: dict[tuple[str | None, tuple[str, ...]], list[str]]) -> str | None:
        component, parts = side[name]
        for k in range(len(parts), 0, -1):
            hits = index.get((component, parts[-k:]))
            if not hits:
                continue
            if len(hits) != 1:
                return None  # ambiguous: never paired
            partner = hits[0]
            least = _least_suffix(parts)
            if least is not None:
                return partner if k >= least else None
            whole = k == len(parts) or k == len(other[partner][1])
            return partner if whole else None
        return None

    index_left, index_right = suffixes(left), suffixes(right)
    pairs: dict[str, str] = {}
    for name in left:
        partner = best(name, left, right, index_right)
        if partner is not None and best(partner, right, left, index_left) == name:
            pairs[name] = partner
    return pairs


def match_modules(names_a: Sequence[str], names_b: Sequence[str]) -> Matching:
    """Pair the modules of two adapters by canonical module path
    (:func:`loracheck.keys.module_path`).

    Paths are compared as dotted paths, or, when either side has kohya's flattened names, in
    kohya's flattened spelling on both sides. A side whose modules carry no pipeline component
    (a PEFT adapter of one model) is matched against the other side's only component (kohya's
    ``lora_unet_`` against a UNet adapter). A key that two modules of one side share is
    ambiguous and pairs with nothing. Dotted modules left unmatched are then paired by the
    unique longest common suffix of their paths (a model saved without its ``model.`` level,
    a VLM's ``model.language_model.`` layout against the text model's), never when two
    candidates tie.
    """
    paths_a = [module_path(n) for n in names_a]
    paths_b = [module_path(n) for n in names_b]
    comps_a, comps_b = _components(paths_a), _components(paths_b)
    dropped: str | None = None
    if paths_a and paths_b:
        if comps_a == {None} and len(comps_b) == 1 and None not in comps_b:
            dropped = next(iter(comps_b))
            paths_b = [ModulePath(None, p.path, p.flattened) for p in paths_b]
        elif comps_b == {None} and len(comps_a) == 1 and None not in comps_a:
            dropped = next(iter(comps_a))
            paths_a = [ModulePath(None, p.path, p.flattened) for p in paths_a]
    flattened = any(p.flattened for p in (*paths_a, *paths_b))

    def key(p: ModulePath) -> tuple[str | None, str]:
        return (p.component, p.flat if flattened else p.path)

    def index(names: Sequence[str], paths: Sequence[ModulePath]) -> dict[tuple[str | None, str],
                                                                          str | None]:
        out: dict[tuple[str | None, str], str | None] = {}
        for name, p in zip(names, paths, strict=True):
            k = key(p)
            out[k] = None if k in out else name  # None: ambiguous
        return out

    index_b = index(names_b, paths_b)
    keys_a = index(names_a, paths_a)
    exact: dict[str, str] = {}
    for name, p in zip(names_a, paths_a, strict=True):
        k = key(p)
        partner = index_b.get(k)
        if partner is not None and keys_a.get(k) == name:
            exact[name] = partner
    by_suffix: dict[str, str] = {}
    if not flattened:
        paired_b = set(exact.values())

        def left_over(names: Sequence[str], paths: Sequence[ModulePath],
                      keys: dict[tuple[str | None, str], str | None], paired: set[str]
                      ) -> dict[str, tuple[str | None, tuple[str, ...]]]:
            return {n: (p.component, p.parts) for n, p in zip(names, paths, strict=True)
                    if n not in paired and keys.get(key(p)) == n}  # ambiguous names stay out

        by_suffix = _suffix_pairs(left_over(names_a, paths_a, keys_a, set(exact)),
                                  left_over(names_b, paths_b, index_b, paired_b))
    pairs: list[tuple[str, str]] = []
    only_a: list[str] = []
    for name in names_a:
        partner = exact.get(name) or by_suffix.get(name)
        if partner is not None:
            pairs.append((name, partner))
        else:
            only_a.append(name)
    paired = {b for _, b in pairs}
    only_b = [n for n in names_b if n not in paired]
    return Matching(tuple(pairs), tuple(only_a), tuple(only_b),
                    MatchRule.FLATTENED if flattened else MatchRule.PATH, dropped,
                    frozenset(by_suffix))


# --- the numbers ---------------------------------------------------------------------------------


def _squares(x: np.ndarray, dtype: str, axis: int | None) -> np.ndarray:
    """Σ e(x)² along ``axis``, e(x) = max(u·|x|, half the subnormal spacing): the largest
    rounding error of each entry of a factor stored in ``dtype``."""
    import numpy as np

    u = UNIT_ROUNDOFF.get(dtype, 0.0)
    eta = SUBNORMAL_HALF_SPACING.get(dtype, 0.0)
    sq = np.square(x, dtype=np.float64)
    if eta == 0.0:
        out: np.ndarray = sq.sum(axis=axis) * (u * u)
        return out
    floored: np.ndarray = np.maximum(sq * (u * u), eta * eta).sum(axis=axis)
    return floored


def dtype_floor(a: np.ndarray, b: np.ndarray, scale: float, dtype_a: str, dtype_b: str) -> float:
    """What rounding the factors of ΔW = s·B·A to their dtypes explains, summed in quadrature:

        floor² = s²·Σⱼ (‖Aⱼ‖²·Σᵢ e(Bᵢⱼ)² + ‖B₍:,ⱼ₎‖²·Σₖ e(Aⱼₖ)²)

    with e(x) = max(u·|x|, η) the largest rounding error of one entry (u the dtype's unit
    roundoff, η half its subnormal spacing): each entry of B, moved by e, moves ΔW by e times
    the row of A it multiplies (and each entry of A by e times B's column); independent moves
    add in quadrature. ``diff`` allows DTYPE_MARGIN·√(floor_A² + floor_B²) (+ COMPUTE_FLOOR of
    the updates): a real rounding error of an entry is at most e and typically e/√3, so the
    sum of many stays well inside it, and a re-save in another dtype passes while any change of
    the weights themselves shows."""
    import numpy as np

    a_rows = np.einsum("ij,ij->i", a, a, dtype=np.float64)  # ‖Aⱼ‖², j over the rank
    b_cols = np.einsum("ij,ij->j", b, b, dtype=np.float64)  # ‖B₍:,ⱼ₎‖²
    if dtype_a in SUBNORMAL_HALF_SPACING or dtype_b in SUBNORMAL_HALF_SPACING:
        total = float(a_rows @ _squares(b, dtype_b, 0) + b_cols @ _squares(a, dtype_a, 1))
    else:  # e(x) = u·|x|: the sums are the rows' and columns' own norms
        u_a, u_b = UNIT_ROUNDOFF.get(dtype_a, 0.0), UNIT_ROUNDOFF.get(dtype_b, 0.0)
        total = (u_a * u_a + u_b * u_b) * float(a_rows @ b_cols)
    return abs(scale) * math.sqrt(max(total, 0.0))


def _gram_error(g_u: np.ndarray, g_v: np.ndarray, n_u: int, n_v: int) -> float:
    """An estimate of the rounding error of trace(G_U·G_V) computed from Gram matrices of U
    (n_u × k) and Vᵀ (n_v × k): each Gram entry carries about √n·u·‖uⱼ‖·‖uₖ‖, the k² products
    of the trace k·u of their sum of magnitudes."""
    import numpy as np

    nu = np.sqrt(np.clip(np.diag(g_u), 0.0, None))
    nv = np.sqrt(np.clip(np.diag(g_v), 0.0, None))
    abs_u, abs_v = np.abs(g_u), np.abs(g_v)
    k = int(g_u.shape[0])
    err = (math.sqrt(n_u) * float(nu @ abs_v @ nu) + math.sqrt(n_v) * float(nv @ abs_u @ nv)
           + k * float(np.sum(abs_u * abs_v)))
    return _U64 * err


def _product_norm(u: np.ndarray, v: np.ndarray) -> tuple[float, bool, np.ndarray, np.ndarray]:
    """‖U·V‖_F for U (n × k), V (k × m), whether the QR route was needed, and the squared
    column norms of U and row norms of V (the Grams' diagonals): the Gram route
    trace((UᵀU)(VVᵀ)) first (two k×k products), the QR cores ‖R_U·R_Vᵀ‖ when the Gram route's
    rounding could reach GRAM_ACCURACY of the result. NaN when a factor holds NaN or ±Inf."""
    import numpy as np

    g_u = u.T @ u
    g_v = v @ v.T
    diag_u, diag_v = np.diag(g_u).copy(), np.diag(g_v).copy()
    sq = float(np.sum(g_u * g_v))  # trace(G_U·G_V), both symmetric
    if not math.isfinite(sq) or not math.isfinite(float(diag_u.sum() + diag_v.sum())):
        return math.nan, False, diag_u, diag_v
    err = _gram_error(g_u, g_v, u.shape[0], v.shape[1])
    if sq > 0 and err <= 2.0 * GRAM_ACCURACY * sq:
        return math.sqrt(sq), False, diag_u, diag_v
    if err == 0.0 and sq == 0.0:
        return 0.0, False, diag_u, diag_v
    # mode "r" returns R alone (numpy's stubs type every mode as the QR pair)
    r_u = cast("np.ndarray", np.linalg.qr(u, mode="r"))
    r_v = cast("np.ndarray", np.linalg.qr(v.T, mode="r"))
    return float(np.linalg.norm(r_u @ r_v.T)), True, diag_u, diag_v


def _rel(x: float, ref: float) -> float:
    if ref > 0:
        return x / ref
    return 0.0 if x == 0 else math.inf


def difference_norm(
    a1: np.ndarray, b1: np.ndarray, s1: float, a2: np.ndarray, b2: np.ndarray, s2: float
) -> tuple[float, DiffMethod, FactorFacts | None]:
    """‖s1·B1·A1 − s2·B2·A2‖_F (A (r, in), B (out, r)) without forming either product, how it
    was computed, and the factor facts when the shapes match. NaN when a factor holds NaN or
    ±Inf. The factors may be float32 or float64; every operation is carried out in float64."""
    import numpy as np

    if a1.shape == a2.shape and b1.shape == b2.shape:
        r = a1.shape[0]
        d_a = np.subtract(a1, a2, dtype=np.float64)
        a_equal = not d_a.any()
        b_equal = bool(np.array_equal(b1, b2))
        norm_a1 = math.sqrt(float(np.einsum("ij,ij->", a1, a1, dtype=np.float64)))
        if a_equal and b_equal:
            finite = math.isfinite(norm_a1) and math.isfinite(float(b1.sum()))
            facts = FactorFacts(True, True, 0.0, _rel(abs(s1 - s2), abs(s1)))
            if s1 == s2 and finite:
                return 0.0, DiffMethod.EQUAL_FACTORS, facts
            norm, _, _, _ = _product_norm(b1.astype(np.float64), a1.astype(np.float64))
            return abs(s1 - s2) * norm, DiffMethod.EQUAL_FACTORS, facts
        sb1 = np.multiply(b1, s1, dtype=np.float64)
        d_b = sb1 - np.multiply(b2, s2, dtype=np.float64)
        u = np.concatenate([sb1, d_b], axis=1)
        v = np.concatenate([d_a, a2], axis=0)
        norm, qr, diag_u, diag_v = _product_norm(u, v)
        # from the Grams' diagonals: ‖A_A − A_B‖², ‖s_A·B_A‖², ‖s_A·B_A − s_B·B_B‖²
        facts = FactorFacts(
            a_equal, b_equal, _rel(math.sqrt(float(diag_v[:r].sum())), norm_a1),
            _rel(math.sqrt(float(diag_u[r:].sum())), math.sqrt(float(diag_u[:r].sum()))))
        return norm, DiffMethod.STACKED_QR if qr else DiffMethod.FACTOR_DIFFERENCE, facts
    u = np.concatenate([np.multiply(b1, s1, dtype=np.float64),
                        np.multiply(b2, -s2, dtype=np.float64)], axis=1)
    v = np.concatenate([a1, a2], axis=0, dtype=np.float64)
    norm, qr, _, _ = _product_norm(u, v)
    return norm, DiffMethod.STACKED_QR if qr else DiffMethod.STACKED_GRAM, None


# --- one module -------------------------------------------------------------------------------


def _dtype(layer: LayerRecord) -> str:
    dtypes = sorted({ref.dtype for ref in (layer.a, layer.b) if ref is not None})
    return "/".join(dtypes) if dtypes else "-"


def _side(layer: LayerRecord) -> Side:
    return Side(layer.name, layer.rank, layer.scaling, layer.alpha, layer.alpha_source,
                _dtype(layer), layer.in_features, layer.out_features)


def _update_norm(layer: LayerRecord, a: np.ndarray, b: np.ndarray) -> float:
    """‖ΔW‖ as the loader measured it (LayerRecord.delta), else from the factors' Grams."""
    if layer.delta is not None:
        return layer.delta.frobenius
    import numpy as np

    norm, _, _, _ = _product_norm(b.astype(np.float64), a.astype(np.float64))
    return abs(layer.scaling or 0.0) * norm


@dataclass(frozen=True)
class _Factors:
    """A's side of one module, kept until B's side arrives."""

    layer: LayerRecord
    a: np.ndarray
    b: np.ndarray


def _not_compared(name: str, la: LayerRecord, lb: LayerRecord, why: str,
                  source: ToleranceSource, *, nonfinite: bool = False) -> ModuleDiff:
    nan = math.nan
    return ModuleDiff(name, la.module_type, _side(la), _side(lb), nan, nan, nan, nan, nan,
                      source, None, compared=False, why_not=why, nonfinite=nonfinite)


def _tolerance(norm: float, floor: float, tolerance: float | None) -> tuple[float, float]:
    """(the largest allowed ‖ΔW_A − ΔW_B‖, that bound relative to ‖ΔW_A‖) for an update of
    ‖ΔW_A‖ = ``norm`` whose rounding floor is ``floor``."""
    if tolerance is not None:
        return tolerance * norm, tolerance
    bound = DTYPE_MARGIN * floor + COMPUTE_FLOOR * norm
    return bound, _rel(bound, norm)


def compare_module(
    name: str, factors_a: _Factors, lb: LayerRecord, a2: np.ndarray, b2: np.ndarray,
    tolerance: float | None,
) -> ModuleDiff:
    """One module of both sides, judged against ``tolerance`` (relative to ‖ΔW_A‖; None for
    the dtype default). ‖ΔW_B‖ is B's record's when the loader has measured it already, else
    NaN until :func:`_with_norm_b` fills it in (the tolerance does not depend on it), but for a
    module that differs: its scale fit needs ‖ΔW_B‖ now, from the factors."""
    import numpy as np

    la = factors_a.layer
    source = ToleranceSource.DTYPES if tolerance is None else ToleranceSource.COMMAND_LINE
    a1, b1 = factors_a.a, factors_a.b  # float32 where that is exact: see difference_norm
    if la.scaling is None or lb.scaling is None:
        side = "A" if la.scaling is None else "B"
        return _not_compared(name, la, lb, f"the effective scale of {side} is unknown", source)
    s1, s2 = float(la.scaling), float(lb.scaling)
    diff, method, facts = difference_norm(a1, b1, s1, a2, b2, s2)
    if not math.isfinite(diff):
        finite = [bool(np.isfinite(x).all()) for x in (a1, b1, a2, b2)]
        where = [w for w, ok in zip(("A's lora_A", "A's lora_B", "B's lora_A", "B's lora_B"),
                                    finite, strict=True) if not ok] or ["the product"]
        return _not_compared(name, la, lb, f"non-finite values in {', '.join(where)}", source,
                             nonfinite=True)
    norm_a = _update_norm(la, a1, b1)
    norm_b = lb.delta.frobenius if lb.delta is not None else math.nan
    dtype_a, dtype_b = _dtypes(la), _dtypes(lb)
    floor_a = dtype_floor(a1, b1, s1, *dtype_a)
    floor_b = dtype_floor(a2, b2, s2, *dtype_b)
    tol_norm, tol_rel = _tolerance(norm_a, math.hypot(floor_a, floor_b), tolerance)
    result = ModuleDiff(name, la.module_type, _side(la), _side(lb), norm_a, norm_b, diff,
                        tol_norm, tol_rel, source, method, facts=facts)
    if not result.differs:
        return result
    if math.isnan(norm_b):
        norm_b = _update_norm(lb, a2, b2)
        result = replace(result, norm_b=norm_b)
    cosine = result.cosine
    if cosine is not None and cosine > 0.9:
        # Nearly parallel: is ΔW_B = c·ΔW_A, a difference of scale alone (LC412)?
        c = (norm_b / norm_a) * cosine
        residual, _, _ = difference_norm(a1, b1, c * s1, a2, b2, s2)
        if tolerance is not None:
            fit_tol = tolerance * c * norm_a
        else:
            fit_tol = (DTYPE_MARGIN * math.hypot(c * floor_a, floor_b)
                       + COMPUTE_FLOOR * max(norm_b, c * norm_a))
        result = replace(result, scale_fit=c, fit_residual=residual, fit_tolerance=fit_tol)
    return result


def _with_norm_b(m: ModuleDiff, lb: LayerRecord | None) -> ModuleDiff:
    """``m`` with ‖ΔW_B‖ from B's record, once the loader has measured every pair."""
    if not (m.compared and math.isnan(m.norm_b)) or lb is None or lb.delta is None:
        return m
    return replace(m, norm_b=lb.delta.frobenius)


def _dtypes(layer: LayerRecord) -> tuple[str, str]:
    """(A's dtype, B's dtype) of a module's factors."""
    return (layer.a.dtype if layer.a is not None else "F64",
            layer.b.dtype if layer.b is not None else "F64")


# --- saved full tensors ---------------------------------------------------------------------

# The roles (keys.group_keys) of the non-LoRA tensors a PEFT-style adapter saves as trained
# values: modules_to_save copies, wrapped layers' own weights (save_embedding_layers), trained
# biases (bias="all"/"lora_only"), trainable-token deltas. The other roles ("variant",
# "unknown") are not values of the model.
SAVED_ROLES = frozenset({"modules_to_save", "base_layer", "bias", "token_adapter"})
# Elements decoded at a time when a saved tensor is streamed (8 MiB of float64 per side).
SAVED_BLOCK = 1 << 20


class _Weights:
    """One adapter's weights file, for its saved full tensors: safetensors (a read-only
    mapping, decoded a block at a time) or loracheck's restricted pickle reader."""

    def __init__(self, path: Path) -> None:
        from loracheck.discover import is_pickle

        self._st: SafetensorsFile | None = None
        self._pt: TorchCheckpoint | None = None
        if is_pickle(path):
            from loracheck.pickle_io import TorchCheckpoint

            self._pt = TorchCheckpoint.open(path)
        else:
            from loracheck.safetensors_io import SafetensorsFile

            self._st = SafetensorsFile.open(path)

    def blocks(self, ref: TensorRef, block: int = SAVED_BLOCK) -> Iterator[np.ndarray]:
        """The tensor's elements in C order as float64 blocks of at most ``block``."""
        import numpy as np

        from loracheck.safetensors_io import decode_array

        if self._st is not None:
            raw = self._st.read_raw(ref.key)
            try:
                for start in range(0, raw.size, block):
                    yield np.asarray(decode_array(raw[start:start + block], ref.dtype,
                                                  float64=True), dtype=np.float64)
            finally:
                self._st.release(ref.key)
            return
        assert self._pt is not None
        flat = self._pt.read(ref.key).reshape(-1)
        for start in range(0, flat.size, block):
            yield np.asarray(flat[start:start + block], dtype=np.float64)

    def close(self) -> None:
        if self._st is not None:
            self._st.close()
        if self._pt is not None:
            self._pt.close()


@dataclass(frozen=True)
class SavedPair:
    """A saved tensor both sides hold: its display name and each side's reference."""

    name: str
    a: TensorRef
    b: TensorRef
    by_suffix: bool = False


def _saved_name(key: str) -> str:
    p = module_path(key)
    return p.path if p.component is None else f"{p.component}.{p.path}"


def _saved_extras(adapter: Adapter) -> list[TensorRef]:
    return [TensorRef(e.key, e.dtype, e.shape, e.nbytes) for e in adapter.extra_tensors
            if e.role in SAVED_ROLES and "original_module" not in e.key.split(".")]


def match_saved(adapter_a: Adapter, adapter_b: Adapter, matching: Matching
                ) -> tuple[list[SavedPair], list[str], list[str]]:
    """The saved full tensors of both sides, paired: the DoRA magnitudes and lora_B biases of
    the LoRA modules both hold (as the modules were paired), and the other saved tensors by
    canonical path as modules are (:func:`match_modules`). Returns the pairs and the names of
    the saved tensors only A, and only B, holds."""
    pairs: list[SavedPair] = []
    only_a: list[str] = []
    only_b: list[str] = []
    layers_a = {la.name: la for la in adapter_a.layers}
    layers_b = {lb.name: lb for lb in adapter_b.layers}
    for name_a, name_b in matching.pairs:
        la, lb = layers_a.get(name_a), layers_b.get(name_b)
        if la is None or lb is None:
            continue
        for leaf, ref_a, ref_b in (("magnitude", la.magnitude, lb.magnitude),
                                   ("lora_bias", la.bias, lb.bias)):
            name = f"{_display_name(name_a)}.{leaf}"
            if ref_a is not None and ref_b is not None:
                pairs.append(SavedPair(name, ref_a, ref_b, name_a in matching.by_suffix))
            elif ref_a is not None:
                only_a.append(name)
            elif ref_b is not None:
                only_b.append(f"{_display_name(name_b)}.{leaf}")
    extras_a = {r.key: r for r in _saved_extras(adapter_a)}
    extras_b = {r.key: r for r in _saved_extras(adapter_b)}
    saved = match_modules(list(extras_a), list(extras_b))
    pairs += [SavedPair(_saved_name(ka), extras_a[ka], extras_b[kb], ka in saved.by_suffix)
              for ka, kb in saved.pairs]
    only_a += [_saved_name(k) for k in saved.only_a]
    only_b += [_saved_name(k) for k in saved.only_b]
    return pairs, only_a, only_b


def _saved_side(ref: TensorRef) -> Side:
    return Side(ref.key, None, None, None, "-", ref.dtype, None, None, ref.shape)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def compare_saved(pair: SavedPair, reader_a: _Weights, reader_b: _Weights,
                  tolerance: float | None) -> ModuleDiff:
    """One saved tensor of both sides: ‖X_A − X_B‖ against ‖X_A‖, streamed in blocks of both
    files in float64 (memory: one block per side). The dtype tolerance is DTYPE_MARGIN times
    what rounding each element of both sides to its dtype explains, in quadrature
    (:func:`_squares`: max(u·|x|, η) per element), plus COMPUTE_FLOOR of ‖X_A‖; shapes that
    differ beyond dimensions of size 1 cannot be compared."""
    import numpy as np

    source = _source(tolerance)
    side_a, side_b = _saved_side(pair.a), _saved_side(pair.b)
    nan = math.nan

    def not_compared(why: str, *, nonfinite: bool = False) -> ModuleDiff:
        return ModuleDiff(pair.name, "saved", side_a, side_b, nan, nan, nan, nan, nan, source,
                          None, compared=False, why_not=why, nonfinite=nonfinite,
                          kind=ModuleKind.SAVED, matched_by_suffix=pair.by_suffix)

    if _squeezed(pair.a.shape) != _squeezed(pair.b.shape):
        return not_compared(f"shapes differ: {list(pair.a.shape)} against {list(pair.b.shape)}")
    norm2_a = norm2_b = diff2 = round_a = round_b = 0.0
    finite_a = finite_b = True
    try:
        for xa, xb in zip(reader_a.blocks(pair.a), reader_b.blocks(pair.b), strict=True):
            finite_a = finite_a and bool(np.isfinite(xa).all())
            finite_b = finite_b and bool(np.isfinite(xb).all())
            if not (finite_a and finite_b):
                continue
            d = xa - xb
            norm2_a += float(np.dot(xa, xa))
            norm2_b += float(np.dot(xb, xb))
            diff2 += float(np.dot(d, d))
            round_a += float(_squares(xa, pair.a.dtype, None))
            round_b += float(_squares(xb, pair.b.dtype, None))
    except (ArtifactError, KeyError, ValueError) as err:
        return not_compared(f"cannot be read: {getattr(err, 'detail', err)}")
    if not (finite_a and finite_b):
        where = [w for w, ok in (("A", finite_a), ("B", finite_b)) if not ok]
        return not_compared(f"non-finite values in {' and '.join(where)}", nonfinite=True)
    norm_a = math.sqrt(norm2_a)
    tol_norm, tol_rel = _tolerance(norm_a, math.sqrt(round_a + round_b), tolerance)
    return ModuleDiff(pair.name, "saved", side_a, side_b, norm_a, math.sqrt(norm2_b),
                      math.sqrt(diff2), tol_norm, tol_rel, source, DiffMethod.FULL_TENSOR,
                      kind=ModuleKind.SAVED, matched_by_suffix=pair.by_suffix)


def _compare_saved_all(unit_a: Unit, unit_b: Unit, pairs: Sequence[SavedPair],
                       tolerance: float | None, progress: Progress | None) -> list[ModuleDiff]:
    if not pairs or unit_a.weights is None or unit_b.weights is None:
        return []
    reader_a, reader_b = _Weights(unit_a.weights), _Weights(unit_b.weights)
    try:
        out = []
        for i, pair in enumerate(pairs):
            out.append(compare_saved(pair, reader_a, reader_b, tolerance))
            if progress is not None:
                progress("saved tensors", i + 1, len(pairs))
        return out
    finally:
        reader_a.close()
        reader_b.close()


# --- both adapters -----------------------------------------------------------------------------


def _one_unit(path: str, label: str) -> Unit:
    units = [u for u in discover([path]) if u.weights is not None]
    if len(units) != 1:
        found = "no adapter weights" if not units else f"{len(units)} adapters"
        raise UsageError(f"{label} {path}: expected one adapter, found {found}")
    return units[0]


def _keep_dtype(layer: LayerRecord) -> str:
    """float32 holds bf16, fp16 and fp32 factors exactly; anything else is kept in float64."""
    narrow = {"F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
    refs = [r for r in (layer.a, layer.b) if r is not None]
    return "float32" if refs and all(r.dtype in narrow for r in refs) else "float64"


def _readable(adapter: Adapter | None) -> bool:
    return adapter is not None and bool(adapter.layers) and not any(
        f.code in ("LC001", "LC002", "LC003") for f in adapter.faults)


def diff_paths(
    path_a: str, path_b: str, *, tolerance: float | None = None,
    progress: Progress | None = None,
) -> tuple[Adapter, Adapter, DiffRecord | None]:
    """Load both adapters and compare every module they share.

    Returns both adapters (their faults are reported by the input rules) and the record; the
    record is None when either side has no readable LoRA pairs. Raises UsageError when a path
    is not one adapter.
    """
    import numpy as np

    from loracheck.load import LoadOptions, load_unit

    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance {tolerance}: must be a finite number ≥ 0")
    unit_a, unit_b = _one_unit(path_a, "A:"), _one_unit(path_b, "B:")
    # Names first, from the headers alone: the matching decides which factors to keep.
    head_a = load_unit(unit_a, LoadOptions(measure=False))
    head_b = load_unit(unit_b, LoadOptions(measure=False))
    if not (_readable(head_a) and _readable(head_b)):
        empty_a = head_a or Adapter(path=unit_a.path, format="unknown", files=[], spec=None)
        empty_b = head_b or Adapter(path=unit_b.path, format="unknown", files=[], spec=None)
        return empty_a, empty_b, None
    assert head_a is not None and head_b is not None
    matching = match_modules([la.name for la in head_a.layers], [lb.name for lb in head_b.layers])
    partner_of_b = {b: a for a, b in matching.pairs}
    wanted_a = set(partner_of_b.values())

    kept: dict[str, _Factors] = {}

    def keep(layer: LayerRecord, a: np.ndarray, b: np.ndarray) -> None:
        if layer.name in wanted_a:
            dtype = _keep_dtype(layer)
            kept[layer.name] = _Factors(layer, np.array(a, dtype=dtype), np.array(b, dtype=dtype))

    done: dict[str, ModuleDiff] = {}

    def compare(layer: LayerRecord, a: np.ndarray, b: np.ndarray) -> None:
        name_a = partner_of_b.get(layer.name)
        factors = kept.pop(name_a, None) if name_a is not None else None
        if name_a is None or factors is None:
            return
        display = _display_name(name_a)
        if (factors.layer.in_features, factors.layer.out_features) != (
                layer.in_features, layer.out_features):
            why = (f"shapes differ: {factors.layer.in_features}→{factors.layer.out_features} "
                   f"against {layer.in_features}→{layer.out_features}")
            done[name_a] = _not_compared(display, factors.layer, layer, why, _source(tolerance))
            return
        done[name_a] = compare_module(display, factors, layer, np.asarray(a, dtype=np.float64),
                                      np.asarray(b, dtype=np.float64), tolerance)

    def bar(label: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda i, n: progress(label, i, n))

    adapter_a = load_unit(unit_a, progress=bar(unit_a.path), sink=keep)
    adapter_b = load_unit(unit_b, progress=bar(unit_b.path), sink=compare)
    assert adapter_a is not None and adapter_b is not None
    layers_a = {la.name: la for la in adapter_a.layers}
    layers_b = {lb.name: lb for lb in adapter_b.layers}
    modules: list[ModuleDiff] = []
    for name_a, name_b in matching.pairs:
        if name_a in done:
            modules.append(_with_norm_b(done[name_a], layers_b.get(name_b)))
            continue
        la, lb = layers_a.get(name_a), layers_b.get(name_b)
        if la is None or lb is None:
            continue
        modules.append(_not_compared(_display_name(name_a), la, lb, _why_unmeasured(la, lb),
                                     _source(tolerance)))
    if matching.by_suffix:
        modules = [replace(m, matched_by_suffix=True) if m.a.name in matching.by_suffix else m
                   for m in modules]
    saved_pairs, saved_only_a, saved_only_b = match_saved(adapter_a, adapter_b, matching)
    try:
        modules += _compare_saved_all(unit_a, unit_b, saved_pairs, tolerance, progress)
    except ArtifactError as err:  # the file was readable a moment ago: changed under us
        raise UsageError(f"{err.path}: {err.detail}") from None
    except OSError as err:
        raise UsageError(f"{err.filename}: cannot read: {err.strerror or err}") from None
    record = DiffRecord(
        path_a=adapter_a.path, path_b=adapter_b.path, format_a=adapter_a.format,
        format_b=adapter_b.format, match=matching.rule,
        dropped_component=matching.dropped_component, tolerance_override=tolerance,
        modules=tuple(modules), only_a=tuple(_display_name(n) for n in matching.only_a),
        only_b=tuple(_display_name(n) for n in matching.only_b),
        saved_only_a=tuple(saved_only_a), saved_only_b=tuple(saved_only_b))
    return adapter_a, adapter_b, record


def _source(tolerance: float | None) -> ToleranceSource:
    return ToleranceSource.DTYPES if tolerance is None else ToleranceSource.COMMAND_LINE


def _display_name(name: str) -> str:
    from loracheck.rules.context import short_name

    return short_name(name)


def _why_unmeasured(la: LayerRecord, lb: LayerRecord) -> str:
    """Why a matched module has no factor pair to compare."""
    for side, layer in (("A", la), ("B", lb)):
        if layer.kind in ("loha", "lokr"):
            return f"{side} is a LyCORIS {layer.kind} module, not one B·A pair"
        if layer.a is None or layer.b is None or layer.rank is None:
            return f"{side} has no readable factor pair"
        if layer.delta_from is not None and layer.delta_from.startswith("not measured"):
            return f"{side}: {layer.delta_from}"
    return "the factors could not be read"

