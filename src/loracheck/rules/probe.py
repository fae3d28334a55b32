"""Probe rules (LC3xx): what `loracheck verify` proves on a live model.

The measurements run in :mod:`loracheck.verify` (torch); a failed check is recorded as a
:class:`~loracheck.model.Fault` with its code, and these functions report those faults, as the
input rules do. Registering them here gives every output (rule pages, SARIF, selection by
prefix) one source of truth without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterator

from loracheck.model import Severity
from loracheck.rules.context import Finding, RuleContext, faults_of, rule


@rule("LC301", "probe-identity-broken", Severity.ERROR)
def probe_identity_broken(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Runs the model with and without the freshly injected adapter on a fixed batch, in train and
    in eval mode, and reports any difference of the logits: max |logits(W + s·B·A) − logits(W)|.
    It must be exactly 0 in fp32 for B = 0 schemes, and within the dtype's tolerance against
    the residual base for PiSSA-like schemes.

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
    yield from faults_of(ctx, "LC301")


@rule("LC302", "stalled-loss", Severity.ERROR)
def stalled_loss(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Trains the adapter for ``--probe-steps`` steps on the probe data and reports when the mean of
    the last 3 losses is not at least 5% below the first loss (``min_loss_drop``).

    ## Why is this bad?
    A loss that does not move in a few steps on a tiny, repeated batch means no useful gradient
    reaches the adapter: a learning rate of 0, an optimizer built over the wrong parameters, a
    scale so small that updates vanish. A long job would burn its budget learning nothing.

    ## Example
    ```text
    loss 5.5452 -> 5.5452 after 20 steps (lr = 0)
    ```

    ## Use instead
    Build the optimizer after injecting the adapter, over the trainable parameters, with a
    learning rate suited to LoRA (1e-4 … 1e-3), and check α/r.
    """
    yield from faults_of(ctx, "LC302")


@rule("LC303", "base-weights-learn", Severity.ERROR)
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
    yield from faults_of(ctx, "LC303")


@rule("LC304", "gradient-free-factor", Severity.ERROR)
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
    yield from faults_of(ctx, "LC304")


@rule("LC305", "merge-changes-outputs", Severity.ERROR)
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
    yield from faults_of(ctx, "LC305")


@rule("LC306", "reload-changes-outputs", Severity.ERROR)
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
    yield from faults_of(ctx, "LC306")


@rule("LC307", "probe-non-finite", Severity.ERROR)
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
    yield from faults_of(ctx, "LC307")


@rule("LC308", "adapter-model-mismatch", Severity.ERROR)
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
    yield from faults_of(ctx, "LC308")
