"""Tests for the torch-free, code-free torch.save checkpoint reader."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import peft_adapter
from loracheck.errors import ArtifactError
from loracheck.pickle_io import PickledTensor, TorchCheckpoint, load_state_dict

torch = pytest.importorskip("torch")


def _as_numpy(t: Any) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point() and t.dtype != torch.float64:
        return t.float().numpy()
    return t.numpy()


def _fault(path: Path, **kwargs: Any) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        load_state_dict(path, **kwargs)
    assert info.value.code == "LC001"
    assert "\n" not in info.value.detail
    return info.value


def _rewrite(src: Path, dst: Path, changes: dict[str, bytes | None]) -> Path:
    """Copy a zip, replacing (bytes) or dropping (None) the records named in ``changes``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            suffix = info.filename.split("/", 1)[1]
            if suffix in changes:
                if changes[suffix] is not None:
                    zout.writestr(info.filename, changes[suffix])  # type: ignore[arg-type]
            else:
                zout.writestr(info.filename, zin.read(info.filename))
    return dst


def _pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    sd: dict[str, Any] = collections.OrderedDict(
        a=base,
        transposed=torch.randn(4, 3, generator=gen).t(),
        sliced=base[2:, 1:4],
        half=torch.randn(7, generator=gen).half(),
        bf16=torch.randn(3, 3, generator=gen).to(torch.bfloat16),
        f8=torch.randn(5, generator=gen).to(torch.float8_e4m3fn),
        f8b=torch.randn(5, generator=gen).to(torch.float8_e5m2),
        double=torch.tensor(3.25, dtype=torch.float64),
        ints=torch.arange(12).reshape(3, 4)[:, ::2],
        i32=torch.arange(4, dtype=torch.int32),
        u8=torch.arange(4, dtype=torch.uint8),
        flags=torch.tensor([True, False]),
        param=torch.nn.Parameter(torch.ones(2, 2)),
        expanded=torch.ones(1, 3).expand(4, 3),
        empty=torch.zeros(0, 4),
    )
    path = tmp_path_factory.mktemp("mixed") / "adapter_model.bin"
    torch.save(sd, path)
    return path, sd


def test_state_dict_matches_torch(mixed: tuple[Path, dict[str, Any]]) -> None:
    path, sd = mixed
    with TorchCheckpoint.open(path) as ckpt:
        assert list(ckpt.entries) == list(sd)
        assert ckpt.entries["bf16"].dtype == "BF16"
        assert ckpt.entries["f8"].dtype == "F8_E4M3"
        assert ckpt.entries["sliced"].offset == 11
        assert ckpt.other_keys == []
        for key, tensor in sd.items():
            got = ckpt.read(key)
            want = _as_numpy(tensor)
            assert got.shape == tuple(tensor.shape), key
            assert got.dtype == want.dtype, key
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want, err_msg=key)
            assert ckpt.entries[key].numel == tensor.numel()


def test_peft_bin_adapter_matches_torch_load(tmp_path: Path) -> None:
    folder = peft_adapter(tmp_path, safe_serialization=False, steps=1)
    path = folder / "adapter_model.bin"
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    want = torch.load(path, weights_only=True)
    got = load_state_dict(path)
    assert sorted(got) == sorted(want)
    assert any("lora_B" in k for k in got)
    for key, tensor in want.items():
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], _as_numpy(tensor))
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_nested_checkpoint_flattens(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.ones(2), "inner": {"b": torch.zeros(1)}}, "epoch": 3,
                "name": "x"}, path)
    with TorchCheckpoint.open(path) as ckpt:
        assert list(ckpt.entries) == ["state_dict.w", "state_dict.inner.b"]
        assert ckpt.other_keys == ["epoch", "name"]
        np.testing.assert_array_equal(ckpt.read("state_dict.w"), [1.0, 1.0])


def test_pickled_tensor_properties() -> None:
    e = PickledTensor("k", "BF16", (3, 4), "a/data/0", 0, (4, 1))
    assert (e.numel, e.nbytes) == (12, 24)


def test_big_endian_archive(mixed: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, sd = mixed
    with zipfile.ZipFile(path) as z:
        prefix = z.namelist()[0].split("/")[0]
        pkl = z.read(f"{prefix}/data.pkl")
        record0 = z.read(f"{prefix}/data/0")
    swapped = np.frombuffer(record0, "<f4").astype(">f4").tobytes()
    big = _rewrite(path, tmp_path / "big.bin", {"byteorder": b"big", "data/0": swapped})
    with TorchCheckpoint.open(big) as ckpt:
        np.testing.assert_array_equal(ckpt.read("a"), sd["a"].numpy())
    assert pkl  # the pickle itself is byte-order independent
    bad = _rewrite(path, tmp_path / "odd.bin", {"byteorder": b"middle"})
    assert "byteorder" in _fault(bad).detail


# --- malicious pickles ------------------------------------------------------------------------


class _Payload:
    """Writes a marker file when unpickled, by naming os.system in its reduce tuple."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_payload_is_live(tmp_path: Path) -> None:
    # The control: a plain pickle.loads does run it, so the refusals below are meaningful.
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_malicious_torch_save_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "adapter_model.bin"
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, path)
    err = _fault(path)
    assert "refused" in err.detail
    assert ("posix.system" in err.detail) or ("os.system" in err.detail)
    assert not marker.exists()


def test_malicious_raw_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "adapter_model.bin"
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))
    assert "bare pickle" in _fault(path).detail
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        torch.Size([2, 3]),
        torch.device("cpu"),
        np.zeros(2),
        {"x": {1, 2}},
    ],
    ids=["torch-size", "device", "numpy", "set"],
)
def test_other_globals_are_refused(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(1), "o": obj}, path)
    assert "refused" in _fault(path).detail


def test_legacy_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert "legacy" in _fault(path).detail


# --- corrupt archives -------------------------------------------------------------------------


def test_not_a_zip_and_garbage(tmp_path: Path) -> None:
    (tmp_path / "e.bin").write_bytes(b"")
    assert _fault(tmp_path / "e.bin").detail == "empty file"
    (tmp_path / "g.bin").write_bytes(os.urandom(64).replace(b"P", b"Q").replace(b"\x80", b"x"))
    assert "not a zip archive" in _fault(tmp_path / "g.bin").detail
    (tmp_path / "p.bin").write_bytes(b"PK\x03\x04" + b"\0" * 40)
    assert "corrupt zip" in _fault(tmp_path / "p.bin").detail
    assert "cannot read" in _fault(tmp_path / "missing.bin").detail
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hi")
    assert "not a torch.save checkpoint" in _fault(other).detail


def test_truncated_archive(mixed: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = mixed
    good = path.read_bytes()
    cut = tmp_path / "cut.bin"
    for length in sorted({1, 3, 4, 30, 100, len(good) // 3, len(good) // 2, len(good) - 22,
                          len(good) - 1}):
        cut.write_bytes(good[:length])
        _fault(cut)


def test_corrupt_records(mixed: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = mixed
    pkl = _pkl(path)
    short = _rewrite(path, tmp_path / "short.bin", {"data/0": b"\0" * 8})
    assert "claims" in _fault(short).detail
    missing = _rewrite(path, tmp_path / "missing.bin", {"data/1": None})
    assert "no record" in _fault(missing).detail
    garbage = _rewrite(path, tmp_path / "garbage.bin", {"data.pkl": b"\x80\x02garbage"})
    assert "malformed pickle" in _fault(garbage).detail
    # Grow the first tensor's size (6, 5) -> (9, 5): the view now runs past its storage.
    assert pkl.count(b"K\x06K\x05\x86") >= 1
    grown = _rewrite(path, tmp_path / "grown.bin",
                     {"data.pkl": pkl.replace(b"K\x06K\x05\x86", b"K\x09K\x05\x86", 1)})
    assert "runs past its storage" in _fault(grown).detail
    listed = _rewrite(path, tmp_path / "list.bin", {"data.pkl": pickle.dumps([1, 2], 2)})
    assert "not a state dict" in _fault(listed).detail
    # A corrupted data record fails the zip CRC check.
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(next(n for n in z.namelist() if n.endswith("/data/0")))
    raw = bytearray(path.read_bytes())
    # The local header's extra field (torch pads it for alignment) differs from the central one.
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
    data_at = at + 30 + name_len + extra_len
    raw[data_at + 3] ^= 0xFF
    (tmp_path / "crc.bin").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="cannot read archive record"):
        load_state_dict(tmp_path / "crc.bin")


def test_hostile_opcodes_do_not_allocate(
    mixed: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = mixed
    cases = {
        # LONG_BINPUT with a huge memo index: the C unpickler would size its memo table by it.
        "memo": b"\x80\x02}r\xff\xff\xff\x7f.",
        # BINBYTES8 declaring 2^62 bytes: the C unpickler allocates before reading.
        "bytes8": b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"abc.",
        "deep": b"\x80\x02" + b"(" * 100_000 + b"." ,
    }
    for name, blob in cases.items():
        bad = _rewrite(path, tmp_path / f"{name}.bin", {"data.pkl": blob})
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            detail = _fault(bad).detail
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - t0 < 5, name
        assert peak < 64 * 2**20, (name, peak)
        assert "pickle" in detail, detail


def test_max_bytes_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    torch.save({"big": torch.zeros(1).expand(10_000), "small": torch.ones(3)}, path)
    with TorchCheckpoint.open(path, max_bytes=1000) as ckpt:
        assert ckpt.entries["big"].stride == (0,)
        np.testing.assert_array_equal(ckpt.read("small"), np.ones(3, np.float32))
        with pytest.raises(ArtifactError, match="limit"):
            ckpt.read("big")
    assert load_state_dict(path)["big"].shape == (10_000,)


def test_closed_checkpoint(mixed: tuple[Path, dict[str, Any]]) -> None:
    path, _ = mixed
    ckpt = TorchCheckpoint.open(path)
    arr = ckpt.read("a")
    ckpt.close()
    ckpt.close()
    assert arr.shape == (6, 5)
    with pytest.raises(ValueError):
        ckpt.read("a")
