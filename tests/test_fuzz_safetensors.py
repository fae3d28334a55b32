"""Property tests: mutated safetensors files either raise ArtifactError or read like the reference.

The reference is the `safetensors` package (numpy API; torch API for BF16/F8, which numpy lacks).
loracheck may be stricter than the reference but never laxer, and never raises anything else.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loracheck.errors import ArtifactError
from loracheck.safetensors_io import DTYPE_BITS, SafetensorsFile

torch = pytest.importorskip("torch")
from safetensors.numpy import load as np_load  # noqa: E402
from safetensors.numpy import save as np_save  # noqa: E402
from safetensors.torch import load as torch_load  # noqa: E402
from safetensors.torch import save as torch_save  # noqa: E402

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
_WORKDIR = Path(tempfile.mkdtemp(prefix="loracheck-fuzz-"))


def _base_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    mixed = np_save(
        {
            "w.lora_A.weight": rng.normal(size=(3, 4)).astype(np.float32),
            "w.lora_B.weight": rng.normal(size=(5, 3)).astype(np.float16),
            "steps": np.array([1, -2], dtype=np.int64),
            "mask": np.array([True, False, True]),
            "bytes": np.arange(5, dtype=np.uint8),
            "alpha": np.array(8.0, dtype=np.float64),
            "empty": np.zeros((0, 3), dtype=np.float32),
        },
        metadata={"format": "pt", "ss_network_dim": "4"},
    )
    gen = torch.Generator().manual_seed(0)
    wide = torch_save(
        {
            "a": torch.randn(4, 6, generator=gen).to(torch.bfloat16),
            "b": torch.randn(7, generator=gen).to(torch.float8_e4m3fn),
            "c": torch.randn(2, 2, generator=gen).to(torch.float8_e5m2),
            "d": torch.arange(3, dtype=torch.int32),
        }
    )
    return [mixed, wide, np_save({})]


BASES = _base_files()


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: Any, body: bytes, *, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


# --- the oracle -----------------------------------------------------------------------------


def _reference(data: bytes) -> dict[str, np.ndarray]:
    """What the safetensors package reads, in loracheck's output dtypes."""
    if b'"F8_E8M0"' in data:
        return _reference_e8m0(data)
    try:
        loaded = np_load(data)
    except KeyError:
        # A dtype numpy has no type for (BF16, F8_*): read it through torch instead.
        out: dict[str, np.ndarray] = {}
        for key, t in torch_load(data).items():
            narrow = t.is_floating_point() and t.dtype != torch.float64
            out[key] = t.float().numpy() if narrow else t.numpy()
        return out
    return {
        k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in loaded.items()
    }


def _reference_e8m0(data: bytes) -> dict[str, np.ndarray]:
    """The reference reading of a file with F8_E8M0 tensors, which safetensors 0.8 cannot load.

    The dtype is renamed to U8 in place (same width, same header length), the reference reads
    and validates that, and torch decodes the E8M0 bytes.
    """
    renamed = data.replace(b'"F8_E8M0"', b'"U8"     ')
    out = _reference(renamed)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    for key, info in header.items():
        if isinstance(info, dict) and info.get("dtype") == "F8_E8M0":
            raw = torch.from_numpy(out[key].copy())
            out[key] = raw.view(torch.float8_e8m0fnu).float().numpy()
    return out


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if want.dtype == np.bool_:
        return bool(np.array_equal(got, want.view(np.uint8) != 0))
    if want.dtype.kind in "fc":
        nan_g, nan_w = np.isnan(got), np.isnan(want)
        if not np.array_equal(nan_g, nan_w):
            return False
        return bool(np.array_equal(got[~nan_g].view(np.uint8), want[~nan_w].view(np.uint8)))
    return bool(np.array_equal(got, want))


def check(data: bytes) -> None:
    """The property: ArtifactError, or every tensor equal to the reference reading."""
    path = _WORKDIR / "x.safetensors"
    path.write_bytes(data)
    try:
        with SafetensorsFile.open(path) as f:
            got = {k: f.read(k) for k in f.entries}
    except ArtifactError:
        return
    try:
        want = _reference(data)
    except Exception as e:  # the reference refused a file loracheck accepted
        raise AssertionError(f"loracheck accepted a file safetensors refuses: {e!r}") from e
    assert sorted(got) == sorted(want)
    for key in got:
        assert _same(got[key], want[key]), key


# --- mutations ------------------------------------------------------------------------------

Mutation = Callable[[bytes], bytes]


@st.composite
def bit_flip(draw: st.DrawFn, size: int) -> Mutation:
    pos = draw(st.integers(0, max(size - 1, 0)))
    bit = draw(st.integers(0, 7))

    def apply(d: bytes) -> bytes:
        if pos >= len(d):
            return d
        return d[:pos] + bytes([d[pos] ^ (1 << bit)]) + d[pos + 1 :]

    return apply


@st.composite
def truncate(draw: st.DrawFn, size: int) -> Mutation:
    keep = draw(st.integers(0, max(size - 1, 0)))
    return lambda d: d[:keep]


@st.composite
def splice(draw: st.DrawFn, size: int) -> Mutation:
    pos = draw(st.integers(0, size))
    cut = draw(st.integers(0, 8))
    blob = draw(st.binary(max_size=16))
    return lambda d: d[:pos] + blob + d[pos + cut :]


@st.composite
def length_edit(draw: st.DrawFn, size: int) -> Mutation:
    delta = draw(st.integers(-16, 16) | st.integers(-(2**63), 2**63))

    def apply(d: bytes) -> bytes:
        if len(d) < 8:
            return d
        (n,) = struct.unpack("<Q", d[:8])
        return struct.pack("<Q", (n + delta) % 2**64) + d[8:]

    return apply


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 80)
    | st.integers(0, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(sorted(DTYPE_BITS))
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


# Dtypes both loracheck and the reference can read (sub-byte ones cannot be).
SAME_WIDTH = sorted(set(DTYPE_BITS) - {"F4", "F6_E2M3", "F6_E3M2"})


@st.composite
def header_edit(draw: st.DrawFn, size: int) -> Mutation:
    kind = draw(
        st.sampled_from(["field", "offset", "shape", "dtype", "retype", "drop", "add", "meta"])
    )
    pick = draw(st.integers(0, 50))
    value = draw(JSON_VALUES)
    small = draw(st.integers(-2, 64))
    dtype = draw(st.sampled_from(sorted(DTYPE_BITS)))
    pad = draw(st.booleans())

    def apply(d: bytes) -> bytes:
        header, body = _split(d)
        keys = [k for k in header if k != "__metadata__"]
        if kind == "meta":
            header["__metadata__"] = value
        elif kind == "add":
            header[f"new{pick}"] = value
        elif keys:
            key = keys[pick % len(keys)]
            entry = header[key]
            if kind == "drop":
                del header[key]
            elif kind == "field":
                entry[["dtype", "shape", "data_offsets", "extra"][pick % 4]] = value
            elif kind == "offset":
                entry["data_offsets"][pick % 2] = small
            elif kind == "shape":
                entry["shape"] = [*entry["shape"], small] if pick % 2 else [small]
            elif kind == "retype":
                # Same element width, so the file stays valid and its bytes get reinterpreted.
                same = [t for t in SAME_WIDTH if DTYPE_BITS[t] == DTYPE_BITS[entry["dtype"]]]
                same = same or [entry["dtype"]]
                entry["dtype"] = same[pick % len(same)]
            else:
                entry["dtype"] = dtype
        return _join(header, body, pad=pad)

    return apply


# A header edit on a header that earlier steps already broke fails with one of these: skip it.
SKIPPED = (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error)


def _mutations(size: int) -> st.SearchStrategy[Mutation]:
    return st.one_of(
        bit_flip(size), truncate(size), splice(size), length_edit(size), header_edit(size)
    )


# --- properties -----------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(BASES)))
def test_unmutated_bases_read_like_the_reference(index: int) -> None:
    path = _WORKDIR / f"base{index}.safetensors"
    path.write_bytes(BASES[index])
    with SafetensorsFile.open(path) as f:
        got = {k: f.read(k) for k in f.entries}
    want = _reference(BASES[index])
    assert sorted(got) == sorted(want)
    assert all(_same(got[k], want[k]) for k in got)


@FUZZ
@given(st.data())
def test_header_edits(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(BASES))
    edited = base
    for _ in range(data.draw(st.integers(1, 3))):
        try:
            edited = data.draw(header_edit(len(edited)))(edited)
        except SKIPPED:
            continue
    check(edited)


@FUZZ
@given(st.data())
def test_retyped_files(data: st.DataObject) -> None:
    """Valid files whose bytes are reinterpreted as other dtypes of the same width."""
    header, body = _split(data.draw(st.sampled_from(BASES[:2])))
    for entry in header.values():
        if "dtype" in entry:
            same = [t for t in SAME_WIDTH if DTYPE_BITS[t] == DTYPE_BITS[entry["dtype"]]]
            entry["dtype"] = data.draw(st.sampled_from(same))
    path = _WORKDIR / "retyped.safetensors"
    path.write_bytes(_join(header, body))
    with SafetensorsFile.open(path) as f:
        assert len(f.entries) == len(header) - ("__metadata__" in header)
    check(_join(header, body))


@FUZZ
@given(st.data())
def test_byte_mutations(data: st.DataObject) -> None:
    mutated = data.draw(st.sampled_from(BASES))
    for _ in range(data.draw(st.integers(1, 4))):
        step = data.draw(_mutations(len(mutated)))
        try:
            mutated = step(mutated)
        except SKIPPED:
            continue
    check(mutated)


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 80))
def test_random_bytes(blob: bytes, n: int) -> None:
    check(blob)
    check(struct.pack("<Q", n) + blob)
    check(struct.pack("<Q", n) + b"{" + blob)
