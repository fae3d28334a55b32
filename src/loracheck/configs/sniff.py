"""Deciding which LoRA config format a file is (or that it is none).

A cheap gate first: the extension and the key names the file uses, found with regular
expressions, so unrelated files handed over by pre-commit cost microseconds. A file that passes
is parsed and :func:`classify_data` decides by its top-level keys and sections; the full reader
calls the same function.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from loracheck.errors import ArtifactError

# Sniffing looks at most at this much of a file.
SNIFF_BYTES = 1024 * 1024

_YAML_KEY = re.compile(r"^[ \t]*(?:-[ \t]+)?[\"']?([A-Za-z_][\w.\-]*)[\"']?[ \t]*:(?:[ \t]|$)",
                       re.MULTILINE)
_JSON_KEY = re.compile(r'"([A-Za-z_][\w.\-]{0,63})"\s*:')
_TOML_KEY = re.compile(r"^[ \t]*[\"']?([A-Za-z_][\w\-]*)[\"']?[ \t]*=", re.MULTILINE)

_PY_LORACONFIG = re.compile(r"\bLoraConfig\s*\(")
_PY_UNSLOTH = re.compile(
    r"\b(?:FastLanguageModel|FastModel|FastVisionModel)\s*\.\s*get_peft_model\s*\("
)
_PY_GET_PEFT = re.compile(r"\bget_peft_model\s*\(")
_PY_LORA_CLASS = re.compile(r"^[ \t]*class[ \t]+\w*lora\w*[ \t]*[(:]", re.IGNORECASE | re.MULTILINE)

_KOHYA = frozenset({"network_dim", "network_alpha", "network_module"})
_TRAINER_LORA = frozenset({"lora_r", "lora_alpha", "lora_target_modules", "lora_target_linear",
                           "lora_dropout"})
_AXOLOTL_HINTS = frozenset({"adapter", "base_model", "lora_target_linear", "datasets",
                            "sequence_len", "micro_batch_size", "peft_use_dora",
                            "peft_use_rslora", "lora_model_dir"})
_LLMBOX_HINTS = frozenset({"lora", "qlora", "lora_merge"})
_LF_KEYS = frozenset({"lora_rank", "lora_target", "finetuning_type"})
_LF_V1_KEYS = frozenset({"model_class", "kernel_config", "dist_config", "init_config",
                         "quant_config"})
# LLaMA-Factory v0 run keys: with them, no lora_* key still means LoRA with the defaults
# (finetuning_type defaults to lora).
_LF_RUN = frozenset({"stage", "template", "cutoff_len", "finetuning_type"})
_SWIFT_KEYS = ("tuner_type", "train_type", "sft_type")
_LITGPT_LORA = frozenset({"lora_r", "lora_alpha", "lora_query", "lora_value", "lora_key"})
# Any of these, at any depth, makes a JSON/YAML file worth parsing as a possible LoRA config.
_GATE = frozenset({
    "lora_r", "lora_alpha", "lora_rank", "lora_dropout", "lora_target", "lora_target_modules",
    "lora_target_linear", "lora_parameters", "lora_attn_modules", "peft_type", "peft_config",
    "network_dim", "network_alpha", "network_module", "LoRA_type", "fine_tune_type",
    "finetuning_type", "tuner_type", "train_type", "sft_type", "use_peft", "linear_alpha",
    "lora_query", "training_type", "peft_use_dora", "peft_use_rslora", "lora_adapter_metadata",
    "target_modules", "adapter", "network", "model_class", "kernel_config", "dist_config",
    "process", "checkpoint_dir", "model_name_or_path", "lora", "lora_config", "lora_args",
    "lora_params", "stage",
})
# HF TrainingArguments keys: with model_name_or_path and nothing LoRA, a full fine-tune.
_HF_TRAINING = frozenset({"output_dir", "learning_rate", "per_device_train_batch_size",
                          "num_train_epochs", "gradient_accumulation_steps"})
_LITGPT_RUN = frozenset({"out_dir", "precision", "devices", "train", "eval"})


def worth_parsing(kind: str, keys: Collection[str]) -> bool:
    """The cheap gate: whether a file whose keys (at any depth) are ``keys`` may be a LoRA
    config at all. :func:`classify_data` decides on the parsed file."""
    if kind == "toml":
        return bool(set(keys) & _KOHYA)
    return kind in ("json", "yaml") and bool(set(keys) & _GATE)


def classify_data(kind: str, data: Any) -> str | None:
    """The LoRA config format of a parsed file, by its top-level keys and sections; None when
    it is no LoRA-related training config. Formats are told apart by their keys, never by the
    file's name."""
    from loracheck.configs.trainers import lora_section

    if kind == "toml":
        return "kohya" if _any_depth(data) & _KOHYA else None
    if kind not in ("json", "yaml") or not isinstance(data, dict):
        return None
    top = {k for k in data if isinstance(k, str)}

    def mapping(name: str) -> dict[Any, Any] | None:
        value = data.get(name)
        return value if isinstance(value, dict) else None

    config = mapping("config")
    if config is not None and isinstance(config.get("process"), list):
        return "ai-toolkit"
    if "lora_parameters" in top or ("fine_tune_type" in top and "peft_type" not in top):
        return "mlx"
    if "peft_type" in top or ("r" in top and ({"lora_alpha", "target_modules"} & top)):
        return "peft"
    header = mapping("__metadata__")
    if "lora_adapter_metadata" in top or "lora_adapter_metadata" in (header or {}):
        return "diffusers"
    if mapping("peft_config") is not None:
        return "llama-factory-v1"
    section = lora_section(data)
    if "model" in top and top & _LF_V1_KEYS and section is None:
        return "llama-factory-v1"  # no peft_config block: a full fine-tune
    studio_lora = mapping("lora")
    studio_training = mapping("training")
    if (studio_lora is not None and "lora_r" in studio_lora) or (
        studio_training is not None and "training_type" in studio_training
    ):
        return "unsloth-studio"
    if top & _KOHYA or "LoRA_type" in top:
        return "kohya"
    model = mapping("model")
    component = model.get("_component_") if model is not None else None
    tune_keys = model is not None and bool({"lora_rank", "lora_attn_modules"} & set(model))
    if isinstance(component, str) and (component.startswith("torchtune.") or tune_keys):
        return "torchtune"
    swift_group = mapping("train")
    if any(isinstance(data.get(k), str) for k in _SWIFT_KEYS) or (
        swift_group is not None and any(isinstance(swift_group.get(k), str) for k in _SWIFT_KEYS)
    ):
        return "ms-swift"
    if "checkpoint_dir" in top and (top & _LITGPT_LORA or len(top & _LITGPT_RUN) >= 2):
        return "litgpt"
    if ("lora_rank" in top and "model" in top and "model_name_or_path" not in top
            and not top & _LF_RUN):
        return "ms-swift"  # swift's own keys, with tuner_type left at its default (lora)
    if top & _LF_KEYS or ("model_name_or_path" in top and {"stage", "template"} <= top):
        return "llama-factory"
    if top & _TRAINER_LORA or "peft_use_dora" in top or "peft_use_rslora" in top:
        if "use_peft" in top or "lora_task_type" in top:
            return "trl"
        if kind == "json":
            return "llmbox" if (top & _LLMBOX_HINTS or "use_peft" not in top) else "trl"
        if top & _AXOLOTL_HINTS:
            return "axolotl"
        return "trl" if "model_name_or_path" in top else "axolotl"
    if "base_model" in top and ({"adapter", "datasets"} & top):
        return "axolotl"  # a full fine-tune: adapter blank or absent
    if "use_peft" in top or ("model_name_or_path" in top and top & _HF_TRAINING):
        return "trl"  # TRL / HF argument files: without use_peft, a full fine-tune
    if section is not None:
        return "lora-section"
    return None


def _any_depth(data: Any) -> set[str]:
    keys: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            keys.update(k for k in node if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return keys


def classify_python(text: str) -> str | None:
    """python / unsloth when a script spells out LoRA settings, else None."""
    lora_config = _PY_LORACONFIG.search(text)
    unsloth = _PY_UNSLOTH.search(text)
    if lora_config and unsloth:
        return "python" if lora_config.start() < unsloth.start() else "unsloth"
    if lora_config:
        return "python"
    if unsloth:
        return "unsloth"
    if _PY_GET_PEFT.search(text) or _PY_LORA_CLASS.search(text):
        return "python"
    return None


def keys_in(kind: str, text: str) -> set[str]:
    """Key names a json/yaml/toml text appears to use, at any depth (a regex approximation)."""
    pattern = {"json": _JSON_KEY, "yaml": _YAML_KEY, "toml": _TOML_KEY}.get(kind)
    return set(pattern.findall(text)) if pattern is not None else set()


def sniff_config(path: Path, text: str | None = None) -> str | None:
    """The LoRA source format name of the config file at ``path``, or None.

    The extension and the key names of the file's head are a gate; a file that passes is
    parsed and classified (:func:`classify_data`), or, when it does not parse, classified by
    its key names alone. A ``.safetensors`` file is sniffed by its header metadata. Raises
    ArtifactError only when the file cannot be read at all.
    """
    from loracheck.configs.documents import kind_of

    path = Path(path)
    if path.suffix.lower() == ".safetensors" and text is None:
        return _sniff_safetensors(path)
    kind = kind_of(path)
    if kind is None:
        return None
    if text is None:
        text = head_text(path)
    if kind == "python":
        return classify_python(text)
    keys = keys_in(kind, text)
    if not worth_parsing(kind, keys):
        return None
    from loracheck.configs.documents import parse

    try:
        doc = parse(path, kind, text)
    except ArtifactError:
        # Not parseable (read_spec says why): a guess from the key names alone.
        return classify_data(kind, dict.fromkeys(keys))
    return classify_data(kind, doc.data)


def head_text(path: Path) -> str:
    """The first SNIFF_BYTES of a file as text (undecodable bytes replaced)."""
    return head_bytes(path)[:SNIFF_BYTES].decode("utf-8", errors="replace")


def head_bytes(path: Path) -> bytes:
    """Up to SNIFF_BYTES + 1 bytes of a file: all of it when shorter than SNIFF_BYTES + 1."""
    from loracheck.configs.documents import read_prefix

    try:
        return read_prefix(path, SNIFF_BYTES + 1)
    except OSError as err:
        raise ArtifactError(str(path), f"cannot read file: {err.strerror or err}") from None


def _sniff_safetensors(path: Path) -> str | None:
    from loracheck.configs.diffusers import METADATA_KEY
    from loracheck.configs.metadata import read_safetensors_metadata

    try:
        meta = read_safetensors_metadata(path)
    except ArtifactError:
        return None
    if METADATA_KEY in meta:
        return "diffusers"
    if any(k in meta for k in ("ss_network_dim", "ss_network_alpha", "ss_network_module")):
        return "kohya-metadata"
    return None
