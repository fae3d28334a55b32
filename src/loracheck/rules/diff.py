"""Diff rules (LC41x): are two adapters the same update, module by module?

``loracheck diff A B`` fills one :class:`~loracheck.diff_record.DiffRecord`
(:mod:`loracheck.adapter_diff`); each rule here is a pure function of it. A is the reference
(the first path), B the adapter judged against it; findings are reported on B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from loracheck.model import Severity
from loracheck.rules.context import ANY_METHOD, Finding, RuleContext, Subject, name_list, rule

if TYPE_CHECKING:
    from loracheck.diff_record import DiffRecord, ModuleDiff

# The record module is imported where a rule reads one of its enums: `check` and `inspect` load
# this module through the registry but never build a DiffRecord (start-up, issue 14).

# c matches a named ratio when within this relative distance of it.
_MATCH = 1e-3


def _record(ctx: RuleContext) -> DiffRecord | None:
    return ctx.diff


def _g(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-" if x is None else str(x)
    return "0" if x == 0 else f"{x:.4g}"


def tolerance_text(m: ModuleDiff) -> str:
    """``tolerance 0.0052 (rounding of BF16 and F32)`` or ``tolerance 0.01 (--tolerance)``."""
    from loracheck.diff_record import ToleranceSource

    if m.tolerance_source is ToleranceSource.COMMAND_LINE:
        return f"tolerance {_g(m.tolerance)} (--tolerance)"
    dtypes = " and ".join(dict.fromkeys((m.a.dtype, m.b.dtype)))
    return f"tolerance {_g(m.tolerance)} (what rounding to {dtypes} explains)"


def scale_change(m: ModuleDiff) -> bool:
    """The module differs only by a positive factor c: ΔW_B = c·ΔW_A (LC412's case)."""
    return m.compared and m.differs and m.proportional


def module_status(m: ModuleDiff) -> str:
    """What the rules make of one module: ``same``, ``differs`` (LC410), ``scale`` (LC412:
    ΔW_B = c·ΔW_A) or ``not-compared`` (LC410)."""
    if not m.compared:
        return "not-compared"
    if scale_change(m):
        return "scale"
    return "differs" if m.differs else "same"


def _alpha(side_alpha: float | None, source: str) -> str:
    return f"alpha {_g(side_alpha)} ({source})"


def explain_ratio(m: ModuleDiff) -> str | None:
    """What the ratio c = ‖ΔW_B‖/‖ΔW_A‖ of a pure scale change matches, when one known cause
    gives it; None otherwise."""
    c, s_a, s_b = m.scale_fit, m.a.scale, m.b.scale
    if c is None or s_a is None or s_b is None or s_a == 0:
        return None

    def near(x: float, y: float) -> bool:
        return y != 0 and abs(x / y - 1.0) <= _MATCH

    factors = c * s_a / s_b if s_b != 0 else math.nan  # what the factors' product changed by
    if near(factors, 1.0):  # the factors hold the same B·A: the scales alone differ
        if s_b == 1.0 and s_a != 1.0:
            return "B applies scale 1: its alpha is lost (a consumer that defaults alpha to r)"
        r = m.a.rank or 0
        if r > 1 and near(c, math.sqrt(r)):
            return f"c = √r (r {r}): B scales by α/√r (rsLoRA), A by α/r"
        if r > 1 and near(c, 1.0 / math.sqrt(r)):
            return f"c = 1/√r (r {r}): A scales by α/√r (rsLoRA), B by α/r"
        return "the alpha (or the scale) changed in the conversion"
    if near(factors, s_a) and s_b != 1.0:
        return ("B's factors already hold A's scale s_A and B applies a scale again: it is "
                "applied twice")
    if near(factors, 1.0 / s_a) and near(s_b, 1.0):
        return "B's factors lost the scale folded into them"
    return None


@rule("LC410", "adapter-module-differs", Severity.ERROR, ANY_METHOD, subject=Subject.DIFF)
def adapter_module_differs(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Compares, module by module, the update ΔW = s·B·A of two adapters (``loracheck diff A B``,
    any formats loracheck reads) and reports a module whose
    ‖ΔW_A − ΔW_B‖_F / ‖ΔW_A‖_F exceeds the tolerance: by default what rounding each side's
    factors to their dtypes explains, or ``--tolerance``. The difference comes from the stacked
    factors (a core of rank r_A + r_B), never from ΔW itself. A module that differs only by a
    scalar factor is LC412's; one whose shapes differ, or whose factors hold NaN, cannot be
    compared and is reported here too. The full tensors saved beside the factors (a
    ``modules_to_save`` copy such as ``lm_head``, a DoRA magnitude, an embedding saved with
    ``save_embedding_layers``, a trained bias) are compared element by element, ‖X_A − X_B‖ /
    ‖X_A‖ against what rounding both sides to their dtypes explains.

    ## Why is this bad?
    A conversion (kohya ↔ diffusers ↔ PEFT, mlx ↔ PEFT) or a re-save in another dtype must keep
    the update: a module that changes beyond rounding was transposed, mixed up with another,
    truncated or corrupted on the way, and the converted adapter is another model. A saved
    ``lm_head`` or embedding that changed is a changed model even when every B·A is the same.
    Between two checkpoints of one run, the modules listed are the ones that moved.

    ## Example
    ```text
    model.layers.0.self_attn.q_proj: ΔW differs by 0.31 of ‖ΔW_A‖ (tolerance 0.016: what
    rounding to F32 and BF16 explains); cosine 0.95, norm ratio 1.02
    ```

    ## Use instead
    Convert with the consumer's own loader or converter (diffusers' kohya conversion, PEFT's
    ``save_pretrained``), re-save from the original weights, and diff the result again.
    """
    from loracheck.diff_record import ModuleKind

    record = _record(ctx)
    if record is None:
        return
    for m in record.modules:
        if not m.differs or scale_change(m):
            continue
        if not m.compared:
            yield Finding(f"{m.name}: cannot be compared: {m.why_not}", m.name)
            continue
        cosine = m.cosine
        what, norm = ("saved tensor", "‖X_A‖") if m.kind is ModuleKind.SAVED else (
            "ΔW", "‖ΔW_A‖")
        yield Finding(
            f"{m.name}: {what} differs by {_g(m.rel_diff)} of {norm} ({tolerance_text(m)}); "
            f"cosine {_g(cosine)}, norm ratio {_g(m.norm_ratio)}", m.name)


@rule("LC411", "adapter-module-sets-differ", Severity.ERROR, ANY_METHOD, subject=Subject.DIFF)
def adapter_module_sets_differ(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports the modules that only one of the two adapters of ``loracheck diff A B`` holds,
    after matching them by canonical module path across key grammars (PEFT's
    ``base_model.model.`` wrapper, diffusers' ``unet.``/``transformer.``/``text_encoder.``
    components, kohya's flattened ``lora_unet_…`` names against the dotted side flattened the
    same way, mlx's transposed factors; where no path matches exactly, the unique longest common
    suffix of the two paths, such as ``layers.0.self_attn.q_proj``). Saved full tensors
    (``modules_to_save`` copies, DoRA magnitudes, embeddings saved with
    ``save_embedding_layers``) that only one side holds are reported too.

    ## Why is this bad?
    A converter that does not know a module's name drops it silently (kohya's SDXL names that
    diffusers maps differently, a text encoder left out), or a re-save filtered the state dict:
    the converted adapter changes fewer modules than the original, and nothing fails at load
    time.

    ## Example
    ```text
    2 modules only in A (model.layers.1.mlp.down_proj, model.layers.0.mlp.down_proj)
    ```

    ## Use instead
    Convert every module (check the converter's list of renamed keys), or target the same
    modules on both sides.
    """
    record = _record(ctx)
    if record is None:
        return
    for side, names in (("A", record.only_a), ("B", record.only_b)):
        if names:
            n = len(names)
            yield Finding(f"{n} module{'s' if n != 1 else ''} only in {side} "
                          f"({name_list(list(names))})", names[0])
    for side, names in (("A", record.saved_only_a), ("B", record.saved_only_b)):
        if names:
            n = len(names)
            yield Finding(f"{n} saved tensor{'s' if n != 1 else ''} only in {side} "
                          f"({name_list(list(names))})", names[0])


@rule("LC412", "adapter-scale-differs", Severity.ERROR, ANY_METHOD, subject=Subject.DIFF)
def adapter_scale_differs(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a module of ``loracheck diff A B`` whose two updates are the same up to a positive
    factor, ΔW_B = c·ΔW_A with c ≠ 1 beyond the tolerance: the same factors (bitwise, or up to
    rounding, or up to a scale folded into them) under a different effective scale. The
    message gives each side's scale and alpha, where each alpha came from, and the cause c
    matches (alpha lost, so B applies scale 1; rsLoRA's α/√r against α/r; a scale folded into
    the factors and applied again).

    ## Why is this bad?
    The alpha of an adapter lives outside its factors (a config, a kohya ``.alpha`` tensor,
    safetensors metadata, mlx's ``scale``), and converters lose or rewrite it: the converted
    adapter has the right direction at the wrong strength, which no error reveals and which
    shows only as a weaker or overcooked model.

    ## Example
    ```text
    unet.down_blocks.0.attentions.0.proj_in: ΔW_B = 2·ΔW_A: s 0.5 → 1 (alpha 2 (tensor) →
    4 (default:diffusers)), factors bitwise equal; B applies scale 1: its alpha is lost
    ```

    ## Use instead
    Carry the alpha over: write it into the target format's config or metadata
    (``lora_alpha``/``alpha_pattern``, ``network_alphas``, mlx's ``scale`` = α/r), or fold the
    scale into B and set the target's scale to 1.
    """
    record = _record(ctx)
    if record is None:
        return
    for m in record.modules:
        if not scale_change(m):
            continue
        assert m.scale_fit is not None
        facts = m.facts
        if facts is None:
            same = "the two updates are proportional"
        elif facts.a_equal and facts.b_equal:
            same = "factors bitwise equal"
        else:
            same = "factors equal up to a scale"
        cause = explain_ratio(m)
        yield Finding(
            f"{m.name}: ΔW_B = {_g(m.scale_fit)}·ΔW_A: s {_g(m.a.scale)} → {_g(m.b.scale)} "
            f"({_alpha(m.a.alpha, m.a.alpha_source)} → {_alpha(m.b.alpha, m.b.alpha_source)}), "
            f"{same}" + (f"; {cause}" if cause else ""), m.name)
