"""Shared by the step benchmarks: give a PEFT model the very factors our reference model has,
so that both sides compute the same thing and only the implementations differ."""

from __future__ import annotations

from typing import Any

import torch

from loracheck.reference import adapter_state_dict


def copy_factors_into_peft(ours: torch.nn.Module, theirs: Any) -> None:
    """Copy every lora_A / lora_B of ``ours`` into the "default" adapter of the PeftModel."""
    state = {k.removeprefix("base_model.model."): v for k, v in adapter_state_dict(ours).items()}
    with torch.no_grad():
        for name, module in theirs.base_model.model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                module.lora_A["default"].weight.copy_(state[f"{name}.lora_A.weight"])
                module.lora_B["default"].weight.copy_(state[f"{name}.lora_B.weight"])
