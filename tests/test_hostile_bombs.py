"""Memory bombs, shared references and files that change under us (issue 11, points 1 and 3).

Each hostile input is built here, then checked beside two witnesses in a child process whose
address space is capped at 1 GiB: the run must end with exit 1 within 10 s, the hostile input
as one LC001 naming its file and the limit, the witnesses judged as usual, and no input changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import kohya_file, run_capped, write_safetensors
from loracheck.safetensors_io import READ_WHOLE_BYTES

PEFT_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _peft_folder(root: Path, name: str, config: dict[str, Any] | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config or PEFT_CONFIG))
    return folder


def _torch_zip(path: Path, data_pkl: bytes) -> Path:
    """A zip laid out as torch.save writes it: ``archive/data.pkl`` and a version record."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
    return path


def pickle_dag(root: Path) -> Path:
    """A few KB of pickle: dicts sharing their children, 64 references a level, 7 levels deep
    (within the nesting limit), which a naive walk flattens into 64⁷ (4.4e12) entries."""
    node: dict[str, Any] = {"weight": 0}
    for _ in range(7):
        node = {f"k{i}": node for i in range(64)}
    folder = _peft_folder(root, "dag")
    _torch_zip(folder / "adapter_model.bin", pickle.dumps({"state_dict": node}, protocol=2))
    return folder / "adapter_model.bin"


def deflated_record(root: Path) -> Path:
    """A .bin whose tensor record is 128 MiB of zeros deflated to ~128 KB: a zip bomb.

    The pickle is torch.save's own for an A of 123 elements, with that count rewritten to 2²⁶
    (storage size, shape and stride: the index stays consistent with the record)."""
    return _zip_bomb(root, lie=False)


def lying_directory(root: Path) -> Path:
    """The same 128 MiB deflated record, but the zip's central directory says it inflates to
    256 bytes, which is all the (1, 123) float16 A it backs needs: the size check passes and
    only the bytes read are bounded."""
    return _zip_bomb(root, lie=True)


def _patch_central_size(path: Path, name: str, size: int) -> None:
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n] == name.encode():
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at += 4
    raise AssertionError(f"no central directory entry for {name}")


def _zip_bomb(root: Path, *, lie: bool) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save({A_KEY: torch.zeros(1, 123, dtype=torch.float16),
                B_KEY: torch.zeros(16, 1, dtype=torch.float16)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src:
        pkl_name = next(n for n in src.namelist() if n.endswith("/data.pkl"))
        data_pkl = src.read(pkl_name)
        b_record = next(n for n in src.namelist() if n.endswith("/data/1"))
        b_bytes = src.read(b_record)
    big = 2**26
    assert data_pkl.count(b"K{") >= 2  # BININT1 123: storage size, shape, stride
    if not lie:
        data_pkl = data_pkl.replace(b"K{", b"J" + struct.pack("<i", big))
    folder = _peft_folder(root, "lying" if lie else "zipbomb")
    path = folder / "adapter_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/data/1", b_bytes)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        # Streamed through the compressor: the test never holds the 128 MiB.
        with archive.open(info, "w", force_zip64=not lie) as member:
            chunk = bytes(2**22)
            for _ in range(2 * big // len(chunk)):
                member.write(chunk)
    if lie:
        _patch_central_size(path, "archive/data/0", 256)
    assert path.stat().st_size < 2 * 2**20
    return path


def broadcast_view(root: Path) -> Path:
    """A of shape (8, 2²⁶) whose strides are (0, 0): one stored float standing for 2 GiB."""
    rec = io.BytesIO()
    folder = _peft_folder(root, "broadcast")
    import torch

    a = torch.zeros(1, 1).expand(8, 2**26)  # torch.save keeps the zero strides
    torch.save({A_KEY: a, B_KEY: torch.zeros(16, 8)}, rec)
    (folder / "adapter_model.bin").write_bytes(rec.getvalue())
    return folder / "adapter_model.bin"


def yaml_recursive(root: Path) -> Path:
    path = root / "train.yaml"
    path.write_text("lora_r: 8\nx: &a {y: *a}\n")
    return path


def yaml_laughs(root: Path) -> Path:
    """A billion laughs: nine levels of ten aliases, 10⁹ leaves from 700 bytes."""
    lines = ["lora_r: 8", "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    path = root / "axolotl.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def wide_rank(root: Path) -> Path:
    """A (8192, 1), B (1, 8192): 64 KB whose r × r Grams would be 512 MB and minutes."""
    r = 8192
    rng = np.random.default_rng(0)
    folder = _peft_folder(root, "wide", {**PEFT_CONFIG, "r": r})
    write_safetensors(folder / "adapter_model.safetensors", {
        A_KEY: rng.normal(size=(r, 1)).astype(np.float32),
        B_KEY: rng.normal(size=(1, r)).astype(np.float32)})
    return folder / "adapter_model.safetensors"


def kohya_nested_args(root: Path) -> Path:
    """kohya metadata whose ``ss_network_args`` is JSON nested 100,000 levels deep."""
    return kohya_file(root / "nested.safetensors",
                      metadata={"ss_network_args": "[" * 100_000 + "]" * 100_000})


def catastrophic_regex(root: Path) -> Path:
    """A target regex that backtracks for minutes against the module names of the weights."""
    folder = _peft_folder(root, "regex", {**PEFT_CONFIG, "target_modules": r"(.*)*\.q_proj"})
    rng = np.random.default_rng(0)
    write_safetensors(folder / "adapter_model.safetensors", {
        A_KEY: rng.normal(size=(4, 16)).astype(np.float32),
        B_KEY: np.zeros((16, 4), np.float32)})
    return folder


def _truncated(root: Path) -> Path:
    folder = _peft_folder(root, "shrinking")
    rng = np.random.default_rng(0)
    # Mapped, not read whole (a file up to READ_WHOLE_BYTES is bytes in hand: no hazard).
    width = READ_WHOLE_BYTES // 16
    write_safetensors(folder / "adapter_model.safetensors", {
        A_KEY: rng.normal(size=(4, width)).astype(np.float32),
        B_KEY: rng.normal(size=(width, 4)).astype(np.float32)})
    return folder / "adapter_model.safetensors"


# After the file is opened and its header validated, a "trainer" truncates it to its header:
# every later read would touch pages past the end of the file (SIGBUS before the fix).
TRUNCATE_AFTER_OPEN = """
import os
from loracheck import safetensors_io
_open = safetensors_io.SafetensorsFile.open.__func__
def _open_then_truncate(cls, path):
    file = _open(cls, path)
    if "shrinking" in str(path):
        os.truncate(path, file.header_size + 8)
    return file
safetensors_io.SafetensorsFile.open = classmethod(_open_then_truncate)
"""


CASES: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    # name: (builder, message fragment, prelude)
    "pickle-dag": (pickle_dag, "expands to more than 262144 entries", ""),
    "deflated-record": (deflated_record, "would inflate", ""),
    "lying-zip-directory": (lying_directory, "Bad CRC-32", ""),
    "broadcast-view": (broadcast_view, "zero or overlapping strides", ""),
    "yaml-recursive": (yaml_recursive, "YAML nested deeper than 64 levels", ""),
    "yaml-laughs": (yaml_laughs, "YAML", ""),
    "truncated-while-read": (_truncated, "truncated while being read", TRUNCATE_AFTER_OPEN),
}


def _digest(paths: list[Path]) -> dict[Path, str]:
    out: dict[Path, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[f] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _witnesses(root: Path) -> tuple[Path, Path]:
    healthy = kohya_file(root / "healthy.safetensors")
    nan = kohya_file(root / "nan.safetensors", seed=1, nan=True)
    return healthy, nan


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bomb_is_one_diagnostic_within_bounds(case: str, jobs: str, tmp_path: Path) -> None:
    build, fragment, prelude = CASES[case]
    bad = build(tmp_path)
    healthy, nan = _witnesses(tmp_path)
    before = _digest([tmp_path])
    code, out, err, seconds = run_capped(
        ["check", str(bad), str(healthy), str(nan), "--format", "json", "--jobs", jobs],
        prelude=prelude)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    doc = json.loads(out)
    by_file: dict[str, list[dict[str, Any]]] = {}
    for d in doc["diagnostics"]:
        by_file.setdefault(Path(d["path"]).name, []).append(d)
    mine = by_file.get(bad.name, []) + by_file.get(bad.parent.name, [])
    lc001 = [d for d in mine if d["code"] == "LC001"]
    assert len(lc001) == 1 and fragment in lc001[0]["message"], mine
    assert bad.name in lc001[0]["path"] or bad.parent.name in lc001[0]["path"]
    assert [d["code"] for d in by_file["nan.safetensors"]] == ["LC203"]
    assert "healthy.safetensors" not in by_file
    assert seconds < 10, seconds
    after = _digest([tmp_path])
    if prelude:  # the simulated trainer changed the hostile file itself
        before.pop(bad)
        after.pop(bad)
    assert after == before


DEGENERATE: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (builder, the code that reports it)
    "wide-rank": (wide_rank, "LC104"),  # rank-too-high: r = 8192 for a 1 × 1 update
    "catastrophic-regex": (catastrophic_regex, "LC106"),
    "kohya-nested-args": (kohya_nested_args, "LC114"),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_but_readable_inputs_finish_within_bounds(case: str, tmp_path: Path) -> None:
    """Not refused but judged: a rank far above the module size (measured from its small
    side), a regex that would backtrack (reported, never run), metadata nested too deep to
    parse (reported as unreadable, the weights still judged)."""
    build, expected = DEGENERATE[case]
    bad = build(tmp_path)
    before = _digest([tmp_path])
    code, out, err, seconds = run_capped(["check", str(bad), "--format", "json"])
    assert code in (0, 1) and "Traceback" not in out + err, (out, err)
    doc = json.loads(out)
    codes = {d["code"] for d in doc["diagnostics"]}
    assert expected in codes and "LC001" not in codes, codes
    assert doc["files"] and doc["files"][0]["layers"], "the weights were measured"
    assert seconds < 10, seconds
    assert _digest([tmp_path]) == before


def test_the_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """The control for the deflated record: its index is valid and zipfile would inflate it."""
    from loracheck.errors import ArtifactError
    from loracheck.pickle_io import TorchCheckpoint

    path = deflated_record(tmp_path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("archive/data/0")
        assert info.file_size == 2**27 and info.compress_size < 2**20
        with archive.open(info) as member:
            assert member.read(2**20) == bytes(2**20)
    with TorchCheckpoint.open(path) as ckpt:
        assert ckpt.entries[A_KEY].shape == (1, 2**26)
        with pytest.raises(ArtifactError, match="would inflate"):
            ckpt.read(A_KEY)


def test_a_record_is_never_inflated_past_its_stated_size(tmp_path: Path) -> None:
    """The lying directory: the read stops after the stated 256 bytes (+1) and the CRC check
    refuses the record, with a few MB of peak memory instead of the 128 MiB stream."""
    import tracemalloc

    from loracheck.errors import ArtifactError
    from loracheck.pickle_io import TorchCheckpoint

    path = lying_directory(tmp_path)
    tracemalloc.start()
    try:
        with TorchCheckpoint.open(path) as ckpt, pytest.raises(ArtifactError, match="CRC"):
            ckpt.read(A_KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


def test_a_small_mapping_saved_twice_is_read(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``torch.save({"state_dict": sd, "hparams": cfg, "args": cfg})`` shares one small dict
    through a memo reference: not a bomb, read as usual."""
    import torch

    from loracheck.cli import main

    cfg = {"lr": 1e-4, "r": 4}
    folder = _peft_folder(tmp_path, "shared")
    torch.save({A_KEY: torch.randn(4, 16) * 0.1, B_KEY: torch.randn(16, 4) * 0.01,
                "hparams": cfg, "args": cfg}, folder / "adapter_model.bin")
    main(["check", str(folder), "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert "LC001" not in {d["code"] for d in doc["diagnostics"]}, doc["diagnostics"]
    assert len(doc["files"][0]["layers"]) == 1
