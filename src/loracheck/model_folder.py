"""A model folder read tensor by tensor: one ``.safetensors`` file, a folder holding one, or a
sharded checkpoint with ``model.safetensors.index.json``.

Every shard goes through loracheck's validated reader (:class:`~loracheck.safetensors_io.
SafetensorsFile`): headers are checked in full, tensors are memory-mapped and never read
whole. :meth:`ModelFolder.row_blocks` hands out a big 2-D tensor as slices of its raw bytes,
each decoded to float64 only while it is used, so reading a model costs one block of memory,
not one model. The index JSON is size-bounded, and a shard it names must lie inside the folder.

Nothing here judges anything: :mod:`loracheck.merge_measure` measures, the rules judge.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from loracheck.basemodel import BaseModelInfo, BaseTensor
from loracheck.errors import ArtifactError, UsageError
from loracheck.safetensors_io import SafetensorsFile, decode_array

INDEX_NAME = "model.safetensors.index.json"
# An index maps every tensor name to a shard: a 1T-parameter model's is a few MB.
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Elements per decoded block of a big tensor: 512 KiB of float64, which stays in cache.
BLOCK_ELEMENTS = 1 << 16


@dataclass(frozen=True)
class FolderTensor:
    """One tensor of a model folder: its key, the shard holding it, dtype, shape, size."""

    key: str
    shard: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class ModelFolder:
    """An open model folder (see the module docstring). Use :meth:`open`, then ``close``."""

    def __init__(self, path: str, config: dict[str, Any], tensors: dict[str, FolderTensor],
                 files: dict[str, SafetensorsFile], unindexed: tuple[str, ...] = ()) -> None:
        self.path = path
        self.config = config
        self.tensors = tensors
        self._files = files
        # Tensors a shard holds that the index's weight_map does not list (loaders that follow
        # the index never load them).
        self.unindexed = unindexed

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, role: str = "MERGED") -> ModelFolder:
        """Open ``path``; UsageError when it is no model folder (``role`` names the argument
        in the message), ArtifactError (LC001) when a shard is broken."""
        root = Path(path)
        shards, config, weight_map = _shards(root, role)
        files: dict[str, SafetensorsFile] = {}
        tensors: dict[str, FolderTensor] = {}
        try:
            for shard in shards:
                handle = SafetensorsFile.open(shard)
                files[str(shard)] = handle
                for key, entry in handle.entries.items():
                    if key in tensors:
                        raise ArtifactError(str(shard), f"tensor {key!r} is also in "
                                            f"{Path(tensors[key].shard).name}", location=key)
                    tensors[key] = FolderTensor(key, str(shard), entry.dtype, entry.shape,
                                                entry.nbytes)
            for key, name in weight_map.items():
                held = tensors.get(key)
                if held is None or Path(held.shard).name != Path(name).name:
                    raise ArtifactError(str(root / INDEX_NAME), f"the index puts tensor "
                                        f"{key[:120]!r} in {name[:120]!r}, which does not hold "
                                        "it", location=key)
        except BaseException:
            for handle in files.values():
                handle.close()
            raise
        unindexed = tuple(k for k in tensors if k not in weight_map) if weight_map else ()
        return cls(str(root), config, tensors, files, unindexed)

    # --- lookup --------------------------------------------------------------------------

    def info(self) -> BaseModelInfo:
        """The folder as the base-model rules see it (headers only), for module lookup."""
        return BaseModelInfo(self.path, self.config,
                             {k: BaseTensor(t.dtype, t.shape) for k, t in self.tensors.items()})

    def file_of(self, key: str) -> str:
        return self.tensors[key].shard

    # --- reading -------------------------------------------------------------------------

    def raw(self, key: str) -> npt.NDArray[Any]:
        """The tensor's bytes, undecoded, shaped (BF16 as uint16: see ``RAW_DTYPES``)."""
        tensor = self.tensors[key]
        return self._files[tensor.shard].read_raw(key).reshape(tensor.shape)

    def read(self, key: str) -> npt.NDArray[np.float64]:
        """The whole tensor in float64 (for small tensors: norms, biases, vectors)."""
        tensor = self.tensors[key]
        out: npt.NDArray[np.float64] = self._files[tensor.shard].read(key, float64=True)
        return out

    def row_blocks(self, key: str, cols: int, *, block: int = BLOCK_ELEMENTS
                   ) -> Iterator[tuple[int, npt.NDArray[Any]]]:
        """The tensor viewed as ``(numel // cols, cols)``, in blocks of whole rows of about
        ``block`` elements: (first row, raw block). Decode each with :func:`decode_block`."""
        tensor = self.tensors[key]
        raw = self._files[tensor.shard].read_raw(key).reshape(-1, cols)
        step = max(1, block // max(cols, 1))
        for start in range(0, raw.shape[0], step):
            yield start, raw[start:start + step]

    def release(self, key: str) -> None:
        """Drop the tensor's pages from the resident set (they stay in the page cache)."""
        tensor = self.tensors.get(key)
        if tensor is not None:
            self._files[tensor.shard].release(key)

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def __enter__(self) -> ModelFolder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def decode_block(raw: npt.NDArray[Any], dtype: str) -> npt.NDArray[np.float64]:
    """One raw block (from :meth:`ModelFolder.row_blocks`) as float64."""
    out: npt.NDArray[np.float64] = np.asarray(decode_array(raw, dtype, float64=True),
                                              dtype=np.float64)
    return out


def _read_json(path: Path, limit: int, what: str) -> Any:
    try:
        size = os.stat(path).st_size
        if not path.is_file():
            raise UsageError(f"{path}: {what} is not a regular file")
        if size > limit:
            raise UsageError(f"{path}: {what} is {size:,} bytes, more than the {limit:,} "
                             "allowed")
        with open(path, "rb") as handle:
            # read(n) allocates n bytes up front: ask for what the file holds, not the limit
            return json.loads(handle.read(min(size, limit) + 1).decode("utf-8"))
    except OSError as err:
        raise UsageError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    except (ValueError, RecursionError) as err:
        raise UsageError(f"{path}: {what} is not valid JSON: {str(err)[:120]}") from None


def _shards(root: Path, role: str) -> tuple[list[Path], dict[str, Any], dict[str, str]]:
    """The shard files of ``root``, its ``config.json`` (empty when absent) and the index's
    weight map (empty without an index)."""
    if root.is_file():
        if root.suffix != ".safetensors":
            raise UsageError(f"{role} {root}: not a .safetensors file or a model folder")
        return [root], {}, {}
    if not root.is_dir():
        raise UsageError(f"{role} {root}: no such file or folder")
    config: dict[str, Any] = {}
    config_path = root / "config.json"
    if config_path.exists():
        loaded = _read_json(config_path, MAX_CONFIG_BYTES, "config.json")
        config = loaded if isinstance(loaded, dict) else {}
    index = root / INDEX_NAME
    if index.exists():
        doc = _read_json(index, MAX_INDEX_BYTES, "the shard index")
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UsageError(f"{index}: no weight_map object naming the shards")
        resolved_root = root.resolve()
        shards: dict[str, Path] = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or not name:
                raise UsageError(f"{index}: tensor {str(key)[:80]!r} maps to {name!r}, not a "
                                 "file name")
            if name not in shards:
                target = (root / name).resolve()
                if target.parent != resolved_root and resolved_root not in target.parents:
                    raise UsageError(f"{index}: shard {name[:120]!r} lies outside the folder")
                if not target.is_file():
                    raise UsageError(f"{index}: shard {name[:120]!r} is missing")
                shards[name] = target
        return sorted(shards.values()), config, {str(k): v for k, v in weight_map.items()}
    found = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if len(found) != 1:
        what = "no .safetensors file" if not found else (
            f"{len(found)} .safetensors files and no {INDEX_NAME}")
        raise UsageError(f"{role} {root}: {what}")
    return found, config, {}
