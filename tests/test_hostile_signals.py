"""SIGTERM (a cancelled CI job) stops ``check --jobs 2`` at once: its worker processes are
gone and no report is half-written (issue 11, point 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders import write_safetensors

psutil = pytest.importorskip("psutil")


def _slow_adapter(path: Path, layers: int = 4000) -> None:
    """A valid adapter of many small layers: a second or more of measuring."""
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(layers):
        base = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{base}.lora_A.weight"] = rng.normal(0, 0.1, (4, 16)).astype(np.float32)
        tensors[f"{base}.lora_B.weight"] = rng.normal(0, 0.1, (16, 4)).astype(np.float32)
    write_safetensors(path, tensors)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX")
def test_sigterm_kills_the_workers_and_leaves_no_report(tmp_path: Path) -> None:
    for i in range(6):
        _slow_adapter(tmp_path / f"a{i}.safetensors")
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loracheck", "check", str(tmp_path), "--jobs", "2",
         "--format", "json", "--output", str(report)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(parent.children(recursive=True)) < 2:
        time.sleep(0.05)
    children = parent.children(recursive=True)
    assert children, "the pool never started"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)
    # 130: interrupted (typer's code for KeyboardInterrupt, which SIGTERM raises here)
    assert code == 130 and "interrupted" in (proc.stderr.read() if proc.stderr else "")
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"workers left running: {alive}"
    assert list(report.parent.iterdir()) == []  # neither a report nor a temporary file
