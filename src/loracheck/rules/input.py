"""Input rules (LC0xx, LC215): the faults the loader met, as findings.

The loader never raises on a bad input; it records a :class:`~loracheck.model.Fault` whose code
says which of these rules reports it.
"""

from __future__ import annotations

from collections.abc import Iterator

from loracheck.model import Severity
from loracheck.rules.context import ANY_METHOD, Finding, RuleContext, faults_of, rule


@rule("LC001", "unreadable-artifact", Severity.ERROR, ANY_METHOD)
def unreadable_artifact(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a file that cannot be read as what it claims to be: a truncated or corrupt
    safetensors file, a header that lies about offsets or sizes, invalid JSON, YAML or TOML,
    an unreadable file.

    ## Why is this bad?
    Every consumer will fail on it, often deep inside a training or serving job, and an adapter
    that cannot be read cannot be checked either: none of the other rules ran on it.

    ## Example
    ```text
    adapter_model.safetensors   # 1.2 GB header length in a 40 MB file (an interrupted upload)
    ```

    ## Use instead
    Re-download or re-save the artifact (``save_pretrained`` writes a valid file) and check it
    again.
    """
    return faults_of(ctx, "LC001")


@rule("LC002", "missing-lora-content", Severity.ERROR, ANY_METHOD)
def no_lora_content(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a file handed to loracheck that holds no LoRA factors or LoRA settings: a full model
    checkpoint, a config of another tool, a weights file whose keys match no LoRA grammar.

    ## Why is this bad?
    A path named explicitly is expected to be an adapter; when nothing LoRA-shaped is in it, the
    wrong file was most likely published or the keys were renamed beyond recognition, and
    loaders such as PEFT then load nothing without an error.

    ## Example
    ```text
    loracheck check model.safetensors   # the merged base model, not the adapter
    ```

    ## Use instead
    Point loracheck (and your consumers) at the adapter itself, e.g. the folder holding
    ``adapter_config.json`` and ``adapter_model.safetensors``.
    """
    return faults_of(ctx, "LC002")


@rule("LC003", "git-lfs-pointer", Severity.ERROR, ANY_METHOD)
def git_lfs_pointer(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports a weights file that is a Git LFS pointer (a small text file starting with
    ``version https://git-lfs.github.com/spec/v1``) instead of the weights.

    ## Why is this bad?
    The repository was cloned without LFS, or the file was committed before LFS tracked it.
    Loading the pointer fails with an obscure header error, or a pipeline ships a 130-byte
    "adapter".

    ## Example
    ```text
    version https://git-lfs.github.com/spec/v1
    oid sha256:4d7a2146...
    size 16800560
    ```

    ## Use instead
    Run ``git lfs pull`` (or install git-lfs before cloning) so the real file is checked out.
    """
    return faults_of(ctx, "LC003")


@rule("LC215", "pickle-checkpoint", Severity.WARNING, ANY_METHOD)
def pickle_checkpoint(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports adapter weights stored as a Python pickle (``adapter_model.bin``, ``.pt``,
    ``.pth``, ``.ckpt``). loracheck reads them with a restricted unpickler that only rebuilds
    tensors, and never executes them.

    ## Why is this bad?
    Unpickling runs any callable named in the file: ``torch.load(weights_only=False)`` (the
    default before torch 2.6, and what kohya and old PEFT versions call) executes code embedded
    in a malicious checkpoint.

    ## Example
    ```text
    my-adapter/adapter_model.bin
    ```

    ## Use instead
    Save with safetensors (``save_pretrained(..., safe_serialization=True)``, the PEFT default
    since v0.7) and load pickles only with ``torch.load(path, weights_only=True)``.
    """
    return faults_of(ctx, "LC215")


@rule("LC216", "unreadable-key-layout", Severity.ERROR)
def unreadable_key_layout(ctx: RuleContext) -> Iterator[Finding]:
    """## What it does
    Reports tensors laid out so that no consumer reads them: factor keys that mix two key
    grammars (kohya's flattened ``lora_unet_…`` module names with diffusers' ``…_lora.down.weight``
    suffix, a half-done conversion), and a kohya ``.alpha`` that is not a single number.

    ## Why is this bad?
    kohya's loader, diffusers and PEFT each match their own grammar: a file that mixes them
    loads with every LoRA module skipped (often with one warning), so the image or model is
    unchanged while the file looks complete. An ``.alpha`` of several values fails on
    ``.item()`` or is ignored, and the module runs at another scale.

    ## Example
    ```text
    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q_lora.down.weight
    ```

    ## Use instead
    Convert the whole file with one tool (diffusers' ``convert_state_dict_to_kohya`` or
    kohya's ``convert_diffusers20_original_sd``), and save each ``.alpha`` as a 0-dim tensor.
    """
    return faults_of(ctx, "LC216")
