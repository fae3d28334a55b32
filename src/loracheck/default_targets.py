"""The modules LoRA adapts when a config names no ``target_modules``: PEFT's per-architecture
defaults, and a fallback for the architectures PEFT has no entry for.

PEFT 0.21.2 (``peft/utils/constants.py``, ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``)
keys its defaults by ``config.model_type`` and raises "Please specify `target_modules`" for any
other type. ``verify`` must probe those models too, so for them the first group of attention
projections that the model has is used (Phi-3's fused ``qkv_proj``, ViT's ``query``/``value``),
and ``all-linear`` when none is found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loracheck.scaling import target_matches

ALL_LINEAR = "all-linear"

# model_type -> target names, as PEFT 0.21.2 lists them (the entries for architectures people
# fine-tune with LoRA; the others fall through to the groups below).
PEFT_DEFAULT_TARGETS: Mapping[str, tuple[str, ...]] = {
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "bart": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "bloom": ("query_key_value",),
    "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",),
    "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"),
    "deberta-v2": ("query_proj", "value_proj"),
    "deberta": ("in_proj",),
    "layoutlm": ("query", "value"),
    "llama": ("q_proj", "v_proj"),
    "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",),
    "gpt_bigcode": ("c_attn",),
    "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",),
    "RefinedWeb": ("query_key_value",),
    "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"),
    "codegen": ("qkv_proj",),
    "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"),
    "stablelm": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"),
    "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"),
}

# For other architectures: the first group whose every name is a module of the model.
FALLBACK_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("qkv_proj",),
    ("query_key_value",),
    ("c_attn",),
    ("Wqkv",),
    ("q", "v"),
    ("in_proj",),
)


def default_targets(model_type: str | None, module_names: Iterable[str]) -> list[str] | str:
    """The targets for a model whose config names none: PEFT's entry for ``model_type`` when
    it has one and it matches, else the first fallback group the model has, else all-linear."""
    names = list(module_names)
    known = PEFT_DEFAULT_TARGETS.get(model_type or "")
    groups = ((known,) if known else ()) + FALLBACK_GROUPS
    for group in groups:
        if all(any(target_matches(n, [t]) for n in names) for t in group):
            return list(group)
    return ALL_LINEAR
