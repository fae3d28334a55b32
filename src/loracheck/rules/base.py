"""Base-model rules (LC25x): the adapter against the model it is meant for (``--model BASE``),
from the base's ``config.json`` and safetensors headers only."""

from __future__ import annotations

import math
from collections.abc import Iterator

from loracheck.basemodel import VOCAB_MODULES, BaseModelInfo, BaseTensor
from loracheck.model import LayerRecord, Severity
from loracheck.rules.context import Finding, RuleContext, name_list, plural, rule, short_name


def _last(name: str) -> str:
    return name.replace("/", ".").split(".")[-1]


def _vocab_module(layer: LayerRecord) -> bool:
    return layer.kind == "embedding" or _last(layer.name) in VOCAB_MODULES


def _mappable(name: str) -> bool:
    """Dotted module paths can be looked up, and so can top-level modules (``lm_head``);
    kohya's flattened names (``lora_unet_…``, ``lora_te_…``) cannot."""
    return "." in name or not name.startswith("lora_")


def _fits(layer: LayerRecord, weight: BaseTensor) -> str | None:
    """Why the layer's shape does not fit the base weight (None when it fits or is unknown).
    The vocabulary dimension of embedding/lm_head modules is LC251's business."""
    n_in, n_out, shape = layer.in_features, layer.out_features, weight.shape
    if not n_in or not n_out or not weight.is_float or len(shape) < 2:
        return None
    vocab = _vocab_module(layer)
    if layer.kind == "embedding":
        # A (r, num_embeddings), B (embedding_dim, r); the base is (num_embeddings, dim).
        return None if n_out == shape[1] else f"embedding dim {n_out} ≠ base {shape[1]}"
    if layer.kind == "conv":
        if n_out == shape[0] and n_in == math.prod(shape[1:]):
            return None
        return f"({n_out}, {n_in}) ≠ base kernel {list(shape)}"
    if len(shape) != 2:
        return None
    rows, cols = shape
    for out_dim, in_dim in ((rows, cols), (cols, rows)):  # Conv1D stores (in, out)
        if n_in == in_dim and (vocab or n_out == out_dim):
            return None
    return f"in={n_in}, out={n_out} ≠ base {list(shape)}"


@rule("LC250", "module-not-in-base", Severity.ERROR)
def module_not_in_base(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    With ``--model BASE``, looks up every adapter module in the base model (from its safetensors
    headers) and reports modules the base does not have, and modules whose shape does not fit
    the base layer's weight.

    ## Why is this bad?
    An adapter for another model (a 7B adapter on a 1B base, Llama keys on a Qwen model) either
    fails to load with "size mismatch" or, in loaders that skip unknown keys, loads with part or
    all of it silently ignored (diffusers #9950, ComfyUI "lora key not loaded").

    ## Example
    ```text
    adapter: model.layers.31.self_attn.q_proj (4096 → 4096)
    base:    16 layers, hidden size 2048
    ```

    ## Use instead
    Apply the adapter to the base model named in ``base_model_name_or_path`` (or
    ``ss_sd_model_name``), or retrain it for this base.
    """
    base = ctx.base
    if base is None or not base.modules:
        return
    layers = [
        layer for layer in ctx.adapter.layers
        if layer.kind in ("linear", "conv", "embedding") and _mappable(layer.name)
    ]
    absent: list[str] = []
    for layer in layers:
        found = base.find(layer.name)
        if found is None:
            absent.append(layer.name)
            continue
        why = _fits(layer, found[1])
        if why is not None:
            yield ctx.weight_finding(
                f"{short_name(layer.name)} does not fit base {found[0]}: {why}", layer.name
            )
    if absent and len(absent) == len(layers):
        yield ctx.weight_finding(
            f"none of the adapter's {plural(len(layers), 'module')} exists in the base model "
            f"{base.path} (e.g. {short_name(absent[0])})",
            absent[0],
        )
    elif absent:
        yield ctx.weight_finding(
            f"{plural(len(absent), 'module')} not in the base model: "
            f"{name_list([short_name(n) for n in absent], 3)}",
            absent[0],
        )


def _base_rows(base: BaseModelInfo, name: str) -> int | None:
    found = base.find(name)
    if found is not None and found[1].is_float and found[1].shape:
        return found[1].shape[0]
    return base.vocab_size


def _extra_module(key: str) -> str:
    """The module an extra tensor belongs to: ``…lm_head.weight`` → ``…lm_head``."""
    name = key
    for suffix in (".weight", ".base_layer"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace(".modules_to_save.default", "").replace(".original_module", "")


@rule("LC251", "vocab-size-mismatch", Severity.ERROR)
def vocab_size_mismatch(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    With ``--model BASE``, checks that embedding and output-head tensors in the adapter (LoRA on
    ``embed_tokens`` / ``lm_head``, full copies saved through ``modules_to_save``) have the
    base model's vocabulary size.

    ## Why is this bad?
    They were sized for a tokenizer with added tokens (a chat template, special tokens) or for
    another model family: loading fails with "size mismatch for ... embed_tokens" (peft #2898,
    #1554; unsloth #978), or the token ids of the two vocabularies no longer line up.

    ## Example
    ```text
    base_model.model.lm_head.weight [32002, 4096]   base vocab_size 32000
    ```

    ## Use instead
    Resize the base model's embeddings to the tokenizer the adapter was trained with
    (``model.resize_token_embeddings(len(tokenizer))``) before loading the adapter.
    """
    base = ctx.base
    if base is None:
        return
    for layer in ctx.adapter.layers:
        if not _vocab_module(layer) or not _mappable(layer.name):
            continue
        rows = _base_rows(base, layer.name)
        size = layer.in_features if layer.kind == "embedding" else layer.out_features
        if rows and size and size != rows:
            yield ctx.weight_finding(
                f"{short_name(layer.name)} is sized for a vocabulary of {size}, the base has "
                f"{rows}",
                layer.name,
            )
    for extra in ctx.adapter.extra_tensors:
        module = _extra_module(extra.key)
        if _last(module) not in VOCAB_MODULES or len(extra.shape) != 2:
            continue
        rows = _base_rows(base, module)
        if rows and extra.shape[0] != rows:
            yield ctx.weight_finding(
                f"{extra.key} has {extra.shape[0]} rows, the base vocabulary has {rows}",
                extra.key,
            )
