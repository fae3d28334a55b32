"""Merge rules (LC40x): what `loracheck merged` proves about a merged checkpoint.

The measurements run in :mod:`loracheck.merge_measure` (numpy, streamed) and fill one
:class:`~loracheck.merge_record.MergeRecord`; each rule here is a pure function of that record,
so the rules are tested on real merges and the engine applies the settings to their findings
as it does for ``check``. A module's verdict is one of: not merged (LC401), merged with another
scale (LC402), something else in the weight (LC403); the fitted scale and the residual against
the rounding floor decide which (see :mod:`loracheck.merge_record`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from loracheck.model import Severity
from loracheck.rules.context import (
    ANY_METHOD,
    Finding,
    RuleContext,
    Subject,
    fmt_num,
    name_list,
    plural,
    rule,
)

if TYPE_CHECKING:
    from loracheck.merge_record import MergeRecord, ModuleMerge

# The record module is imported where a rule reads one of its enums: `check` and `inspect` load
# this module through the registry but never build a MergeRecord (start-up, issue 14).

# Elements past their own rounding bound that a module may hold before LC403 fires without
# the norm test (a merge by PEFT has none; another tool chain may round twice here and there).
VIOLATION_FRACTION = 1e-4
# How close c/s must come to a named explanation (relative) for LC402 to name it.
MATCH_TOLERANCE = 0.01


def _record(ctx: RuleContext) -> MergeRecord | None:
    return ctx.merged


def not_merged(m: ModuleMerge) -> bool:
    """MERGED holds BASE's weight for this module although the adapter's update is visible
    in M's dtype: no element moved while some update exceeds one ULP of W; or ‖M − W‖ is
    within the rounding floor while ‖s·B·A‖ exceeds it."""
    if not m.measured or m.merged_nonfinite or m.update_norm == 0:
        return False
    if m.changed == 0 and m.must_change is not None:
        return m.must_change > 0
    # M − W is rounding alone (another dtype than W's) while the update would show.
    return m.delta_norm <= m.floor_norm < m.update_norm


def beyond_floor(m: ModuleMerge) -> bool:
    """D = M − W is not W + U rounded: the residual exceeds the floor, or too many elements
    exceed their own bound."""
    return m.residual_norm > m.floor_norm or (
        m.violations is not None and m.violations > VIOLATION_FRACTION * m.numel)


def rescaled(m: ModuleMerge) -> bool:
    """The merge used another scale: the plain model fails, the fitted one passes."""
    if not m.measured or m.merged_nonfinite or m.ratio is None or not_merged(m):
        return False
    if not beyond_floor(m) or abs(m.ratio - 1.0) <= (m.floor or 0.0):
        return False  # a scale within the floor of s is rounding, not another scale
    return m.fitted_residual_norm <= m.floor_norm * max(1.0, abs(m.ratio))


def explanations(m: ModuleMerge) -> list[str]:
    """The causes c/s matches: merged twice, the rsLoRA convention, the scale left out, …"""
    q = m.ratio
    if q is None:
        return []
    r, s = m.rank or 0, m.scale or 0.0
    candidates: list[tuple[float, str]] = [
        (2.0, "merged twice"), (3.0, "merged three times"),
        (-1.0, "subtracted: unmerged instead of merged"),
    ]
    if r > 1:
        candidates += [
            (math.sqrt(r), "rsLoRA convention mismatch: merged with α/√r, the adapter's "
                           "scale is α/r"),
            (1 / math.sqrt(r), "rsLoRA convention mismatch: merged with α/r, the adapter "
                               "uses α/√r (use_rslora)"),
        ]
    if s and abs(s) != 1:
        candidates += [(1 / s, "the scale left out (merged B·A without α/r)"),
                       (s, "the scale applied twice")]
    return [why for value, why in candidates
            if abs(q - value) <= MATCH_TOLERANCE * abs(value)]


@rule("LC401", "merge-not-applied", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED)
def merge_not_applied(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Compares each adapter module's weight in MERGED with BASE and reports a module whose weight
    did not move although the adapter's update s·B·A is visible in the merged dtype (some
    element of it exceeds one ULP of W, so any merge would have changed it). When no module
    moved, MERGED is the base model and one finding says so.

    ## Why is this bad?
    The merged checkpoint behaves like the base model: the fine-tune is gone. It happens when
    ``merge_and_unload()``'s return value is dropped and the base model is saved, when the
    adapter was disabled or never loaded, or when one module type was skipped by a converter.

    ## Example
    ```text
    loracheck merged out/merged --base base --adapter adapter
    model.layers.0.self_attn.q_proj: MERGED holds BASE's weight (‖s·B·A‖ 0.41)
    ```

    ## Use instead
    Save the model that ``merge_and_unload()`` returns:
    ``merged = peft_model.merge_and_unload(); merged.save_pretrained(out)``.
    """
    record = _record(ctx)
    if record is None:
        return
    measured = [m for m in record.modules if m.measured and m.update_norm > 0]
    stale = [m for m in measured if not_merged(m)]
    if not stale:
        return
    if len(stale) == len(measured) and len(stale) > 1:
        yield Finding(f"MERGED holds BASE's weights in all {len(stale)} adapter modules: the "
                      "adapter was not merged (the base model was saved)", stale[0].module)
        return
    for m in stale:
        yield Finding(f"{m.module}: MERGED holds BASE's weight, the adapter's update "
                      f"(‖s·B·A‖ {fmt_num(m.update_norm)}) is missing", m.module)


@rule("LC402", "merge-scale-mismatch", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED)
def merge_scale_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Fits the scale the merge used, c = ⟨M − W, B·A⟩ / ‖B·A‖², and reports a module whose merge
    is exactly c·B·A (within rounding) for a c other than the adapter's scale s. The message
    gives c/s and what it matches: 2 merged twice, √r or 1/√r the rsLoRA convention
    (α/√r against α/r), 1/s the scale left out, −1 subtracted.

    ## Why is this bad?
    The merged model applies the update at the wrong strength: twice as strong after a second
    merge, 4× too weak at r = 16 when an rsLoRA adapter is merged with α/r. Its outputs differ
    from the adapter's in every token, and nothing fails to load.

    ## Example
    ```text
    model.layers.0.self_attn.q_proj: merged with c = 4 where the adapter's scale is s = 2
    (c/s = 2: merged twice)
    ```

    ## Use instead
    Merge once, with the adapter's own config (``use_rslora``, ``lora_alpha``, ``r``), from a
    fresh base model.
    """
    record = _record(ctx)
    if record is None:
        return
    for m in record.modules:
        if not rescaled(m):
            continue
        assert m.ratio is not None
        why = explanations(m)
        because = f": {'; or '.join(why)}" if why else ""
        yield Finding(f"{m.module}: merged with c = {fmt_num(m.fitted_scale or 0.0)} where "
                      f"the adapter's scale is s = {fmt_num(m.scale or 0.0)} (c/s = "
                      f"{m.ratio:.4g}{because})", m.module)


@rule("LC403", "merge-residual-too-large", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED)
def merge_residual_too_large(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a module whose merged weight M is not W + s·B·A rounded to M's dtype: the residual
    ‖M − W − s·B·A‖ exceeds the floor that rounding explains (half an ULP of each element of M,
    plus the rounding of the update itself, summed in quadrature), and no other scale explains
    it either (LC402). With ``lora_bias=True`` the module's bias must likewise be BASE's bias
    plus s·lora_B.bias, each element within its rounding.

    ## Why is this bad?
    The checkpoint holds another update than this adapter's: another adapter (or checkpoint of
    the run) was merged, the merge ran on another base, a converter mangled the factors
    (transposed, reordered heads), or the weights were corrupted. A healthy bf16 merge stays
    under the floor, so this is never rounding.

    ## Example
    ```text
    model.layers.0.self_attn.q_proj: ‖M − W − s·B·A‖ / ‖s·B·A‖ = 1.41, rounding explains
    0.003 (c/s = 0.02)
    ```

    ## Use instead
    Merge the adapter you ship into the base it was trained on, and check the pair you pass:
    ``--base`` and ``--adapter`` must be the inputs of the merge.
    """
    record = _record(ctx)
    if record is None:
        return
    for m in record.modules:
        if not m.measured or m.merged_nonfinite or not beyond_floor(m) or not_merged(m) \
                or rescaled(m):
            continue
        ratio = f", c/s = {m.ratio:.3g}" if m.ratio is not None else ""
        where = (f"; {m.violations:,} of {m.numel:,} elements past their own rounding bound"
                 if m.violations else "")
        if m.update_norm > 0:
            size = (f"‖M − W − s·B·A‖ / ‖s·B·A‖ = {fmt_num(m.residual or 0.0)}, rounding "
                    f"explains {fmt_num(m.floor or 0.0)}")
        else:
            size = (f"the adapter's update is zero but ‖M − W‖ = {fmt_num(m.delta_norm)}, "
                    f"rounding explains {fmt_num(m.floor_norm)}")
        yield Finding(f"{m.module}: {size}{ratio}{where}", m.module)
    for m in record.modules:
        bias = m.bias
        if bias is None or bias.detail or not bias.violations:
            continue
        state = ("MERGED still holds BASE's bias" if bias.changed == 0 else
                 f"off by up to {fmt_num(bias.max_error)}")
        yield Finding(f"{m.module}: {bias.key} is not BASE's bias + s·lora_B.bias "
                      f"(lora_bias): {bias.violations:,} of {bias.numel:,} elements past their "
                      f"rounding bound, {state}", m.module)


@rule("LC404", "merge-structure-mismatch", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED,
      also=Severity.WARNING, when="warning for tensors that only one of BASE and MERGED has, "
      "tensors the shard index does not list, and adapter modules loracheck cannot verify "
      "(LoHa, LoKr, another dtype); error otherwise")
def merge_structure_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Compares the structure of MERGED with BASE and the adapter: adapter modules with no weight
    in MERGED, LoRA factor keys (``lora_A``, ``lora_B``, ``lora_magnitude_vector``) or
    ``base_layer`` names left in MERGED, shapes that differ between MERGED, BASE and the
    factors (an embedding resized to another vocabulary), and tensors only one of BASE and
    MERGED holds or that a shard holds but ``model.safetensors.index.json`` does not list. A
    warning names the adapter modules whose merge loracheck cannot verify (LoHa, LoKr, an
    unmeasured dtype), and how many of them MERGED still holds as BASE's weight, so a run that
    verified only part of the adapter never passes silently.

    ## Why is this bad?
    ``base_layer`` names and LoRA keys in a "merged" checkpoint mean the PEFT-wrapped model was
    saved, not the merged one: transformers, vLLM and llama.cpp do not load those names, and
    the layers come up randomly initialised or missing. A missing module or a shape mismatch
    means MERGED is not BASE plus this adapter.

    ## Example
    ```text
    MERGED has 14 base_layer names (model.layers.0.self_attn.q_proj.base_layer.weight, …):
    a PEFT-wrapped model was saved, not a merged one
    ```

    ## Use instead
    Save the model ``merge_and_unload()`` returns (not ``peft_model.base_model.model``), from
    the base the adapter was trained on.
    """
    from loracheck.merge_record import ModuleStatus

    record = _record(ctx)
    if record is None:
        return
    missing = [m for m in record.modules if m.status is ModuleStatus.MISSING]
    wrapped = [m for m in missing if "PEFT-wrapped" in m.detail]
    if record.base_layer_keys:
        yield Finding(f"MERGED has {plural(len(record.base_layer_keys), 'base_layer name')} "
                      f"({name_list(list(record.base_layer_keys), 3)}): a PEFT-wrapped model "
                      "was saved, not a merged one", record.base_layer_keys[0])
    if record.lora_keys:
        yield Finding(f"MERGED still holds {plural(len(record.lora_keys), 'LoRA tensor')} "
                      f"({name_list(list(record.lora_keys), 3)}): the adapter was not merged "
                      "away", record.lora_keys[0])
    plain = [m for m in missing if m not in wrapped]
    if plain:
        yield Finding(f"{plural(len(plain), 'adapter module')} not in MERGED: "
                      f"{name_list([m.module for m in plain], 3)} ({plain[0].detail})",
                      plain[0].module)
    if wrapped and not record.base_layer_keys:
        yield Finding(f"{plural(len(wrapped), 'adapter module')} saved wrapped: "
                      f"{wrapped[0].detail}", wrapped[0].module)
    for m in record.modules:
        if m.status is ModuleStatus.SHAPE_MISMATCH:
            yield Finding(f"{m.module}: {m.detail}", m.module)
        if m.bias is not None and m.bias.detail:
            yield Finding(f"{m.module}: {m.bias.detail}", m.module)
    for key, base_shape, merged_shape in record.shape_mismatches:
        yield Finding(f"{key} is {list(merged_shape)} in MERGED, {list(base_shape)} in BASE",
                      key)
    for copy in record.saved_copies:
        if copy.key is None or copy.detail.startswith("the saved copy is"):
            yield Finding(f"modules_to_save {copy.module}: {copy.detail}", copy.adapter_key)
    if record.only_in_base:
        yield Finding(f"{plural(len(record.only_in_base), 'tensor')} of BASE not in MERGED: "
                      f"{name_list(list(record.only_in_base), 3)}", record.only_in_base[0],
                      severity=Severity.WARNING)
    others = [k for k in record.only_in_merged]
    if others:
        yield Finding(f"{plural(len(others), 'tensor')} of MERGED not in BASE: "
                      f"{name_list(others, 3)}", others[0], severity=Severity.WARNING)
    if record.unindexed:
        yield Finding(f"{plural(len(record.unindexed), 'tensor')} of MERGED not listed in "
                      f"model.safetensors.index.json: {name_list(list(record.unindexed), 3)} "
                      "(loaders that follow the index do not load them)", record.unindexed[0],
                      severity=Severity.WARNING)
    unsupported = [m for m in record.modules if m.status is ModuleStatus.UNSUPPORTED]
    if unsupported:
        stale = [m for m in unsupported if m.key is not None and m.numel and m.changed == 0]
        held = f"; {len(stale)} of them hold BASE's weight unchanged" if stale else ""
        yield Finding(f"{plural(len(unsupported), 'adapter module')} not verified: "
                      f"{name_list([m.module for m in unsupported], 3)} "
                      f"({unsupported[0].detail}){held}", unsupported[0].module,
                      severity=Severity.WARNING)


@rule("LC405", "merged-non-finite", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED)
def merged_non_finite(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports NaN or ±Inf values in MERGED's weights where BASE's are finite: in the adapter's
    modules and in any other tensor that changed.

    ## Why is this bad?
    One NaN in a weight turns every output that depends on it into NaN. In fp16 it typically
    comes from W + s·B·A overflowing 65504 (a large scale, an exploded adapter); PEFT merges
    without checking unless ``safe_merge=True``.

    ## Example
    ```text
    model.layers.1.mlp.down_proj: 1 non-finite value in MERGED (BASE is finite)
    ```

    ## Use instead
    Merge with ``merge_and_unload(safe_merge=True)``, in bf16 or fp32 rather than fp16, and fix
    the adapter if its factors are non-finite (``loracheck check`` reports LC203).
    """
    record = _record(ctx)
    if record is None:
        return
    for m in record.modules:
        extra = m.merged_nonfinite - m.base_nonfinite
        if m.measured and extra > 0:
            yield Finding(f"{m.module}: {plural(extra, 'non-finite value')} in MERGED (BASE "
                          f"{'is finite' if not m.base_nonfinite else 'has fewer'})", m.module)
    for t in record.changed:
        if t.nonfinite:
            yield Finding(f"{t.key}: {plural(t.nonfinite, 'non-finite value')} in MERGED where "
                          "BASE is finite", t.key)


@rule("LC406", "unexpected-weight-change", Severity.ERROR, ANY_METHOD, subject=Subject.MERGED)
def unexpected_weight_change(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports tensors outside the adapter's modules whose values differ between BASE and MERGED
    (a merge changes only the modules it adapts), and modules the adapter saves whole
    (``modules_to_save``) whose weight in MERGED is not the adapter's saved copy.

    ## Why is this bad?
    MERGED is then not BASE plus this adapter: another fine-tune (a full one, or a trained
    layer norm) went into it, it was merged on another base, or a ``modules_to_save`` head was
    lost in the merge and the model ships with the untrained one.

    ## Example
    ```text
    model.layers.0.input_layernorm.weight: 64 of 64 elements differ from BASE
    (‖M − W‖ / ‖W‖ = 0.1)
    ```

    ## Use instead
    Merge into the unchanged base the adapter was trained on; save trained heads through
    ``modules_to_save`` so the merge applies them.
    """
    record = _record(ctx)
    if record is None:
        return
    for t in record.changed:
        rel = f" (‖M − W‖ / ‖W‖ = {fmt_num(t.relative)})" if t.relative is not None else ""
        n = math.prod(t.shape) if t.shape else 1
        yield Finding(f"{t.key}: {t.changed:,} of {n:,} elements differ from BASE{rel}", t.key)
    for copy in record.saved_copies:
        if copy.key is None or copy.matches or copy.detail:
            continue
        state = ("MERGED still holds BASE's weight" if copy.equals_base
                 else f"MERGED differs from it by up to {fmt_num(copy.max_abs or 0.0)}")
        yield Finding(f"modules_to_save {copy.key}: the adapter saves a trained copy, "
                      f"{state}", copy.key)
