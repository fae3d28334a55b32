"""Deciding, cheaply, which LoRA config format a file is (or that it is none).

The decision is made from the extension and the set of key names the file uses, found with
regular expressions (no parsing), so unrelated files handed over by pre-commit cost microseconds.
:func:`classify` is shared with the full reader, which calls it on the parsed keys.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path

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
_LF_KEYS = frozenset({"lora_rank", "lora_target"})


def classify(kind: str, keys: Collection[str]) -> str | None:
    """The LoRA source format for a file of syntax ``kind`` using these key names, or None."""
    if kind == "toml":
        return "kohya" if keys & _KOHYA else None  # type: ignore[operator]
    if kind not in ("json", "yaml"):
        return None
    k = set(keys)
    if "lora_parameters" in k or ("fine_tune_type" in k and "peft_type" not in k):
        return "mlx"
    if "peft_type" in k or ("r" in k and ({"lora_alpha", "target_modules"} & k)):
        return "peft"
    if "lora_adapter_metadata" in k:
        return "diffusers"
    if k & _KOHYA:
        return "kohya"
    if "_component_" in k and ({"lora_rank", "lora_attn_modules"} & k):
        return "torchtune"
    if k & _LF_KEYS:
        return "llama-factory"
    if k & _TRAINER_LORA or "peft_use_dora" in k or "peft_use_rslora" in k:
        if "use_peft" in k or "lora_task_type" in k:
            return "trl"
        if kind == "json":
            return "llmbox" if (k & _LLMBOX_HINTS or "use_peft" not in k) else "trl"
        if k & _AXOLOTL_HINTS:
            return "axolotl"
        return "trl" if "model_name_or_path" in k else "axolotl"
    return None


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

    Decided by extension and the key names used; a ``.safetensors`` file is sniffed by its
    header metadata. Raises ArtifactError only when the file cannot be read at all.
    """
    from loracheck.configs.documents import kind_of

    path = Path(path)
    if path.suffix.lower() == ".safetensors" and text is None:
        return _sniff_safetensors(path)
    kind = kind_of(path)
    if kind is None:
        return None
    if text is None:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(SNIFF_BYTES)
        except OSError as err:
            raise ArtifactError(str(path), f"cannot read file: {err.strerror or err}") from None
        text = raw.decode("utf-8", errors="replace")
    if kind == "python":
        return classify_python(text)
    return classify(kind, keys_in(kind, text))


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
