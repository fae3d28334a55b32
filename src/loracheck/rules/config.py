"""Config rules (LC1xx): the LoRA hyper-parameters a config declares, from any source
(``adapter_config.json``, trainer YAML/TOML, kohya metadata, Python training scripts)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator

from loracheck.configs.fields import placeholder_text
from loracheck.configs.semantics import convention
from loracheck.model import (
    DATA_DRIVEN_SCHEMES,
    InitScheme,
    LoraSpec,
    MethodKind,
    Severity,
    ValueOrigin,
)
from loracheck.rules.context import (
    Finding,
    RuleContext,
    declared_scheme,
    fmt_num,
    name_list,
    plural,
    rule,
    short_name,
)
from loracheck.scaling import (
    MISSING_ALPHA_DEFAULTS,
    ScaleConvention,
    effective_scale,
    pattern_key_for,
    regex_hazard,
    scale_band,
)

# Trainers that pass a missing rank on to PEFT as None, which fails when the layers are built
# (axolotl: schemas/peft.py@00564c8 `lora_r: int | None = None`, loaders/adapter.py passes it to
# LoraConfig). Every other trainer fills its own default in (configs/semantics.py) or is one
# loracheck does not know, where a missing rank is not certain to be a fault.
_RANK_REQUIRED = frozenset({"axolotl"})
# Formats whose saved file is the trainer's own record of what it ran (not a plan to train).
_RECORD_FORMATS = frozenset({"peft", "kohya-metadata", "diffusers"})
_SCRIPT_FORMATS = frozenset({"python", "unsloth"})


def _spec(ctx: RuleContext) -> LoraSpec | None:
    return ctx.adapter.spec


def _kohya(spec: LoraSpec) -> bool:
    """α/dim per module, where α = 0 means α = dim (kohya, ai-toolkit)."""
    return _convention(spec) is ScaleConvention.KOHYA


# --- LC101 --------------------------------------------------------------------------------------


@rule("LC101", "invalid-rank", Severity.ERROR)
def invalid_rank(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Checks that the rank ``r`` is a positive integer: present (where the tool has no default),
    an integer, and at least 1, in the config and in every ``rank_pattern`` entry.

    ## Why is this bad?
    PEFT accepts ``r: 0`` or ``r: -4`` in the config and fails only when the layers are built,
    often after the base model has been downloaded and loaded onto the GPUs. A rank written as
    ``"16"`` or ``16.0`` is read differently by each tool. Without a rank, tools such as axolotl
    refuse to start, and a hand-edited PEFT config silently falls back to ``r = 8``.

    ## Example
    ```yaml
    adapter: lora
    lora_r: 0
    lora_alpha: 16
    ```

    ## Use instead
    ```yaml
    adapter: lora
    lora_r: 16
    lora_alpha: 16
    ```
    """
    spec = _spec(ctx)
    if spec is None or "rank" in spec.unresolved:
        return
    if "rank" in spec.invalid:
        yield ctx.config_finding(f"rank {spec.invalid['rank']} is not an integer", "rank")
    elif spec.rank is None:
        if spec.source_format == "peft":
            # LoraConfig would fall back to r = 8, but save_pretrained always writes r: a config
            # without it was edited or cut, and r = 8 rarely matches the saved factors.
            yield ctx.config_finding(
                "no rank is set: PEFT falls back to r = 8, yet save_pretrained always writes r",
                "rank",
            )
        elif spec.source_format in _RANK_REQUIRED:
            yield ctx.config_finding(
                f"no rank is set: {spec.source_format} has no default and passes None to PEFT, "
                "which fails when it builds the layers",
                "rank",
            )
    elif spec.rank < 1:
        yield ctx.config_finding(f"rank {spec.rank} is not a positive integer", "rank")
    for key, value in spec.rank_pattern.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            yield ctx.config_finding(
                f"rank_pattern[{key!r}] = {value!r} is not a positive integer", "rank_pattern",
                location=f"rank_pattern.{key}",
            )


# --- LC102 --------------------------------------------------------------------------------------


def _valid_rank(value: int | None) -> int | None:
    return value if isinstance(value, int) and value >= 1 else None


def _convention(spec: LoraSpec | None) -> ScaleConvention:
    return convention(spec.source_format) if spec is not None else ScaleConvention.ALPHA_OVER_R


def _band(ctx: RuleContext, s: float, conv: ScaleConvention) -> bool:
    low, high = scale_band(conv, ctx.thresholds)
    return low <= s <= high


def _scale_text(spec: LoraSpec, rank: int, alpha: float) -> str:
    if spec.use_rslora:
        return f"α/√r = {fmt_num(alpha)}/√{rank}"
    if _kohya(spec):
        return f"α/dim = {fmt_num(alpha)}/{rank}"
    return f"α/r = {fmt_num(alpha)}/{rank}"


@rule("LC102", "scale-out-of-band", Severity.WARNING, also=Severity.ERROR, when=(
    "error when alpha or scale (in the config, an alpha_pattern entry or an .alpha tensor) is "
    "not a positive finite number; warning when the effective scale is outside the profile's "
    "band"))
def scale_out_of_band(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Computes the effective scale s that multiplies B·A in the forward pass (α/r, α/√r with
    rsLoRA, kohya's per-module ``.alpha`` over the rank, mlx-lm's ``scale``) and warns when it
    lies outside the profile's band (default 1/16 … 16). An alpha that is zero, negative or not
    a finite number is an error.

    ## Why is this bad?
    The scale sets the effective learning rate of the adapter and the strength of the update at
    inference. An α copied from a run with another rank (α = 1 with r = 128 gives s = 1/128) makes
    the adapter learn almost nothing; α = 256 with r = 4 (s = 64) makes training unstable. A
    negative or NaN alpha turns the adapter into a sign flip or a NaN generator.

    ## Example
    ```json
    {"r": 128, "lora_alpha": 1}
    ```

    ## Use instead
    ```json
    {"r": 128, "lora_alpha": 128}
    ```
    Or widen the band in ``[tool.loracheck.thresholds]`` when the scale is deliberate.
    """
    spec = _spec(ctx) or ctx.adapter.metadata_spec
    if spec is not None:
        yield from _spec_scale(ctx, spec)
    yield from _tensor_scales(ctx)


def _spec_scale(ctx: RuleContext, spec: LoraSpec) -> Iterator[Finding]:
    def at(message: str, field_name: str, severity: Severity | None = None) -> Finding:
        line = spec.lines.get(field_name)
        path = spec.path or ctx.config_path
        return Finding(message, field_name, line, path, severity)

    if spec.unresolved.keys() & {"alpha", "scale", "rank"}:
        return  # an expression or a placeholder: unknown until the trainer runs
    if "alpha" in spec.invalid:
        yield at(f"alpha {spec.invalid['alpha']} is not a number", "alpha", Severity.ERROR)
        return
    if "scale" in spec.invalid:
        yield at(f"scale {spec.invalid['scale']} is not a number", "scale", Severity.ERROR)
        return
    alpha, scale, rank = spec.alpha, spec.scale, _valid_rank(spec.rank)
    conv = _convention(spec)
    yield from _conv_scale(ctx, spec, at)
    if scale is not None:
        if not math.isfinite(scale) or scale <= 0:
            yield at(f"scale {fmt_num(scale)} must be a positive finite number", "scale",
                     Severity.ERROR)
            return
        if not _band(ctx, scale, ScaleConvention.MLX):
            yield at(f"effective scale {fmt_num(scale)} is outside "
                     f"{_band_text(ctx, ScaleConvention.MLX)}", "scale")
        return
    if alpha is not None:
        if not math.isfinite(alpha) or (alpha <= 0 and not (alpha == 0 and _kohya(spec))):
            yield at(f"alpha {fmt_num(alpha)} must be a positive finite number", "alpha",
                     Severity.ERROR)
            return
        if alpha == 0:  # kohya: alpha 0 means alpha = rank, s = 1
            return
        s = effective_scale(rank, alpha, use_rslora=bool(spec.use_rslora))
        if s is not None and rank is not None and not _band(ctx, s, conv):
            yield at(
                f"effective scale {_scale_text(spec, rank, alpha)} = {fmt_num(s)} is outside "
                f"{_band_text(ctx, conv)}{_origin_note(spec)}",
                "alpha",
            )
    for key, value in spec.alpha_pattern.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            yield Finding(
                f"alpha_pattern[{key!r}] = {value!r} must be a positive finite number",
                f"alpha_pattern.{key}", spec.lines.get("alpha_pattern"),
                spec.path or ctx.config_path, Severity.ERROR,
            )


def _band_text(ctx: RuleContext, conv: ScaleConvention) -> str:
    low, high = scale_band(conv, ctx.thresholds)
    return f"the {ctx.profile.name} profile's {conv.value} band [{fmt_num(low)}, {fmt_num(high)}]"


def _origin_note(spec: LoraSpec) -> str:
    """Which of rank and alpha the trainer's defaults supplied, for the message."""
    defaulted = [f for f in ("rank", "alpha") if spec.origin(f) is ValueOrigin.TRAINER_DEFAULT]
    if not defaulted:
        return ""
    return f" ({' and '.join(defaulted)} from the {spec.source_format} default)"


def _conv_scale(
    ctx: RuleContext, spec: LoraSpec, at: Callable[[str, str], Finding]
) -> Iterator[Finding]:
    """kohya's conv layers: conv_alpha / conv_dim, judged in the kohya band."""
    dim, alpha = spec.extras.get("conv_dim"), spec.extras.get("conv_alpha")
    if not isinstance(dim, int) or not isinstance(alpha, (int, float)) or dim < 1:
        return
    if not math.isfinite(alpha) or alpha <= 0:
        return
    s = effective_scale(dim, float(alpha))
    if s is not None and not _band(ctx, s, ScaleConvention.KOHYA):
        yield at(
            f"conv scale conv_alpha/conv_dim = {fmt_num(alpha)}/{dim} = {fmt_num(s)} is outside "
            f"{_band_text(ctx, ScaleConvention.KOHYA)}",
            "network_args",
        )


def _tensor_scales(ctx: RuleContext) -> Iterator[Finding]:
    """kohya per-module ``.alpha`` tensors: each module has its own scale."""
    bad: dict[str, list[str]] = {}
    out: dict[float, list[str]] = {}
    for layer in ctx.adapter.layers:
        if layer.alpha_source != "tensor" or layer.alpha is None:
            continue
        key = layer.alpha_tensor.key if layer.alpha_tensor is not None else layer.name
        if not math.isfinite(layer.alpha) or layer.alpha < 0:
            bad.setdefault(fmt_num(layer.alpha), []).append(key)
        elif layer.scaling is not None and not _band(ctx, layer.scaling, ScaleConvention.KOHYA):
            out.setdefault(layer.scaling, []).append(key)
    for value, keys in sorted(bad.items()):
        yield ctx.weight_finding(
            f"alpha tensor {value} must be a positive finite number "
            f"({plural(len(keys), 'module')}: {name_list(keys, 3)})",
            keys[0], severity=Severity.ERROR,
        )
    for s, keys in sorted(out.items()):
        yield ctx.weight_finding(
            f"effective scale {fmt_num(s)} from the .alpha tensors is outside "
            f"{_band_text(ctx, ScaleConvention.KOHYA)} "
            f"({plural(len(keys), 'module')}: {name_list(keys, 3)})",
            keys[0],
        )


# --- LC103 --------------------------------------------------------------------------------------


@rule("LC103", "dropout-out-of-range", Severity.WARNING, also=Severity.ERROR, when=(
    "error when dropout is outside [0, 1) or not a number; warning when it is above the "
    "profile's maximum"))
def dropout_out_of_range(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Checks ``lora_dropout``: outside [0, 1) or not a number is an error; above the profile's
    maximum (default 0.3) is a warning.

    ## Why is this bad?
    Dropout 1.0 zeroes the input of every LoRA branch during training, so nothing is learnt;
    a negative value raises inside ``nn.Dropout`` only once training starts. Values above
    about 0.3 are rarely intended (a percentage typed as a fraction, 0.5 copied from a
    classifier recipe) and slow learning down for LoRA's small number of parameters.

    ## Example
    ```yaml
    lora_dropout: 1.0
    ```

    ## Use instead
    ```yaml
    lora_dropout: 0.05
    ```
    """
    spec = _spec(ctx)
    if spec is None or "dropout" in spec.unresolved:
        return
    if "dropout" in spec.invalid:
        yield ctx.config_finding(
            f"dropout {spec.invalid['dropout']} is not a number", "dropout",
            severity=Severity.ERROR,
        )
        return
    p = spec.dropout
    if p is None:
        return
    if not math.isfinite(p) or p < 0 or p >= 1:
        yield ctx.config_finding(
            f"dropout {fmt_num(p)} is outside [0, 1)", "dropout", severity=Severity.ERROR
        )
    elif p > ctx.thresholds.max_dropout:
        yield ctx.config_finding(
            f"dropout {fmt_num(p)} is above the {ctx.profile.name} profile's maximum "
            f"{fmt_num(ctx.thresholds.max_dropout)}",
            "dropout",
        )


# --- LC104 --------------------------------------------------------------------------------------


@rule("LC104", "rank-too-high", Severity.WARNING)
def rank_too_high(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Warns when the rank is above the profile's maximum (default 256), and when a module's rank
    reaches min(in_features, out_features), where the shapes are known.

    ## Why is this bad?
    A rank at or above the smaller side of the weight is not low-rank any more: the "adapter"
    costs as much as full fine-tuning of that layer (or more) and loses LoRA's regularising
    effect. Very high ranks usually come from a typo (``r: 1024``) or a recipe for a much
    larger model.

    ## Example
    ```json
    {"r": 64, "target_modules": ["k_proj"]}
    ```
    on a model whose ``k_proj`` is 64 → 32.

    ## Use instead
    A rank well below min(in, out), e.g. ``r: 8`` or ``16``.
    """
    spec = _spec(ctx)
    limit = ctx.thresholds.max_rank
    reported: set[int] = set()
    if spec is not None:
        if isinstance(spec.rank, int) and spec.rank > limit:
            reported.add(spec.rank)
            yield ctx.config_finding(
                f"rank {spec.rank} is above the {ctx.profile.name} profile's maximum {limit}",
                "rank",
            )
        for key, value in spec.rank_pattern.items():
            if isinstance(value, int) and value > limit:
                reported.add(value)
                yield ctx.config_finding(
                    f"rank_pattern[{key!r}] = {value} is above the {ctx.profile.name} "
                    f"profile's maximum {limit}",
                    "rank_pattern", location=f"rank_pattern.{key}",
                )
    high: dict[int, list[str]] = {}
    for layer in ctx.adapter.layers:
        r, n_in, n_out = layer.rank, layer.in_features, layer.out_features
        if r is None or r < 1 or layer.kind not in ("linear", "conv", "embedding"):
            continue
        if n_in and n_out and r >= min(n_in, n_out):
            yield ctx.weight_finding(
                f"rank {r} is not low-rank for {short_name(layer.name)} "
                f"({n_in} → {n_out}): r ≥ min(in, out) = {min(n_in, n_out)}",
                layer.name,
            )
        elif r > limit and r not in reported:
            high.setdefault(r, []).append(layer.name)
    for r, names in sorted(high.items()):
        yield ctx.weight_finding(
            f"rank {r} in the file is above the {ctx.profile.name} profile's maximum {limit} "
            f"({plural(len(names), 'module')})",
            names[0],
        )


# --- LC105 --------------------------------------------------------------------------------------

_EXACT_INITS = {"eva", "loftq", "orthogonal", "lora_ga", "corda"}


def known_init(value: str) -> bool:
    """Whether PEFT 0.21 accepts this ``init_lora_weights`` string (with its own matching)."""
    if value.startswith(("pissa", "corda")):
        if value.startswith("pissa_niter_"):
            return value[len("pissa_niter_"):].isdigit()
        return value in ("pissa", "corda")
    return value.lower() in ("gaussian", "olora", "mica") or value in _EXACT_INITS


@rule("LC105", "identity-breaking-init", Severity.ERROR, also=Severity.WARNING, when=(
    "error for init_lora_weights=False in a training config; warning in a saved adapter or a "
    "script, and for an init name PEFT does not know"))
def identity_breaking_init(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a declared init that makes the adapted model differ from the base model at step 0
    (``init_lora_weights=False``: both factors random) as an error, and an init name PEFT does
    not know as a warning.

    ## Why is this bad?
    LoRA's premise is W' = W at step 0: training starts from the base model's behaviour. With
    ``init_lora_weights=False`` (meant for PEFT's own tests) B·A is a random matrix from the
    first step, so the model starts damaged and part of training is spent undoing noise. An
    unknown init name (``"pisa"``, ``"Gaussian "``) passes config validation and fails only when
    the layers are built.

    ## Example
    ```python
    LoraConfig(r=16, lora_alpha=16, init_lora_weights=False)
    ```

    ## Use instead
    ```python
    LoraConfig(r=16, lora_alpha=16)  # init_lora_weights=True: A kaiming-uniform, B = 0
    ```
    """
    spec = _spec(ctx)
    if spec is None:
        return
    if "init_lora_weights" in spec.invalid:
        yield ctx.config_finding(
            f"init_lora_weights {spec.invalid['init_lora_weights']} is not a known init",
            "init_lora_weights", severity=Severity.WARNING,
        )
        return
    value = spec.init_lora_weights
    if value is False:
        if spec.source_format in _RECORD_FORMATS or spec.source_format in _SCRIPT_FORMATS:
            # A saved adapter or a script may load trained weights right after (a conversion,
            # an inference benchmark): only the context tells, so this is a warning.
            yield ctx.config_finding(
                "init_lora_weights=False starts both factors random, so W' ≠ W at step 0 "
                "(assuming this config starts a training run; fine when weights are loaded "
                "right after)",
                "init_lora_weights", severity=Severity.WARNING,
            )
        else:
            yield ctx.config_finding(
                "init_lora_weights=False starts both factors random, so W' ≠ W at step 0",
                "init_lora_weights",
            )
    elif isinstance(value, str) and not known_init(value):
        yield ctx.config_finding(
            f"init_lora_weights {value!r} is not an init PEFT knows", "init_lora_weights",
            severity=Severity.WARNING,
        )


# --- module lists (LC106, LC107) ----------------------------------------------------------------


def known_modules(ctx: RuleContext) -> tuple[list[str], str] | None:
    """Module names to match targets against: the base model's, else the file's LoRA modules."""
    if ctx.base is not None and ctx.base.modules:
        return sorted(ctx.base.modules), "the base model"
    names = [short_name(layer.name) for layer in ctx.adapter.layers]
    if names and ctx.adapter.has_weights:
        return names, "the weights file"
    return None


def _entry_matches(entry: str, names: list[str]) -> bool:
    return any(n == entry or n.endswith("." + entry) for n in names)


@rule("LC106", "target-matches-nothing", Severity.ERROR)
def target_matches_nothing(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports an empty ``target_modules``, an invalid target regex, and, where the module list is
    known (from ``--model`` or from the weights), a target entry that matches no module.

    ## Why is this bad?
    PEFT raises only when *no* target matches at all. A typo in one entry (``"q_prj"``), a name
    from another architecture (``"c_attn"`` on Llama) or a regex that matches nothing silently
    leaves those layers untouched, so the adapter is smaller and weaker than planned.

    ## Example
    ```json
    {"target_modules": ["q_proj", "v_prj"]}
    ```

    ## Use instead
    ```json
    {"target_modules": ["q_proj", "v_proj"]}
    ```
    """
    spec = _spec(ctx)
    if spec is None or spec.target_modules is None or "target_modules" in spec.unresolved:
        return
    targets = spec.target_modules
    if targets in ([], "") and not spec.extras.get("target_parameters"):
        yield ctx.config_finding("target_modules is empty: nothing is adapted",
                                 "target_modules")
        return
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return
        try:
            pattern = re.compile(targets)
        except re.error as err:
            yield ctx.config_finding(f"target_modules regex {targets!r} is invalid: {err}",
                                     "target_modules")
            return
        hazard = regex_hazard(targets)
        if hazard is not None:
            yield ctx.config_finding(
                f"target_modules regex {targets!r} has {hazard}: matching a module name that "
                "almost fits takes exponential time (PEFT hangs; loracheck does not run it)",
                "target_modules")
            return
        known = known_modules(ctx)
        if known is not None and not any(pattern.fullmatch(n) for n in known[0]):
            yield ctx.config_finding(
                f"target_modules regex {targets!r} matches no module of {known[1]}",
                "target_modules",
            )
        return
    known = known_modules(ctx)
    if known is None:
        return
    aliases: dict[str, tuple[str, ...]] = {}
    if spec.source_format == "litgpt":
        from loracheck.configs.trainers import LITGPT_MODULES

        aliases = LITGPT_MODULES
    missing = [t for t in targets
               if not any(_entry_matches(a, known[0]) for a in aliases.get(t, (t,)))]
    for entry in missing:
        yield ctx.config_finding(
            f"target {entry!r} matches no module of {known[1]}", "target_modules",
            location=f"target_modules.{entry}",
        )


def _targeted(ctx: RuleContext, spec: LoraSpec) -> list[str] | None:
    if ctx.adapter.layers and ctx.adapter.has_weights:
        return [short_name(layer.name) for layer in ctx.adapter.layers]
    if ctx.base is not None and ctx.base.modules and spec.target_modules is not None:
        from loracheck.scaling import target_matches

        return [n for n in sorted(ctx.base.modules) if target_matches(n, spec.target_modules)]
    return None


@rule("LC107", "pattern-matches-nothing", Severity.WARNING)
def pattern_matches_nothing(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Checks every ``rank_pattern`` and ``alpha_pattern`` key against the targeted modules with
    PEFT's semantics (a regex anchored at the end, preceded only by a whole dotted prefix; the
    first key in order wins) and reports keys that match no module, or only modules an earlier
    key already claims.

    ## Why is this bad?
    PEFT ignores such keys without a word (peft #3582, #2194): ``"proj"`` matches nothing,
    ``"0.self_attn.q_proj"`` does not match layer 10, and a later, more specific key loses to an
    earlier general one. The layers then train with the default rank or alpha, not the one you
    wrote.

    ## Example
    ```json
    {"r": 8, "rank_pattern": {"q_proj": 4, "layers.0.self_attn.q_proj": 16}}
    ```

    ## Use instead
    ```json
    {"r": 8, "rank_pattern": {"layers.0.self_attn.q_proj": 16, "q_proj": 4}}
    ```
    """
    spec = _spec(ctx)
    if spec is None or not (spec.rank_pattern or spec.alpha_pattern):
        return
    names = _targeted(ctx, spec)
    if names is None:
        return
    for field_name, pattern in (("rank_pattern", spec.rank_pattern),
                                ("alpha_pattern", spec.alpha_pattern)):
        claims: dict[str, int] = {}
        for name in names:
            winner = pattern_key_for(name, pattern)
            if winner is not None:
                claims[winner] = claims.get(winner, 0) + 1
        for key in pattern:
            if key in claims:
                continue
            alone = [n for n in names if pattern_key_for(n, {key: 0}) is not None]
            if alone:
                why = (f"is shadowed by earlier keys for all {plural(len(alone), 'module')} "
                       f"it matches")
            else:
                why = "matches no targeted module"
            yield ctx.config_finding(
                f"{field_name} key {key!r} {why}", field_name, location=f"{field_name}.{key}"
            )


# --- LC108 --------------------------------------------------------------------------------------


@rule("LC108", "scaling-convention-hazard", Severity.INFO)
def scaling_convention_hazard(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Notes the scaling conventions consumers disagree on: rsLoRA (s = α/√r) and a missing alpha.

    ## Why is this bad?
    Several serving stacks (vLLM #10798, SGLang #40835, TensorRT-LLM #1668) ignore
    ``use_rslora`` and apply α/r, so the adapter is served √r times weaker than it was trained
    (4× at r = 16). Without an alpha, each consumer assumes its own default: PEFT α = 8,
    kohya and diffusers α = r, ComfyUI and llama.cpp s = 1, so the same file behaves
    differently in each.

    ## Example
    ```json
    {"r": 16, "use_rslora": true, "lora_alpha": 16}
    ```

    ## Use instead
    Check that your serving stack supports rsLoRA, or fold the √r into alpha
    (``lora_alpha = 16·√16 = 64`` with ``use_rslora: false`` gives the same scale everywhere);
    always write ``lora_alpha`` explicitly.
    """
    spec = _spec(ctx)
    if spec is not None and spec.use_rslora:
        rank = _valid_rank(spec.rank)
        factor = f" ({fmt_num(math.sqrt(rank))}× at r = {rank})" if rank else ""
        yield ctx.config_finding(
            "use_rslora: stacks that ignore rsLoRA serve this adapter √r times weaker" + factor,
            "use_rslora",
        )
    if _alpha_missing(ctx):
        assumed = "; ".join(f"{k}: {v}" for k, v in MISSING_ALPHA_DEFAULTS.items())
        if spec is not None:
            yield ctx.config_finding(f"no alpha is set; consumers assume {assumed}", "alpha")
        else:
            yield ctx.weight_finding(f"no alpha in the file; consumers assume {assumed}", None)


def _alpha_missing(ctx: RuleContext) -> bool:
    adapter = ctx.adapter
    explicit = {"tensor", "metadata", "alpha_pattern", "config", "mlx-scale"}
    if any(layer.alpha_source in explicit for layer in adapter.layers):
        return False
    if adapter.spec is not None:
        if _convention(adapter.spec) is ScaleConvention.MLX:
            return False  # mlx-lm has no alpha: a missing scale is LC113's
        return adapter.spec.alpha_missing and not adapter.spec.alpha_pattern
    if adapter.metadata_spec is not None and not adapter.metadata_spec.alpha_missing:
        return False
    return bool(adapter.layers) and all(
        layer.alpha_source.startswith("default") or layer.alpha_source == "missing"
        for layer in adapter.layers
        if layer.alpha_source != "default:llmbook"
    ) and any(layer.alpha_source != "default:llmbook" for layer in adapter.layers)


# --- LC109 --------------------------------------------------------------------------------------


@rule("LC109", "contradictory-settings", Severity.WARNING)
def contradictory_settings(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports settings that contradict each other: LoftQ without a ``loftq_config``; DoRA with a
    ``bias`` mode that trains the base biases; a data-driven init (PiSSA, OLoRA, CorDA,
    LoRA-GA, LoftQ) with dropout > 0; the orthogonal init with an odd rank; ``lora_bias`` with
    DoRA; an ``eva_config`` or ``corda_config`` for another init; ``layers_pattern`` without
    ``layers_to_transform``.

    ## Why is this bad?
    Each pair is either rejected by PEFT only when the model is built, or silently does
    something else: a data-driven init moves the top components out of the base weight and puts
    them in B·A, so dropout on the LoRA branch changes the model's output in training mode
    from the first step (identity is lost); ``bias: all`` trains and saves base biases, which a
    DoRA magnitude computed against the original weights no longer matches.

    ## Example
    ```json
    {"init_lora_weights": "pissa", "lora_dropout": 0.1}
    ```

    ## Use instead
    ```json
    {"init_lora_weights": "pissa", "lora_dropout": 0.0}
    ```
    """
    spec = _spec(ctx)
    if spec is None:
        return
    scheme = declared_scheme(spec)
    init_text = str(spec.init_lora_weights)
    if init_text == "loftq" and not spec.extras.get("loftq_config"):
        yield ctx.config_finding(
            "init_lora_weights='loftq' without a loftq_config", "init_lora_weights"
        )
    if spec.use_dora and spec.bias not in (None, "none"):
        yield ctx.config_finding(
            f"use_dora with bias={spec.bias!r} trains base biases under the DoRA magnitude",
            "bias",
        )
    # LoftQ's B·A is the quantisation residual W − Q, small beside W, and LoftQ recipes train
    # with dropout; the schemes that move W's top components into B·A are the ones at risk.
    moved = scheme in DATA_DRIVEN_SCHEMES and scheme is not InitScheme.LOFTQ
    if moved and spec.dropout is not None and spec.dropout > 0:
        yield ctx.config_finding(
            f"init {init_text!r} with dropout {fmt_num(spec.dropout)}: B·A holds part of the "
            "base weight, so dropout breaks W' = W in training mode",
            "dropout",
        )
    if init_text == "orthogonal" and isinstance(spec.rank, int) and spec.rank % 2:
        yield ctx.config_finding(
            f"the orthogonal init needs an even rank, not {spec.rank}", "rank"
        )
    if spec.use_dora and spec.extras.get("lora_bias"):
        yield ctx.config_finding("lora_bias cannot be combined with use_dora", "use_dora")
    for sub, wanted in (("eva_config", "eva"), ("corda_config", "corda")):
        if spec.extras.get(sub) and not init_text.startswith(wanted):
            yield ctx.config_finding(
                f"{sub} is set but init_lora_weights is {init_text!r}, so it is ignored",
                "init_lora_weights", location=sub,
            )
    if spec.layers_pattern and not spec.layers_to_transform:
        yield ctx.config_finding(
            "layers_pattern without layers_to_transform is rejected by PEFT", "layers_pattern"
        )
    if (
        spec.use_rslora
        and (spec.rank_pattern or spec.alpha_pattern)
        and scheme in DATA_DRIVEN_SCHEMES
    ):
        yield ctx.config_finding(
            "rsLoRA with rank/alpha patterns and a data-driven init cannot be converted to a "
            "plain LoRA after training",
            "use_rslora",
        )


# --- LC110 --------------------------------------------------------------------------------------

_OTHER = frozenset({MethodKind.OTHER})


@rule("LC110", "not-a-lora-method", Severity.INFO, _OTHER)
def not_a_lora_method(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Notes, once per file, that a config or adapter uses a fine-tuning method other than LoRA
    (IA3, OFT, BOFT, VeRA, LoHa, LoKr, prompt tuning …), so the LoRA rules are not applied to
    it; only checks that hold for any method (unreadable files, non-finite values) still run.

    ## Why is this bad?
    It is not: the note says why the file got no LoRA findings. Judging another method by
    LoRA's rules raises false alarms (OFT's ``r: 0`` is legal, LyCORIS LoKr's
    ``network_dim: 100000`` means "full matrix", (IA)³ has no rank at all).

    ## Example
    ```json
    {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"]}
    ```

    ## Use instead
    Nothing to change. Silence the note with ``ignore = ["LC110"]``.
    """
    name = ctx.adapter.method_name
    what = "config" if not ctx.adapter.has_weights else "adapter"
    spec = ctx.adapter.spec or ctx.adapter.metadata_spec
    path = (spec.path if spec is not None and spec.path else None) or ctx.adapter.path
    yield Finding(f"{name} {what}: the LoRA rules do not apply", None, None, path)


# --- LC111 --------------------------------------------------------------------------------------


def _truthy_literal(value: object) -> bool | None:
    """True/False for a YAML boolean (or its usual spellings), None when unknown."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0", ""):
            return False
        return None
    if value is None:
        return False
    return None


@rule("LC111", "qlora-without-4bit", Severity.ERROR)
def qlora_without_4bit(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports an axolotl config with ``adapter: qlora`` that does not set ``load_in_4bit: true``
    (or that sets ``load_in_8bit: true``), on the bitsandbytes path.

    ## Why is this bad?
    axolotl refuses it when it validates the config ("Require cfg.load_in_4bit to be True for
    qlora", ``validate_qlora`` in src/axolotl/utils/schemas/peft.py), after the job was
    scheduled and the container pulled. QLoRA means a 4-bit base: without it there is nothing
    to train on.

    ## Example
    ```yaml
    adapter: qlora
    lora_r: 16
    ```

    ## Use instead
    ```yaml
    adapter: qlora
    load_in_4bit: true
    lora_r: 16
    ```
    """
    spec = _spec(ctx)
    if spec is None or spec.source_format != "axolotl":
        return
    adapter = spec.extras.get("adapter")
    if not isinstance(adapter, str) or adapter.strip().lower() != "qlora":
        return
    peft = spec.extras.get("peft")
    backend = peft.get("backend") if isinstance(peft, dict) else None
    # merge_lora and the torchao backend take other validation paths (validate_qlora).
    if spec.extras.get("merge_lora") or backend == "torchao":
        return
    four = _truthy_literal(spec.extras.get("load_in_4bit"))
    eight = _truthy_literal(spec.extras.get("load_in_8bit"))
    if eight:
        yield ctx.config_finding("adapter: qlora with load_in_8bit: axolotl refuses it "
                                 "(\"Can't load qlora in 8bit\")", "load_in_8bit")
    elif four is False:
        yield ctx.config_finding(
            "adapter: qlora without load_in_4bit: true: axolotl refuses it "
            "(\"Require cfg.load_in_4bit to be True for qlora\")",
            "adapter",
        )


# --- LC112 --------------------------------------------------------------------------------------

# torchtune/modules/peft/_utils.py@cf2a9d7 LORA_ATTN_MODULES.
TORCHTUNE_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj")


@rule("LC112", "unknown-torchtune-module", Severity.ERROR)
def unknown_torchtune_module(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a torchtune ``model.lora_attn_modules`` entry that is not one of torchtune's own
    names (``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``), and an empty list.

    ## Why is this bad?
    The model builder tests each name with ``"q_proj" in lora_modules``, so an unknown name
    (usually an HF name such as ``o_proj``) silently leaves that projection without LoRA; the
    HF checkpointer then fails at the first save with "Unknown target module"
    (``tune_to_peft_adapter_config``), after a full epoch. An empty list fails at once.

    ## Example
    ```yaml
    model:
      _component_: torchtune.models.llama3_1.lora_llama3_1_8b
      lora_attn_modules: [q_proj, v_proj, o_proj]
    ```

    ## Use instead
    ```yaml
    model:
      _component_: torchtune.models.llama3_1.lora_llama3_1_8b
      lora_attn_modules: [q_proj, v_proj, output_proj]
    ```
    """
    spec = _spec(ctx)
    if spec is None or spec.source_format != "torchtune":
        return
    targets = spec.extras.get("lora_attn_modules")
    if not isinstance(targets, list):
        return
    if not targets:
        yield ctx.config_finding("model.lora_attn_modules is empty: the builder refuses it",
                                 "target_modules")
    for name in targets:
        if isinstance(name, str) and name not in TORCHTUNE_ATTN_MODULES and (
            placeholder_text(name) is None
        ):
            hint = " (torchtune calls it output_proj)" if name == "o_proj" else ""
            yield ctx.config_finding(
                f"lora_attn_modules entry {name!r} is not a torchtune module{hint}: that "
                f"projection gets no LoRA, and saving the adapter fails",
                "target_modules", location=f"lora_attn_modules.{name}",
            )


# --- LC113 --------------------------------------------------------------------------------------


@rule("LC113", "mlx-missing-parameter", Severity.ERROR)
def mlx_missing_parameter(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports an mlx-lm config whose ``lora_parameters`` mapping lacks ``rank``, ``scale`` or
    ``dropout``.

    ## Why is this bad?
    mlx-lm fills its defaults per top-level key: a ``lora_parameters`` you give replaces the
    default mapping whole, and ``linear_to_lora_layers`` reads ``config["scale"]`` (and rank,
    dropout) directly, so the run stops with a bare ``KeyError: 'scale'``. Older mlx configs
    wrote ``alpha`` instead, which today's mlx-lm never reads.

    ## Example
    ```yaml
    lora_parameters:
      rank: 16
      alpha: 32
    ```

    ## Use instead
    ```yaml
    lora_parameters:
      rank: 16
      scale: 20.0
      dropout: 0.0
    ```
    """
    spec = _spec(ctx)
    if spec is None or spec.source_format != "mlx":
        return
    missing = spec.extras.get("mlx_missing_parameters")
    if not isinstance(missing, list) or not missing:
        return
    note = ""
    if "scale" in missing and "mlx_alpha" in spec.extras:
        note = " (its alpha is never read: mlx-lm uses scale as the multiplier)"
    yield ctx.config_finding(
        f"lora_parameters has no {', '.join(map(str, missing))}: mlx-lm replaces its defaults "
        f"with this mapping and stops with KeyError{note}",
        "rank" if "rank" in spec.lines else None,
    )


# --- LC114 --------------------------------------------------------------------------------------

# What PEFT 0.21.2 does with a value of the wrong type, per field (the rule's message), and
# whether it fails outright (error) or silently does something else (warning).
_WRONG_TYPE: dict[str, tuple[str, Severity]] = {
    "use_rslora": ("PEFT only tests its truth (tuners/lora/layer.py update_layer), so any "
                   "non-empty string turns rsLoRA on: s = α/√r", Severity.WARNING),
    "use_dora": ("PEFT only tests its truth, so any non-empty string turns DoRA on",
                 Severity.WARNING),
    "fan_in_fan_out": ("PEFT only tests its truth, so a non-empty string transposes the "
                       "weights (PEFT resets it with a warning on nn.Linear)", Severity.WARNING),
    "target_modules": ("PEFT fails when it matches modules (TypeError)", Severity.ERROR),
    "exclude_modules": ("PEFT fails when it matches modules (TypeError)", Severity.ERROR),
    "rank_pattern": ("a rank that is not an int fails when PEFT builds the layer",
                     Severity.ERROR),
    "alpha_pattern": ("an alpha that is not a number fails when PEFT scales the layer",
                      Severity.ERROR),
    # Not shown to fail in PEFT: said, as a warning.
    "modules_to_save": ("PEFT expects a list of module names; other values select modules "
                        "unpredictably", Severity.WARNING),
    "layers_to_transform": ("PEFT fails when it matches layer indices", Severity.ERROR),
    "layers_pattern": ("PEFT expects the name of the layers container", Severity.WARNING),
    "bias": ("PEFT accepts only 'none', 'all' or 'lora_only'", Severity.ERROR),
    "task_type": ("PEFT accepts only its TaskType names", Severity.ERROR),
    # kohya sd-scripts train_network.py writes ss_network_args as json.dumps of a dict of
    # strings; readers of the weights ignore it, so only loracheck's view of the network
    # (algorithm, conv settings) is lost.
    "network_args": ("the network's settings (algorithm, conv_dim) are read from the "
                     "weights instead", Severity.WARNING),
}
_TYPE_NAMES = {
    "use_rslora": "a boolean", "use_dora": "a boolean", "fan_in_fan_out": "a boolean",
    "target_modules": "a list of names or a regex string",
    "exclude_modules": "a list of names or a regex string",
    "rank_pattern": "a mapping of names to integers", "alpha_pattern": "a mapping of names to "
    "numbers", "modules_to_save": "a list of names", "layers_to_transform": "integers",
    "layers_pattern": "a name or a list of names", "bias": "a string", "task_type": "a string",
    "network_args": "a JSON object or a list of key=value strings",
}
# Where the consumer is not PEFT: (source format, field) -> what that consumer does.
_WRONG_TYPE_ELSEWHERE: dict[tuple[str, str], str] = {
    # mlx-lm 0.32 tuner/utils.py linear_to_lora_layers: `k in keys` over the module names.
    ("mlx", "target_modules"): "mlx-lm fails when it picks the modules to adapt (TypeError "
                               "in linear_to_lora_layers)",
}


@rule("LC114", "wrong-field-type", Severity.ERROR, also=Severity.WARNING, when=(
    "error where PEFT fails on the value; warning where it silently does something else"))
def wrong_field_type(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a LoRA setting whose value has the wrong type (a string where a boolean belongs,
    a number for ``target_modules``, a float rank in ``rank_pattern``), saying what PEFT does
    with it: an error where PEFT fails, a warning where it silently does something else.

    ## Why is this bad?
    PEFT does not validate most field types. ``use_rslora: "no"`` is a non-empty string, so
    PEFT scales by α/√r anyway; ``fan_in_fan_out: "false"`` transposes; ``target_modules: 5``
    and ``rank_pattern: {"q_proj": 4.5}`` fail only when the model is built.

    ## Example
    ```json
    {"r": 16, "lora_alpha": 16, "use_rslora": "no", "target_modules": 5}
    ```

    ## Use instead
    ```json
    {"r": 16, "lora_alpha": 16, "use_rslora": false, "target_modules": ["q_proj", "v_proj"]}
    ```
    """
    for spec in (ctx.adapter.spec, ctx.adapter.metadata_spec):
        if spec is None:
            continue
        for field_name, (effect, severity) in _WRONG_TYPE.items():
            if field_name not in spec.invalid:
                continue
            key = spec.extras.get("source_keys", {}).get(field_name, field_name)
            wanted = _TYPE_NAMES[field_name]
            effect = _WRONG_TYPE_ELSEWHERE.get((spec.source_format, field_name), effect)
            message = f"{key} = {spec.invalid[field_name]} is not {wanted}: {effect}"
            if spec is ctx.adapter.spec:
                yield ctx.config_finding(message, field_name, severity=severity)
            else:  # metadata of the weights file
                yield Finding(message, field_name, None, spec.path or ctx.adapter.path, severity)


# --- LC115 --------------------------------------------------------------------------------------

# (peft_type, the field that counts blocks, the field that sizes them, its PEFT default):
# peft==0.21.2 tuners/oft/config.py:87-89,189-193 and tuners/boft/config.py:73-80,163-167.
_BLOCK_FIELDS = {
    "OFT": ("r", "oft_block_size", 32),
    "BOFT": ("boft_block_num", "boft_block_size", 4),
}


@rule("LC115", "orthogonal-blocks-ambiguous", Severity.ERROR, _OTHER)
def orthogonal_blocks_ambiguous(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Checks a PEFT OFT or BOFT config, whose blocks are given either by their number (OFT ``r``,
    BOFT ``boft_block_num``) or by their size (``oft_block_size``, ``boft_block_size``):
    exactly one of the two must be non-zero.

    ## Why is this bad?
    PEFT refuses both zero ("Either r or oft_block_size must be non-zero") and both set ("You
    can only specify either r or oft_block_size", since r × block size = in_features) when it
    builds the config. The size has a default (OFT 32, BOFT 4), so setting only ``r: 8``
    already sets both.

    ## Example
    ```json
    {"peft_type": "OFT", "r": 8}
    ```

    ## Use instead
    ```json
    {"peft_type": "OFT", "r": 8, "oft_block_size": 0}
    ```
    """
    spec = _spec(ctx)
    if spec is None or spec.source_format != "peft":
        return
    peft_type = str(spec.extras.get("peft_type", "")).upper()
    if peft_type not in _BLOCK_FIELDS:
        return
    count_key, size_key, size_default = _BLOCK_FIELDS[peft_type]
    count = spec.rank if count_key == "r" else spec.extras.get(count_key, 0)
    size = spec.extras.get(size_key, size_default)
    if count is None:
        count = 0
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, size)):
        return
    if (count != 0) == (size != 0):
        both = "both are zero" if count == 0 else f"both are set ({count_key} {count}, " \
            f"{size_key} {size}{' by default' if size_key not in spec.extras else ''})"
        yield ctx.config_finding(
            f"{peft_type}: exactly one of {count_key} and {size_key} must be non-zero, but "
            f"{both}; PEFT refuses the config", "rank" if count_key == "r" else None,
        )
