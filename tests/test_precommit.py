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


def _hook_config() -> str:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "loracheck" and hook["entry"].startswith("loracheck")
    local = {**hook, "language": "system"}
    return yaml.safe_dump({"repos": [{"repo": "local", "hooks": [local]}]}, sort_keys=False)


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
