"""PEFT's matching semantics and the effective scale of each LoRA layer.

The scale multiplies B @ A in the forward pass, y = W·x + s·B·A·x:
    s = α / r       (PEFT, torchtune, kohya with its per-module ``.alpha``, diffusers)
    s = α / √r      (rsLoRA, ``use_rslora=True``)
    s = scale       (mlx-lm: the multiplier is stored directly)
What a consumer assumes when alpha is missing differs (see :data:`MISSING_ALPHA_DEFAULTS`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING

from loracheck.model import LoraSpec

if TYPE_CHECKING:
    from loracheck.settings import Thresholds


class ScaleConvention(str, Enum):
    """How a consumer turns a config's numbers into the multiplier s of B·A.

    ALPHA_OVER_R   s = α / r (α / √r with rsLoRA): PEFT, torchtune, litgpt, the LLM trainers
    KOHYA          s = α / dim per module; α = 0 or None means α = dim (s = 1); the trainer's
                   default α = 1 gives s = 1/dim, which its learning rates are tuned for
    MLX            s = ``scale`` itself (mlx-lm: 20 at rank 8 is its shipped default)
    """

    ALPHA_OVER_R = "alpha/r"
    KOHYA = "kohya alpha/dim"
    MLX = "mlx scale"


# kohya-style trainers default to α = 1 (s = 1/dim) and tune their learning rates to it, so
# their band reaches down to 1/1024 (dim 1024, α 1). mlx-lm ships scale 20 (10 before 2025),
# which is s itself, so its band reaches up to 64.
KOHYA_SCALE_MIN = 1.0 / 1024.0
MLX_SCALE_MAX = 64.0


def scale_band(convention: ScaleConvention, thresholds: Thresholds) -> tuple[float, float]:
    """The healthy range of s under ``convention``: the profile's band, widened where the
    convention's own defaults lie outside it."""
    low, high = thresholds.scale_min, thresholds.scale_max
    if convention is ScaleConvention.KOHYA:
        return min(low, KOHYA_SCALE_MIN), high
    if convention is ScaleConvention.MLX:
        return low, max(high, MLX_SCALE_MAX)
    return low, high

# What each consumer does with an adapter whose alpha is missing.
MISSING_ALPHA_DEFAULTS: Mapping[str, str] = {
    "peft": "lora_alpha = 8, so s = 8/r",
    "kohya": "alpha = r, so s = 1",
    "diffusers": "alpha = r, so s = 1",
    "comfyui": "s = 1",
    "llama.cpp": "s = 1",
}
PEFT_DEFAULT_ALPHA = 8.0


def _strip_peft_prefix(module: str) -> str:
    for prefix in ("base_model.model.", "base_model."):
        if module.startswith(prefix):
            return module[len(prefix) :]
    return module


def regex_hazard(pattern: str) -> str | None:
    """Why matching ``pattern`` can take exponential time, or None: an unbounded repetition
    inside another one (``(a+)+``, ``(.*)*x``) backtracks catastrophically on a name that
    almost matches, and Python's ``re`` cannot be interrupted. Invalid patterns are None (the
    caller reports them)."""
    if sys.version_info >= (3, 11):
        import re._constants as sre_constants
        import re._parser as sre_parse
    else:  # pragma: no cover - Python 3.10
        import sre_constants
        import sre_parse
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None
    repeats = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)
    literals = (sre_constants.LITERAL, sre_constants.NOT_LITERAL, sre_constants.IN)

    def _flat(sub: object) -> list[tuple[object, object]]:
        """The body's items, through (non-capturing) groups."""
        out: list[tuple[object, object]] = []
        for op, av in sub:  # type: ignore[attr-defined]
            if op == sre_constants.SUBPATTERN:
                out.extend(_flat(av[-1]))
            else:
                out.append((op, av))
        return out

    unbounded = sre_constants.MAXREPEAT
    # (subpattern items, inside an unbounded repetition)
    stack: list[tuple[object, bool]] = [(parsed, False)]
    while stack:
        items, inside = stack.pop()
        for op, av in items:  # type: ignore[attr-defined]
            if op in repeats:
                _, high, sub = av
                endless = high == unbounded
                if endless and inside:
                    return "an unbounded repetition inside another one"
                # A body with a mandatory literal ((\w+\.)*: each round ends at a dot) splits
                # the text one way only; a body of repetitions alone ((a+)+, (.*)*) does not.
                separated = any(o in literals for o, _ in _flat(sub))
                stack.append((sub, inside or (endless and not separated)))
            elif op == sre_constants.SUBPATTERN:
                stack.append((av[-1], inside))
            elif op == sre_constants.BRANCH:
                stack.extend((branch, inside) for branch in av[1])
            elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
                stack.append((av[1], inside))
    return None


def target_matches(module: str, targets: list[str] | str | None) -> bool:
    """Whether ``module`` (a full dotted name) is selected by a PEFT ``target_modules`` value.

    A list selects names equal to an entry or ending in ``"." + entry``; a string is a regex
    that must match the whole name; ``all-linear`` selects everything (the caller filters by type).
    """
    if targets is None:
        return False
    name = _strip_peft_prefix(module)
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return True
        if regex_hazard(targets) is not None:
            return False  # never run: LC106 reports the pattern
        try:
            return re.fullmatch(targets, name) is not None
        except re.error:
            return False
    return any(name == t or name.endswith("." + t) for t in targets)


def pattern_key_for(module: str, pattern: Mapping[str, object]) -> str | None:
    """The first key of a rank_pattern/alpha_pattern (in dict order) that matches ``module``.

    PEFT tests ``re.match(rf"(.*\\.)?({key})$", name)``: a regex anchored at the end and only
    preceded by a whole dotted prefix.
    """
    name = _strip_peft_prefix(module)
    for key in pattern:
        if regex_hazard(str(key)) is not None:
            continue
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return key
        except re.error:
            continue
    return None


def spec_for_module(module: str, spec: LoraSpec) -> LoraSpec:
    """The spec in force for ``module``: the component's own (diffusers writes one LoraConfig
    per pipeline component, ``unet.r`` beside ``text_encoder.r``) when ``module`` lies under
    ``<component>.``, else ``spec`` itself."""
    if spec.components:
        name = _strip_peft_prefix(module)
        for component, sub in spec.components.items():
            if component and (name == component or name.startswith(component + ".")):
                return sub
    return spec


def resolve_rank_alpha(module: str, spec: LoraSpec) -> tuple[int | None, float | None, str]:
    """Rank and alpha in force for ``module`` under ``spec`` (its component's spec, see
    :func:`spec_for_module`); rank and alpha resolve separately.

    Returns (rank, alpha, alpha_source) where alpha_source is "alpha_pattern", "config",
    "mlx-scale" or "missing".
    """
    spec = spec_for_module(module, spec)
    rank = spec.rank
    rkey = pattern_key_for(module, spec.rank_pattern)
    if rkey is not None:
        rank = spec.rank_pattern[rkey]
    akey = pattern_key_for(module, spec.alpha_pattern)
    if akey is not None:
        return rank, float(spec.alpha_pattern[akey]), "alpha_pattern"
    if spec.scale is not None:
        return rank, None, "mlx-scale"
    if spec.alpha is not None:
        return rank, spec.alpha, "config"
    return rank, None, "missing"


def effective_scale(
    rank: int | None,
    alpha: float | None,
    *,
    use_rslora: bool = False,
    scale: float | None = None,
) -> float | None:
    """s = scale (mlx), else α/√r with rsLoRA, else α/r; None when it cannot be known."""
    if scale is not None:
        return scale
    if rank is None or alpha is None or rank <= 0:
        return None
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank
