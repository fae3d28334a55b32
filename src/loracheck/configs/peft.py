"""PEFT ``adapter_config.json`` (every LoraConfig field of peft 0.21) -> LoraSpec."""

from __future__ import annotations

from loracheck.configs.documents import Doc
from loracheck.configs.fields import SpecBuilder
from loracheck.configs.methods import peft_method
from loracheck.model import LoraSpec

# adapter_config.json key -> LoraSpec field.
FIELDS: dict[str, str] = {
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "init_lora_weights": "init_lora_weights",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "target_modules": "target_modules",
    "exclude_modules": "exclude_modules",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "modules_to_save": "modules_to_save",
    "bias": "bias",
    "layers_to_transform": "layers_to_transform",
    "layers_pattern": "layers_pattern",
    "fan_in_fan_out": "fan_in_fan_out",
    "task_type": "task_type",
    "base_model_name_or_path": "base_model",
}

# Known PeftConfig/LoraConfig keys without a LoraSpec field: kept verbatim in extras.
EXTRAS: frozenset[str] = frozenset(
    {
        "peft_type",
        "peft_version",
        "auto_mapping",
        "revision",
        "inference_mode",
        "megatron_config",
        "megatron_core",
        "trainable_token_indices",
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "velora_config",
        "alora_invocation_tokens",
        "use_qalora",
        "qalora_group_size",
        "monteclora_config",
        "layer_replication",
        "runtime_config",
        "lora_bias",
        "target_parameters",
        "use_bdlora",
        "arrow_config",
        "kasa_config",
        "ensure_weight_tying",
        # OFT and BOFT size their blocks with these (tuners/oft/config.py, tuners/boft/config.py)
        "oft_block_size",
        "boft_block_size",
        "boft_block_num",
    }
)


def read_peft(doc: Doc, builder: SpecBuilder | None = None) -> LoraSpec:
    """A PEFT LoraConfig dict (adapter_config.json or an equivalent mapping)."""
    b = builder or SpecBuilder("peft", doc.path)
    data = doc.data if isinstance(doc.data, dict) else {}
    for key, value in data.items():
        if not isinstance(key, str):
            continue
        line = doc.line(key)
        if key in FIELDS:
            b.set(FIELDS[key], value, line, key=key)
        elif key in EXTRAS:
            b.extra(key, value, line)
        else:
            b.unknown_key(key, line)
    method = peft_method(data.get("peft_type"))
    if method is not None:
        b.set_method(*method)
    b.suppressions = doc.suppressions
    return b.build()
