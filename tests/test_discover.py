"""Discovery: paths become adapter units, each once, in a deterministic order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loracheck.discover import discover
from loracheck.errors import UsageError


def _peft_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    return folder


def test_either_file_of_a_peft_pair_gives_the_pair_once(tmp_path: Path) -> None:
    folder = _peft_dir(tmp_path / "ad")
    units = discover([folder / "adapter_config.json", folder / "adapter_model.safetensors"])
    assert len(units) == 1
    (unit,) = units
    assert unit.kind == "peft"
    assert unit.weights == folder / "adapter_model.safetensors"
    assert unit.config == folder / "adapter_config.json"


def test_folder_walk_finds_nested_units_in_order(tmp_path: Path) -> None:
    _peft_dir(tmp_path / "b" / "adapter")
    _peft_dir(tmp_path / "a")
    (tmp_path / "train.yaml").write_text("lora_r: 8\n")
    (tmp_path / "kohya.safetensors").write_bytes(b"\0" * 8)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.json").write_text("{}")
    units = discover([tmp_path])
    kinds = [(u.kind, Path(u.path).relative_to(tmp_path).as_posix()) for u in units]
    assert kinds == [
        ("weights", "kohya.safetensors"),
        ("config", "train.yaml"),
        ("peft", "a"),
        ("peft", "b/adapter"),
    ]
    assert all(not u.explicit for u in units)


def test_mlx_folder(tmp_path: Path) -> None:
    (tmp_path / "adapters.safetensors").write_bytes(b"\0" * 8)
    (tmp_path / "adapter_config.json").write_text('{"lora_parameters": {"rank": 8}}')
    (unit,) = discover([tmp_path])
    assert unit.kind == "mlx" and unit.explicit


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        discover([tmp_path / "nope"])


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    (tmp_path / "d" / "c.yaml").write_text("lora_r: 8\n")
    units = discover([tmp_path])
    assert [Path(u.path).name for u in units] == ["c.yaml"]


def test_trainer_side_files_are_never_units(tmp_path: Path) -> None:
    folder = _peft_dir(tmp_path / "checkpoint-10")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "optimizer.pt").write_bytes(b"pickle")
    units = discover([tmp_path])
    assert [u.kind for u in units] == ["peft"]


def test_the_walks_listing_answers_like_the_file_system(tmp_path: Path) -> None:
    """Siblings are looked up in the folder's listing first (no system call for a name that is
    not there), then on disk: a symlinked config still counts, a folder of that name does not,
    and every walk gives the units that naming each folder gives."""
    linked = _peft_dir(tmp_path / "linked")
    real = tmp_path / "elsewhere.json"
    (linked / "adapter_config.json").rename(real)
    os.symlink(real, linked / "adapter_config.json")
    dir_config = tmp_path / "dir-config"
    dir_config.mkdir()
    (dir_config / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    (dir_config / "adapter_config.json").mkdir()
    both = _peft_dir(tmp_path / "both")
    (both / "adapter_model.bin").write_bytes(b"\0" * 8)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (loose / "kohya.safetensors").write_bytes(b"\0" * 8)
    walked = {Path(u.path): (u.kind, u.weights, u.config) for u in discover([tmp_path])}
    assert walked[linked] == ("peft", linked / "adapter_model.safetensors",
                              linked / "adapter_config.json")
    assert walked[dir_config] == ("peft", dir_config / "adapter_model.safetensors", None)
    # a folder with both PEFT weights files: two units of one path, each once
    assert sorted(str(u.weights) for u in discover([tmp_path]) if Path(u.path) == both) == [
        str(both / "adapter_model.bin"), str(both / "adapter_model.safetensors")]
    # a loose weights file takes the folder's config, which is then no unit of its own
    assert walked[loose / "kohya.safetensors"] == ("weights", loose / "kohya.safetensors",
                                                   loose / "adapter_config.json")
    assert loose / "adapter_config.json" not in walked
    for folder in (linked, dir_config, loose):
        named = {Path(u.path): (u.kind, u.weights, u.config)
                 for u in discover([folder])}
        assert all(walked[path] == unit for path, unit in named.items() if path in walked)
