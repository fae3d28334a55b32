"""Issue 3, the real pre-commit test: the `loracheck` hook of `.pre-commit-hooks.yaml`, driven by
the real `pre-commit` tool through `git commit` in a temporary repository.

The hook is used as shipped (id, name, entry, files, ...) except `language: system` in a
`repo: local` config, because `language: python` would pip-install loracheck from the network.
`loracheck` is found on PATH next to the running interpreter. Nothing touches the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PRE_COMMIT = shutil.which("pre-commit", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
GIT = shutil.which("git")

pytestmark = pytest.mark.skipif(
    PRE_COMMIT is None or GIT is None, reason="needs the pre-commit tool and git"
)

GOOD = """\
base_model: NousResearch/Llama-3.2-1B
adapter: lora
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_linear: true
"""
BAD = GOOD.replace("lora_dropout: 0.05", "lora_dropout: 1.5")
WORKFLOW = """\
name: ci
on: [push]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pytest
"""


EXAMPLE = ROOT / "examples" / "ci" / "pre-commit-config.yaml"


def _hook_config() -> str:
    """The README's pre-commit config (examples/ci/pre-commit-config.yaml), as shipped: a local
    hook running the installed loracheck, matching .pre-commit-hooks.yaml's hook."""
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "loracheck" and hook["entry"].startswith("loracheck")
    text = EXAMPLE.read_text()
    ((local,),) = [r["hooks"] for r in yaml.safe_load(text)["repos"] if r["repo"] == "local"]
    for key in ("id", "entry", "files"):
        assert local[key] == hook[key], key
    assert local["language"] == "system"
    return text


def test_the_workflow_example_installs_from_the_repository() -> None:
    text = (ROOT / "examples" / "ci" / "loracheck-sarif.yml").read_text()
    steps = yaml.safe_load(text)["jobs"]["loracheck"]["steps"]
    installs = [s["run"] for s in steps if "pip install" in s.get("run", "")]
    assert installs and all("git+https://github.com/${{ vars.LORACHECK_REPO }}" in run
                            for run in installs), installs
    readme = (ROOT / "README.md").read_text()
    assert "pip install loracheck" not in readme and "rev: v0.1.0" not in readme


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        home = path.parent / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "PRE_COMMIT_HOME": str(path.parent / "pre-commit-home"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "NO_COLOR": "1",
        }
        self.env.pop("GIT_DIR", None)
        self.env.pop("GIT_INDEX_FILE", None)
        self.git("init", "-q")
        for key, value in (("user.name", "Test"), ("user.email", "test@example.com"),
                           ("commit.gpgsign", "false")):
            self.git("config", key, value)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=self.path, env=self.env, capture_output=True,
                              text=True, timeout=120)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.run("git", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def commit(self, files: dict[str, str], message: str) -> subprocess.CompletedProcess[str]:
        for name, text in files.items():
            path = self.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.git("add", name)
        return self.run("git", "commit", "-q", "-m", message)

    def commits(self) -> int:
        proc = self.run("git", "rev-list", "--count", "HEAD")
        return int(proc.stdout) if proc.returncode == 0 else 0


def test_pre_commit_hook_gates_configs(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    assert PRE_COMMIT is not None
    install = repo.run(PRE_COMMIT, "install")
    assert install.returncode == 0, install.stdout + install.stderr

    # A good axolotl config (and the pre-commit config itself, a YAML with no LoRA: skipped).
    proc = repo.commit({".pre-commit-config.yaml": _hook_config(), "configs/good.yaml": GOOD},
                       "good config")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "loracheck" in out and "Passed" in out
    assert "LC" not in out
    assert repo.commits() == 1

    # A bad one: refused, with the finding on the key's line, and nothing committed.
    proc = repo.commit({"configs/bad.yaml": BAD}, "bad config")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Failed" in out
    assert "configs/bad.yaml:5:1: LC103 [error]" in out
    assert "Traceback" not in out
    assert repo.commits() == 1
    repo.git("rm", "-q", "--cached", "configs/bad.yaml")

    # An unrelated YAML (a GitHub workflow) is handed over and skipped quietly.
    proc = repo.commit({".github/workflows/ci.yml": WORKFLOW}, "workflow")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Passed" in out and "LC" not in out
    assert repo.commits() == 2

    # A README does not even match the hook's `files` pattern.
    proc = repo.commit({"README.md": "# project\n\nlora_dropout: 1.5\n"}, "readme")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "(no files to check)" in out and "Skipped" in out
    assert repo.commits() == 3


def _write_adapter(folder: Path, index: int, broken: bool) -> None:
    """A tiny PEFT adapter; a broken one has a config finding (dropout 1.5), a pair finding (a
    target that matches no module of the weights) and a weights finding (NaN)."""
    import json

    import numpy as np

    from builders import write_safetensors

    rng = np.random.default_rng(index)
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    b = rng.normal(0, 0.01, size=(16, 4)).astype(np.float32)
    if broken:
        b[0, :2] = np.nan
    folder.mkdir(parents=True)
    write_safetensors(folder / "adapter_model.safetensors", {
        f"{base}.lora_A.weight": rng.normal(0, 0.2, size=(4, 16)).astype(np.float32),
        f"{base}.lora_B.weight": b})
    config: dict[str, object] = {"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                 "lora_dropout": 0.05, "target_modules": ["q_proj"]}
    if broken:
        config.update(lora_dropout=1.5, target_modules=["q_proj", "v_proj"])
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))


def test_pre_commit_batches_report_each_finding_once(tmp_path: Path) -> None:
    """pre-commit splits the staged files into batches (one per CPU, and by command-line
    length) after shuffling them: an adapter's config and weights often land in different
    runs. Every finding is still printed exactly once, the same set as one run over the
    folders (issue 12, point 1)."""
    import re

    repo = Repo(tmp_path / "repo")
    assert PRE_COMMIT is not None
    # Long folder names: several batches even on one CPU (pre-commit splits by length too).
    pad = "p" * 180
    for i in range(40):
        _write_adapter(repo.path / "adapters" / f"a{i:02d}{pad}", i, broken=i % 8 == 3)
    (repo.path / ".pre-commit-config.yaml").write_text(_hook_config())
    repo.git("add", "-A")
    proc = repo.run(PRE_COMMIT, "run", "--all-files")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    finding = re.compile(r" LC\d{3} \[")
    lines = [line for line in out.splitlines() if finding.search(line)]
    assert len(lines) == len(set(lines)), "a finding was printed twice"
    # The same findings as one run over the folders, with the pair finding (LC106) on the
    # weights file, where it is reported when files are named one by one.
    whole = repo.run(str(BIN / "loracheck"), "check", "adapters", "--jobs", "1")
    expected = {line for line in whole.stdout.splitlines() if finding.search(line)}
    assert sorted(line.split()[1] for line in expected) == ["LC103"] * 5 + ["LC106"] * 5 + [
        "LC203"] * 5, expected
    assert set(lines) == {_moved_to_weights(line) for line in expected}
    # The run really was split: more than one loracheck run printed a summary.
    assert out.count("Found ") >= 2, out


def _moved_to_weights(line: str) -> str:
    if " LC106 " not in line:
        return line
    path, rest = line.split(":", 1)
    rest = rest.split(": ", 1)[1]
    return f"{path.replace('adapter_config.json', 'adapter_model.safetensors')}:1:1: {rest}"
