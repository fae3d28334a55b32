"""``inspect`` text output: a one-screen summary per adapter, then its per-layer table.

Plain aligned text; ANSI colour only when asked. The table groups layers by module type and
shows the outliers first (non-finite, then farthest from the type's median ‖ΔW‖), at most
five rows per type unless ``all_layers``; a legend under it spells out the abbreviated column
headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loracheck.initscheme import scheme_label
from loracheck.model import (
    Adapter,
    Diagnostic,
    InitInference,
    InitScheme,
    LayerRecord,
    MethodKind,
    Report,
    StageSource,
    ValueOrigin,
)
from loracheck.render._common import (
    TableGroup,
    clean_lines,
    diagnostics_for,
    display_path,
    distinct_scalings,
    fmt_num,
    grouped_table,
    human_bytes,
    is_finite,
    plural,
    scaling_convention,
    selected_layers,
    short_name,
    sorted_diagnostics,
)
from loracheck.render.ansi import BOLD, DIM, paint
from loracheck.render.text import format_diagnostic

MISSING_ALPHA = "missing — PEFT assumes 8, kohya/diffusers scale 1"
COLUMNS = ("name", "rank", "in→out", "scale", "A std", "B std", "‖ΔW‖", "σmax", "eff.rank",
           "nonfinite")
# Printed under the table: what each abbreviated column header means.
LEGEND = (
    "in→out: in/out features · scale: s in ΔW = s·B·A · A std, B std: std of the factors' "
    "entries",
    "‖ΔW‖: Frobenius norm of ΔW · σmax: largest singular value of ΔW · nonfinite: NaN/Inf "
    "entries",
    "eff.rank: entropy effective rank, exp of the entropy of the normalised singular values "
    "(1 to r)",
)
_LEFT_ALIGNED = frozenset({0})
_INDENT = "  "


# --- summary fields --------------------------------------------------------------------------


def stage_text(adapter: Adapter) -> str:
    """The stage and where it came from: ``trained (trainer_state.json: global_step 500)``."""
    if adapter.stage_source is StageSource.COMMAND_LINE:
        return f"{adapter.stage.value} (set by --stage)"
    if adapter.stage_source is StageSource.SETTINGS:
        return f"{adapter.stage.value} (set by the stage setting)"
    if adapter.stage_evidence:
        return f"{adapter.stage.value} ({adapter.stage_evidence})"
    return adapter.stage.value


def _span(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt_num(values[0])
    return f"{fmt_num(min(values))}–{fmt_num(max(values))}"


def rank_text(adapter: Adapter) -> str:
    """``16``, ``4–16 (rank_pattern)``, or the config's rank when there are no weights."""
    spec = adapter.spec
    ranks = sorted({layer.rank for layer in adapter.layers if layer.rank is not None})
    if not ranks:
        if spec is None:
            return "-"
        if spec.rank is not None:
            return str(spec.rank)
        if "rank" in spec.invalid:
            return f"invalid ({spec.invalid['rank']})"
        return "-"
    text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    if spec is not None and spec.rank_pattern:
        text += " (rank_pattern)"
    elif len(ranks) > 1:
        text += " (per module)"
    elif spec is not None and spec.rank is not None and spec.rank != ranks[0]:
        text += f" (config says {spec.rank})"
    return text


def alpha_text(adapter: Adapter) -> str:
    spec = adapter.spec
    convention = scaling_convention(adapter)
    if convention == "mlx-scale":
        return "- (mlx-lm uses scale directly)"
    if convention == "alpha-missing":
        return MISSING_ALPHA
    values = sorted(
        {
            layer.alpha
            for layer in adapter.layers
            if layer.alpha is not None
            and is_finite(layer.alpha)
            and not layer.alpha_source.startswith("default")
        }
    )
    if not values:
        if spec is not None and spec.alpha is not None:
            return fmt_num(spec.alpha)
        if spec is not None and "alpha" in spec.invalid:
            return f"invalid ({spec.invalid['alpha']})"
        return "-"
    text = _span(values)
    if spec is not None and spec.alpha_pattern:
        text += " (alpha_pattern)"
    elif convention == "kohya-per-module":
        text += " (per-module .alpha)"
    return text


def scaling_text(adapter: Adapter) -> str:
    convention = scaling_convention(adapter)
    values = distinct_scalings(adapter)
    if not values:
        return convention
    return f"{convention} = {_span(values)}"


def _dropout_text(adapter: Adapter) -> str:
    spec = adapter.spec
    if spec is None:
        return "-"
    if spec.dropout is None and "dropout" in spec.invalid:
        return f"invalid ({spec.invalid['dropout']})"
    return fmt_num(spec.dropout)


# Leaf module names in the order a transformer block runs them: the targets line lists module
# types in this order (attention before MLP), others after them in file order.
_LEAF_ORDER = (
    "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "out_proj",
    "query", "key", "value", "query_key_value", "Wqkv", "wq", "wk", "wv", "wo",
    "to_q", "to_k", "to_v", "to_out",
    "c_attn", "gate_proj", "up_proj", "gate_up_proj", "down_proj", "c_fc", "c_proj",
    "w1", "w3", "w2", "fc1", "fc2", "dense", "dense_h_to_4h", "dense_4h_to_h",
)
_ATTENTION_PARENTS = ("attn", "attention")
_MAX_TYPES_SHOWN = 8


def type_and_block(name: str) -> tuple[str, str | None]:
    """A module's type (its path after the last block index: ``self_attn.q_proj``,
    ``attn.c_proj``; for kohya's flattened names the part after the last index) and its block
    (the path up to that index: ``model.layers.3``; None for a module outside any block)."""
    name = short_name(name)
    if "." not in name and "/" not in name:  # kohya/LyCORIS: lora_unet_…_blocks_0_attn1_to_q
        tokens = name.split("_")
        digits = [i for i, t in enumerate(tokens) if t.isdigit()]
        if digits and digits[-1] == len(tokens) - 1:
            digits.pop()  # a trailing index belongs to the module itself (to_out_0)
        if not digits:
            return ("_".join(tokens[2:]) or name) if name.startswith("lora_") else name, None
        return "_".join(tokens[digits[-1] + 1:]) or name, "_".join(tokens[: digits[-1] + 1])
    parts = [p for p in name.replace("/", ".").split(".") if p]
    indices = [i for i, p in enumerate(parts) if p.isdigit()]
    if indices and indices[-1] == len(parts) - 1:
        indices.pop()  # to_out.0: the index names the module, not a block
    if not indices:
        return (parts[-1] if parts else name), None
    cut = indices[-1] + 1
    return ".".join(parts[cut:]), ".".join(parts[:cut])


def _leaf(module_type: str) -> str:
    """A type's last segment, with its own index (``q_proj``, ``to_out.0``)."""
    parts = module_type.split(".")
    if len(parts) > 1 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1]


def type_labels(types: Sequence[str]) -> dict[str, str]:
    """Each type's shortest name: its last segment, or its whole path where two types share a
    last segment (GPT-2's ``attn.c_proj`` and ``mlp.c_proj``)."""
    counts: dict[str, int] = {}
    for t in types:
        counts[_leaf(t)] = counts.get(_leaf(t), 0) + 1
    return {t: _leaf(t) if counts[_leaf(t)] == 1 else t for t in types}


def type_order(types: Sequence[str], blockless: set[str]) -> list[str]:
    """Modules inside the blocks first (attention, then the rest), those outside them (lm_head)
    last; within each the order of :data:`_LEAF_ORDER`, then first appearance."""
    def key(item: tuple[int, str]) -> tuple[bool, int, int, int]:
        index, t = item
        leaf = _leaf(t).split(".")[0]
        parent = (t[: -len(_leaf(t))] if "." in t else t).lower()
        attention = any(word in parent for word in _ATTENTION_PARENTS)
        rank = _LEAF_ORDER.index(leaf) if leaf in _LEAF_ORDER else len(_LEAF_ORDER)
        return (t in blockless, 0 if attention else 1, rank, index)

    return [t for _, t in sorted(enumerate(types), key=key)]


def module_count_text(names: Sequence[str]) -> str:
    """``q_proj, v_proj (2 module types × 32 layers = 64 modules)``: the module types of
    ``names`` and how many modules they make; ``… (8 module types in 2 layers, 15 modules)``
    when the count is not types × layers (a module outside the blocks, a type in some blocks
    only)."""
    seen: dict[str, None] = {}
    pairs: set[tuple[str, str | None]] = set()
    blocks: set[str] = set()
    blockless: set[str] = set()
    for name in names:
        module_type, block = type_and_block(name)
        seen.setdefault(module_type, None)
        pairs.add((module_type, block))
        if block is None:
            blockless.add(module_type)
        else:
            blocks.add(block)
    ordered = type_order(list(seen), blockless)
    labels = type_labels(ordered)
    shown = [labels[t] for t in ordered[:_MAX_TYPES_SHOWN]]
    if len(ordered) > _MAX_TYPES_SHOWN:
        shown.append(f"… {len(ordered) - _MAX_TYPES_SHOWN} more")
    n_types, n_blocks, n_modules = len(ordered), len(blocks), len(names)
    kinds = plural(n_types, "module type")
    modules = plural(n_modules, "module")
    if not blocks:
        count = f"{kinds}, {modules}" if n_types != n_modules else modules
    elif not blockless and len(pairs) == n_modules == n_types * n_blocks:
        count = f"{kinds} × {plural(n_blocks, 'layer')} = {modules}"
    else:
        count = f"{kinds} in {plural(n_blocks, 'layer')}, {modules}"
    return f"{', '.join(shown)} ({count})"


def targets_text(adapter: Adapter) -> str:
    """The module types the adapter holds and how many modules: ``q_proj, v_proj (2 module
    types × 32 layers = 64 modules)``. From the weights when there are any (a target string
    such as ``all-linear`` is named first), else from the config's ``target_modules``."""
    spec = adapter.spec
    declared = spec.target_modules if spec is not None else None
    if adapter.layers:
        text = module_count_text([layer.name for layer in adapter.layers])
        return f"{declared} → {text}" if isinstance(declared, str) and declared else text
    if declared is None:
        return "-"
    if isinstance(declared, str):
        return declared
    if not declared:
        return "(empty)"
    if any("." in name for name in declared):
        return module_count_text(declared)  # full module paths (PEFT's all-linear, resolved)
    return ", ".join(declared)


def _init_source(init: InitInference) -> str:
    """How the scheme is known: ``declared``, ``<format> default`` or ``inferred``."""
    first = init.evidence.split(";", 1)[0].strip()
    if first.startswith("the ") and first.endswith(" default"):
        return first[len("the "):]
    return "declared" if init.declared else "inferred"


def init_text(adapter: Adapter) -> str:
    """The scheme, how it is known and one number against its expectation:
    ``kaiming-uniform (declared; A std 0.0735 vs 0.0722 expected)``. The whole evidence is
    :func:`init_evidence_text` (``inspect -v``)."""
    init = adapter.init
    if init is None:
        return "-"
    label = scheme_label(init)
    source = _init_source(init)
    if init.expected_std and init.measured_std is not None:
        return (f"{label} ({source}; A std {fmt_num(init.measured_std, 3)} vs "
                f"{fmt_num(init.expected_std, 3)} expected)")
    if init.scheme is InitScheme.UNKNOWN:
        if init.evidence.startswith("inferred from"):
            return f"{label} (inferred; no one scheme fits most layers)"
        return f"{label} ({init.evidence or source})"
    if init.scheme is InitScheme.EMBEDDING and not init.declared:
        return f"{label} (inferred; embedding layers only)"
    return f"{label} ({source})"


def init_evidence_text(adapter: Adapter) -> str | None:
    """Everything the init inference measured, as it said it (``inspect -v``)."""
    init = adapter.init
    return init.evidence if init is not None and init.evidence else None


def _dtypes_text(adapter: Adapter) -> str:
    if not adapter.dtypes:
        return "-"
    items = sorted(adapter.dtypes.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} ×{count}" for name, count in items)


def _extra_text(adapter: Adapter) -> str:
    extras = adapter.extra_tensors
    if not extras:
        return "none"
    roles: dict[str, int] = {}
    for t in extras:
        roles[t.role] = roles.get(t.role, 0) + 1
    total = sum(t.nbytes for t in extras)
    role_text = ", ".join(f"{role} ×{n}" for role, n in sorted(roles.items()))
    return f"{plural(len(extras), 'tensor')}, {human_bytes(total)}: {role_text}"


def _method_text(adapter: Adapter) -> str:
    if adapter.method is MethodKind.OTHER:
        return f"{adapter.method_name} (not LoRA: the LoRA rules do not apply)"
    if adapter.method is MethodKind.FULL:
        return f"{adapter.method_name} (no LoRA adapter is trained)"
    return adapter.method_name


def with_origin(adapter: Adapter, field_name: str, text: str) -> str:
    """``text`` with where a config-only value came from, when not from the file itself."""
    spec = adapter.spec
    if spec is None or adapter.layers:
        return text
    if field_name in spec.unresolved:
        return f"unknown ({spec.unresolved[field_name]})"
    if spec.origin(field_name) is ValueOrigin.TRAINER_DEFAULT:
        from loracheck.configs.semantics import SEMANTICS

        known = SEMANTICS.get(spec.source_format)
        return f"{text} ({known.trainer if known else spec.source_format} default)"
    if spec.origin(field_name) is ValueOrigin.EXPRESSION:
        shown = spec.extras.get(f"expression.{field_name}")
        return f"{text} (= {shown})" if shown else text
    return text


def summary_fields(adapter: Adapter, root: Path, *, verbose: bool = False) -> list[tuple[str, str]]:
    """The (label, value) pairs of an adapter's summary block, in display order; ``verbose``
    adds the init inference's whole evidence."""
    spec = adapter.spec
    fields: list[tuple[str, str]] = [("format", adapter.format)]
    if adapter.has_weights:
        fields.append(("variant", adapter.variant))
    fields.append(("method", _method_text(adapter)))
    if spec is not None:
        config = spec.source_format
        if spec.path and spec.path != adapter.path:
            config += f" ({display_path(spec.path, root)})"
        fields.append(("config", config))
    if adapter.method is MethodKind.LORA or adapter.has_weights:
        fields += [
            ("rank", with_origin(adapter, "rank", rank_text(adapter))),
            ("alpha", with_origin(adapter, "alpha", alpha_text(adapter))),
            ("scaling", scaling_text(adapter)),
            ("dropout", with_origin(adapter, "dropout", _dropout_text(adapter))),
            ("targets", with_origin(adapter, "target_modules", targets_text(adapter))),
            ("init", init_text(adapter)),
        ]
        evidence = init_evidence_text(adapter) if verbose else None
        if evidence is not None:
            fields.append(("evidence", evidence))
        fields += [
            ("stage", stage_text(adapter)),
        ]
    if adapter.has_weights:
        fields += [
            ("tensors", str(adapter.n_tensors)),
            ("bytes", f"{human_bytes(adapter.n_bytes)} ({adapter.n_bytes:,} B)"),
            ("dtypes", _dtypes_text(adapter)),
            ("extra", _extra_text(adapter)),
        ]
    else:
        fields.append(("weights", "none (config only)"))
    if adapter.orphans:
        keys = ", ".join(t.key for t in adapter.orphans[:3])
        more = f", … {len(adapter.orphans) - 3} more" if len(adapter.orphans) > 3 else ""
        fields.append(("orphans", f"{len(adapter.orphans)}: {keys}{more}"))
    if adapter.empty_tensors:
        fields.append(("empty", plural(len(adapter.empty_tensors), "tensor")))
    fields += [("note", note) for note in adapter.notes]
    return fields


# --- the per-layer table ---------------------------------------------------------------------


def layer_row(layer: LayerRecord) -> list[str]:
    shape = f"{fmt_num(layer.in_features)}→{fmt_num(layer.out_features)}"
    a_std = layer.a_stats.std if layer.a_stats else None
    b_std = layer.b_stats.std if layer.b_stats else None
    delta = layer.delta
    return [
        short_name(layer.name),
        fmt_num(layer.rank),
        shape,
        fmt_num(layer.scaling),
        fmt_num(a_std, 3),
        fmt_num(b_std, 3),
        fmt_num(delta.frobenius if delta else None, 3),
        fmt_num(delta.sigma_max if delta else None, 3),
        fmt_num(delta.effective_rank if delta else None, 3),
        str(layer.nonfinite),
    ]


def layer_table(adapter: Adapter, *, all_layers: bool, color: bool) -> list[str]:
    groups = [
        TableGroup(module_type, [layer_row(layer) for layer in shown],
                   [bool(layer.nonfinite) for layer in shown], omitted, "outliers first")
        for module_type, shown, omitted in selected_layers(adapter, all_layers)
    ]
    out = grouped_table(COLUMNS, _LEFT_ALIGNED, groups, color=color, indent=_INDENT)
    out += [_INDENT + paint(line, DIM, color) for line in LEGEND]
    return out


# --- whole output ----------------------------------------------------------------------------


def render_adapter(
    adapter: Adapter,
    diagnostics: Sequence[Diagnostic],
    *,
    color: bool,
    all_layers: bool,
    root: Path,
    verbose: bool = False,
) -> list[str]:
    lines = [paint(display_path(adapter.path, root), BOLD, color)]
    fields = summary_fields(adapter, root, verbose=verbose)
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        lines.append(f"{_INDENT}{paint(label.ljust(width), DIM, color)}  {value}")
    if adapter.layers:
        lines.append("")
        lines += layer_table(adapter, all_layers=all_layers, color=color)
    if diagnostics:
        lines.append("")
        lines.append(_INDENT + paint(plural(len(diagnostics), "finding"), BOLD, color))
        lines += [_INDENT + format_diagnostic(d, root=root, color=color) for d in diagnostics]
    return lines


def render_inspect_text(
    report: Report, *, color: bool, all_layers: bool, root: Path, verbose: bool = False
) -> str:
    """Every adapter's summary and table, separated by blank lines; findings that belong to no
    adapter (unreadable paths) close the output. ``verbose`` adds each init inference's whole
    evidence under its init line."""
    diagnostics = sorted_diagnostics(report.diagnostics)
    claimed: set[int] = set()
    blocks: list[list[str]] = []
    for adapter in report.adapters:
        own = diagnostics_for(adapter, diagnostics)
        claimed.update(id(d) for d in own)
        blocks.append(render_adapter(adapter, own, color=color, all_layers=all_layers, root=root,
                                     verbose=verbose))
    rest = [d for d in diagnostics if id(d) not in claimed]
    if rest:
        blocks.append([format_diagnostic(d, root=root, color=color) for d in rest])
    if not blocks:
        blocks.append(["No adapters found."])
    return "\n\n".join("\n".join(clean_lines(block, color=color)) for block in blocks) + "\n"
