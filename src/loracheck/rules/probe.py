"""Probe rules (LC3xx): what `loracheck verify` proves on a live model.

The measurements run in :mod:`loracheck.verify` (torch) and fill one
:class:`~loracheck.probe_record.ProbeRecord`; each rule here is a pure function of that record
(no torch), so the rules are tested on hand-built records and the engine applies the settings
to their findings as it does for ``check``. A record of a run that stopped early (the adapter
does not fit, or is refused) holds no later measurements, and the rules that judge those
yield nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from loracheck.model import Severity
from loracheck.rules.context import ANY_METHOD, Finding, RuleContext, Subject, rule

if TYPE_CHECKING:
    from loracheck.probe_record import ProbeRecord

# The record module is imported where a rule reads one of its enums: `check` and `inspect` load
# this module through the registry but never build a ProbeRecord (start-up, issue 14).


def _record(ctx: RuleContext) -> ProbeRecord | None:
    return ctx.probe


def root_cause(record: ProbeRecord) -> str | None:
    """The one setting that keeps every factor from learning, when there is one: the reason
    LC302 and LC304 name first, before their symptoms."""
    if record.scales and all(s == 0 for s in record.scales):
        return f"the scale s is 0 in every module (alpha {record.alpha:g})" if (
            record.alpha is not None) else "the scale s is 0 in every module"
    if record.dropout >= 1.0:
        return f"lora_dropout {record.dropout:g} zeroes the input of every LoRA branch"
    if record.lr == 0:
        return "the learning rate is 0"
    grads = record.gradients
    frozen = [f"{g.module}.lora_{g.factor}" for g in grads if g.backward == 1 and not g.trainable]
    if frozen:
        return (f"{len(frozen)} LoRA factors are frozen (first {frozen[0]}; requires_grad is "
                "False)")
    if grads and all(not g.grad_absmax for g in grads if g.trainable):
        return ("no LoRA factor receives a gradient (the LoRA branch is detached, bypassed or "
                "fed zeros)")
    return None


@rule("LC301", "probe-identity-broken", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def probe_identity_broken(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Runs the model with and without the freshly injected adapter on a fixed batch, in train and
    in eval mode, and reports any difference of the outputs: max |logits(W + s·B·A) − logits(W)|.
    Train mode compares like with like: LoRA's dropout draws from its own generator, so the base
    model's dropout masks are the same in both runs. It must be exactly 0 in fp32 for B = 0
    schemes (and for a fresh ``--adapter``), and within the dtype's tolerance against the
    residual base for PiSSA-like schemes.

    ## Why is this bad?
    LoRA's promise is W' = W + s·B·A = W at step 0: training starts from the pretrained model.
    A layer that is not the identity at step 0 (B initialised at random, a custom layer that
    adds a bias, dropout applied to the base path) starts training from a damaged model.

    ## Example
    ```text
    max |Δlogit| = 3.1e-01 at step 0 in eval mode (B is random)
    ```

    ## Use instead
    Zero B (``nn.init.zeros_``) or use a scheme that keeps the identity (PEFT's default,
    ``gaussian``, ``pissa`` on its residual base).
    """
    from loracheck.probe_record import IdentityMode

    record = _record(ctx)
    identity = record.identity if record is not None else None
    if record is None or identity is None or identity.mode is IdentityMode.NOT_EXPECTED:
        return
    d_eval, d_train, tol = identity.eval_max_abs, identity.train_max_abs, identity.tolerance
    if identity.mode is IdentityMode.EXACT:
        broken = d_eval != 0.0 or d_train != 0.0
    elif identity.mode is IdentityMode.WITHIN_TOLERANCE:
        broken = d_eval > tol or d_train > tol
    else:
        broken = d_eval > tol
    if broken:
        worst = max(d_eval, d_train)
        yield Finding(
            f"the adapted model differs from the base at step 0 (max |Δoutput| {worst:.3g}, "
            f"eval {d_eval:.3g}, train {d_train:.3g}, tolerance {tol:.3g}, init {record.init}); "
            "LoRA must start as the identity"
        )


@rule("LC302", "stalled-loss", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def stalled_loss(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Trains the adapter for ``--probe-steps`` steps on one fixed batch (memorisation: the same
    batch every step) and reports when the eval-mode loss on that batch did not fall at least
    ``min_loss_drop`` (1e-4, relative) or rose. The message names the cause first when one
    setting explains it: a scale of 0, ``lora_dropout`` 1, a learning rate of 0, frozen factors,
    a detached branch, or updates that diverge.

    ## Why is this bad?
    On a batch it sees at every step, any working adapter lowers the loss, on a random-init model
    as on a pretrained one (the smallest drop over the test matrix of 15 architectures is 8e-4).
    A loss that does not move means no useful gradient reaches the adapter; a loss that rises
    means the scale or the learning rate makes the updates diverge. A long job would burn its
    budget learning nothing.

    ## Example
    ```text
    the learning rate is 0: the loss fell only 0% on the probe's fixed batch in 20 steps
    ```

    ## Use instead
    Build the optimizer after injecting the adapter, over the trainable parameters, with a
    learning rate suited to LoRA (1e-4 … 1e-3), and check α/r.
    """
    record = _record(ctx)
    losses = record.losses if record is not None else None
    if record is None or losses is None:
        return
    drop = losses.drop
    if drop is None:  # a non-finite loss: LC307 reports it
        return
    if drop >= losses.min_drop:
        return
    before, after = losses.eval_before, losses.eval_after
    cause = root_cause(record)
    trend = (f"the loss rose {100 * -drop:.3g}%" if drop < 0
             else f"the loss fell only {100 * drop:.3g}%")
    symptom = (f"{trend} on the probe's fixed batch in {record.probe_steps} steps "
               f"({before:.6g} → {after:.6g}; a learning adapter lowers it at least "
               f"{100 * losses.min_drop:g}%)")
    if cause is None and drop < 0:
        scale = max(record.scales, default=0.0)
        cause = f"the updates diverge (scale s up to {scale:.3g}, lr {record.lr:g})"
    yield Finding(f"{cause}: {symptom}" if cause else symptom)


@rule("LC303", "base-weights-learn", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def base_weights_learn(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a base (non-adapter) parameter that requires a gradient or that changed during the
    probe (compared bit for bit), and a trainable parameter count that differs from the one the
    spec and the shapes imply (Σ r·(in + out) over the targeted modules).

    ## Why is this bad?
    LoRA trains the factors only. A base layer left trainable is full fine-tuning by accident:
    memory and optimizer state balloon, the saved adapter does not contain what changed, and
    the adapted model cannot be reproduced from base + adapter.

    ## Example
    ```text
    base parameter model.layers.0.mlp.down_proj.weight requires grad
    ```

    ## Use instead
    Freeze by module type after injection (every parameter, then re-enable ``lora_A``/``lora_B``
    modules), never by name substring.
    """
    record = _record(ctx)
    if record is None:
        return
    for name in record.leaked:
        yield Finding(f"base parameter {name} requires grad: it will be trained", name)
    for name in record.base_changed:
        yield Finding(f"base parameter {name} changed during the probe", name)
    actual, expected = record.trainable, record.expected_trainable
    if actual is not None and expected is not None and actual != expected and not record.leaked:
        yield Finding(f"{actual} trainable parameters, but the spec and the shapes imply "
                      f"{expected}")


@rule("LC304", "gradient-free-factor", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def gradient_free_factor(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    After the first backward pass every B must have a non-zero gradient (A's is exactly zero then,
    while B = 0: expected and reported as such); after the second, every A too. Names each factor
    that got none.

    ## Why is this bad?
    A factor with no gradient never trains: a frozen B (``requires_grad=False`` by a name filter),
    a module bypassed in the forward pass, gradient checkpointing without
    ``enable_input_require_grads()``. The adapter saves as its initial value.

    ## Example
    ```text
    lora_B of model.layers.3.self_attn.q_proj has no gradient after the first backward
    ```

    ## Use instead
    Make every LoRA factor trainable and reached by the forward pass; with gradient checkpointing,
    enable input gradients.
    """
    record = _record(ctx)
    if record is None or not record.gradients:
        return
    cause = root_cause(record)
    failing: list[tuple[str, str]] = []
    for g in record.gradients:
        where = f"{g.module}.lora_{g.factor}"
        if not g.trainable:
            if g.backward == 1:
                failing.append((where, "is frozen: it never learns"))
        elif g.grad_absmax is None:
            if g.backward == 1:
                failing.append((where, "got no gradient"))
        elif g.partner_zero:
            # A zero partner makes this gradient exactly zero: expected (B = 0 at init).
            if g.grad_absmax != 0.0:
                failing.append((where, "has a gradient although its partner factor is zero"))
        elif g.grad_absmax == 0.0:
            failing.append((where, f"has a zero gradient after backward {g.backward}"))
    if not failing:
        return
    n_factors = len({(g.module, g.factor) for g in record.gradients})
    if cause is not None and len(failing) * 2 >= n_factors:
        yield Finding(f"{cause}: {len(failing)} of {n_factors} factors never learn "
                      f"(first: {failing[0][0]} {failing[0][1]})", failing[0][0])
        return
    for where, why in failing:
        yield Finding(f"{where} {why}", where)


@rule("LC305", "merge-changes-outputs", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def merge_changes_outputs(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Merges the trained adapter into the base weights (W ← W + s·B·A) and compares the logits with
    the unmerged model, beyond the dtype's tolerance; then unmerges and checks that W is restored.

    ## Why is this bad?
    Serving usually merges. A merge that changes the outputs (a wrong scale, a transposed ΔW,
    fan_in_fan_out ignored) ships a model that behaves unlike the one that was evaluated.

    ## Example
    ```text
    merged vs unmerged: max |Δlogit| = 4.2e-02 (tolerance 1e-4 in fp32)
    ```

    ## Use instead
    Merge with the same scale and orientation as the forward pass: ΔW = s·B·A, (out, in).
    """
    record = _record(ctx)
    merge = record.merge if record is not None else None
    if merge is None:
        return
    if merge.max_abs > merge.tolerance:
        yield Finding(f"merged and unmerged outputs differ by {merge.max_abs:.3g} "
                      f"(tolerance {merge.tolerance:.3g})")
    if merge.second_merge_changed:
        yield Finding(f"merging twice changed {merge.second_merge_changed} layers again")
    for name, err in merge.unmerge_failures:
        yield Finding(f"unmerge does not restore {name}.weight (max |ΔW| {err:.3g})", name)


@rule("LC306", "reload-changes-outputs", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def reload_changes_outputs(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Saves the adapter in PEFT's format, loads it into a fresh copy of the model and compares the
    logits; the saved adapter must also pass ``loracheck check`` without errors.

    ## Why is this bad?
    An adapter whose save/reload round trip changes the outputs (a lost alpha, rsLoRA dropped
    from the config, keys that do not match the model) works in the training process and fails
    everywhere else.

    ## Example
    ```text
    reloaded vs trained: max |Δlogit| = 1.9e-01 (alpha not saved: PEFT assumes 8)
    ```

    ## Use instead
    Save with ``save_pretrained`` and keep ``adapter_config.json`` beside the weights.
    """
    record = _record(ctx)
    reload = record.reload if record is not None else None
    if reload is None:
        return
    for key, why in reload.problems:
        yield Finding(f"saved module {key} does not reload: {why}", key)
    if reload.max_abs is not None and reload.max_abs > reload.tolerance:
        yield Finding(f"the reloaded adapter gives outputs {reload.max_abs:.3g} away from the "
                      f"trained one (tolerance {reload.tolerance:.3g})")
    for diag in reload.saved_check:
        yield Finding(f"`loracheck check` on the saved adapter: {diag.code} {diag.message}",
                      diag.location)


@rule("LC307", "probe-non-finite", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def probe_non_finite(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a non-finite loss, gradient or output (NaN or ±Inf) at any probe step.

    ## Why is this bad?
    One NaN propagates into every weight the optimizer touches. In fp16 it often comes from an
    overflowing activation or a scale so large that s·B·A·x exceeds 65504.

    ## Example
    ```text
    loss is nan at step 4 (dtype float16)
    ```

    ## Use instead
    Train in bf16 or fp32, lower the scale (α/r) or the learning rate, keep the adapter in fp32.
    """
    record = _record(ctx)
    if record is None:
        return
    for what in record.nonfinite:
        yield Finding(f"a non-finite {what} appeared during verify", what)


@rule("LC308", "adapter-model-mismatch", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def adapter_model_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Loads ``--adapter`` onto ``--model`` and reports adapter modules the model does not have, and
    factors whose shapes do not fit the model's layers.

    ## Why is this bad?
    An adapter applied to the wrong base either fails to load or, worse, loads partially with a
    warning that is easy to miss, and the model runs without the update it was trained with.

    ## Example
    ```text
    adapter module model.layers.0.self_attn.q_proj: A is (16, 4096), the layer takes 2048 inputs
    ```

    ## Use instead
    Apply the adapter to the base model it was trained on (``base_model_name_or_path``).
    """
    record = _record(ctx)
    if record is None:
        return
    for key, why in record.fit_problems:
        yield Finding(f"adapter module {key}: {why}", key)
    if record.adapter is not None and record.n_modules == 0 and not record.fit_problems \
            and not record.unsupported:
        yield Finding("the adapter holds no LoRA factor pairs that fit the model")


@rule("LC309", "probe-unsupported-feature", Severity.ERROR, ANY_METHOD, subject=Subject.PROBE)
def probe_unsupported_feature(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports an adapter feature that the reference LoRA of ``verify`` does not reproduce (for
    example ``bias="all"``, LoRA on MoE expert parameters through ``target_parameters``, Conv2d
    or Conv3d targets, a method variant such as VeRA or LoRA-FA's trainer tricks): the probe is
    refused with this code instead of verifying the adapter as plain LoRA.

    ## Why is this bad?
    A verifier that silently drops a feature checks another model than the one that trains.
    DoRA without its magnitude, ``modules_to_save`` without the saved copies, or a bias left
    out give outputs far from PEFT's while every check passes. Refusing says so.

    ## Example
    ```text
    bias="all": the reference trains no biases; PEFT would train every bias of the model
    ```

    ## Use instead
    Verify the adapter with PEFT itself, or drop the feature (``bias="none"``) for the probe.
    """
    record = _record(ctx)
    if record is None:
        return
    for item in record.unsupported:
        yield Finding(f"{item.feature}: {item.detail}; verify refuses rather than check it as "
                      "plain LoRA", item.location)
