"""Issue 5 §3, never write: after `inspect`, `check` (every format, to stdout and to --output) and
`verify --adapter`, every input's bytes, size, mode and modification time are unchanged and no
file has appeared or vanished next to them. `verify --save-adapter` refuses a non-empty folder
unless --overwrite is given.

The inputs are real: a tiny Llama base and a PEFT adapter trained by real PEFT, the shipped
example adapter, a kohya file, a pickle adapter, configs of each syntax, and broken files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import builders
from loracheck.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "adapters"
# Every input gets this modification time first, so that any write would move it.
OLD_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09

Snapshot = dict[str, tuple[str, int, int, int, str]]


def snapshot(root: Path) -> Snapshot:
    """(kind, size, mode, mtime_ns, sha256) of every entry under ``root``, symlinks unfollowed."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path)] = ("link", 0, st.st_mode, st.st_mtime_ns, os.readlink(path))
            elif path.is_dir():
                out[str(path)] = ("dir", 0, st.st_mode, st.st_mtime_ns, "")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path)] = ("file", st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return out


def age(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath) / name, ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    os.utime(root, ns=(OLD_NS, OLD_NS))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree of everything loracheck reads, made read-only in spirit (we check, not chmod)."""
    import torch

    root = tmp_path_factory.mktemp("inputs")
    builders.save_tiny_llama(root / "base")
    builders.peft_adapter(root / "peft", steps=2)
    shutil.copytree(EXAMPLES / "healthy", root / "healthy")
    shutil.copytree(EXAMPLES / "broken-nan", root / "broken-nan")
    builders.kohya_file(root / "kohya.safetensors")
    # A pickle adapter (safe tensors only): read by the restricted unpickler.
    (root / "pickled").mkdir()
    shutil.copy(root / "peft" / "adapter_config.json", root / "pickled")
    from safetensors.torch import load_file

    torch.save(load_file(root / "peft" / "adapter_model.safetensors"),
               root / "pickled" / "adapter_model.bin")
    configs = root / "configs"
    configs.mkdir()
    (configs / "axolotl.yaml").write_text(
        "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 0.05  # loracheck: ignore[LC1]\n"
        "lora_target_linear: true\n")
    (configs / "bad.yaml").write_text("adapter: lora\nlora_r: 16\nlora_alpha: 32\n"
                                      "lora_dropout: 1.5\n")
    (configs / "kohya.toml").write_text("network_dim = 8\nnetwork_alpha = 4\n")
    (configs / "train.py").write_text(
        "from peft import LoraConfig\nconfig = LoraConfig(r=8, lora_alpha=16)\n")
    (configs / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (configs / "invalid.json").write_text('{"peft_type": "LORA", "r": ')
    broken = root / "broken"
    broken.mkdir()
    (broken / "truncated.safetensors").write_bytes(
        (root / "peft" / "adapter_model.safetensors").read_bytes()[:300])
    (broken / "lfs.safetensors").write_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"1" * 64 + b"\nsize 9\n")
    (broken / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (broken / "empty.safetensors").write_bytes(b"")
    (broken / "link.safetensors").symlink_to("truncated.safetensors")
    rng = np.random.default_rng(0)
    builders.write_safetensors(broken / "not-lora.safetensors",
                               {"embed.weight": rng.normal(size=(8, 4)).astype(np.float32)})
    age(root)
    return root


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_inputs_are_aged(inputs: Path) -> None:
    assert all(entry[3] == OLD_NS for entry in snapshot(inputs).values())


@pytest.mark.parametrize("argv", [
    ["inspect"],
    ["inspect", "--all"],
    ["inspect", "--format", "json"],
    ["inspect", "--stage", "init", "--profile", "llmbook"],
    ["check"],
    ["check", "--format", "json"],
    ["check", "--format", "sarif"],
    ["check", "--format", "github"],
    ["check", "--jobs", "2", "--stage", "trained", "--fail-on", "info"],
    ["check", "--model", "{root}/base"],
], ids=lambda a: " ".join(a))
def test_inspect_and_check_never_write(
    argv: list[str], inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(inputs)
    command = [a.format(root=inputs) for a in argv]
    # The tree, and each input named on its own (as pre-commit hands them over).
    code, out, _ = _run([*command, str(inputs)], capsys)
    assert code == 1 and out
    named = [str(p) for p in sorted(inputs.rglob("*")) if p.is_file() or p.is_symlink()]
    code, out, _ = _run([*command, *named], capsys)
    assert code == 1 and out
    assert snapshot(inputs) == before


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "github"])
def test_check_output_goes_only_to_the_output_file(
    fmt: str, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(inputs)
    report = tmp_path / "reports" / f"report.{fmt}"
    report.parent.mkdir()
    code, out, err = _run(["check", str(inputs), "--format", fmt, "--output", str(report)],
                          capsys)
    assert code == 1 and out == "" and err == ""
    assert report.stat().st_size > 0
    assert sorted(p.name for p in report.parent.iterdir()) == [report.name]
    assert snapshot(inputs) == before


def test_verify_adapter_never_writes(inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    before = snapshot(inputs)
    code, out, err = _run(["verify", "--model", str(inputs / "base"), "--adapter",
                           str(inputs / "peft"), "--probe-steps", "2"], capsys)
    assert code == 0, out + err
    assert "LC308  adapter fits" in out and "save and reload" in out
    assert snapshot(inputs) == before


def test_save_adapter_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    age(tmp_path)
    before = snapshot(tmp_path)
    code, out, err = _run(["verify", "--probe-steps", "1", "--save-adapter", str(target)],
                          capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--overwrite" in err and str(target) in err
    assert snapshot(tmp_path) == before


def test_save_adapter_overwrites_when_asked(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    target = tmp_path / "out"
    target.mkdir()
    (target / "adapter_config.json").write_text("{}")
    code, out, err = _run(["verify", "--model", str(inputs / "base"), "--probe-steps", "1",
                           "--save-adapter", str(target), "--overwrite"], capsys)
    assert code in (0, 1), err
    config = json.loads((target / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert (target / "adapter_model.safetensors").stat().st_size > 0
    # What verify wrote is a readable adapter.
    code, out, err = _run(["check", str(target), "--format", "json"], capsys)
    doc = json.loads(out)
    assert doc["files"][0]["format"] == "peft" and doc["files"][0]["layers"]
    assert not [d for d in doc["diagnostics"] if d["code"].startswith("LC0")]


def test_snapshot_sees_a_rewrite_of_the_same_bytes(tmp_path: Path) -> None:
    """The control: rewriting a file with identical bytes is still seen (its mtime moves)."""
    (tmp_path / "a.yaml").write_text("lora_r: 8\n")
    age(tmp_path)
    before = snapshot(tmp_path)
    (tmp_path / "a.yaml").write_text("lora_r: 8\n")
    assert snapshot(tmp_path) != before
