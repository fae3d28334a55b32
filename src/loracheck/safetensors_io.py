"""A torch-free reader for safetensors files: full header validation, tensors read from a
read-only memory mapping (a small file: from its bytes, read whole).

Layout: an 8-byte little-endian u64 ``N``, then ``N`` bytes of UTF-8 JSON mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` (plus an optional ``"__metadata__"`` map of str -> str), then
the data section. ``data_offsets`` are relative to the data section; the tensors must tile it
exactly, with no gap, overlap or trailing byte (what the safetensors Rust library enforces).

Every fault in a file becomes :class:`~loracheck.errors.ArtifactError` (code ``LC001``; a Git LFS
pointer is ``LC003``). The header length is bounded by the file size before anything is allocated.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from loracheck.errors import ArtifactError

__all__ = [
    "DTYPE_BITS",
    "LFS_MAGIC",
    "LFS_POINTER_DETAIL",
    "MAX_HEADER_BYTES",
    "RAW_DTYPES",
    "READ_WHOLE_BYTES",
    "SafetensorsFile",
    "TensorEntry",
    "decode_array",
    "is_lfs_pointer",
]

LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
LFS_POINTER_DETAIL = "Git LFS pointer, not the file's content (run `git lfs pull`)"
# A file up to this size is read whole (one read), not mapped: for a tiny adapter the mapping's
# system calls (mmap, a size check per tensor, munmap) cost more than the copy, and bytes in
# hand cannot be truncated under the reader. Small, because the bytes stay in memory while the
# file is open, and `merged` holds every shard of a model open at once.
READ_WHOLE_BYTES = 1 << 16
# The same cap as the safetensors Rust library (MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
# numpy cannot build arrays with more dimensions than this (NPY_MAXDIMS in numpy 2).
MAX_NDIM = 64
_MAX_INT = 2**63 - 1
# How much of the header is decoded first, so that garbage is refused before a full-size decode.
_PRECHECK_BYTES = 4096

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}

# The numpy dtype each readable stored dtype is first viewed as (little-endian, as stored):
# BF16 as its 16 raw bits, BOOL and 8-bit floats as bytes; decode_array() finishes the job.
RAW_DTYPES: dict[str, str] = {
    "F32": "<f4",
    "F64": "<f8",
    "C64": "<c8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "F16": "<f2",
    "BF16": "<u2",
    "BOOL": "u1",
    "F8_E4M3": "u1",
    "F8_E5M2": "u1",
    "F8_E4M3FNUZ": "u1",
    "F8_E5M2FNUZ": "u1",
    "F8_E8M0": "u1",
}
_FP8 = frozenset({"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"})
_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header record; ``start``/``end`` are absolute byte offsets in the file."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """The size of the tensor's bytes in the file."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """The number of elements (1 for a 0-dim tensor)."""
        n = 1
        for d in self.shape:
            n *= d
        return n


def is_lfs_pointer(path: str | Path) -> bool:
    """Whether ``path`` is a Git LFS pointer file, not the real content (reads ≤ 200 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return False
    return head.startswith(LFS_MAGIC)


class _HeaderFault(Exception):
    """A header fault found inside a json hook; carries the one-line detail."""


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) < len(pairs):  # a key came twice: name the first one repeated
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _HeaderFault(f"header has a duplicate key {k!r}")
            seen.add(k)
    return out


def _parse_int(text: str) -> int:
    # Negative numbers are never valid here; mapping them all to -1 also covers "-0", which Python
    # reads as 0 but the Rust reader refuses.
    if text.startswith("-"):
        return -1
    return int(text)


def _reject_float(text: str) -> NoReturn:
    raise _HeaderFault(f"header has a non-integer number {text[:32]!r}")


def _reject_constant(text: str) -> NoReturn:
    raise _HeaderFault(f"header has a non-standard JSON constant {text!r}")


def _utf8_clean(s: str) -> bool:
    # Python's json accepts lone surrogate escapes (\ud800); they are not valid UTF-8 text.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fp8_table(dtype: str) -> npt.NDArray[np.float32]:
    """The float32 value of each of the 256 byte patterns of an 8-bit float format."""
    b = np.arange(256, dtype=np.int64)
    nan = np.float64("nan")
    if dtype == "F8_E8M0":
        vals = np.ldexp(1.0, b - 127).astype(np.float64)
        vals[b == 0xFF] = nan
        return vals.astype(np.float32)
    if dtype in ("F8_E4M3", "F8_E4M3FNUZ"):
        mbits, bias = 3, (7 if dtype == "F8_E4M3" else 8)
    else:
        mbits, bias = 2, (15 if dtype == "F8_E5M2" else 16)
    ebits = 7 - mbits
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> mbits) & ((1 << ebits) - 1)
    man = (b & ((1 << mbits) - 1)).astype(np.float64)
    scale = float(1 << mbits)
    normal = np.ldexp(1.0 + man / scale, exp - bias)
    subnormal = np.ldexp(man / scale, 1 - bias)
    vals = sign * np.where(exp == 0, subnormal, normal)
    emax = (1 << ebits) - 1
    mmax = (1 << mbits) - 1
    if dtype == "F8_E4M3":
        # The "fn" variant: no infinities, only S.1111.111 is NaN.
        vals[(exp == emax) & (man == mmax)] = nan
    elif dtype == "F8_E5M2":
        vals[(exp == emax) & (man == 0)] = sign[(exp == emax) & (man == 0)] * np.inf
        vals[(exp == emax) & (man != 0)] = nan
    else:
        # "fnuz": no infinities, no negative zero; 0x80 is the only NaN.
        vals[0x80] = nan
    return vals.astype(np.float32)


_FP8_TABLES: dict[str, npt.NDArray[np.float32]] = {}


def _fp8_lookup(dtype: str) -> npt.NDArray[np.float32]:
    table = _FP8_TABLES.get(dtype)
    if table is None:
        table = _FP8_TABLES[dtype] = _fp8_table(dtype)
    return table


def decode_array(
    raw: npt.NDArray[Any], dtype: str, *, float64: bool = False
) -> npt.NDArray[Any]:
    """Turn ``raw`` (viewed as ``RAW_DTYPES[dtype]``, either byte order) into loracheck's output.

    Floats become float32 (F64 stays float64, C64 complex64); integers keep their type in native
    byte order; BOOL becomes bool. Native F32/integer input is returned as is (no copy).
    ``float64=True`` decodes F16/BF16/F32 straight to float64 in one pass, for callers that
    compute in float64 anyway (the statistics), instead of a float32 copy and then another.
    """
    if float64 and dtype in ("F16", "F32"):
        return raw.astype(np.float64)
    if float64 and dtype == "BF16":
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32).astype(np.float64)
    if dtype == "F16":
        return raw.astype(np.float32)
    if dtype == "BF16":
        # bfloat16 is the upper half of a float32: widen and shift into place.
        wide = raw.astype(np.uint32)
        wide <<= 16
        return wide.view(np.float32)
    if dtype == "BOOL":
        flags: npt.NDArray[np.bool_] = raw != 0
        return flags
    if dtype in _FP8:
        return _fp8_lookup(dtype).take(raw)
    if not raw.dtype.isnative:
        return raw.astype(raw.dtype.newbyteorder("="))
    return raw


# The kernel maps pages around each fault too (fault-around, 64 KiB by default), so a margin
# on both sides of a released span also drops the neighbours' pages that reading it mapped.
RELEASE_MARGIN = 256 * 1024


def _read_or_map(path: str) -> bytes | mmap.mmap:
    """The file's bytes: read whole up to :data:`READ_WHOLE_BYTES`, else a read-only mapping.
    ArtifactError for an empty file; OSError or ValueError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ArtifactError(path, "empty file")
        if size > READ_WHOLE_BYTES:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        chunks = []
        left = size
        while left > 0:  # a file that shrank since fstat ends early: what was read is the file
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not data:
            raise ArtifactError(path, "empty file")
        return data
    finally:
        os.close(fd)


class SafetensorsFile:
    """An open, validated safetensors file whose tensors are read on demand from a read-only
    mapping, or from the file's bytes when it is small (:data:`READ_WHOLE_BYTES`).

    ``entries`` keeps the header's key order; ``metadata`` is ``__metadata__`` (empty if absent).
    Use :meth:`open` (or ``with SafetensorsFile.open(p) as f``); arrays from :meth:`read` may be
    read-only views of the mapping and stay valid after :meth:`close`.
    """

    path: str
    file_size: int
    header_size: int
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]

    def __init__(
        self,
        path: str,
        file_size: int,
        header_size: int,
        entries: dict[str, TensorEntry],
        metadata: dict[str, str],
        buffer: bytes | mmap.mmap | None,
    ) -> None:
        self.path = path
        self.file_size = file_size
        self.header_size = header_size
        self.entries = entries
        self.metadata = metadata
        self._buffer = buffer
        self._closed = False

    # --- opening and validation -----------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> SafetensorsFile:
        """Open ``path`` read-only and validate its whole header; raise ArtifactError on a fault."""
        spath = os.fspath(path)
        try:
            buffer = _read_or_map(spath)
        except (OSError, ValueError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ArtifactError(spath, f"cannot read file: {detail}") from None
        size = len(buffer)
        try:
            if buffer[: len(LFS_MAGIC)] == LFS_MAGIC:
                raise ArtifactError(spath, LFS_POINTER_DETAIL, code="LC003")
            if size < 8:
                raise ArtifactError(
                    spath, f"file is {size} bytes, shorter than the 8-byte header length"
                )
            header_size, entries, metadata = _parse_header(spath, buffer, size)
        except BaseException:
            if isinstance(buffer, mmap.mmap):
                buffer.close()
            raise
        return cls(spath, size, header_size, entries, metadata, buffer)

    # --- reading ----------------------------------------------------------------------------

    def read(self, key: str, *, float64: bool = False) -> npt.NDArray[Any]:
        """The tensor ``key`` as a shaped numpy array (see :func:`decode_array` for ``float64``).

        Float formats come back as float32 (F64 stays float64, C64 complex64), integers as their
        numpy integer type, BOOL as bool. F32 and integer tensors are read-only views of the file
        mapping; others are fresh arrays. Raises KeyError for a key not in ``entries`` and
        ArtifactError for a dtype that has no numpy form (F4, F6_*).
        """
        entry = self.entries[key]
        return decode_array(self.read_raw(key), entry.dtype, float64=float64).reshape(entry.shape)

    def read_raw(self, key: str, *, check_size: bool = True) -> npt.NDArray[Any]:
        """The tensor ``key`` undecoded, as the flat read-only view of its bytes that
        :data:`RAW_DTYPES` names (BF16 as uint16, F32 as float32, ...): for callers that decode
        a big tensor block by block (:func:`decode_array` on each slice) or compare raw bits.
        Same errors as :meth:`read`. ``check_size=False`` skips the truncation check: the
        caller makes it, with :meth:`check_size`, before the view's pages are touched (one
        check for many views)."""
        entry = self.entries[key]
        buffer = self._buffer
        if self._closed or buffer is None:
            raise ValueError(f"{self.path}: read from a closed SafetensorsFile")
        raw_dtype = RAW_DTYPES.get(entry.dtype)
        if raw_dtype is None:
            raise ArtifactError(
                self.path,
                f"tensor {key!r} has dtype {entry.dtype}, which loracheck cannot read",
                location=key,
            )
        dt = np.dtype(raw_dtype)
        numel = entry.numel
        if numel == 0:
            raw: npt.NDArray[Any] = np.zeros(0, dtype=dt)
        else:
            if check_size:
                self.check_size((key,))
            raw = np.frombuffer(buffer, dtype=dt, count=numel, offset=entry.start)
        return raw

    def check_size(self, keys: Iterable[str]) -> None:
        """Raise ArtifactError (located at the first such key) when the file, truncated since
        it was opened, no longer holds the bytes of all of ``keys``.

        Touching a mapped page past the end of a truncated file (a trainer rewriting its
        checkpoint) kills the process with SIGBUS, so the current size is looked up before a
        span is viewed; bytes read whole need no check. One look-up (a system call that lets
        other threads take the GIL) serves any number of keys."""
        buffer = self._buffer
        if not isinstance(buffer, mmap.mmap):
            return
        now = buffer.size()
        for key in keys:
            end = self.entries[key].end
            if now < end:
                raise ArtifactError(
                    self.path, f"file was truncated while being read: it has {now} bytes now "
                    f"and tensor {key!r} ends at byte {end}", location=key)

    def release(self, key: str) -> None:
        """Drop the pages of ``key`` from this process's resident set (they stay in the page
        cache). Keeps peak RSS flat when a large file is streamed one tensor pair at a time;
        arrays still viewing those pages remain valid and fault them back in if touched."""
        entry = self.entries[key]
        self.release_bytes(entry.start, entry.end)

    def _page_span(self, start: int, end: int) -> tuple[int, int] | None:
        """(first byte, length) of the pages that releasing the bytes [start, end) drops:
        :data:`RELEASE_MARGIN` added on both sides, the start rounded down to a page; None
        when nothing is mapped (bytes read whole are this process's own) or the span is
        empty."""
        mapping = self._buffer
        if not isinstance(mapping, mmap.mmap) or end <= start or not hasattr(
                mmap, "MADV_DONTNEED"):
            return None
        start = max(0, start - RELEASE_MARGIN)
        start -= start % mmap.PAGESIZE
        end = min(len(mapping), end + RELEASE_MARGIN)
        return (start, end - start) if end > start else None

    def release_bytes(self, start: int, end: int) -> None:
        """:meth:`release` for the bytes [start, end) of the file (several tensors' spans at
        once, one system call), with :data:`RELEASE_MARGIN` on both sides."""
        span = self._page_span(start, end)
        if span is not None and isinstance(self._buffer, mmap.mmap):
            with contextlib.suppress(OSError, ValueError):
                self._buffer.madvise(mmap.MADV_DONTNEED, *span)

    def dropper(self, spans: Iterable[tuple[int, int]]) -> Callable[[], None] | None:
        """A call that releases the byte spans [start, end) as :meth:`release_bytes` does,
        for a worker thread to make: without the GIL where loracheck's compiled extension is
        built (:data:`loracheck.fused.DROP_PAGES`), so the caller's thread runs on meanwhile.
        None when nothing is mapped. After :meth:`close` the call does nothing."""
        from loracheck.fused import DROP_PAGES

        mapping = self._buffer
        pages = [span for start, end in spans
                 if (span := self._page_span(start, end)) is not None]
        if not pages or not isinstance(mapping, mmap.mmap):
            return None
        drop = DROP_PAGES if DROP_PAGES is not None else (
            lambda buffer, start, length: buffer.madvise(mmap.MADV_DONTNEED, start, length))

        def release() -> None:
            for start, length in pages:
                # ValueError: the mapping was closed meanwhile (its pages went with it)
                with contextlib.suppress(OSError, ValueError):
                    drop(mapping, start, length)

        return release

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping (arrays already returned by read() keep it alive until freed)."""
        self._closed = True
        if isinstance(self._buffer, mmap.mmap):
            # Views handed out by read() may still export the buffer; it is unmapped with them.
            with contextlib.suppress(BufferError):
                self._buffer.close()
        self._buffer = None

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self.entries)} tensors)"


def _parse_header(
    path: str, mapping: bytes | mmap.mmap, size: int
) -> tuple[int, dict[str, TensorEntry], dict[str, str]]:
    """Validate the header at the start of ``mapping`` (the file's bytes or their mapping);
    return (N, entries, metadata)."""

    def fail(detail: str) -> NoReturn:
        raise ArtifactError(path, detail)

    (n,) = struct.unpack("<Q", mapping[:8])
    if n > size - 8:
        fail(f"header length {n} exceeds the {size - 8} bytes after the length field")
    if n > MAX_HEADER_BYTES:
        fail(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n == 0:
        fail("header is empty (length 0)")
    with memoryview(mapping) as view:
        raw = view[8 : 8 + n]
        try:
            # Decode a prefix first: random bytes fail here without a header-sized allocation.
            head = codecs.getincrementaldecoder("utf-8")().decode(
                bytes(raw[:_PRECHECK_BYTES]), final=n <= _PRECHECK_BYTES
            )
            stripped = head.lstrip(" \t\r\n")
            if stripped and not stripped.startswith("{"):
                fail("header is not a JSON object")
            # A header no longer than the prefix was decoded whole (final) just above.
            text = head if n <= _PRECHECK_BYTES else codecs.utf_8_decode(raw, "strict", True)[0]
        except UnicodeDecodeError as e:
            fail(f"header is not valid UTF-8 (byte {e.start + 8})")
        finally:
            raw.release()
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs_no_duplicates,
            # Without a "-" anywhere there is no negative number: json's own int() reads the
            # rest as _parse_int does, without a Python call per number.
            parse_int=_parse_int if "-" in text else None,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except _HeaderFault as e:
        fail(str(e))
    except RecursionError:
        fail("header JSON is nested too deeply")
    except json.JSONDecodeError as e:
        fail(f"header is not valid JSON ({e.msg} at char {e.pos})")
    except (ValueError, MemoryError) as e:
        fail(f"header is not valid JSON ({str(e)[:80]})")
    del text
    if not isinstance(doc, dict):
        fail(f"header is a JSON {type(doc).__name__}, not an object")
    return n, *_validate_entries(path, doc, size - 8 - n, 8 + n)


def _plain_entry(info: object, data_size: int) -> tuple[str, tuple[int, ...], int, int] | None:
    """(dtype, shape, begin, end) of a tensor entry that passes every check of
    :func:`_validate_entries` with no empty dimension (its per-entry checks; the spans' order
    is checked after); None for any other entry, which those checks then take. Each condition
    is tested without building a message: a header holds hundreds of entries."""
    if type(info) is not dict or len(info) != 3:
        return None
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if (type(dtype) is not str or type(shape) is not list or len(shape) > MAX_NDIM
            or type(offsets) is not list or len(offsets) != 2):
        return None
    bits = DTYPE_BITS.get(dtype)
    begin, end = offsets
    if bits is None or type(begin) is not int or type(end) is not int or not (
            0 <= begin <= end <= data_size):
        return None
    numel = 1
    for d in shape:
        if type(d) is not int or d < 1:
            return None
        numel *= d
    # Every dimension ≥ 1: the running product never falls, so the last bounds them all.
    if numel > _MAX_INT or (numel * bits) % 8 or (numel * bits) // 8 != end - begin:
        return None
    return dtype, tuple(shape), begin, end


def _validate_entries(
    path: str, doc: dict[str, Any], data_size: int, data_start: int
) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    def fail(detail: str, key: str | None = None) -> NoReturn:
        raise ArtifactError(path, detail, location=key)

    metadata: dict[str, str] = {}
    spans: list[tuple[int, int, str]] = []
    entries: dict[str, TensorEntry] = {}
    for key, info in doc.items():
        if not key.isascii() and not _utf8_clean(key):
            fail("header has a key that is not valid UTF-8 (lone surrogate)")
        if key == "__metadata__":
            # The Rust reader accepts a null __metadata__ as "none"; so do we.
            if info is None:
                continue
            if not isinstance(info, dict):
                fail(f"__metadata__ is a JSON {type(info).__name__}, not a map of str to str")
            for mk, mv in info.items():
                if not isinstance(mv, str):
                    fail(f"__metadata__[{mk!r}] is a JSON {type(mv).__name__}, not a string")
                if not (_utf8_clean(mk) and _utf8_clean(mv)):
                    fail("__metadata__ has text that is not valid UTF-8 (lone surrogate)")
            metadata = dict(info)
            continue
        plain = _plain_entry(info, data_size)
        if plain is not None:
            dtype, dims, begin, end = plain
            spans.append((begin, end, key))
            entries[key] = TensorEntry(key, dtype, dims, data_start + begin, data_start + end)
            continue
        # A faulty entry (the checks below name the fault) or one with an empty dimension.
        where = f"tensor {key!r}"
        if not isinstance(info, dict):
            fail(f"{where}: entry is a JSON {type(info).__name__}, not an object", key)
        for name in _ENTRY_FIELDS:
            if name not in info:
                fail(f"{where}: entry has no {name!r}", key)
        if len(info) != len(_ENTRY_FIELDS):  # every field is there: so one more is
            extra = [k for k in info if k not in _ENTRY_FIELDS]
            fail(f"{where}: entry has an unexpected field {extra[0]!r}", key)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            fail(f"{where}: unknown dtype {str(dtype)[:40]!r}", key)
        # JSON integers parse to exactly int (true/false to bool, not int's type)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            fail(f"{where}: shape is not a list of non-negative integers", key)
        if len(shape) > MAX_NDIM:
            fail(f"{where}: shape has {len(shape)} dimensions (more than {MAX_NDIM})", key)
        numel, nonzero = 1, 1
        for d in shape:
            numel *= d
            if d:
                nonzero *= d
            if d > _MAX_INT or nonzero > _MAX_INT:
                fail(f"{where}: shape {_short(shape)} overflows (element count too large)", key)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets)
        ):
            fail(f"{where}: data_offsets is not a pair of non-negative integers", key)
        begin, end = offsets
        if begin > end:
            fail(f"{where}: data_offsets begin {begin} > end {end}", key)
        if end > data_size:
            # The common cause: a download or a save that stopped early.
            fail(
                f"file is truncated (or its header is wrong): {where} ends at byte {end} of "
                f"the data section, which holds only {data_size} bytes",
                key,
            )
        nbits = numel * DTYPE_BITS[dtype]
        if nbits % 8:
            fail(f"{where}: {dtype} {_short(shape)} is not a whole number of bytes", key)
        if nbits // 8 != end - begin:
            fail(
                f"{where}: {dtype} {_short(shape)} needs {nbits // 8} bytes but data_offsets "
                f"span {end - begin}",
                key,
            )
        spans.append((begin, end, key))
        entries[key] = TensorEntry(key, dtype, tuple(shape), data_start + begin, data_start + end)
    cursor = 0
    for begin, end, key in sorted(spans):
        if begin > cursor:
            fail(f"gap in the data section: bytes {cursor}..{begin} belong to no tensor", key)
        if begin < cursor:
            fail(f"tensor {key!r} overlaps the previous tensor (starts at {begin} < {cursor})", key)
        cursor = end
    if cursor != data_size:
        fail(
            f"data section not covered exactly: tensors end at {cursor} of {data_size} bytes "
            f"({data_size - cursor} trailing bytes)"
        )
    return entries, metadata


def _short(shape: list[int]) -> str:
    text = str(shape)
    return text if len(text) <= 60 else text[:57] + "..."
