"""Trainer config files -> LoraSpec: axolotl, LLaMA-Factory, torchtune, TRL/HF args, LLMBox.

Each reader maps its tool's own key names onto LoraSpec fields; known non-LoRA keys are
ignored, LoRA-related keys without a field go to extras. Defaults the tool would apply are not
filled in (a missing alpha stays None); where a tool's default differs from PEFT's the reader
notes it in extras so rules can say what will happen.
"""

from __future__ import annotations

from typing import Any

from loracheck.configs.documents import Doc
from loracheck.configs.fields import SpecBuilder, split_names
from loracheck.model import LoraSpec


def _apply(
    doc: Doc,
    b: SpecBuilder,
    fields: dict[str, str],
    extras: tuple[str, ...],
    base: tuple[str, ...] = (),
) -> None:
    """Set every present ``fields`` key (source key -> spec field) and copy ``extras`` keys."""
    for key, spec_field in fields.items():
        present, value, line = doc.lookup(*base, key)
        if present:
            b.set(spec_field, value, line, key=".".join((*base, key)))
    for key in extras:
        present, value, line = doc.lookup(*base, key)
        if present:
            b.extra(key, value, line)


def _finish(doc: Doc, b: SpecBuilder) -> LoraSpec:
    b.suppressions = doc.suppressions
    return b.build()


# --- axolotl ------------------------------------------------------------------------------

_AXOLOTL_FIELDS = {
    "lora_r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "peft_use_rslora": "use_rslora",
    "peft_use_dora": "use_dora",
    "peft_init_lora_weights": "init_lora_weights",
    "lora_modules_to_save": "modules_to_save",
    "lora_rank_pattern": "rank_pattern",
    "lora_alpha_pattern": "alpha_pattern",
    "peft_rank_pattern": "rank_pattern",
    "peft_alpha_pattern": "alpha_pattern",
    "lora_fan_in_fan_out": "fan_in_fan_out",
    "peft_layers_to_transform": "layers_to_transform",
    "peft_layers_pattern": "layers_pattern",
    "peft_exclude_modules": "exclude_modules",
    "base_model": "base_model",
}
_AXOLOTL_EXTRAS = (
    "adapter",
    "lora_model_dir",
    "lora_target_linear",
    "lora_target_parameters",
    "peft_layer_replication",
    "peft_trainable_token_indices",
    "peft_ensure_weight_tying",
    "loraplus_lr_ratio",
    "loraplus_lr_embedding",
    "load_in_4bit",
    "load_in_8bit",
    "peft",
)


def read_axolotl(doc: Doc) -> LoraSpec:
    # axolotl validates with pydantic in lax mode, so "16" is accepted as 16.
    b = SpecBuilder("axolotl", doc.path, lax=True)
    _apply(doc, b, _AXOLOTL_FIELDS, _AXOLOTL_EXTRAS)
    present, targets, t_line = doc.lookup("lora_target_modules")
    if present:
        b.set("target_modules", targets, t_line, key="lora_target_modules")
    linear, l_value, l_line = doc.lookup("lora_target_linear")
    if linear and l_value is True:
        # axolotl adds every linear layer's name to any explicit list.
        if b.has("target_modules"):
            b.extra("explicit_target_modules", b.get("target_modules"))
        b.values["target_modules"] = "all-linear"
        b.invalid.pop("target_modules", None)
        if l_line is not None:
            b.lines["target_modules"] = l_line
        b.source_keys["target_modules"] = "lora_target_linear"
    present, bits, bits_line = doc.lookup("peft", "loftq_config", "loftq_bits")
    if present:
        # A loftq_config switches axolotl's PEFT init to LoftQ.
        b.extra("loftq_config", {"loftq_bits": bits}, bits_line)
        if not b.has("init_lora_weights"):
            b.values["init_lora_weights"] = "loftq"
            if bits_line is not None:
                b.lines.setdefault("init_lora_weights", bits_line)
    b.extra("bias_note", "axolotl always uses bias='none'")
    return _finish(doc, b)


# --- LLaMA-Factory ------------------------------------------------------------------------

_LF_FIELDS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "model_name_or_path": "base_model",
}
_LF_EXTRAS = (
    "finetuning_type",
    "stage",
    "pissa_init",
    "pissa_iter",
    "pissa_convert",
    "loraplus_lr_ratio",
    "loraplus_lr_embedding",
    "create_new_adapter",
    "adapter_name_or_path",
    "quantization_bit",
)


def _names_or_comma_list(raw: Any) -> Any:
    return split_names(raw) if isinstance(raw, str) else raw


def read_llama_factory(doc: Doc) -> LoraSpec:
    b = SpecBuilder("llama-factory", doc.path)
    _apply(doc, b, _LF_FIELDS, _LF_EXTRAS)
    present, target, line = doc.lookup("lora_target")
    if present:
        if isinstance(target, str) and target.strip().lower() == "all":
            b.set("target_modules", "all-linear", line, key="lora_target")
        else:
            b.set("target_modules", _names_or_comma_list(target), line, key="lora_target")
    present, extra_targets, line = doc.lookup("additional_target")
    if present:
        b.set("modules_to_save", _names_or_comma_list(extra_targets), line,
              key="additional_target")
    present, pissa, line = doc.lookup("pissa_init")
    if present and pissa is True:
        # LLaMA-Factory turns pissa_init into PEFT's init string (pissa_iter -1 = full SVD).
        _, iters, _ = doc.lookup("pissa_iter")
        if not isinstance(iters, int) or isinstance(iters, bool):
            iters = 16
        init = "pissa" if iters == -1 else f"pissa_niter_{iters}"
        b.set("init_lora_weights", init, line, key="pissa_init")
    if "alpha" not in b.values and "alpha" not in b.invalid:
        b.extra("alpha_default", "LLaMA-Factory uses lora_alpha = 2 * lora_rank when unset")
        if isinstance(b.get("rank"), int):
            b.extra("implied_alpha", 2 * b.get("rank"))
    return _finish(doc, b)


# --- torchtune ----------------------------------------------------------------------------

_TT_FIELDS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "use_dora": "use_dora",
}
_TT_EXTRAS = ("_component_", "apply_lora_to_mlp", "apply_lora_to_output", "quantize_base")
# torchtune module names -> the HF names its PEFT-format export uses.
TORCHTUNE_TO_HF = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "output_proj": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
    "output": "lm_head",
}


def read_torchtune(doc: Doc) -> LoraSpec:
    b = SpecBuilder("torchtune", doc.path)
    _apply(doc, b, _TT_FIELDS, _TT_EXTRAS, base=("model",))
    present, attn, line = doc.lookup("model", "lora_attn_modules")
    targets: list[str] | None = None
    if present and b.set("target_modules", attn, line, key="model.lora_attn_modules"):
        value = b.get("target_modules")
        targets = [value] if isinstance(value, str) else list(value)
    if targets is not None:
        for flag, names in (("apply_lora_to_mlp", ["w1", "w2", "w3"]),
                            ("apply_lora_to_output", ["output"])):
            if doc.lookup("model", flag)[1] is True:
                targets.extend(n for n in names if n not in targets)
        b.values["target_modules"] = targets
        b.extra("hf_target_modules", [TORCHTUNE_TO_HF.get(t, t) for t in targets])
    present, ckpt, line = doc.lookup("checkpointer", "checkpoint_dir")
    if present:
        b.set("base_model", ckpt, line, key="checkpointer.checkpoint_dir")
    return _finish(doc, b)


# --- TRL / HF argument files ---------------------------------------------------------------

_TRL_FIELDS = {
    "lora_r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
    "lora_task_type": "task_type",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "model_name_or_path": "base_model",
}
_TRL_EXTRAS = ("use_peft", "lora_target_parameters", "load_in_4bit", "load_in_8bit")


def read_trl(doc: Doc) -> LoraSpec:
    b = SpecBuilder("trl", doc.path)
    _apply(doc, b, _TRL_FIELDS, _TRL_EXTRAS)
    return _finish(doc, b)


# --- LLMBox --------------------------------------------------------------------------------

_LLMBOX_FIELDS = {
    "lora_r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "model_name_or_path": "base_model",
}
_LLMBOX_EXTRAS = ("lora", "qlora", "lora_merge")


def read_llmbox(doc: Doc) -> LoraSpec:
    b = SpecBuilder("llmbox", doc.path)
    _apply(doc, b, _LLMBOX_FIELDS, _LLMBOX_EXTRAS)
    present, targets, line = doc.lookup("lora_target_modules")
    if present:
        # LLMBox passes a comma-separated string through to LoraConfig as a list.
        b.set("target_modules", _names_or_comma_list(targets), line, key="lora_target_modules")
    return _finish(doc, b)
