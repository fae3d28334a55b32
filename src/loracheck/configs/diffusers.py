"""diffusers ``lora_adapter_metadata`` (a JSON string in the safetensors header) -> LoraSpec.

Pipeline saves prefix every LoraConfig field with its component (``transformer.r``,
``unet.lora_alpha``, ``text_encoder.target_modules``); a single model's save is unprefixed.
The first component (transformer, then unet, then the rest in order) gives the top-level fields;
each component's own config becomes ``spec.components[name]``, which the per-module resolution
(:func:`loracheck.scaling.spec_for_module`) applies to that component's modules only, as the
diffusers loaders do (each component loads with its own LoraConfig). The raw dicts stay in
``extras["components"]``.
"""

from __future__ import annotations

import json
from typing import Any

from loracheck.configs.documents import Doc
from loracheck.configs.fields import SpecBuilder
from loracheck.configs.peft import EXTRAS as PEFT_EXTRAS
from loracheck.configs.peft import FIELDS as PEFT_FIELDS
from loracheck.model import LoraSpec

METADATA_KEY = "lora_adapter_metadata"
_KNOWN = set(PEFT_FIELDS) | set(PEFT_EXTRAS)
_PREFERRED = ("transformer", "unet", "prior", "decoder")


def split_components(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{component: LoraConfig dict}; an unprefixed config is the component ``""``."""
    components: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        prefix, dot, field_name = key.rpartition(".")
        if dot and field_name in _KNOWN:
            components.setdefault(prefix, {})[field_name] = value
        else:
            components.setdefault("", {})[key] = value
    return components


def spec_from_diffusers_metadata(raw: str, path: str) -> LoraSpec:
    """Parse the ``lora_adapter_metadata`` string; malformed JSON is recorded, never raised."""
    b = SpecBuilder("diffusers", path)
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        b.invalid[METADATA_KEY] = repr(raw[:200])
        return b.build()
    components = split_components(config)
    names = sorted(components, key=lambda n: (n not in _PREFERRED, _rank(n), n))
    chosen = names[0] if names else ""
    for key, value in components.get(chosen, {}).items():
        if key in PEFT_FIELDS:
            b.set(PEFT_FIELDS[key], value, key=f"{chosen}.{key}" if chosen else key)
        elif key in PEFT_EXTRAS:
            b.extra(key, value)
        else:
            b.unknown_key(key)
    b.extra("component", chosen or None)
    if len(components) > 1 or chosen:
        b.extra("components", components)
    spec = b.build()
    if chosen:
        spec.components = {name: _component_spec(fields, path) for name, fields in
                           components.items() if name}
    return spec


def _component_spec(fields: dict[str, Any], path: str) -> LoraSpec:
    b = SpecBuilder("diffusers", path)
    for key, value in fields.items():
        if key in PEFT_FIELDS:
            b.set(PEFT_FIELDS[key], value, key=key)
        elif key in PEFT_EXTRAS:
            b.extra(key, value)
    return b.build()


def _rank(name: str) -> int:
    return _PREFERRED.index(name) if name in _PREFERRED else len(_PREFERRED)


def read_diffusers_json(doc: Doc) -> LoraSpec:
    """A JSON file holding a diffusers safetensors ``__metadata__`` dict or the config itself."""
    data = doc.data if isinstance(doc.data, dict) else {}
    meta = data.get("__metadata__", data)
    raw = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if isinstance(raw, str):
        spec = spec_from_diffusers_metadata(raw, doc.path)
    else:
        spec = spec_from_diffusers_metadata(json.dumps(raw if raw is not None else data), doc.path)
    line = doc.line(METADATA_KEY) or doc.line("__metadata__", METADATA_KEY)
    if line is not None:
        spec.lines.setdefault(METADATA_KEY, line)
    return spec
