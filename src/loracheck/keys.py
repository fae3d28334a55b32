"""Key grammars: turn the tensor keys (and shapes) of one file into canonical LoRA pairs.

Every supported grammar names a module path ``M`` and then a fixed suffix per tensor role:

    peft        M.lora_A[.<adapter>].weight, M.lora_B[.<adapter>].weight, M.lora_B.bias,
                M.lora_embedding_A / _B (no .weight), M.lora_magnitude_vector; optional
                ``base_model.model.`` prefix (stripped from the module name)
    diffusers   the peft suffixes under a component prefix (unet., transformer., text_encoder.),
                M.lora.down/up.weight, M.lora_linear_layer.down/up.weight,
                M.processor.to_q_lora.down/up.weight (module rewritten to M.to_q, to_out → to_out.0)
    kohya       M.lora_down.weight, M.lora_up.weight, M.alpha (0-dim), M.lora_mid.weight,
                M.dora_scale; M keeps its underscores (lora_unet_..., dots are never restored)
    lycoris     kohya suffixes with lora_mid / dora_scale, and LoHa (hada_*) / LoKr (lokr_*)
    llmbook     M.A.weight, M.B.weight (only when both exist and their shapes chain)
    torchtune   M.lora_a.weight, M.lora_b.weight, M.magnitude
    mlx         M.lora_a, M.lora_b (no .weight; A is (in, r), B is (r, out)), M.m (DoRA)
    litgpt      M.lora_A, M.lora_B (bare parameters, same orientation as peft)

Canonical orientation (see :mod:`loracheck.model`): A is (r, in), B is (out, r), ΔW = s·B·A; conv
kernels are flattened to A (r, in·kh·kw), B (out, r).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

GRAMMARS = ("peft", "kohya", "lycoris", "diffusers", "llmbook", "torchtune", "mlx", "litgpt")
_PEFT_PREFIX = "base_model.model."
_DIFFUSERS_COMPONENTS = (
    "unet.",
    "transformer.",
    "text_encoder.",
    "text_encoder_2.",
    "text_encoder_3.",
    "prior.",
    "decoder.",
)
_LOHA = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"})
_LOKR = frozenset(
    {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
)
_VARIANT_LEAVES = frozenset({"lora_velora_embed", "lora_diag"})
# kohya's flattened module names (sd-scripts networks/lora.py LORA_PREFIX_*).
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_",
                   "lora_transformer_")


@dataclass(frozen=True)
class PairKeys:
    """The keys of one LoRA module in a file, with its canonical module name and grammar."""

    module: str
    kind: str  # "linear" | "embedding" | "conv" | "loha" | "lokr"
    grammar: str
    a_key: str | None
    b_key: str | None
    alpha_key: str | None = None
    magnitude_key: str | None = None
    bias_key: str | None = None
    transposed: bool = False
    extra_keys: tuple[str, ...] = ()
    # LyCORIS Tucker (lora_mid, (r, r, kh, kw)): ΔW = up · mid · down, the core between.
    mid_key: str | None = None
    # One group of a fused factor pair (litgpt's qkv): the rows of A and of B it owns.
    a_rows: tuple[int, int] | None = None
    b_rows: tuple[int, int] | None = None


@dataclass
class KeyGrouping:
    """The result of :func:`group_keys` over every key of one file."""

    pairs: list[PairKeys]
    extras: list[tuple[str, str]]
    orphans: list[str]
    grammar: str | None
    variant: str
    # Factor keys whose prefix and suffix belong to different grammars (kohya's flattened
    # ``lora_unet_…`` names with diffusers' ``_lora.down.weight``): no loader reads them.
    unreadable: list[str] = field(default_factory=list)


@dataclass
class _Slot:
    """Mutable accumulator for one module while keys are scanned."""

    module: str
    grammar: str
    kind: str = "linear"
    a: str | None = None
    b: str | None = None
    alpha: str | None = None
    magnitude: str | None = None
    bias: str | None = None
    extra: list[str] = field(default_factory=list)
    lycoris: bool = False
    mid: str | None = None


# Roles: "a", "b", "ea", "eb" (embedding factors), "alpha", "mag", "bias", "mid", "hada", "lokr".
def _classify(key: str) -> tuple[str, str, str] | None:
    """(module, role, grammar) for a LoRA key, or None when the key is not a LoRA tensor."""
    parts = key.split(".")
    n = len(parts)
    last = parts[-1]
    p1 = parts[-2] if n >= 2 else ""
    p2 = parts[-3] if n >= 3 else ""
    if last == "weight":
        # peft with adapter name: M.lora_A.<name>.weight
        if p2 in ("lora_A", "lora_B") and n >= 4:
            return ".".join(parts[:-3]), "a" if p2 == "lora_A" else "b", "peft"
        if p1 in ("lora_A", "lora_B"):
            return ".".join(parts[:-2]), "a" if p1 == "lora_A" else "b", "peft"
        if p1 in ("lora_down", "lora_up"):
            return ".".join(parts[:-2]), "a" if p1 == "lora_down" else "b", "kohya"
        if p1 == "lora_mid":
            return ".".join(parts[:-2]), "mid", "lycoris"
        if p1 in ("lora_a", "lora_b"):
            return ".".join(parts[:-2]), "a" if p1 == "lora_a" else "b", "torchtune"
        if p1 in ("down", "up") and n >= 3:
            role = "a" if p1 == "down" else "b"
            if p2 in ("lora", "lora_linear_layer"):
                return ".".join(parts[:-3]), role, "diffusers"
            if p2.endswith("_lora") and len(p2) > 5:
                return _legacy_processor(parts[:-3], p2[:-5]), role, "diffusers"
        if p1 in ("A", "B") and n >= 3:
            return ".".join(parts[:-2]), "a" if p1 == "A" else "b", "llmbook"
        if p1 == "lora_magnitude_vector" or (p2 == "lora_magnitude_vector" and n >= 4):
            cut = 2 if p1 == "lora_magnitude_vector" else 3
            return ".".join(parts[:-cut]), "mag", "peft"
        return None
    if last == "bias":
        if p1 == "lora_B":
            return ".".join(parts[:-2]), "bias", "peft"
        if p2 == "lora_B" and n >= 4:
            return ".".join(parts[:-3]), "bias", "peft"
        return None
    if n < 2:
        return None
    if last in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), "ea" if last.endswith("A") else "eb", "peft"
    if p1 in ("lora_embedding_A", "lora_embedding_B") and n >= 3:
        # in-memory state dict: M.lora_embedding_A.<adapter>
        return ".".join(parts[:-2]), "ea" if p1.endswith("A") else "eb", "peft"
    if last == "lora_magnitude_vector":
        return ".".join(parts[:-1]), "mag", "peft"
    if last in ("lora_A", "lora_B"):
        return ".".join(parts[:-1]), "a" if last == "lora_A" else "b", "litgpt"
    if last in ("lora_a", "lora_b"):
        return ".".join(parts[:-1]), "a" if last == "lora_a" else "b", "mlx"
    if last == "alpha":
        return ".".join(parts[:-1]), "alpha", "kohya"
    if last == "dora_scale":
        return ".".join(parts[:-1]), "mag", "lycoris"
    if last in _LOHA:
        return ".".join(parts[:-1]), "hada", "lycoris"
    if last in _LOKR:
        return ".".join(parts[:-1]), "lokr", "lycoris"
    if last == "magnitude":
        return ".".join(parts[:-1]), "mag", "torchtune"
    if last == "m":
        return ".".join(parts[:-1]), "mag", "mlx"
    return None


def _legacy_processor(prefix: list[str], proj: str) -> str:
    """diffusers' legacy ``….processor.to_q_lora`` is module ``….to_q`` (to_out → to_out.0)."""
    parts = list(prefix)
    if parts and parts[-1] == "processor":
        parts.pop()
    parts.append("to_out.0" if proj == "to_out" else proj)
    return ".".join(parts)


def _extra_role(key: str, peft_like: bool) -> str:
    """The role of a tensor that is not a LoRA factor."""
    parts = key.split(".")
    last = parts[-1]
    if "token_adapter" in parts:
        return "token_adapter"
    if last in _VARIANT_LEAVES or "lora_monteclora_sampler" in parts:
        return "variant"
    if "base_layer" in parts:
        return "bias" if last == "bias" else "base_layer"
    if "modules_to_save" in parts:
        return "modules_to_save"
    if last == "bias":
        return "bias"
    if peft_like and last == "weight":
        return "modules_to_save"
    return "unknown"


def group_keys(shapes: Mapping[str, tuple[int, ...]]) -> KeyGrouping:
    """Group the keys of one file into LoRA pairs, extras and orphans in one O(n) pass.

    A module's tensors are collected under (family, module); a pair is formed when both factors
    are present. Keys whose suffix is ambiguous across grammars are settled by shape:
    bare ``lora_a``/``lora_b`` are mlx (A (in, r), B (r, out)) unless only the peft orientation
    chains (A.shape[0] == B.shape[1]); ``.A.weight``/``.B.weight`` pair only when A.shape[0] ==
    B.shape[1] for 2-D tensors. A pair whose inner dimensions disagree is still returned.
    """
    slots: dict[str, _Slot] = {}
    unclassified: list[str] = []
    for key in shapes:
        hit = _classify(key)
        if hit is None:
            unclassified.append(key)
            continue
        module, role, grammar = hit
        if module.startswith(_PEFT_PREFIX):
            module = module[len(_PEFT_PREFIX) :]
        elif grammar == "peft" and module.startswith(_DIFFUSERS_COMPONENTS):
            grammar = "diffusers"
        slot = slots.get(module)
        if slot is None:
            slot = slots[module] = _Slot(module=module, grammar=grammar)
        elif _taken(slot, role):
            # a second adapter or a second grammar for the same module: keep both apart
            sk = f"{module}\x00{grammar}\x00{len(slots)}"
            slot = slots[sk] = _Slot(module=module, grammar=grammar)
        if role in ("a", "ea"):
            slot.a = key
        elif role in ("b", "eb"):
            slot.b = key
        elif role == "alpha":
            slot.alpha = key
        elif role == "mag":
            slot.magnitude = key
            slot.lycoris = slot.lycoris or grammar == "lycoris"
        elif role == "bias":
            slot.bias = key
        elif role == "mid":
            slot.extra.append(key)
            slot.mid = key
            slot.lycoris = True
        elif role == "hada":
            slot.kind = "loha"
            slot.extra.append(key)
        else:  # lokr
            slot.kind = "lokr" if slot.kind != "loha" else "loha"
            slot.extra.append(key)
        if role in ("ea", "eb"):
            slot.kind = "embedding"
        # the factor keys decide the grammar (a stray .alpha or .m does not)
        if role in ("a", "b", "ea", "eb"):
            slot.grammar = grammar

    pairs: list[PairKeys] = []
    orphans: list[str] = []
    extras: list[tuple[str, str]] = []
    grammar_count: Counter[str] = Counter()
    kinds: set[str] = set()
    for slot in slots.values():
        leftovers = [k for k in (slot.alpha, slot.magnitude, slot.bias) if k is not None]
        if slot.kind in ("loha", "lokr"):
            extra = tuple(sorted(slot.extra + [k for k in (slot.a, slot.b) if k is not None]))
            pairs.append(
                PairKeys(
                    slot.module,
                    slot.kind,
                    "lycoris",
                    None,
                    None,
                    alpha_key=slot.alpha,
                    magnitude_key=slot.magnitude,
                    extra_keys=extra,
                )
            )
            grammar_count["lycoris"] += 1
            kinds.add(slot.kind)
            continue
        if slot.a is None or slot.b is None:
            factor = slot.a or slot.b
            if factor is None:
                # alpha / magnitude / bias / lora_mid with no factor at all
                for k in leftovers + slot.extra:
                    extras.append((k, _orphan_extra_role(k, slot)))
                continue
            if slot.grammar == "llmbook":
                extras.append((factor, "unknown"))
                continue
            orphans.append(factor)
            grammar_count[slot.grammar] += 1
            for k in leftovers + slot.extra:
                extras.append((k, _orphan_extra_role(k, slot)))
            continue
        a_shape, b_shape = shapes[slot.a], shapes[slot.b]
        grammar = slot.grammar
        transposed = False
        if grammar == "llmbook" and not _llmbook_chain(a_shape, b_shape):
            extras.append((slot.a, "unknown"))
            extras.append((slot.b, "unknown"))
            continue
        if grammar == "mlx":
            transposed = _mlx_transposed(a_shape, b_shape)
        if grammar == "kohya" and slot.lycoris:
            grammar = "lycoris"
        kind = slot.kind
        if kind == "linear" and not transposed and len(a_shape) >= 3:
            kind = "conv"
        mag = slot.magnitude
        if mag is not None and not _magnitude_fits(mag, grammar):
            extras.append((mag, "unknown"))
            mag = None
        pairs.append(
            PairKeys(
                slot.module,
                kind,
                grammar,
                slot.a,
                slot.b,
                alpha_key=slot.alpha,
                magnitude_key=mag,
                bias_key=slot.bias,
                transposed=transposed,
                extra_keys=tuple(slot.extra),
                mid_key=slot.mid if slot.mid is not None and len(shapes[slot.mid]) == 4 else None,
            )
        )
        grammar_count[grammar] += 1
        kinds.add("lora")

    peft_like = any(p.grammar in ("peft", "diffusers") for p in pairs)
    for key in unclassified:
        extras.append((key, _extra_role(key, peft_like)))

    dominant = grammar_count.most_common(1)[0][0] if grammar_count else None
    if not kinds:
        variant = "none" if not orphans else "lora"
        algorithm = lycoris_algorithm(shapes) if not orphans else None
        if algorithm is not None:
            variant, dominant = algorithm, "lycoris"
    elif len(kinds) == 1:
        variant = next(iter(kinds))
    else:
        variant = "mixed"
    unreadable = [k for p in pairs if p.grammar == "diffusers" and p.module.startswith(
        _KOHYA_PREFIXES) for k in (p.a_key, p.b_key) if k is not None]
    return KeyGrouping(
        pairs=pairs, extras=extras, orphans=orphans, grammar=dominant, variant=variant,
        unreadable=unreadable,
    )


def lycoris_algorithm(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The non-LoRA LyCORIS algorithm (a key of :data:`loracheck.model.LYCORIS_ALGORITHMS`)
    whose module tensors these are, or None, by the leaf names LyCORIS 4.1 saves
    (lycoris/modules/{full,diag_oft,boft,ia3,glora}.py): ``M.diff`` (full),
    ``M.oft_blocks`` (diag-OFT: 3-D blocks, BOFT: 4-D), ``M.on_input`` (IA³), ``M.a1.weight``
    with ``M.b2.weight`` (GLoRA). The first module decides."""
    for key, shape in shapes.items():
        parts = key.split(".")
        last = parts[-1]
        if last == "diff":
            return "lycoris-full"
        if last == "oft_blocks":
            return "boft" if len(shape) == 4 else "diag-oft"
        if last == "on_input":
            return "ia3"
        if (last == "weight" and len(parts) >= 3 and parts[-2] == "a1"
                and ".".join([*parts[:-2], "b2", "weight"]) in shapes):
            return "glora"
    return None


def _taken(slot: _Slot, role: str) -> bool:
    if role in ("a", "ea"):
        return slot.a is not None
    if role in ("b", "eb"):
        return slot.b is not None
    return False


def _orphan_extra_role(key: str, slot: _Slot) -> str:
    return "bias" if key == slot.bias else "unknown"


def _magnitude_fits(key: str, grammar: str) -> bool:
    """``.m`` is DoRA only next to an mlx pair and ``.magnitude`` only next to torchtune."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "m":
        return grammar == "mlx"
    if leaf == "magnitude":
        return grammar == "torchtune"
    return True


def _llmbook_chain(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> bool:
    return len(a_shape) == 2 and len(b_shape) == 2 and a_shape[0] == b_shape[1]


def _mlx_transposed(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> bool:
    """mlx stores A (in, r), B (r, out); keep peft orientation only if that alone chains."""
    if len(a_shape) != 2 or len(b_shape) != 2:
        return True
    mlx_chain = a_shape[1] == b_shape[0]
    peft_chain = a_shape[0] == b_shape[1]
    return not (peft_chain and not mlx_chain)


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def canonical_shapes(
    pair: PairKeys, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> tuple[int, int, int]:
    """(rank, in_features, out_features) in loracheck's orientation.

    rank = A.shape[0] and in = ∏ A.shape[1:] (conv kernels flatten to in·kh·kw), out = B.shape[0];
    for a transposed (mlx) pair rank = A.shape[1], in = A.shape[0], out = B.shape[1]. The rank is
    always read from A; a B whose inner dimension disagrees is left for a rule to report. A factor
    with fewer than 2 dimensions (an ungathered shard) gives 0 for the dimensions it lacks.
    """
    if pair.a_rows is not None and a_shape:
        a_shape = (pair.a_rows[1] - pair.a_rows[0], *a_shape[1:])
    if pair.b_rows is not None and b_shape:
        b_shape = (pair.b_rows[1] - pair.b_rows[0], *b_shape[1:])
    if pair.transposed:
        rank = a_shape[1] if len(a_shape) >= 2 else 0
        in_f = a_shape[0] if a_shape else 0
        out_f = b_shape[1] if len(b_shape) >= 2 else 0
        return rank, in_f, out_f
    rank = a_shape[0] if a_shape else 0
    in_f = _prod(a_shape[1:]) if len(a_shape) >= 2 else 0
    out_f = b_shape[0] if len(b_shape) >= 2 else 0
    return rank, in_f, out_f


def lycoris_shapes(
    pair: PairKeys, refs: Mapping[str, object]
) -> tuple[int | None, int, int] | None:
    """(rank, in_features, out_features) of a LyCORIS LoHa or LoKr module from its tensors'
    shapes (``refs``: key -> an object with ``.shape``), conv kernels flattened to in·kh·kw.
    LoHa's rank is r of hada_w1_b (r, in); LoKr's is the rank of its decomposed Kronecker
    factor (w2 first, as LyCORIS decomposes), None when both factors are full. None when a
    needed tensor is missing."""
    shapes = {k.rsplit(".", 1)[-1]: tuple(getattr(refs[k], "shape", ())) for k in pair.extra_keys
              if k in refs}
    if pair.kind == "loha":
        w1a, w1b = shapes.get("hada_w1_a"), shapes.get("hada_w1_b")
        if not w1a or not w1b or len(w1a) != 2:
            return None
        t1 = shapes.get("hada_t1")
        if t1:  # Tucker: w1_a is (r, out), w1_b (r, in), the core (r, r, kh, kw)
            return w1b[0], w1b[1] * _prod(t1[2:]), w1a[1]
        return w1b[0], _prod(w1b[1:]), w1a[0]
    w1, w2 = shapes.get("lokr_w1"), shapes.get("lokr_w2")
    w1a, w1b = shapes.get("lokr_w1_a"), shapes.get("lokr_w1_b")
    w2a, w2b = shapes.get("lokr_w2_a"), shapes.get("lokr_w2_b")
    if w1 is None and w1a and w1b:
        w1 = (w1a[0], w1b[1])
    if w2 is None and w2a and w2b:
        w2 = (w2a[0], *w2b[1:]) if "lokr_t2" not in shapes else (w2a[1], w2b[1],
                                                                  *shapes["lokr_t2"][2:])
    if not w1 or not w2 or len(w1) < 2 or len(w2) < 2:
        return None
    rank = w2a[1] if w2a and "lokr_t2" not in shapes else (w2a[0] if w2a else (
        w1a[1] if w1a else None))
    return rank, w1[1] * _prod(w2[1:]), w1[0] * w2[0]


def tucker_in_features(a_shape: tuple[int, ...], mid_shape: tuple[int, ...]) -> int:
    """in·kh·kw of a Tucker conv: down is (r, in, 1, 1), the core (r, r, kh, kw)."""
    return _prod(a_shape[1:]) * _prod(mid_shape[2:])


def to_canonical(pair: PairKeys, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-D views A (r, in) and B (out, r): conv kernels reshaped, mlx factors transposed.

    Reshaping a contiguous array and transposing are views; no data is copied for the formats
    loracheck reads.
    """
    return canonical_factor(pair, a), canonical_factor(pair, b)


def canonical_factor(pair: PairKeys, x: np.ndarray) -> np.ndarray:
    """One factor as its 2-D canonical view (A (r, in) or B (out, r)), see :func:`to_canonical`."""
    if pair.transposed:
        transposed: np.ndarray = x.T
        return transposed
    return x.reshape(x.shape[0], -1) if x.ndim != 2 and x.ndim >= 1 else x


# kohya's flattened prefixes and the diffusers pipeline component each stands for (sd-scripts
# networks/lora.py: LORA_PREFIX_UNET "lora_unet", LORA_PREFIX_TEXT_ENCODER "lora_te", SDXL's
# "lora_te1"/"lora_te2"; diffusers' _convert_non_diffusers_lora_to_diffusers maps them so).
_KOHYA_COMPONENTS = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"),
                     ("lora_te2_", "text_encoder_2"), ("lora_te3_", "text_encoder_3"),
                     ("lora_te_", "text_encoder"), ("lora_transformer_", "transformer"))


@dataclass(frozen=True)
class ModulePath:
    """A module's name with the wrappers of its key grammar taken apart: the pipeline
    component it lies in (diffusers' ``unet.``, kohya's ``lora_unet_``; None for a bare model)
    and its path inside that component. ``flattened``: kohya's names, whose dots became
    underscores and are never restored; :attr:`flat` flattens a dotted path the same way, so
    the two are compared in kohya's spelling."""

    component: str | None
    path: str
    flattened: bool

    @property
    def flat(self) -> str:
        return self.path.replace(".", "_")

    @property
    def parts(self) -> tuple[str, ...]:
        """The dotted components of :attr:`path` (one component for kohya's flattened names)."""
        return (self.path,) if self.flattened else tuple(self.path.split("."))


def _unwrap_saved(name: str) -> str:
    """``name`` without PEFT's wrappers of a saved module inside the path: the copy of a
    ``modules_to_save`` module (``lm_head.modules_to_save.default.weight``) and a wrapped
    layer's own weight (``embed_tokens.base_layer.weight``) name the module's tensor itself."""
    parts = name.split(".")
    out: list[str] = []
    skip = False
    for i, part in enumerate(parts):
        if skip:
            skip = False
            continue
        if part == "modules_to_save" and 0 < i < len(parts) - 2:
            skip = True  # and the adapter name after it
            continue
        if part == "base_layer" and 0 < i < len(parts) - 1:
            continue
        out.append(part)
    return ".".join(out)


def module_path(name: str) -> ModulePath:
    """The canonical path of a module named ``name`` by any grammar loracheck reads (a
    :class:`~loracheck.model.LayerRecord` name, or the key of a saved tensor): PEFT's
    ``base_model.model.`` wrapper removed (and, inside the path, the
    ``modules_to_save.<adapter>`` and ``base_layer`` levels of a saved module), a diffusers
    component prefix or a kohya prefix split off as the component."""
    from loracheck.scaling import _strip_peft_prefix

    name = _strip_peft_prefix(name)
    if "." in name:
        name = _unwrap_saved(name)
    if "." not in name:
        for prefix, component in _KOHYA_COMPONENTS:
            if name.startswith(prefix) and len(name) > len(prefix):
                return ModulePath(component, name[len(prefix):], True)
    for prefix in _DIFFUSERS_COMPONENTS:
        if name.startswith(prefix) and len(name) > len(prefix):
            return ModulePath(prefix[:-1], _strip_peft_prefix(name[len(prefix):]), False)
    return ModulePath(None, name, False)
