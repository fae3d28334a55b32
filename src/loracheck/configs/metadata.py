"""LoRA settings carried in a safetensors header's ``__metadata__`` (kohya ``ss_*``, diffusers).

The header is read by its published layout (u64 length + JSON), never by a tensor library.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

from loracheck.errors import ArtifactError
from loracheck.model import LoraSpec

# A safetensors header past this size is not a LoRA's; refuse it rather than read it.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def spec_from_metadata(metadata: Mapping[str, str], path: str) -> LoraSpec | None:
    """The spec a header's metadata declares; None when it says nothing LoRA-related.

    diffusers' ``lora_adapter_metadata`` wins over kohya ``ss_network_*`` when both are present
    (the other one is then kept in ``extras["kohya_metadata"]``).
    """
    from loracheck.configs.diffusers import METADATA_KEY, spec_from_diffusers_metadata
    from loracheck.configs.kohya import spec_from_kohya_metadata

    kohya = spec_from_kohya_metadata(metadata, path)
    raw = metadata.get(METADATA_KEY)
    if isinstance(raw, str):
        spec = spec_from_diffusers_metadata(raw, path)
        if kohya is not None:
            spec.extras["kohya_metadata"] = {"rank": kohya.rank, "alpha": kohya.alpha,
                                             "dropout": kohya.dropout,
                                             "extras": kohya.extras}
        return spec
    return kohya


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` mapping of a safetensors file (empty when it has none)."""
    name = str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ArtifactError(name, "not a safetensors file: shorter than 8 bytes")
            (size,) = struct.unpack("<Q", head)
            if size > MAX_HEADER_BYTES:
                raise ArtifactError(name, f"safetensors header of {size} bytes refused")
            raw = handle.read(size)
    except OSError as err:
        raise ArtifactError(name, f"cannot read file: {err.strerror or err}") from None
    if len(raw) < size:
        raise ArtifactError(name, "safetensors header truncated")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ArtifactError(name, "safetensors header is not valid JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
