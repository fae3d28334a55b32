"""A small, readable LoRA implementation used by ``loracheck verify`` (extra ``loracheck[torch]``).

This package and :mod:`loracheck.verify` are the only places loracheck imports torch.

    y = base(x) + s · B(A(dropout(x)))      s = α/r, or α/√r with rsLoRA

Modules: :mod:`.layers` (the two layer types), :mod:`.init` (init schemes), :mod:`.inject`
(PEFT targeting, freezing, merge/unmerge), :mod:`.peft_format` (PEFT's on-disk format),
:mod:`.tinymodel` (the built-in decoder) and :mod:`.hf` (local transformers models).
"""

from __future__ import annotations

from loracheck.reference.inject import (
    Target,
    inject,
    lora_modules,
    mark_only_lora_trainable,
    merge,
    plan_targets,
    unmerge,
)
from loracheck.reference.layers import LoRAEmbedding, LoRALinear, LoRAModule
from loracheck.reference.peft_format import (
    adapter_config,
    adapter_state_dict,
    load_adapter,
    read_peft_dir,
    save_adapter,
)

__all__ = [
    "LoRAEmbedding",
    "LoRALinear",
    "LoRAModule",
    "Target",
    "adapter_config",
    "adapter_state_dict",
    "inject",
    "load_adapter",
    "lora_modules",
    "mark_only_lora_trainable",
    "merge",
    "plan_targets",
    "read_peft_dir",
    "save_adapter",
    "unmerge",
]
