"""kohya sd-scripts training configs (TOML/JSON) and ``ss_*`` safetensors metadata -> LoraSpec.

Config sections are flattened the way sd-scripts does, so ``network_dim`` may sit in any table.
``network_args`` ("conv_dim=4", "algo=locon", ...) is parsed into ``extras["network_args"]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from loracheck.configs.documents import Doc
from loracheck.configs.fields import InvalidValue, SpecBuilder, to_float, to_int
from loracheck.configs.methods import kohya_method
from loracheck.configs.semantics import apply_defaults
from loracheck.model import LoraSpec

_CONFIG_FIELDS = {
    "network_dim": "rank",
    "network_alpha": "alpha",
    "network_dropout": "dropout",
}
_CONFIG_EXTRAS = (
    "network_module",
    "network_weights",
    "dim_from_weights",
    "network_train_unet_only",
    "network_train_text_encoder_only",
    "unet_lr",
    "text_encoder_lr",
    "learning_rate",
    "pretrained_model_name_or_path",
    "LoRA_type",
)


def parse_network_args(raw: Any) -> dict[str, Any] | None:
    """``["conv_dim=4", "algo=locon"]`` (or a JSON/"k=v k=v" string, or a dict) as a dict."""
    if isinstance(raw, Mapping):
        return {str(k): v for k, v in raw.items()}
    items: list[Any]
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                loaded = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
                return None
            return {str(k): v for k, v in loaded.items()} if isinstance(loaded, dict) else None
        items = text.split()
    elif isinstance(raw, list):
        items = raw
    else:
        return None
    parsed: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            return None
        key, _, value = item.partition("=")
        parsed[key.strip()] = value.strip()
    return parsed


def read_kohya(doc: Doc) -> LoraSpec:
    b = SpecBuilder("kohya", doc.path)
    for key, spec_field in _CONFIG_FIELDS.items():
        found, value, line, _ = doc.find_key(key)
        if found:
            b.set(spec_field, value, line, key=key)
    for key in _CONFIG_EXTRAS:
        found, value, line, _ = doc.find_key(key)
        if found:
            b.extra(key, value, line)
    found, base, line, _ = doc.find_key("pretrained_model_name_or_path")
    if found:
        b.set("base_model", base, line, key="pretrained_model_name_or_path")
    found, args, line, _ = doc.find_key("network_args")
    parsed: dict[str, Any] | None = None
    if found:
        parsed = parse_network_args(args)
        if parsed is None:
            b.invalid["network_args"] = repr(args)
            if line is not None:
                b.lines["network_args"] = line
        else:
            b.extra("network_args", parsed, line)
    _, module, _, _ = doc.find_key("network_module")
    _, gui_type, _, _ = doc.find_key("LoRA_type")
    b.set_method(*kohya_method(module, gui_type, parsed))
    _conv(doc, b, parsed, gui_type)
    apply_defaults(b, "kohya")
    b.suppressions = doc.suppressions
    return b.build()


# kohya_ss GUI LoRA types that train 3x3 convs with conv_dim / conv_alpha
# (kohya_gui/lora_gui.py@8a524c7 train_model).
_GUI_CONV_TYPES = frozenset({"kohya locon", "locon", "lycoris/locon", "kohya dylora"})


def _conv(doc: Doc, b: SpecBuilder, args: dict[str, Any] | None, gui_type: Any) -> None:
    """The conv rank and alpha in force, into extras ``conv_dim`` / ``conv_alpha``.

    sd-scripts (networks/lora.py@02298e3 create_network) trains convs only when network_args
    has conv_dim, and conv_alpha then defaults to 1; LyCORIS (lycoris/kohya/__init__.py@2c8adb4)
    defaults both to network_dim / network_alpha.
    """
    raw_dim: Any = None
    raw_alpha: Any = None
    line: int | None = None
    if args is not None and "conv_dim" in args:
        raw_dim, raw_alpha = args.get("conv_dim"), args.get("conv_alpha")
        line = b.lines.get("network_args")
        if raw_alpha is None and str(b.extras.get("network_module", "")).startswith("lycoris"):
            raw_alpha = b.get("alpha")
    elif isinstance(gui_type, str) and gui_type.strip().lower() in _GUI_CONV_TYPES:
        found, raw_dim, line, _ = doc.find_key("conv_dim")
        _, raw_alpha, _, _ = doc.find_key("conv_alpha")
        if not found:
            return
    else:
        return
    try:
        dim = to_int(raw_dim, lax=True)
        alpha = 1.0 if raw_alpha is None else to_float(raw_alpha, lax=True)
    except InvalidValue:  # a wrong type is not a conv scale
        return
    if dim <= 0:
        return
    b.extra("conv_dim", dim, line)
    b.extra("conv_alpha", alpha, line)


def _meta_value(text: str) -> Any:
    """A metadata string as the value it spells: "None" -> None, "16" -> 16, "0.5" -> 0.5."""
    stripped = text.strip()
    if stripped in ("None", "none", "null", ""):
        return None
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(stripped)
    except ValueError:
        return text


def spec_from_kohya_metadata(metadata: Mapping[str, str], path: str) -> LoraSpec | None:
    """kohya ``ss_network_*`` metadata (every value a string) as a spec; None when absent."""
    if not any(k in metadata for k in ("ss_network_dim", "ss_network_alpha", "ss_network_module")):
        return None
    b = SpecBuilder("kohya-metadata", path)
    for key, spec_field in (
        ("ss_network_dim", "rank"),
        ("ss_network_alpha", "alpha"),
        ("ss_network_dropout", "dropout"),
    ):
        if key not in metadata:
            continue
        raw = metadata[key]
        value = _meta_value(raw) if isinstance(raw, str) else raw
        if value is None and spec_field != "dropout":
            # "None" for dim/alpha means the trainer default applied; keep it as not said.
            b.source_keys[spec_field] = key
            b.extra(f"{key}_raw", raw)
            continue
        if not b.set(spec_field, value, key=key):
            b.invalid[spec_field] = repr(raw)
    if "ss_network_module" in metadata:
        b.extra("network_module", metadata["ss_network_module"])
    parsed: dict[str, Any] | None = None
    if "ss_network_args" in metadata:
        parsed = parse_network_args(metadata["ss_network_args"])
        if parsed is None:
            b.invalid["network_args"] = repr(metadata["ss_network_args"])
            b.source_keys["network_args"] = "ss_network_args"
        else:
            b.extra("network_args", parsed)
    b.set_method(*kohya_method(metadata.get("ss_network_module"), None, parsed))
    for key in ("ss_base_model_version", "ss_v2", "ss_training_comment", "ss_steps", "ss_epoch"):
        if key in metadata:
            b.extra(key, metadata[key])
    if "ss_sd_model_name" in metadata:
        b.set("base_model", metadata["ss_sd_model_name"], key="ss_sd_model_name")
    return b.build()
