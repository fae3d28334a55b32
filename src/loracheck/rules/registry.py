"""The one explicit registry of rules, and rule selection by code or prefix.

Codes are stable: a retired code stays listed in :data:`REMOVED` (status "removed") and is
never given to another rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from loracheck.model import RuleMeta, Severity
from loracheck.rules import base, config, diff, input, merged, probe, weights
from loracheck.rules.context import Rule

RULES: tuple[Rule, ...] = (
    input.unreadable_artifact,
    input.no_lora_content,
    input.git_lfs_pointer,
    config.invalid_rank,
    config.scale_out_of_band,
    config.dropout_out_of_range,
    config.rank_too_high,
    config.identity_breaking_init,
    config.target_matches_nothing,
    config.pattern_matches_nothing,
    config.scaling_convention_hazard,
    config.contradictory_settings,
    config.not_a_lora_method,
    config.qlora_without_4bit,
    config.unknown_torchtune_module,
    config.mlx_missing_parameter,
    config.wrong_field_type,
    config.orthogonal_blocks_ambiguous,
    weights.unpaired_factor,
    weights.rank_mismatch,
    weights.non_finite_values,
    weights.identity_broken_at_init,
    weights.init_distribution_mismatch,
    weights.dead_adapter,
    weights.no_op_adapter,
    weights.modules_never_trained,
    weights.update_norm_outlier,
    weights.rank_collapse,
    weights.dtype_hazard,
    weights.config_weights_disagree,
    weights.empty_adapter,
    weights.dora_magnitude_invalid,
    input.unreadable_key_layout,
    input.pickle_checkpoint,
    base.module_not_in_base,
    base.vocab_size_mismatch,
    probe.probe_identity_broken,
    probe.stalled_loss,
    probe.base_weights_learn,
    probe.gradient_free_factor,
    probe.merge_changes_outputs,
    probe.reload_changes_outputs,
    probe.probe_non_finite,
    probe.adapter_model_mismatch,
    probe.probe_unsupported_feature,
    merged.merge_not_applied,
    merged.merge_scale_mismatch,
    merged.merge_residual_too_large,
    merged.merge_structure_mismatch,
    merged.merged_non_finite,
    merged.unexpected_weight_change,
    diff.adapter_module_differs,
    diff.adapter_module_sets_differ,
    diff.adapter_scale_differs,
)

# Retired codes: code -> (name, what replaced it). Never reuse one of these codes.
REMOVED: dict[str, tuple[str, str]] = {}

_BY_CODE = {r.code: r for r in RULES}


def _removed_meta(code: str, name: str, reason: str) -> RuleMeta:
    text = (
        f"## What it does\nRetired: {reason}\n\n## Why is this bad?\nThe code is kept so that "
        f"it is never reused.\n\n## Example\nNone.\n\n## Use instead\n{reason}"
    )
    return RuleMeta(code, name, Severity.INFO, f"Retired: {reason}", text, status="removed")


def all_rules() -> list[RuleMeta]:
    """Every rule's metadata, retired codes included, sorted by code."""
    metas = [r.meta for r in RULES]
    metas += [_removed_meta(code, name, why) for code, (name, why) in REMOVED.items()]
    return sorted(metas, key=lambda m: m.code)


def get_rule(code: str) -> RuleMeta | None:
    """The metadata of one code (case-insensitive), or None."""
    code = code.strip().upper()
    for meta in all_rules():
        if meta.code == code:
            return meta
    return None


def rules_by_code() -> dict[str, Rule]:
    return dict(_BY_CODE)


def is_known_selector(selector: str) -> bool:
    """``ALL`` or a prefix of at least one code (active or retired)."""
    selector = selector.upper()
    if selector == "ALL":
        return True
    return any(code.startswith(selector) for code in (*_BY_CODE, *REMOVED))


def _match_length(code: str, selectors: Iterable[str]) -> int:
    """Length of the longest selector matching ``code`` (ALL counts as 0), -1 if none."""
    best = -1
    for sel in selectors:
        sel = sel.upper()
        if sel == "ALL":
            best = max(best, 0)
        elif code.startswith(sel):
            best = max(best, len(sel))
    return best


def is_selected(
    code: str, select: Sequence[str], ignore: Sequence[str], extend_select: Sequence[str] = ()
) -> bool:
    """The longest matching prefix wins between select and ignore; a tie goes to ignore."""
    chosen = _match_length(code, (*select, *extend_select))
    ignored = _match_length(code, ignore)
    return chosen >= 0 and chosen > ignored


# (select, ignore, extend_select) -> (the RULES it was computed from, the rules): every unit of a
# run asks the same question, and the answer costs 45 selector matches.
_SELECTED: dict[tuple[tuple[str, ...], ...], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}


def select_rules(
    select: Sequence[str] = ("ALL",),
    ignore: Sequence[str] = (),
    extend_select: Sequence[str] = (),
) -> tuple[Rule, ...]:
    """The active rules that the selection enables, in code order."""
    key = (tuple(select), tuple(ignore), tuple(extend_select))
    cached = _SELECTED.get(key)
    if cached is not None and cached[0] is RULES:
        return cached[1]
    chosen = tuple(sorted(
        (r for r in RULES if is_selected(r.code, select, ignore, extend_select)),
        key=lambda r: r.code,
    ))
    if len(_SELECTED) > 64:
        _SELECTED.clear()
    _SELECTED[key] = (RULES, chosen)
    return chosen
