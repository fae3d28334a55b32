"""Weight rules (LC2xx): what the checkpoint's tensors hold, judged against the init scheme
and scaling convention in force."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from loracheck.model import InitScheme, LayerRecord, LoraSpec, Severity, Stage, StageSource
from loracheck.rules.context import (
    LORA_AND_OTHER,
    Finding,
    RuleContext,
    delta_is_zero,
    delta_negligible,
    fmt_num,
    is_zero,
    measured,
    name_list,
    plural,
    rule,
    scheme_in_force,
    short_name,
    zero_factor,
)
from loracheck.scaling import resolve_rank_alpha, target_matches

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05
FP16_MIN_SUBNORMAL = 5.960464477539063e-08
LORA_KINDS = ("linear", "conv", "embedding")


def _lora_layers(ctx: RuleContext) -> list[LayerRecord]:
    return [layer for layer in ctx.adapter.layers if layer.kind in LORA_KINDS]


def _dead(layer: LayerRecord) -> bool:
    return bool(is_zero(layer, "A") and is_zero(layer, "B"))


# --- LC201 --------------------------------------------------------------------------------------


@rule("LC201", "unpaired-factor", Severity.ERROR)
def unpaired_factor(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a LoRA factor without its partner: an A (``lora_A``, ``lora_down``) with no B, or a
    B with no A.

    ## Why is this bad?
    A module needs both factors to contribute ΔW = s·B·A. Loaders drop the half pair with at
    most a "missing keys" warning, so the module is silently not adapted; the cause is usually a
    bad merge of two checkpoints, a rename script that missed one suffix, or a truncated upload.

    ## Example
    ```text
    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   (no lora_B.weight)
    ```

    ## Use instead
    Re-save the adapter from the training run so that every module has both factors.
    """
    for ref in ctx.adapter.orphans:
        yield ctx.weight_finding(f"{ref.key} has no partner factor", ref.key)


# --- LC202 --------------------------------------------------------------------------------------


def _inner_b(ctx: RuleContext, layer: LayerRecord) -> int | None:
    if layer.b is None or len(layer.b.shape) < 2:
        return None
    return layer.b.shape[0] if ctx.adapter.format == "mlx" else layer.b.shape[1]


def _rank_spec(ctx: RuleContext) -> LoraSpec | None:
    spec = ctx.adapter.spec or ctx.adapter.metadata_spec
    if spec is None or spec.extras.get("target_parameters") or spec.extras.get("use_bdlora"):
        return None
    return spec


def _kohya_like(spec: LoraSpec) -> bool:
    return spec.source_format.startswith("kohya")


def _network_args_text(spec: LoraSpec) -> str:
    return str(spec.extras.get("network_args", "")) + str(spec.extras.get("ss_network_args", ""))


@rule("LC202", "rank-mismatch", Severity.ERROR)
def rank_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Checks the shapes of each pair: the inner dimensions of A (r, in) and B (out, r) must agree,
    and the rank in the file must equal the declared ``r``, or the module's ``rank_pattern``
    entry.

    ## Why is this bad?
    A pair whose inner dimensions differ cannot be multiplied: the adapter fails to load
    ("size mismatch") or, in tools that skip bad keys, the module is dropped. A rank that
    differs from the config means the config is not the one the weights were trained with, so
    the scale α/r every consumer computes from it is wrong.

    ## Example
    ```text
    adapter_config.json: {"r": 8}
    lora_A.weight (16, 4096), lora_B.weight (4096, 16)
    ```

    ## Use instead
    Ship the ``adapter_config.json`` written by the same ``save_pretrained`` call as the weights
    (here ``"r": 16``).
    """
    spec = _rank_spec(ctx)
    mismatched: dict[tuple[int, int], list[str]] = {}
    for layer in _lora_layers(ctx):
        if layer.rank is None or layer.a is None:
            continue
        inner_b = _inner_b(ctx, layer)
        if inner_b is not None and inner_b != layer.rank and layer.kind != "conv":
            yield ctx.weight_finding(
                f"inner dimensions differ for {short_name(layer.name)}: A has rank "
                f"{layer.rank}, B has {inner_b}",
                layer.b.key if layer.b is not None else layer.name,
            )
            continue
        if spec is None:
            continue
        if _kohya_like(spec) and (layer.kind != "linear" or "block_dims" in _network_args_text(
                spec)):
            continue
        declared, _, _ = resolve_rank_alpha(layer.name, spec)
        if isinstance(declared, int) and declared >= 1 and declared != layer.rank:
            mismatched.setdefault((declared, layer.rank), []).append(layer.name)
    for (declared, found), names in sorted(mismatched.items()):
        yield ctx.weight_finding(
            f"rank {found} in the file differs from the declared r = {declared} "
            f"({plural(len(names), 'module')}: {name_list([short_name(n) for n in names], 3)})",
            names[0],
        )


# --- LC203 --------------------------------------------------------------------------------------


@rule("LC203", "non-finite-values", Severity.ERROR, LORA_AND_OTHER)
def non_finite_values(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports NaN or ±Inf values in a LoRA factor, and finite factors whose update ΔW = s·B·A
    overflows: its norm is not finite even in float64, or its root-mean-square element exceeds
    the largest value of the factors' dtype.

    ## Why is this bad?
    One NaN in A or B makes every output of that layer NaN once the adapter is applied or
    merged; an update that overflows does the same, although each factor looks finite. It is
    the typical result of fp16 training overflow (kohya musubi-tuner #26) and the training job
    often still reports success.

    ## Example
    ```text
    lora_B.weight: 4096 × 16, 17 NaN
    ```

    ## Use instead
    Retrain from the last finite checkpoint, in bf16 or fp32, or with a lower learning rate or
    loss scaling.
    """
    for layer in ctx.adapter.layers:
        bad = False
        for factor, ref, stats in (("A", layer.a, layer.a_stats), ("B", layer.b, layer.b_stats)):
            if stats is not None and stats.nonfinite > 0:
                bad = True
                yield ctx.weight_finding(
                    f"{factor} of {short_name(layer.name)} has "
                    f"{plural(stats.nonfinite, 'non-finite value')} (NaN or Inf)",
                    ref.key if ref is not None else layer.name,
                )
        if not bad:
            overflow = _update_overflow(layer)
            if overflow is not None:
                yield ctx.weight_finding(f"ΔW of {short_name(layer.name)} {overflow}", layer.name)


# The largest finite value per safetensors dtype: a merged ΔW beyond it is Inf.
_DTYPE_MAX = {"F16": 65504.0, "BF16": 3.3895313892515355e38, "F32": 3.4028234663852886e38,
              "F64": 1.7976931348623157e308}


def _update_overflow(layer: LayerRecord) -> str | None:
    """Why ΔW = s·B·A of finite factors is not representable, or None: its norm is not finite
    even in float64, or its root-mean-square element exceeds the factors' dtype (so some
    element of a merged weight is Inf)."""
    delta = layer.delta
    if delta is None:
        return None
    if not math.isfinite(delta.frobenius) or not math.isfinite(delta.sigma_max):
        return "overflows float64: ‖ΔW‖_F is not finite although A and B are"
    dtype = layer.a.dtype if layer.a is not None else None
    limit = _DTYPE_MAX.get(dtype or "")
    size = (layer.in_features or 0) * (layer.out_features or 0)
    if limit is None or size <= 0:
        return None
    rms = delta.frobenius / math.sqrt(size)
    if rms > limit:
        return (f"overflows {dtype}: its root-mean-square element {fmt_num(rms)} exceeds "
                f"{fmt_num(limit)}, so merging it gives Inf")
    return None


# --- LC204 --------------------------------------------------------------------------------------

_ZERO_INITS = ("zeros", "zeros_", "zero", "zero_", "nn.init.zeros_", "torch.nn.init.zeros_")


@rule("LC204", "identity-broken-at-init", Severity.ERROR)
def identity_broken_at_init(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    At stage ``init``, checks that the init scheme's zero factor is exactly zero: B for linear
    and conv layers under B-zero schemes (PEFT default, gaussian, LLMBook normal, EVA), A for
    embedding layers and MiCA, and B·A = 0 for the orthogonal init. Also reports a custom LoRA
    class in a Python script whose B is given a random init.

    ## Why is this bad?
    With the zero factor non-zero, the adapted model differs from the base model before the
    first step (mflux #739: a visible grid artefact on every fresh LoRA). Training then starts
    from a damaged model. Data-driven inits (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) start with both
    factors non-zero on a rewritten base and are not judged here.

    ## Example
    ```python
    self.lora_B = nn.Linear(r, out_features, bias=False)
    nn.init.normal_(self.lora_B.weight, std=0.02)
    ```

    ## Use instead
    ```python
    nn.init.zeros_(self.lora_B.weight)
    ```
    """
    spec = ctx.spec
    if spec is not None and spec.source_format == "python":
        b_init = spec.extras.get("custom_lora_b_init")
        if isinstance(b_init, str) and b_init.strip() and b_init.strip() not in _ZERO_INITS:
            yield ctx.config_finding(
                f"the custom LoRA layer initialises B with {b_init}, so W' ≠ W at step 0",
                "custom_lora_b_init",
            )
    if ctx.stage != Stage.INIT:
        return
    if spec is not None and spec.init_lora_weights is False:
        return  # LC105 reports the declaration itself
    scheme = scheme_in_force(ctx)
    broken: list[tuple[LayerRecord, str]] = []
    for layer in _lora_layers(ctx):
        if not measured(layer):
            continue
        which = zero_factor(layer, scheme.scheme)
        if which in ("A", "B"):
            if is_zero(layer, which) is False:
                broken.append((layer, f"{short_name(layer.name)} ({which} ≠ 0)"))
        elif which == "BA" and not delta_negligible(layer, 1e-3):
            broken.append((layer, f"{short_name(layer.name)} (B·A ≠ 0)"))
    if broken:
        yield ctx.weight_finding(
            f"W' ≠ W at step 0 under the {scheme.scheme.value} init: the zero factor is not "
            f"zero in {plural(len(broken), 'module')}: {name_list([t for _, t in broken], 3)}",
            broken[0][0].name,
        )


# --- LC205 --------------------------------------------------------------------------------------

# Pearson kurtosis of the families: uniform 1.8, normal 3.
_UNIFORM_K, _NORMAL_K = 1.8, 3.0
_Z = 4.0


def expected_a_std(layer: LayerRecord, scheme: InitScheme, sigma: float | None) -> float | None:
    """σ of A expected at init for this layer, or None when the scheme has no fixed std."""
    fan_in = layer.in_features
    if scheme == InitScheme.KAIMING_UNIFORM:
        return 1.0 / math.sqrt(3.0 * fan_in) if fan_in else None
    if scheme == InitScheme.GAUSSIAN:
        return 1.0 / layer.rank if layer.rank else None
    if scheme == InitScheme.NORMAL:
        return sigma
    return None


def std_band(tolerance: float, n: int, kurtosis: float) -> float:
    """Relative band for a sample std of n draws: the profile's tolerance widened by z times
    the sampling error of a std, σ·√((κ−1)/(4n))."""
    return tolerance + _Z * math.sqrt(max(kurtosis - 1.0, 0.0) / (4.0 * max(n, 1)))


@rule("LC205", "init-distribution-mismatch", Severity.WARNING)
def init_distribution_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    At stage ``init``, compares A's standard deviation with what the init scheme in force gives
    at that fan-in: 1/√(3·in) for kaiming-uniform (PEFT default, kohya, torchtune, mlx), 1/r
    for PEFT's ``gaussian``, the declared σ for a normal init (0.02 under the ``llmbook``
    profile). The band is the profile's tolerance (default ±15%) plus four times the sampling
    error of a standard deviation, σ·√((κ−1)/(4n)). With enough values it also checks the family
    by kurtosis (uniform ≈ 1.8, normal ≈ 3). For embeddings it checks B ~ N(0, 1).
    Data-driven, orthogonal, EVA and MiCA inits have no fixed std and are not checked.

    The check runs only at init. Training moves A by design (with Adam, by about the learning
    rate per step whatever the init), so a trained A says nothing reliable about its init; any
    band wide enough to pass every healthy trained adapter would catch nothing.

    ## Why is this bad?
    A mismatched A changes the effective learning rate of the adapter: "A ~ N(0, 0.02)" is the
    kaiming std only at fan-in ≈ 833, so a hand-written layer using it on a 4096-wide model
    starts 2.2× too large; ``std = 1/√r`` instead of 1/r is 4× too large at r = 16. It often
    reveals a custom LoRA layer that does not do what its config claims.

    ## Example
    ```python
    nn.init.normal_(self.lora_A.weight, std=1.0)  # config: init_lora_weights=True
    ```

    ## Use instead
    ```python
    nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
    ```
    """
    if ctx.stage != Stage.INIT:
        return
    scheme = scheme_in_force(ctx)
    tol = ctx.thresholds.std_tolerance
    for layer in _lora_layers(ctx):
        if layer.kind == "embedding":
            yield from _embedding_b(ctx, layer, scheme.scheme, tol)
            continue
        stats = layer.a_stats
        expected = expected_a_std(layer, scheme.scheme, scheme.std)
        if stats is None or expected is None or expected <= 0 or stats.numel < 16:
            continue
        if stats.nonfinite or stats.zero_fraction >= 1.0:
            continue  # LC203 / LC206 report these
        family_k = _UNIFORM_K if scheme.scheme == InitScheme.KAIMING_UNIFORM else _NORMAL_K
        band = std_band(tol, stats.numel, family_k)
        ratio = stats.std / expected
        key = layer.a.key if layer.a is not None else layer.name
        if abs(ratio - 1.0) > band:
            yield ctx.weight_finding(
                f"A of {short_name(layer.name)} has std {fmt_num(stats.std)}, expected "
                f"{fmt_num(expected)} for {scheme.scheme.value} at in={layer.in_features}"
                f"{', r=' + str(layer.rank) if scheme.scheme == InitScheme.GAUSSIAN else ''} "
                f"({ratio:.2f}×, band ±{band:.0%})",
                key,
            )
            continue
        kurt = stats.kurtosis
        if kurt is None:
            continue
        se = math.sqrt(24.0 / stats.numel)
        wrong = (family_k == _UNIFORM_K and kurt > 2.4) or (family_k == _NORMAL_K and kurt < 2.4)
        if wrong and abs(kurt - family_k) > _Z * se:
            family = "uniform" if family_k == _UNIFORM_K else "normal"
            yield ctx.weight_finding(
                f"A of {short_name(layer.name)} has kurtosis {kurt:.2f}, not the {family} "
                f"family of {scheme.scheme.value} (≈ {family_k})",
                key,
            )


def _embedding_b(
    ctx: RuleContext, layer: LayerRecord, scheme: InitScheme, tol: float
) -> Iterator[Finding]:
    stats = layer.b_stats
    if scheme not in (InitScheme.KAIMING_UNIFORM, InitScheme.GAUSSIAN, InitScheme.NORMAL,
                      InitScheme.EMBEDDING):
        return
    if stats is None or stats.numel < 16 or stats.nonfinite or stats.zero_fraction >= 1.0:
        return
    if not is_zero(layer, "A"):
        return
    band = std_band(tol, stats.numel, _NORMAL_K)
    if abs(stats.std - 1.0) > band:
        yield ctx.weight_finding(
            f"B of embedding {short_name(layer.name)} has std {fmt_num(stats.std)}, expected "
            f"1 (N(0, 1), band ±{band:.0%})",
            layer.b.key if layer.b is not None else layer.name,
        )


# --- LC206, LC207, LC208 ------------------------------------------------------------------------


@rule("LC206", "dead-adapter", Severity.ERROR)
def dead_adapter(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports modules whose A and B are both exactly zero.

    ## Why is this bad?
    The gradient of B is proportional to A and the gradient of A to B, so when both are zero
    neither can ever move: the module stays a no-op however long you train. It comes from a
    custom init that zeroes the wrong factor (cosmos-predict2.5 PR #15) or from saving
    ungathered ZeRO-3 / CPU-offload buffers as zeros.

    ## Example
    ```python
    nn.init.zeros_(self.lora_A.weight)
    nn.init.zeros_(self.lora_B.weight)
    ```

    ## Use instead
    ```python
    nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(self.lora_B.weight)
    ```
    """
    dead = [layer for layer in _lora_layers(ctx) if _dead(layer)]
    if not dead:
        return
    total = sum(1 for layer in _lora_layers(ctx) if measured(layer))
    scope = "every module" if len(dead) == total else f"{len(dead)} of {total} modules"
    yield ctx.weight_finding(
        f"A and B are both zero in {scope}, so they can never train: "
        f"{name_list([short_name(layer.name) for layer in dead], 3)}",
        dead[0].name,
    )


def _live(ctx: RuleContext) -> list[LayerRecord]:
    """Measured LoRA modules that are not dead (LC206 reports dead ones)."""
    return [layer for layer in _lora_layers(ctx) if measured(layer) and not _dead(layer)]


@rule("LC207", "zero-update-adapter", Severity.ERROR, also=Severity.WARNING, when=(
    "error when the adapter is known to be trained (--stage trained, the stage setting, a "
    "trainer's record of steps, factors that moved); warning when nothing tells"))
def no_op_adapter(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports an adapter whose update ΔW = s·B·A is exactly zero in every module (B = 0, A = 0 or
    ‖ΔW‖ = 0) although it was trained: the stage is ``trained`` because ``--stage trained`` or
    the ``stage`` setting says so, or because the trainer's own files say steps were taken (a
    ``trainer_state.json`` with ``global_step`` > 0 beside or above the adapter, a
    ``checkpoint-N`` / ``step-N`` / ``epoch_N`` folder, kohya's ``ss_steps`` or ``ss_epoch``, an
    mlx-lm ``0000100_adapters.safetensors``). A zero update with no such sign is what a fresh
    adapter holds (stage ``init``, inferred from the weights) and is not reported.

    ## Why is this bad?
    Applying it changes nothing: the "fine-tuned" model is the base model. It is the signature
    of a training run that never updated the adapter: frozen parameters, gradient checkpointing
    without ``enable_input_require_grads()``, an optimizer built before ``get_peft_model``, or a
    save from the wrong process under ZeRO-3 (peft #515, #940; transformers #26221).

    ## Example
    ```text
    checkpoint-500/adapter_model.safetensors: all 64 lora_B.weight tensors are exactly zero,
    and checkpoint-500/trainer_state.json says global_step 500
    ```

    ## Use instead
    Check that ``model.print_trainable_parameters()`` shows the LoRA parameters and that the
    loss moves, then save again.
    """
    if ctx.stage is not Stage.TRAINED and ctx.stage is not Stage.UNKNOWN:
        return
    live = _live(ctx)
    if not live or not all(delta_is_zero(layer) for layer in live):
        return
    zero = f"ΔW is zero in all {plural(len(live), 'module')}"
    adapter = ctx.adapter
    if adapter.stage_source is StageSource.TRAINING_EVIDENCE:
        yield ctx.weight_finding(
            f"{zero} although training took steps ({adapter.stage_evidence}): training never "
            "updated this adapter", live[0].name,
        )
    elif adapter.stage_forced:
        yield ctx.weight_finding(
            f"{zero}: training never updated this adapter (stage trained, set by "
            f"{'--stage' if adapter.stage_source is StageSource.COMMAND_LINE else 'settings'})",
            live[0].name,
        )
    elif ctx.stage is Stage.TRAINED:
        yield ctx.weight_finding(
            f"{zero} although {adapter.stage_evidence or 'the factors moved'}: the update "
            "this adapter applies is nothing", live[0].name,
        )
    else:  # no step-0 signature to go by and no record of training
        yield ctx.weight_finding(
            f"{zero}: if this adapter was trained, training never updated it "
            "(set the stage to init for a fresh adapter)", live[0].name,
            severity=Severity.WARNING,
        )


@rule("LC208", "modules-never-trained", Severity.WARNING)
def modules_never_trained(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    When some modules moved and others did not, names the k of N modules whose ΔW is still
    exactly zero.

    ## Why is this bad?
    Those modules received no gradient: a frozen sub-model (the text encoder of a diffusion
    pipeline, a vision tower), layers outside the forward path, or a ``layers_to_transform``
    that does not match what the data reaches. You pay for them in size and get nothing; often
    they were the ones you meant to train.

    ## Example
    ```text
    text_encoder.*.lora_B.weight all zero while unet.*.lora_B.weight moved
    ```

    ## Use instead
    Unfreeze the sub-model (``train_text_encoder``), or drop those modules from
    ``target_modules``.
    """
    if ctx.stage == Stage.INIT:
        return
    live = _live(ctx)
    zero = [layer for layer in live if delta_is_zero(layer)]
    if not zero or len(zero) == len(live):
        return
    yield ctx.weight_finding(
        f"ΔW is zero in {len(zero)} of {len(live)} modules while the others moved: "
        f"{name_list([short_name(layer.name) for layer in zero], 5)}",
        zero[0].name,
    )


# --- LC209 --------------------------------------------------------------------------------------

MIN_PEERS = 4
# With 3 peers (fewer than MIN_PEERS) a module must exceed all of them by this many times the
# profile's outlier factor.
MIN_FEW_PEERS = 3
FEW_PEERS_FACTOR = 5.0


@rule("LC209", "update-norm-outlier", Severity.WARNING)
def update_norm_outlier(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Compares each module's ‖ΔW‖_F with the median of its peers (the other modules of the same
    type, such as every ``q_proj``) and warns when it exceeds the profile's factor (default 20×).
    With 3 peers a median means little, so a module must exceed every one of them by five times
    that factor (100×); with fewer than 3 peers the rule is skipped.

    ## Why is this bad?
    One module far stronger than its peers usually means a local blow-up (a loss spike, an
    fp16 overflow on the way to Inf) or a rank/alpha pattern that gave it a much larger scale.
    That module then dominates the adapter's effect, and merging it can push activations out of
    range.

    ## Example
    ```text
    layers.17.mlp.down_proj ‖ΔW‖ = 41.0, median of 31 down_proj peers 0.52
    ```

    ## Use instead
    Inspect the run around the spike (``loracheck inspect`` shows the per-layer norms); lower
    the learning rate or clip gradients and retrain.
    """
    if ctx.stage == Stage.INIT:
        return
    factor = ctx.thresholds.outlier_factor
    groups: dict[tuple[str, str], list[LayerRecord]] = {}
    for layer in _live(ctx):
        if layer.delta is not None and math.isfinite(layer.delta.frobenius):
            groups.setdefault((layer.kind, layer.module_type), []).append(layer)
    for (_, mtype), layers in sorted(groups.items()):
        if len(layers) < MIN_FEW_PEERS + 1:
            continue
        # Sorted once: each module's peers are the others, their median read off by index.
        norms = sorted(layer.delta.frobenius for layer in layers if layer.delta is not None)
        for layer in layers:
            assert layer.delta is not None
            norm = layer.delta.frobenius
            n_peers = len(layers) - 1
            if n_peers >= MIN_PEERS:
                med = _median_of_others(norms, bisect.bisect_left(norms, norm))
                if med > 0 and norm > factor * med:
                    yield ctx.weight_finding(
                        f"‖ΔW‖ of {short_name(layer.name)} is {fmt_num(norm)}, "
                        f"{norm / med:.0f}× the median {fmt_num(med)} of {n_peers} {mtype} "
                        "peers", layer.name)
                continue
            peers = [p.delta.frobenius for p in layers if p is not layer and p.delta is not None]
            top = max(peers)
            if top > 0 and norm > FEW_PEERS_FACTOR * factor * top:
                yield ctx.weight_finding(
                    f"‖ΔW‖ of {short_name(layer.name)} is {fmt_num(norm)}, {norm / top:.0f}× "
                    f"the largest of its {len(peers)} {mtype} peers ({fmt_num(top)})",
                    layer.name)


# --- LC210 --------------------------------------------------------------------------------------


def _median_of_others(ordered: list[float], index: int) -> float:
    """:func:`statistics.median` of the sorted ``ordered`` without its element at ``index``
    (the same arithmetic: the middle value, or the mean of the two middle ones)."""
    count = len(ordered) - 1

    def at(i: int) -> float:
        return ordered[i] if i < index else ordered[i + 1]

    if count % 2:
        return at(count // 2)
    return (at(count // 2 - 1) + at(count // 2)) / 2


@rule("LC210", "rank-collapse", Severity.WARNING)
def rank_collapse(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Warns when the effective rank of a trained module's ΔW (exp of the entropy of its singular
    values) is at most max(1, r/8): the update uses a small fraction of the rank it pays for.

    ## Why is this bad?
    Memory, compute and file size grow with r, but the learnt update is rank 1 or 2; a smaller
    rank would do the same. Collapse also hints at a learning rate too high for the factors,
    or a B that only ever received one gradient direction.

    ## Example
    ```text
    r = 32, effective rank of ΔW 1.2
    ```

    ## Use instead
    Retrain with a rank close to the effective rank (``r: 4`` here), or investigate why the
    update collapsed.
    """
    if ctx.stage == Stage.INIT:
        return
    divisor = ctx.thresholds.rank_collapse_divisor or 8.0
    for layer in _live(ctx):
        r, d = layer.rank, layer.delta
        if r is None or r < 2 or d is None or delta_negligible(layer):
            continue
        limit = max(1.0, r / divisor)
        if d.effective_rank <= limit * 1.05:
            need = max(1, math.ceil(d.effective_rank - 0.05))
            yield ctx.weight_finding(
                f"ΔW of {short_name(layer.name)} has effective rank "
                f"{d.effective_rank:.2f}: r={r} buys a rank-{need} update; r={need} would do",
                layer.name,
            )


# --- LC211 --------------------------------------------------------------------------------------


@rule("LC211", "dtype-hazard", Severity.WARNING)
def dtype_hazard(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Warns about precision hazards of the stored factors: fp16 values within the profile's
    margin (default 2×) of fp16's largest value 65504; A and B of one module in different
    dtypes, or LoRA factors in several float dtypes across the file; fp16 factors whose non-zero
    values are all subnormal, and fp16 updates whose every entry underflows to zero.

    ## Why is this bad?
    Values near 65504 overflow to Inf as soon as they are multiplied or merged in fp16.
    Mixed dtypes mean the factors went through different save paths (a partial cast, a merged
    checkpoint), and some consumers cast everything to the first dtype they see. Subnormal fp16
    values have lost most of their precision, and an update below fp16's smallest value
    vanishes when merged into an fp16 base (sd-webui-additional-networks #49).

    ## Example
    ```text
    lora_A.weight F32, lora_B.weight F16
    ```

    ## Use instead
    Save adapters in fp32 or bf16 (PEFT's default autocast keeps them fp32), all factors in one
    dtype.
    """
    limit = FP16_MAX / max(ctx.thresholds.fp16_overflow_margin, 1.0)
    factor_dtypes: dict[str, int] = {}
    for layer in _lora_layers(ctx):
        pairs = (("A", layer.a, layer.a_stats), ("B", layer.b, layer.b_stats))
        for factor, ref, stats in pairs:
            if ref is None:
                continue
            factor_dtypes[ref.dtype] = factor_dtypes.get(ref.dtype, 0) + 1
            if ref.dtype != "F16" or stats is None or stats.numel == 0:
                continue
            if math.isfinite(stats.absmax) and stats.absmax > limit:
                yield ctx.weight_finding(
                    f"{factor} of {short_name(layer.name)} reaches {fmt_num(stats.absmax)} in "
                    f"fp16, within {fmt_num(FP16_MAX / stats.absmax)}× of overflow",
                    ref.key,
                )
            elif 0 < stats.absmax < FP16_MIN_NORMAL and stats.zero_fraction < 1.0:
                yield ctx.weight_finding(
                    f"{factor} of {short_name(layer.name)} is subnormal in fp16 (max "
                    f"{fmt_num(stats.absmax)}): its precision is lost",
                    ref.key,
                )
        if layer.a is not None and layer.b is not None and layer.a.dtype != layer.b.dtype:
            yield ctx.weight_finding(
                f"A and B of {short_name(layer.name)} have different dtypes "
                f"({layer.a.dtype}, {layer.b.dtype})",
                layer.b.key,
            )
        elif (
            layer.b is not None
            and layer.b.dtype == "F16"
            and layer.delta is not None
            and 0 < layer.delta.sigma_max < FP16_MIN_SUBNORMAL
        ):
            yield ctx.weight_finding(
                f"ΔW of {short_name(layer.name)} is below fp16's smallest value everywhere "
                f"(σ_max {fmt_num(layer.delta.sigma_max)}): it vanishes when merged in fp16",
                layer.name,
            )
    same_pair = all(
        layer.a is None or layer.b is None or layer.a.dtype == layer.b.dtype
        for layer in _lora_layers(ctx)
    )
    if len(factor_dtypes) > 1 and same_pair:
        mix = ", ".join(f"{k} ×{v}" for k, v in sorted(factor_dtypes.items()))
        yield ctx.weight_finding(f"LoRA factors are stored in mixed dtypes: {mix}", None)


# --- LC212 --------------------------------------------------------------------------------------


def _close(x: float, y: float, rel: float = 2e-3) -> bool:
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-12)


@rule("LC212", "config-weights-disagree", Severity.ERROR)
def config_weights_disagree(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Cross-checks the sources of truth that travel together: a config file against the
    metadata embedded in the weights (rank, alpha, rsLoRA), kohya's per-module ``.alpha``
    tensors against ``ss_network_alpha``, and the modules present in the file against the
    config's ``target_modules``.

    ## Why is this bad?
    When they disagree, consumers pick different ones: diffusers and ComfyUI use the tensors,
    others the metadata or the config, so the same adapter is applied at different scales or
    on different modules (diffusers #6087, PR #14409). It usually means the config of one run
    was shipped with the weights of another.

    ## Example
    ```text
    ss_network_alpha = "16"   but every lora_unet_*.alpha tensor holds 1.0
    ```

    ## Use instead
    Ship the config and the metadata written by the run that produced the weights, or fix the
    metadata so all sources agree.
    """
    adapter = ctx.adapter
    spec, meta = adapter.spec, adapter.metadata_spec
    if spec is not None and meta is not None and spec is not meta:
        for field_name in ("rank", "alpha", "use_rslora"):
            a, b = getattr(spec, field_name), getattr(meta, field_name)
            if a is None or b is None:
                continue
            same = _close(float(a), float(b)) if field_name == "alpha" else a == b
            if not same:
                yield ctx.config_finding(
                    f"{field_name} is {a} in the config but {b} in the weights' metadata",
                    field_name,
                )
    yield from _alpha_tensors(ctx, meta)
    yield from _targets(ctx, spec)


def _alpha_tensors(ctx: RuleContext, meta: LoraSpec | None) -> Iterator[Finding]:
    if meta is None or meta.alpha is None or meta.alpha <= 0 or not math.isfinite(meta.alpha):
        return
    if "block_alphas" in _network_args_text(meta):
        return
    differ: dict[float, list[str]] = {}
    for layer in _lora_layers(ctx):
        if layer.alpha_source != "tensor" or layer.alpha is None or layer.kind != "linear":
            continue
        if not _close(layer.alpha, meta.alpha):
            key = layer.alpha_tensor.key if layer.alpha_tensor is not None else layer.name
            differ.setdefault(layer.alpha, []).append(key)
    for value, keys in sorted(differ.items()):
        yield ctx.weight_finding(
            f"{plural(len(keys), '.alpha tensor')} hold {fmt_num(value)} but ss_network_alpha "
            f"is {fmt_num(meta.alpha)}: {name_list(keys, 3)}",
            keys[0],
        )


def _targets(ctx: RuleContext, spec: LoraSpec | None) -> Iterator[Finding]:
    if spec is None or spec.target_modules is None or not ctx.adapter.has_weights:
        return
    if spec.extras.get("target_parameters") or _kohya_like(spec):
        return
    if "torchtune" in ctx.adapter.format or ctx.adapter.format.startswith("kohya"):
        return
    if spec.source_format == "litgpt":  # flags, not module names (LC106 maps them)
        return
    layers = _lora_layers(ctx)
    targets = spec.target_modules
    outside = [layer.name for layer in layers if not target_matches(layer.name, targets)]
    # Targets that select none of the file's modules are LC106's finding (matches nothing);
    # here only a partial disagreement is news.
    if outside and len(outside) < len(layers):
        yield ctx.weight_finding(
            f"{plural(len(outside), 'module')} in the file {'is' if len(outside) == 1 else 'are'}"
            f" not selected by target_modules: "
            f"{name_list([short_name(n) for n in outside], 3)}",
            outside[0],
        )


# --- LC213 --------------------------------------------------------------------------------------


@rule("LC213", "empty-adapter", Severity.ERROR)
def empty_adapter(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a weights file with no tensors at all, and tensors with a zero-size dimension or a
    factor flattened to one dimension.

    ## Why is this bad?
    That is what DeepSpeed ZeRO-3 writes when the parameters are saved without being gathered
    first: every shard outside rank 0 is an empty placeholder. The file loads without error in
    many tools and the adapter does nothing (peft `save_and_load.py` warns about exactly this).

    ## Example
    ```text
    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight  shape [0]
    ```

    ## Use instead
    Save under ZeRO-3 with ``stage3_gather_16bit_weights_on_model_save: true``, or through
    ``accelerator.get_state_dict(model)`` / the Trainer's own save.
    """
    adapter = ctx.adapter
    if not adapter.has_weights:
        return
    blocked = {"LC001", "LC002", "LC003"}
    if adapter.n_tensors == 0 and not any(f.code in blocked for f in adapter.faults):
        yield ctx.weight_finding("the weights file holds no tensors", None)
        return
    if adapter.empty_tensors:
        keys = [ref.key for ref in adapter.empty_tensors]
        shapes = {ref.key: ref.shape for ref in adapter.empty_tensors}
        yield ctx.weight_finding(
            f"{plural(len(keys), 'tensor')} {'is' if len(keys) == 1 else 'are'} empty "
            f"(zero-size or 1-D factors, as ZeRO-3 writes without a gather): "
            f"{name_list([f'{k} {list(shapes[k])}' for k in keys], 3)}",
            keys[0],
        )


# --- LC214 --------------------------------------------------------------------------------------


@rule("LC214", "dora-magnitude-invalid", Severity.ERROR)
def dora_magnitude_invalid(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    For DoRA adapters (``use_dora`` in the config, or magnitude vectors in the file), checks
    that every LoRA module has its magnitude vector (``lora_magnitude_vector``, ``dora_scale``)
    and that it is finite and strictly positive, and that a PEFT config whose weights hold
    magnitudes says ``use_dora: true``.

    ## Why is this bad?
    DoRA computes W' = m ⊙ (W + s·B·A)/‖W + s·B·A‖: without m the module falls back to plain
    LoRA or fails to load (peft #2566); a zero, negative or NaN m zeroes, flips or poisons the
    whole output row, not just the update.

    ## Example
    ```text
    use_dora: true, but no *.lora_magnitude_vector in adapter_model.safetensors
    ```

    ## Use instead
    Save the adapter with PEFT ≥ 0.12 (which writes the magnitudes) and do not filter the state
    dict down to ``lora_A`` / ``lora_B`` keys.
    """
    layers = _lora_layers(ctx)
    spec = ctx.spec
    dora = bool(spec is not None and spec.use_dora) or any(layer.magnitude for layer in layers)
    if not dora or not ctx.adapter.has_weights:
        return
    with_m = [layer for layer in layers if layer.magnitude is not None]
    if (with_m and spec is not None and spec.source_format == "peft" and not spec.use_dora
            and "use_dora" not in spec.invalid):
        yield ctx.config_finding(
            f"the weights hold DoRA magnitude vectors ({len(with_m)} modules) but the config "
            "does not set use_dora: PEFT loads the adapter as plain LoRA and drops them",
            "use_dora")
    missing = [layer.name for layer in layers if layer.magnitude is None and layer.a is not None]
    if missing:
        yield ctx.weight_finding(
            f"DoRA magnitude is missing for {len(missing)} of {len(layers)} modules: "
            f"{name_list([short_name(n) for n in missing], 3)}",
            missing[0],
        )
    for layer in layers:
        stats, ref = layer.magnitude_stats, layer.magnitude
        if stats is None or ref is None:
            continue
        if stats.nonfinite:
            yield ctx.weight_finding(
                f"DoRA magnitude of {short_name(layer.name)} has "
                f"{plural(stats.nonfinite, 'non-finite value')}",
                ref.key,
            )
        elif stats.zero_fraction > 0 or (stats.min if stats.min is not None else stats.mean) <= 0:
            lowest = f" (min {stats.min:.4g})" if stats.min is not None else ""
            yield ctx.weight_finding(
                f"DoRA magnitude of {short_name(layer.name)} is not strictly positive{lowest}",
                ref.key,
            )
