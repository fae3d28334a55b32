"""A torch-free, code-free reader for PyTorch ``torch.save`` checkpoints (.bin / .pt / .pth).

Only the zip format (torch >= 1.6) is read: ``<prefix>/data.pkl`` holds a pickle of the state dict
whose tensors point, through persistent ids, at raw storages ``<prefix>/data/<key>``. The pickle
is run by a restricted unpickler that resolves the few globals a state dict of tensors needs to
local stand-ins (which only record shapes, strides and dtypes) and refuses every other global, so
no code from the file ever runs. Tensor bytes are read from the zip only when asked for.

The legacy pre-1.6 format (a bare pickle stream) and any other bare pickle are refused unread.
Every fault becomes :class:`~loracheck.errors.ArtifactError` with code ``LC001``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import numpy.typing as npt

from loracheck.errors import ArtifactError
from loracheck.safetensors_io import DTYPE_BITS, RAW_DTYPES, decode_array

if TYPE_CHECKING:
    import zipfile

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PickledTensor",
    "TorchCheckpoint",
    "load_state_dict",
]

# Largest total of tensor bytes one read may pull out of a checkpoint.
DEFAULT_MAX_BYTES = 8 * 2**30
# Largest data.pkl accepted: a state dict pickle is ~100 bytes per tensor.
MAX_PICKLE_BYTES = 256 * 2**20
# How deep nested dicts of tensors are followed (a checkpoint like {"state_dict": {...}}).
MAX_NESTING = 8
# Most tensors and other values one state dict may hold: a pickle whose dicts share children
# (memo references) expands to far more entries than its bytes suggest.
MAX_ENTRIES = 2**18  # 262,144: a large MoE checkpoint holds tens of thousands
# torch.save stores records uncompressed; a compressed record bigger than this that inflates
# more than MAX_INFLATION times its stored size is refused before it is inflated (a zip bomb).
INFLATE_FREE_BYTES = 64 * 2**20
MAX_INFLATION = 100
# A strided view may repeat its storage (an expand()ed tensor): up to this many times its
# stored bytes, or this size whatever the storage, is materialised; beyond, it is refused.
VIEW_FREE_BYTES = 16 * 2**20
MAX_VIEW_GROWTH = 16
_MAX_INT = 2**63 - 1

# torch's legacy storage classes -> safetensors dtype names.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}
# torch dtype objects (named in _rebuild_tensor_v3 pickles) -> safetensors dtype names.
_TORCH_DTYPES: dict[str, str] = {
    "float64": "F64",
    "double": "F64",
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
}


@dataclass(frozen=True)
class PickledTensor:
    """One tensor of a checkpoint: its key, dtype (safetensors spelling), shape and storage view.

    ``offset`` and ``stride`` are in elements of ``dtype``, as torch records them.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    storage: str
    offset: int
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        """The number of elements (1 for a 0-dim tensor)."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        """The size of the tensor's elements when stored contiguously."""
        return self.numel * DTYPE_BITS[self.dtype] // 8


# --- stand-ins for the globals a state-dict pickle names ------------------------------------


class _Fault(Exception):
    """A structural fault found while unpickling; carries the one-line detail."""


class _Inert:
    """Base of the stand-ins: BUILD (``__setstate__``) on them is refused."""

    __slots__ = ()

    def __setstate__(self, state: object) -> NoReturn:
        raise _Fault("pickle tries to set state on a tensor record")


class _DTypeMarker(_Inert):
    """Stands in for a torch storage class or torch dtype; only carries the dtype name."""

    __slots__ = ("dtype", "untyped")

    def __init__(self, dtype: str, *, untyped: bool = False) -> None:
        self.dtype = dtype
        self.untyped = untyped


class _Storage(_Inert):
    """A storage the pickle refers to: zip record name, dtype and size in elements of dtype."""

    __slots__ = ("dtype", "key", "numel", "record", "untyped")

    def __init__(self, key: str, record: str, dtype: str, numel: int, untyped: bool) -> None:
        self.key = key
        self.record = record
        self.dtype = dtype
        self.numel = numel
        self.untyped = untyped


class _Tensor(_Inert):
    """A tensor view as the pickle describes it, validated against its storage."""

    __slots__ = ("dtype", "offset", "shape", "storage", "stride")

    def __init__(
        self, storage: _Storage, dtype: str, offset: int, shape: tuple[int, ...],
        stride: tuple[int, ...],
    ) -> None:
        self.storage = storage
        self.dtype = dtype
        self.offset = offset
        self.shape = shape
        self.stride = stride


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > 64:
        raise _Fault(f"tensor {what} is not a tuple of at most 64 integers")
    out: list[int] = []
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_INT:
            raise _Fault(f"tensor {what} {str(value)[:60]} has a bad entry")
        out.append(v)
    return tuple(out)


def _make_tensor(storage: object, offset: object, size: object, stride: object,
                 dtype: str | None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise _Fault("tensor is not backed by a storage record")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _MAX_INT:
        raise _Fault("tensor storage offset is not a non-negative integer")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _Fault(f"tensor size {shape} and stride {strides} differ in length")
    dtype = dtype or storage.dtype
    if storage.untyped:
        # Untyped storages count bytes; the tensor's offset and strides count elements.
        width = DTYPE_BITS[dtype] // 8
        available = storage.numel // width if width else 0
    elif dtype != storage.dtype:
        raise _Fault(f"tensor dtype {dtype} differs from its {storage.dtype} storage")
    else:
        available = storage.numel
    numel = 1
    last = offset
    for d, s in zip(shape, strides, strict=True):
        numel *= d
        last += (d - 1) * s if d else 0
    if numel and last >= available:
        raise _Fault(
            f"tensor view (offset {offset}, size {shape}, stride {strides}) runs past its "
            f"storage of {available} elements"
        )
    return _Tensor(storage, dtype, offset, shape, strides)


def _rebuild_tensor_v2(
    storage: object, storage_offset: object, size: object, stride: object,
    requires_grad: object = False, backward_hooks: object = None, metadata: object = None,
) -> _Tensor:
    return _make_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: object, storage_offset: object, size: object, stride: object,
    requires_grad: object, backward_hooks: object, dtype: object, metadata: object = None,
) -> _Tensor:
    if not isinstance(dtype, _DTypeMarker) or dtype.untyped:
        raise _Fault("tensor dtype is not a torch dtype")
    return _make_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(
    data: object, requires_grad: object = False, backward_hooks: object = None,
    state: object = None,
) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise _Fault("parameter does not wrap a tensor")
    return data


_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _DTypeMarker("U8", untyped=True),
    ("torch.storage", "UntypedStorage"): _DTypeMarker("U8", untyped=True),
    **{("torch", name): _DTypeMarker(dt) for name, dt in _STORAGE_DTYPES.items()},
    **{("torch", name): _DTypeMarker(dt) for name, dt in _TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that knows only the globals in ``_ALLOWED`` and the zip's storage records."""

    def __init__(self, data: bytes, path: str, prefix: str, records: Mapping[str, int]) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path
        self._prefix = prefix
        self._records = records
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ArtifactError(self._path, f"pickle references {module}.{name}, refused")
        return found

    def persistent_load(self, pid: Any) -> _Storage:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _DTypeMarker)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and not isinstance(pid[4], bool)
            and pid[4] >= 0
        ):
            raise _Fault(f"pickle has an unexpected persistent id {str(pid)[:60]}")
        marker, key, numel = pid[1], pid[2], pid[4]
        cached = self._storages.get(key)
        if cached is not None:
            return cached
        record = f"{self._prefix}data/{key}"
        size = self._records.get(record)
        if size is None:
            raise _Fault(f"storage {key!r} has no record {record!r} in the archive")
        width = 1 if marker.untyped else DTYPE_BITS[marker.dtype] // 8
        if numel * width > size:
            raise _Fault(f"storage {key!r} claims {numel * width} bytes but its record has {size}")
        storage = _Storage(key, record, marker.dtype, numel, marker.untyped)
        self._storages[key] = storage
        return storage


# --- the checkpoint ---------------------------------------------------------------------------


class TorchCheckpoint:
    """An open zip-format torch checkpoint whose tensors are decoded on demand.

    ``entries`` maps each tensor's key (nested dicts joined with ``.``) to its record, in pickle
    order; ``other_keys`` lists keys whose values are not tensors (ints, strings, ...).
    """

    path: str
    entries: dict[str, PickledTensor]
    other_keys: list[str]

    def __init__(
        self, path: str, archive: zipfile.ZipFile, entries: dict[str, PickledTensor],
        other_keys: list[str], big_endian: bool, max_bytes: int,
    ) -> None:
        self.path = path
        self.entries = entries
        self.other_keys = other_keys
        self._zip: zipfile.ZipFile | None = archive
        self._big_endian = big_endian
        self._max_bytes = max_bytes
        self._cache: tuple[str, bytes] | None = None

    @classmethod
    def open(cls, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> TorchCheckpoint:
        """Open ``path`` and unpickle its state dict safely; raise ArtifactError on a fault.

        ``max_bytes`` bounds the bytes read for one storage record (and for one decoded tensor).
        """
        spath = os.fspath(path)
        archive = _open_zip(spath)
        try:
            entries, other, big = _read_index(spath, archive)
        except BaseException:
            archive.close()
            raise
        return cls(spath, archive, entries, other, big, max_bytes)

    def read(self, key: str) -> npt.NDArray[Any]:
        """The tensor ``key`` as a contiguous numpy array, converted like SafetensorsFile.read.

        Raises KeyError for a key not in ``entries`` and ArtifactError for a corrupt record or a
        dtype loracheck cannot read.
        """
        entry = self.entries[key]
        if self._zip is None:
            raise ValueError(f"{self.path}: read from a closed TorchCheckpoint")
        raw_name = RAW_DTYPES.get(entry.dtype)
        if raw_name is None:
            raise ArtifactError(
                self.path, f"tensor {key!r} has dtype {entry.dtype}, which loracheck cannot read",
                location=key,
            )
        raw_dt = np.dtype(raw_name)
        if self._big_endian:
            raw_dt = raw_dt.newbyteorder(">")
        if entry.numel * raw_dt.itemsize > self._max_bytes:
            raise ArtifactError(
                self.path, f"tensor {key!r} is larger than the {self._max_bytes}-byte limit",
                location=key,
            )
        if entry.numel == 0:
            return decode_array(np.zeros(0, dtype=raw_dt), entry.dtype).reshape(entry.shape)
        assert self._zip is not None
        stored = self._zip.getinfo(entry.storage).file_size
        wanted = entry.numel * raw_dt.itemsize
        if wanted > max(VIEW_FREE_BYTES, MAX_VIEW_GROWTH * stored):
            # Zero strides let a few stored bytes stand for a tensor of any size (torch saves
            # an expand()ed tensor that way): it would be materialised whole.
            raise ArtifactError(
                self.path, f"tensor {key!r} spans {wanted} bytes over a {stored}-byte storage "
                f"(zero or overlapping strides); more than {MAX_VIEW_GROWTH}× is refused",
                location=key)
        blob = self._record(entry.storage, key)
        elements = np.frombuffer(blob, dtype=raw_dt, count=len(blob) // raw_dt.itemsize)
        spans = zip(entry.shape, entry.stride, strict=True)
        last = entry.offset + sum((d - 1) * s for d, s in spans)
        if last >= elements.size:
            # The index was validated against the record's size; this guards the strided view.
            raise ArtifactError(self.path, f"tensor {key!r} runs past its storage", location=key)
        view = np.lib.stride_tricks.as_strided(
            elements[entry.offset :],
            shape=entry.shape,
            strides=tuple(s * raw_dt.itemsize for s in entry.stride),
            writeable=False,
        )
        return decode_array(view.copy(order="C"), entry.dtype)

    def _record(self, name: str, key: str) -> bytes:
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        assert self._zip is not None
        blob = _read_member(self.path, self._zip, name, self._max_bytes)
        # Views of one storage are usually read one after another: keep the last record.
        self._cache = (name, blob)
        return blob

    def close(self) -> None:
        """Close the archive; arrays already returned stay valid."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._cache = None

    def __enter__(self) -> TorchCheckpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TorchCheckpoint({self.path!r}, {len(self.entries)} tensors)"


def load_state_dict(
    path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a zip-format torch checkpoint as numpy (floats as float32, F64 kept)."""
    with TorchCheckpoint.open(path, max_bytes=max_bytes) as ckpt:
        return {key: ckpt.read(key) for key in ckpt.entries}


# --- helpers --------------------------------------------------------------------------------


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ArtifactError(path, f"cannot read file: {e.strerror or e}") from None
    if not head:
        raise ArtifactError(path, "empty file")
    if not head.startswith(b"PK"):
        if head[:1] == b"\x80":
            raise ArtifactError(
                path,
                "bare pickle (legacy pre-1.6 torch.save format or arbitrary pickle), refused; "
                "re-save it with a current torch or convert it to safetensors",
            )
        raise ArtifactError(path, "not a zip archive (torch.save writes zip files since 1.6)")
    import zipfile  # ~8 ms to import (bz2, lzma, shutil); only checkpoints need it

    try:
        return zipfile.ZipFile(path, "r")
    except Exception as e:  # zipfile raises many types on bad input (NotImplementedError, ...)
        detail = f"{type(e).__name__}: {str(e)[:80]}"
        raise ArtifactError(path, f"corrupt zip archive ({detail})") from None


def _read_member(path: str, archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    info = archive.getinfo(name)
    if (info.compress_type != 0 and info.file_size > INFLATE_FREE_BYTES
            and info.file_size > MAX_INFLATION * max(info.compress_size, 1)):
        raise ArtifactError(
            path, f"archive record {name!r} would inflate {info.compress_size} bytes to "
            f"{info.file_size} (more than {MAX_INFLATION}×; torch.save stores records "
            "uncompressed)")
    try:
        with archive.open(name) as member:
            # Never more than the record says it holds: read(n) hands n to the decompressor as
            # its output bound, so a record whose directory entry understates its size would
            # otherwise inflate whole before the CRC check fails.
            blob = member.read(min(limit, info.file_size) + 1)
    except Exception as e:  # zipfile, zlib, bz2 and lzma errors have no common base
        detail = f"{type(e).__name__}: {str(e)[:80]}"
        raise ArtifactError(path, f"cannot read archive record {name!r} ({detail})") from None
    if len(blob) > limit:
        raise ArtifactError(path, f"archive record {name!r} is larger than {limit} bytes")
    return blob


def _read_index(
    path: str, archive: zipfile.ZipFile
) -> tuple[dict[str, PickledTensor], list[str], bool]:
    def fail(detail: str) -> NoReturn:
        raise ArtifactError(path, detail)

    infos = archive.infolist()
    pickles = [i.filename for i in infos if i.filename.endswith("data.pkl")
               and i.filename.count("/") == 1]
    if len(pickles) != 1:
        fail("zip archive is not a torch.save checkpoint (no single <name>/data.pkl record)")
    prefix = pickles[0][: -len("data.pkl")]
    records = {i.filename: i.file_size for i in infos}
    big_endian = False
    if f"{prefix}byteorder" in records:
        order = _read_member(path, archive, f"{prefix}byteorder", 16)
        if order not in (b"little", b"big"):
            fail(f"byteorder record is {order[:16]!r}, not 'little' or 'big'")
        big_endian = order == b"big"
    data = _read_member(path, archive, pickles[0], MAX_PICKLE_BYTES)
    try:
        _prescan(data)
        root = _RestrictedUnpickler(data, path, prefix, records).load()
    except ArtifactError:
        raise
    except _Fault as e:
        fail(str(e))
    except RecursionError:
        fail("pickle is nested too deeply")
    except MemoryError:
        fail("pickle needs too much memory")
    except Exception as e:  # a malformed pickle can raise nearly any exception type
        fail(f"malformed pickle ({type(e).__name__}: {str(e)[:80]})")
    if not isinstance(root, dict):
        fail(f"pickle holds a {type(root).__name__}, not a state dict")
    entries: dict[str, PickledTensor] = {}
    other: list[str] = []
    _flatten(path, root, "", 0, entries, other, [0])
    return entries, other, big_endian


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _prescan(data: bytes) -> None:
    """Walk the opcodes without running them; refuse what makes the C unpickler allocate big.

    The C unpickler sizes its memo table by the largest memo index and allocates counted bytes
    before it reads them; a well-formed scan bounds both by the pickle's length.
    """
    import pickletools  # ~3 ms to import; only checkpoints need it

    limit = len(data)
    for op, arg, _pos in pickletools.genops(data):
        if op.name in _MEMO_OPS and isinstance(arg, int) and not 0 <= arg <= limit:
            raise _Fault(f"pickle memo index {arg} is out of range")


def _flatten(
    path: str, mapping: dict[Any, Any], prefix: str, depth: int,
    entries: dict[str, PickledTensor], other: list[str], seen: list[int],
) -> None:
    """Collect the tensors of nested dicts under dotted keys. ``seen`` counts the entries
    walked: a dict reached through several memo references is walked once per path to it, so
    64 references a level, 7 levels deep, would be 64⁷ entries; the walk stops at
    MAX_ENTRIES. (A small dict saved twice, say ``vars(args)`` under two keys, is fine.)"""
    if depth > MAX_NESTING:
        raise ArtifactError(path, f"state dict nested more than {MAX_NESTING} levels deep")
    seen[0] += len(mapping)
    if seen[0] > MAX_ENTRIES:
        raise ArtifactError(
            path, f"state dict expands to more than {MAX_ENTRIES} entries (its mappings are "
            "shared through memo references, or it is not a state dict)")
    for raw_key, value in mapping.items():
        if not isinstance(raw_key, (str, int)) or isinstance(raw_key, bool):
            raise ArtifactError(path, f"state dict key {str(raw_key)[:40]!r} is not a string")
        key = f"{prefix}{raw_key}"
        if isinstance(value, _Tensor):
            if key in entries:
                raise ArtifactError(path, f"state dict has the key {key!r} twice", location=key)
            entries[key] = PickledTensor(
                key, value.dtype, value.shape, value.storage.record, value.offset, value.stride
            )
        elif isinstance(value, dict):
            _flatten(path, value, f"{key}.", depth + 1, entries, other, seen)
        else:
            other.append(key)
