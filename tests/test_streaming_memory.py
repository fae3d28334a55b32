"""Streaming: reading a large adapter pair by pair keeps the resident set flat."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from builders import write_safetensors
from loracheck.discover import discover
from loracheck.load import load_unit
from loracheck.safetensors_io import SafetensorsFile


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_released_pages_leave_the_resident_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(48):  # 48 x 1 MiB of float32
        tensors[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = rng.normal(
            size=(16, 8192)).astype(np.float32)
        tensors[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = np.zeros(
            (8192, 16), np.float32)
    path = write_safetensors(tmp_path / "big.safetensors", tensors)
    before = _rss_file_kib()
    with SafetensorsFile.open(path) as file:
        for key in file.entries:
            float(file.read(key, float64=True).sum())
            file.release(key)
        grown = _rss_file_kib() - before
    # 96 MiB were read; without release the mapping would hold all of it.
    assert grown < 8 * 1024, f"resident file pages grew by {grown} KiB"
    # The loader streams the same way: the whole adapter is measured, RSS stays flat.
    before = _rss_file_kib()
    (unit,) = discover([path])
    adapter = load_unit(unit)
    assert adapter is not None and len(adapter.layers) == 48
    assert _rss_file_kib() - before < 8 * 1024
