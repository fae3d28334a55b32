"""Folders and special files that used to crash or hang a run (issue 11, point 3): 1,500
nested folders are walked without the recursion limit, and a FIFO named config.json in a
``--model`` base folder is refused, never opened."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from loracheck.cli import main

CONFIG = '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}'


def test_deeply_nested_folders_are_walked(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Built and removed with os.mkdir/os.rmdir: pathlib's mkdir(parents=True) and
    # shutil.rmtree (pytest's own clean-up) recurse themselves on Python 3.11.
    levels = [str(tmp_path)]
    for _ in range(1500):
        levels.append(levels[-1] + "/d")
        os.mkdir(levels[-1])
    config = levels[-1] + "/adapter_config.json"
    with open(config, "w") as handle:
        handle.write(CONFIG)
    try:
        assert main(["check", str(tmp_path)]) == 0
        assert "All checks passed (1 file)." in capsys.readouterr().out
    finally:
        os.remove(config)
        for level in reversed(levels[1:]):
            os.rmdir(level)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_config_in_a_base_model_folder_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    os.mkfifo(base / "config.json")
    adapter = tmp_path / "adapter_config.json"
    adapter.write_text(CONFIG)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(main(["check", str(adapter), "--model", str(base)])),
        daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "check blocked on the FIFO"
    assert result == [2]
