"""Every LoRA config source -> one typed :class:`~loracheck.model.LoraSpec`, with key lines.

Public API:
    sniff_config(path, text=None) -> format name | None   a key-name gate, then the parsed keys
    read_spec(path, fmt=None) -> LoraSpec                 raises ArtifactError (LC001/LC002)
    read_spec_if_lora(path) -> LoraSpec | None            a loose file: None when not LoRA
    spec_from_metadata(metadata, path) -> LoraSpec | None kohya ss_* / diffusers header metadata

Format names: see :data:`FORMATS`. Parsers are imported only for the format being read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from loracheck.configs.sniff import classify_data, sniff_config
from loracheck.errors import ArtifactError

if TYPE_CHECKING:
    from loracheck.configs.documents import Doc
    from loracheck.model import LoraSpec

__all__ = ["FORMATS", "read_spec", "read_spec_if_lora", "sniff_config", "spec_from_metadata"]

FORMATS: tuple[str, ...] = (
    "peft",
    "axolotl",
    "llama-factory",
    "llama-factory-v1",
    "torchtune",
    "trl",
    "llmbox",
    "ms-swift",
    "litgpt",
    "ai-toolkit",
    "unsloth",
    "unsloth-studio",
    "kohya",
    "kohya-metadata",
    "mlx",
    "python",
    "diffusers",
    "lora-section",
)


def spec_from_metadata(metadata: Mapping[str, str], path: str) -> LoraSpec | None:
    """The spec safetensors ``__metadata__`` declares (kohya ss_*, diffusers); None if none."""
    from loracheck.configs.metadata import spec_from_metadata as _from_metadata

    return _from_metadata(metadata, path)


def read_spec(path: Path, fmt: str | None = None) -> LoraSpec:
    """Read the config file at ``path`` as ``fmt`` (sniffed when None) into a LoraSpec.

    Raises ArtifactError: LC001 when the file is unreadable, too large, not UTF-8 or not valid
    syntax (with ``line`` when known); LC002 when ``fmt`` is None and the file carries no LoRA
    settings. Wrong-typed values never raise: they land in ``spec.invalid``.
    """
    from loracheck.configs.documents import kind_of, read_doc

    path = Path(path)
    name = str(path)
    if fmt is not None and fmt not in FORMATS:
        raise ArtifactError(name, f"unknown config format {fmt!r}")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path, fmt)
    kind = kind_of(path)
    if kind == "python" or fmt in ("python", "unsloth"):
        from loracheck.configs.python_script import read_python

        return read_python(path)
    if kind is None:
        # No telling extension: JSON is the likeliest config syntax, then YAML.
        kind = "json" if fmt in ("peft", "llmbox", "diffusers") else "yaml"
    doc = read_doc(path, kind)
    if fmt is None:
        fmt = classify_data(kind, doc.data)
        if fmt is None:
            raise ArtifactError(name, "no LoRA settings found in this file", code="LC002")
    return _from_doc(fmt, doc)


def read_spec_if_lora(path: Path) -> LoraSpec | None:
    """The spec of a config file met loosely (walked, or handed over by pre-commit), or None
    when it holds no LoRA-related settings. A JSON or YAML file is parsed once: the cheap key
    gate on its head, then the full read, then the classification.

    Raises ArtifactError (LC001) when a file that looks like a LoRA config cannot be read.
    """
    from loracheck.configs.documents import config_cap, decode_text, kind_of, parse, read_doc
    from loracheck.configs.sniff import SNIFF_BYTES, head_bytes, keys_in, worth_parsing

    path = Path(path)
    kind = kind_of(path)
    if kind not in ("json", "yaml"):
        return read_spec(path) if sniff_config(path) is not None else None
    head = head_bytes(path)
    keys = keys_in(kind, head[:SNIFF_BYTES].decode("utf-8", errors="replace"))
    if not worth_parsing(kind, keys):
        return None
    try:
        # A file no longer than the head was read whole: parsed from those bytes, not again.
        whole = len(head) <= SNIFF_BYTES and len(head) <= config_cap(kind)
        doc = (parse(path, kind, decode_text(str(path), head, config_cap(kind))) if whole
               else read_doc(path, kind))
    except ArtifactError:
        # Broken: reported only when its key names alone say it is a LoRA config.
        if classify_data(kind, dict.fromkeys(keys)) is None:
            return None
        raise
    fmt = classify_data(kind, doc.data)
    return _from_doc(fmt, doc) if fmt is not None else None


def _from_doc(fmt: str, doc: Doc) -> LoraSpec:
    name = doc.path
    if doc.data is not None and not isinstance(doc.data, dict):
        raise ArtifactError(name, f"expected a mapping at the top level, found "
                            f"{type(doc.data).__name__}", line=1)
    if doc.data is None:
        doc.data = {}
    return _dispatch(fmt, doc)


def _dispatch(fmt: str, doc: object) -> LoraSpec:
    from loracheck.configs.documents import Doc

    assert isinstance(doc, Doc)
    if fmt == "peft":
        from loracheck.configs.peft import read_peft

        return read_peft(doc)
    if fmt == "mlx":
        from loracheck.configs.mlx import read_mlx

        return read_mlx(doc)
    if fmt in ("kohya", "kohya-metadata"):
        from loracheck.configs.kohya import read_kohya

        return read_kohya(doc)
    if fmt == "diffusers":
        from loracheck.configs.diffusers import read_diffusers_json

        return read_diffusers_json(doc)
    from loracheck.configs import trainers

    readers = {
        "axolotl": trainers.read_axolotl,
        "llama-factory": trainers.read_llama_factory,
        "llama-factory-v1": trainers.read_llama_factory_v1,
        "torchtune": trainers.read_torchtune,
        "trl": trainers.read_trl,
        "llmbox": trainers.read_llmbox,
        "ms-swift": trainers.read_ms_swift,
        "litgpt": trainers.read_litgpt,
        "ai-toolkit": trainers.read_ai_toolkit,
        "unsloth-studio": trainers.read_unsloth_studio,
        "lora-section": trainers.read_lora_section,
    }
    return readers[fmt](doc)


def _read_safetensors(path: Path, fmt: str | None) -> LoraSpec:
    from loracheck.configs.metadata import read_safetensors_metadata
    from loracheck.configs.metadata import spec_from_metadata as _from_metadata

    spec = _from_metadata(read_safetensors_metadata(path), str(path))
    if spec is None:
        raise ArtifactError(str(path), "no LoRA settings in the safetensors metadata",
                            code="LC002")
    return spec
