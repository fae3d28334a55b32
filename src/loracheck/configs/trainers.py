"""Trainer config files -> LoraSpec: axolotl, LLaMA-Factory (v0 and v1), torchtune, TRL/HF
args, LLMBox, ms-swift, litgpt, ai-toolkit, Unsloth Studio, and a generic ``lora:`` section.

Each reader maps its tool's own key names onto LoraSpec fields, decides the method the config
trains (LoRA family, another method, a full fine-tune: :mod:`loracheck.configs.methods`), and
fills what the file leaves out with the trainer's own defaults
(:mod:`loracheck.configs.semantics`, origin "trainer default"). Known non-LoRA keys are
ignored; LoRA-related keys without a field go to extras.
"""

from __future__ import annotations

from typing import Any

from loracheck.configs import methods
from loracheck.configs.documents import Doc
from loracheck.configs.fields import SpecBuilder, placeholder_text, split_names
from loracheck.configs.semantics import apply_defaults
from loracheck.model import LoraSpec, MethodKind, ValueOrigin


def _apply(
    doc: Doc,
    b: SpecBuilder,
    fields: dict[str, str],
    extras: tuple[str, ...],
    base: tuple[str, ...] = (),
) -> None:
    """Set every present ``fields`` key (source key -> spec field) and copy ``extras`` keys."""
    found, section, _ = doc.lookup(*base)
    if not found or not isinstance(section, dict):
        return
    # Only the keys the section has: a config names a few of the dozens a trainer knows.
    for key, spec_field in fields.items():
        if key in section:
            b.set(spec_field, section[key], doc.line(*base, key), key=".".join((*base, key)))
    for key in extras:
        if key in section:
            b.extra(key, section[key], doc.line(*base, key))


def _finish(doc: Doc, b: SpecBuilder) -> LoraSpec:
    apply_defaults(b, b.source_format)
    b.suppressions = doc.suppressions
    return b.build()


def _is_off(value: object) -> bool:
    """A method key left blank: YAML null or an empty string."""
    return value is None or (isinstance(value, str) and not value.strip())


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
    "merge_lora",
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
    if present and placeholder_text(bits) is None:
        # A loftq_config switches axolotl's PEFT init to LoftQ.
        b.extra("loftq_config", {"loftq_bits": bits}, bits_line)
        if not b.has("init_lora_weights"):
            b.values["init_lora_weights"] = "loftq"
            if bits_line is not None:
                b.lines.setdefault("init_lora_weights", bits_line)
    b.extra("bias_note", "axolotl always uses bias='none'")
    _axolotl_method(doc, b)
    return _finish(doc, b)


def _axolotl_method(doc: Doc, b: SpecBuilder) -> None:
    present, adapter, _ = doc.lookup("adapter")
    whole = any(doc.lookup(k)[0] for k in ("base_model", "datasets"))
    if not present and not whole:
        return  # a fragment of LoRA keys, not a whole config: judged as LoRA
    _decide(b, adapter, methods.axolotl_method)


def _decide(b: SpecBuilder, raw: Any, vocabulary: Any) -> None:
    """Set the method ``vocabulary`` names for ``raw``; a placeholder keeps LoRA (unknown)."""
    if placeholder_text(raw) is not None:
        return
    method = vocabulary(raw)
    if method is not None:
        b.set_method(*method)


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
    if b.get("alpha") == 0:
        # finetuning_args.py:568 `lora_alpha or lora_rank * 2`: a falsy alpha means 2·rank.
        b.values.pop("alpha")
    present, ftype, _ = doc.lookup("finetuning_type")
    if present:
        _decide(b, ftype, methods.llama_factory_method)
    return _finish(doc, b)


# --- LLaMA-Factory v1 (USE_V1=1) ------------------------------------------------------------

_V1_FIELDS = {
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "modules_to_save": "modules_to_save",
}


def read_llama_factory_v1(doc: Doc) -> LoraSpec:
    """LLaMA-Factory v1: the ``peft_config`` plugin block (llamafactory==0.9.5
    v1/plugins/model_plugins/peft.py:31-60); no block at all trains every parameter
    (v1/core/model_engine.py:176-180)."""
    b = SpecBuilder("llama-factory-v1", doc.path)
    present, block, _ = doc.lookup("peft_config")
    if not present or not isinstance(block, dict):
        b.set_method(*methods.FULL)
        return _finish(doc, b)
    _apply(doc, b, _V1_FIELDS, ("name", "adapter_name_or_path"), base=("peft_config",))
    present, target, t_line = doc.lookup("peft_config", "target_modules")
    if present:
        value = "all-linear" if isinstance(target, str) and target.strip() == "all" else target
        b.set("target_modules", value, t_line, key="peft_config.target_modules")
    _decide(b, block.get("name"), methods.llama_factory_method)  # v1 names: lora, freeze
    present, model, m_line = doc.lookup("model")
    if present:
        b.set("base_model", model, m_line, key="model")
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
    if present:
        b.extra("lora_attn_modules", attn, line)
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
    _, component, _ = doc.lookup("model", "_component_")
    builder = component.rsplit(".", 1)[-1] if isinstance(component, str) else ""
    lora_keys = any(doc.lookup("model", k)[0] for k in ("lora_rank", "lora_attn_modules"))
    if builder.startswith("qlora_"):
        b.set_method(MethodKind.LORA, "QLoRA")
    elif not builder.startswith("lora_") and not lora_keys:
        # A plain builder (llama3_1_8b) is a full fine-tune (recipes/configs/*_full*.yaml).
        b.set_method(*methods.FULL)
    if b.get("use_dora") is True:
        b.set_method(MethodKind.LORA, "DoRA")
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
    _, use_peft, _ = doc.lookup("use_peft")
    _decide(b, use_peft, methods.trl_method)
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


# --- ms-swift -----------------------------------------------------------------------------

_SWIFT_FIELDS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_bias": "bias",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "modules_to_save": "modules_to_save",
    "model": "base_model",
}
_SWIFT_EXTRAS = ("tuner_backend", "lora_dtype", "lorap_lr_ratio", "quant_method", "quant_bits",
                 "target_regex", "init_weights")
def read_ms_swift(doc: Doc) -> LoraSpec:
    """ms-swift ``swift sft cfg.yaml``: flat keys (swift/cli/main.py:38-71); the method key is
    ``tuner_type`` (4.x), ``train_type`` (3.x) or ``sft_type`` (2.x), default ``lora``."""
    b = SpecBuilder("ms-swift", doc.path, lax=True)
    # Megatron-Ray configs (examples/ray/grpo) put the tuner keys in a `train:` group.
    group = doc.lookup("train")[1]
    base: tuple[str, ...] = ()
    if isinstance(group, dict) and any(k in group for k in ("tuner_type", "train_type",
                                                               "lora_rank")):
        base = ("train",)
    _apply(doc, b, _SWIFT_FIELDS, _SWIFT_EXTRAS, base=base)
    if base:
        present, model, line = doc.lookup("model")
        if present:
            b.set("base_model", model, line, key="model")
    present, targets, line = doc.lookup(*base, "target_modules")
    if present:
        b.set("target_modules", _swift_targets(targets), line, key="target_modules")
    present, regex, line = doc.lookup(*base, "target_regex")
    if present and isinstance(regex, str) and regex:
        b.set("target_modules", regex, line, key="target_regex")  # it overrides target_modules
    present, init, line = doc.lookup(*base, "init_weights")
    if present and isinstance(init, str):
        lowered = init.strip().lower()
        value: bool | str = {"true": True, "false": False}.get(lowered, init)
        b.set("init_lora_weights", value, line, key="init_weights")
    for key in ("tuner_type", "train_type", "sft_type"):
        present, tuner, _ = doc.lookup(*base, key)
        if present:
            _decide(b, tuner, methods.swift_method)
            break
    return _finish(doc, b)


def _swift_targets(raw: Any) -> Any:
    """['all-linear'] (ms-swift's default) is PEFT's all-linear shorthand."""
    if isinstance(raw, list) and len(raw) == 1 and raw[0] == "all-linear":
        return "all-linear"
    return raw


# --- litgpt -------------------------------------------------------------------------------

_LITGPT_FIELDS = {"lora_r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
                  "checkpoint_dir": "base_model"}
# litgpt@c16c72c litgpt/finetune/lora.py setup(): which projections get LoRA, and defaults.
LITGPT_FLAGS = {
    "lora_query": True,
    "lora_key": False,
    "lora_value": True,
    "lora_projection": False,
    "lora_mlp": False,
    "lora_head": False,
}


# The modules each litgpt flag adapts, as module-name suffixes (litgpt 0.5 litgpt/model.py and
# litgpt/lora.py: CausalSelfAttention.qkv, attn.attn before 0.5, and .proj; LLaMAMLP fc_1/fc_2/
# proj, GptNeoxMLP fc/proj; GPT.lm_head). loracheck reads a fused qkv per enabled group, as
# <qkv>.query, <qkv>.key, <qkv>.value.
LITGPT_MODULES: dict[str, tuple[str, ...]] = {
    "query": ("query", "qkv", "attn.attn"),
    "key": ("key", "qkv", "attn.attn"),
    "value": ("value", "qkv", "attn.attn"),
    "projection": ("attn.proj",),
    "mlp": ("mlp.fc_1", "mlp.fc_2", "mlp.fc", "mlp.proj"),
    "head": ("lm_head",),
}


def read_litgpt(doc: Doc) -> LoraSpec:
    """litgpt ``finetune lora`` YAML (config_hub/finetune/*/lora.yaml) or the
    ``hyperparameters.yaml`` it saves: top-level ``lora_*`` keys and boolean target flags."""
    b = SpecBuilder("litgpt", doc.path)
    _apply(doc, b, _LITGPT_FIELDS, ("quantize", "precision"))
    targets: list[str] = []
    flag_line: int | None = None
    for flag, default in LITGPT_FLAGS.items():
        present, value, line = doc.lookup(flag)
        on = value if present and isinstance(value, bool) else default
        if present and flag_line is None:
            flag_line = line
        if on:
            targets.append(flag.removeprefix("lora_"))
    b.values["target_modules"] = targets
    if flag_line is not None:
        b.lines["target_modules"] = flag_line
        b.source_keys["target_modules"] = "lora_query/lora_key/lora_value/..."
    else:
        b.origins["target_modules"] = ValueOrigin.TRAINER_DEFAULT
    if b.get("rank") == 0:
        # litgpt/lora.py@01e39f5: r = 0 disables LoRA (the layers stay plain Linear).
        b.set_method(MethodKind.FULL, "LoRA off (lora_r: 0)")
    elif not any(doc.lookup(k)[0] for k in ("lora_r", "lora_alpha", *LITGPT_FLAGS)):
        # finetune full / adapter / galore configs share the layout without lora_* keys.
        b.set_method(*methods.FULL)
    return _finish(doc, b)


# --- ostris ai-toolkit --------------------------------------------------------------------

# Model flags under which LoRASpecialNetwork forces peft_format, so alpha = rank (s = 1) and
# linear_alpha is ignored (toolkit/lora_special.py@a6c70a7).
_AITK_TRANSFORMER_FLAGS = ("is_flux", "is_v3", "is_lumina2", "is_transformer")
_AITK_TRANSFORMER_ARCHS = ("flux", "sd3", "lumina2", "wan", "hidream", "chroma", "qwen",
                           "omnigen", "hunyuan", "ltx", "cogview")


def read_ai_toolkit(doc: Doc) -> LoraSpec:
    """ai-toolkit job YAML: ``config.process[i].network`` {type, linear (rank), linear_alpha,
    conv, conv_alpha, dropout}; the first process with a network is the one read."""
    b = SpecBuilder("ai-toolkit", doc.path, lax=True)
    _, processes, _ = doc.lookup("config", "process")
    index = next((i for i, p in enumerate(processes or [])
                  if isinstance(p, dict) and isinstance(p.get("network"), dict)), None)
    if index is None:
        b.set_method(*methods.FULL)
        return _finish(doc, b)
    base = ("config", "process", index, "network")
    for key in ("rank", "linear"):  # rank is the older alias and wins (config_modules.py)
        present, value, line = doc.lookup(*base, key)
        if present:
            b.set("rank", value, line, key=f"network.{key}")
            break
    for key, spec_field in (("linear_alpha", "alpha"), ("dropout", "dropout")):
        present, value, line = doc.lookup(*base, key)
        if present:
            b.set(spec_field, value, line, key=f"network.{key}")
    for key in ("conv", "conv_alpha", "lokr_full_rank", "lokr_factor", "network_kwargs"):
        present, value, line = doc.lookup(*base, key)
        if present:
            b.extra(f"network.{key}", value, line)
    if not b.said("alpha"):
        present, value, line = doc.lookup(*base, "alpha")
        if present:
            b.set("alpha", value, line, key="network.alpha")
    if b.invalid.get("alpha") == "None" or b.get("alpha") == 0:
        # lora_special.py@a6c70a7: `alpha = lora_dim if alpha is None or alpha == 0`
        b.invalid.pop("alpha", None)
        b.values.pop("alpha", None)
        if isinstance(b.get("rank"), int):
            b.values["alpha"] = float(b.get("rank"))
            b.origins["alpha"] = ValueOrigin.TRAINER_DEFAULT
    _, kind, _ = doc.lookup(*base, "type")
    _decide(b, kind, methods.ai_toolkit_method)
    model = doc.lookup("config", "process", index, "model")[1]
    if isinstance(model, dict):
        arch = str(model.get("arch") or "").lower()
        if any(model.get(f) is True for f in _AITK_TRANSFORMER_FLAGS) or arch.startswith(
            _AITK_TRANSFORMER_ARCHS
        ):
            b.extra("ignored_linear_alpha", b.get("alpha"))
            b.values.pop("alpha", None)
            b.invalid.pop("alpha", None)
            if isinstance(b.get("rank"), int):
                b.values["alpha"] = float(b.get("rank"))
                b.origins["alpha"] = ValueOrigin.TRAINER_DEFAULT
        present, name, line = doc.lookup("config", "process", index, "model", "name_or_path")
        if present:
            b.set("base_model", name, line, key="model.name_or_path")
    return _finish(doc, b)


# --- Unsloth Studio (unsloth train --config) ------------------------------------------------

_STUDIO_FIELDS = {"lora_r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout",
                  "use_rslora": "use_rslora", "use_dora": "use_dora"}


def read_unsloth_studio(doc: Doc) -> LoraSpec:
    """``model`` / ``data`` / ``training`` / ``lora`` / ``logging`` sections
    (unsloth==2026.10.9 unsloth_cli/config.py); ``training.training_type`` is lora or full."""
    b = SpecBuilder("unsloth-studio", doc.path)
    _apply(doc, b, _STUDIO_FIELDS, ("use_loftq", "vision_all_linear"), base=("lora",))
    present, targets, line = doc.lookup("lora", "target_modules")
    if present:
        # A comma-separated string, split at use; an empty one means None (PEFT's default).
        value = _names_or_comma_list(targets) if isinstance(targets, str) else targets
        if value != []:
            b.set("target_modules", value, line, key="lora.target_modules")
        else:
            b.values["target_modules"] = None
    present, model, line = doc.lookup("model")
    if present and isinstance(model, str):
        b.set("base_model", model, line, key="model")
    _, ttype, _ = doc.lookup("training", "training_type")
    _decide(b, ttype, methods.unsloth_studio_method)
    return _finish(doc, b)


# --- a generic LoRA section in a user's own trainer config ------------------------------------

# Section names people nest LoRA settings under, and the key spellings inside them.
LORA_SECTIONS = ("lora", "lora_config", "peft", "lora_args", "lora_params", "adapter")
_SECTION_FIELDS = {
    "r": "rank", "rank": "rank", "lora_r": "rank", "lora_rank": "rank",
    "alpha": "alpha", "lora_alpha": "alpha",
    "dropout": "dropout", "lora_dropout": "dropout",
    "target_modules": "target_modules", "lora_target_modules": "target_modules",
    "use_rslora": "use_rslora", "use_dora": "use_dora", "bias": "bias",
    "init_lora_weights": "init_lora_weights", "modules_to_save": "modules_to_save",
}


def lora_section(data: Any) -> str | None:
    """The name of the first top-level mapping that holds a LoRA rank or alpha, if any."""
    if not isinstance(data, dict):
        return None
    for name in LORA_SECTIONS:
        block = data.get(name)
        if isinstance(block, dict) and any(
            k in block for k in ("r", "rank", "lora_r", "lora_rank", "alpha", "lora_alpha")
        ):
            return name
    return None


def read_lora_section(doc: Doc) -> LoraSpec:
    """A ``lora:`` (or ``peft:``, ``lora_config:`` …) block of a trainer loracheck does not know:
    its keys read as PEFT's LoraConfig, which such trainers pass them to."""
    b = SpecBuilder("lora-section", doc.path, lax=True)
    section = lora_section(doc.data)
    if section is not None:
        for key, spec_field in _SECTION_FIELDS.items():
            present, value, line = doc.lookup(section, key)
            if present and not b.said(spec_field):
                b.set(spec_field, value, line, key=f"{section}.{key}")
        b.extra("section", section)
    return _finish(doc, b)
