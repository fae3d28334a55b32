"""A base model folder read from its headers only: ``config.json`` and the safetensors headers
(one file or a sharded set with ``model.safetensors.index.json``). No weight is read.

Used by the rules that check an adapter against the model it is meant for (LC250, LC251).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracheck.errors import UsageError

MAX_HEADER = 100 * 1024 * 1024
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# Last path segments of modules whose first dimension is the vocabulary.
VOCAB_MODULES = frozenset(
    {"embed_tokens", "lm_head", "wte", "word_embeddings", "embed_in", "embed_out",
     "tok_embeddings", "shared"}
)


@dataclass(frozen=True)
class BaseTensor:
    """A tensor of the base model as its header describes it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class BaseModelInfo:
    """What loracheck knows of a base model: its config and the name, dtype, shape of each
    tensor."""

    path: str
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, BaseTensor] = field(default_factory=dict)

    @property
    def modules(self) -> dict[str, BaseTensor]:
        """Module name -> its ``weight`` tensor (``model.layers.0.self_attn.q_proj``)."""
        return {k[: -len(".weight")]: t for k, t in self.tensors.items() if k.endswith(".weight")}

    def _text_config(self) -> dict[str, Any]:
        for key in ("text_config", "llm_config", "language_config"):
            sub = self.config.get(key)
            if isinstance(sub, dict):
                return sub
        return {}

    def _int(self, key: str) -> int | None:
        for cfg in (self.config, self._text_config()):
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def vocab_size(self) -> int | None:
        return self._int("vocab_size")

    @property
    def hidden_size(self) -> int | None:
        return self._int("hidden_size") or self._int("d_model") or self._int("n_embd")

    @property
    def tie_word_embeddings(self) -> bool:
        for cfg in (self.config, self._text_config()):
            value = cfg.get("tie_word_embeddings")
            if isinstance(value, bool):
                return value
        return True  # the transformers default

    def find(self, module: str) -> tuple[str, BaseTensor] | None:
        """The base module an adapter module name refers to, tolerating PEFT's
        ``base_model.model.`` wrapper, a missing or extra ``model.`` level and the
        language-model level of multimodal checkpoints (``model.language_model.layers.*`` for
        an adapter's ``model.layers.*``); failing those, the one checkpoint module whose path
        ends with the name (another wrapper: ``transformer.model.layers.*``; several → none);
        tied output embeddings resolve to the input embedding."""
        modules = self.modules
        name = module
        for prefix in ("base_model.model.", "base_model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        parts = name.split(".")
        candidates = [".".join(parts[i:]) for i in range(len(parts))]
        stems = [name] + ([name[len("model."):]] if name.startswith("model.") else [])
        candidates += [prefix + stem for stem in stems
                       for prefix in ("model.", "model.language_model.")]
        for cand in candidates:
            if cand in modules:
                return cand, modules[cand]
        for stem in stems:
            ends = [key for key in modules if key.endswith("." + stem)]
            if ends:
                return (ends[0], modules[ends[0]]) if len(ends) == 1 else None
        if parts[-1] in ("lm_head", "embed_out") and self.tie_word_embeddings:
            for key, tensor in modules.items():
                if key.split(".")[-1] in ("embed_tokens", "wte", "word_embeddings", "embed_in"):
                    return key, tensor
        return None


def _read_header(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UsageError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > MAX_HEADER:
                raise UsageError(f"{path}: safetensors header length {n} exceeds the file")
            header = json.loads(f.read(n))
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: invalid safetensors header: {err}") from None
    if not isinstance(header, dict):
        raise UsageError(f"{path}: invalid safetensors header: not an object")
    return header


def _tensors(path: Path) -> dict[str, BaseTensor]:
    out: dict[str, BaseTensor] = {}
    for key, entry in _read_header(path).items():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        shape = entry.get("shape")
        dtype = entry.get("dtype")
        if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise UsageError(f"{path}: tensor {key!r} has an invalid shape")
        out[key] = BaseTensor(str(dtype), tuple(shape))
    return out


def read_base_model(path: Path) -> BaseModelInfo:
    """Read ``path`` (a local model folder) from headers only; UsageError when it is not one."""
    if not path.is_dir():
        raise UsageError(f"--model {path}: not a folder")
    cfg_path = path / "config.json"
    if cfg_path.exists() and not cfg_path.is_file():
        # a FIFO would block the read until a writer comes; a device is no config
        raise UsageError(f"--model {path}: config.json is not a regular file")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--model {path}: no config.json") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"--model {path}: cannot read config.json: {err}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--model {path}: config.json is not an object")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError) as err:
            raise UsageError(f"{index}: cannot read: {err}") from None
        if not isinstance(weight_map, dict):
            raise UsageError(f"{index}: weight_map is not an object")
        shards = sorted({path / str(v) for v in weight_map.values()})
    else:
        shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise UsageError(f"--model {path}: no safetensors weights")
    tensors: dict[str, BaseTensor] = {}
    for shard in shards:
        if not shard.is_file():
            raise UsageError(f"--model {path}: missing shard {shard.name}")
        tensors.update(_tensors(shard))
    return BaseModelInfo(str(path), config, tensors)


load_base_model = read_base_model


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
