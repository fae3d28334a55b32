"""The CLI as pre-commit hooks are tested: `main(argv) -> int`, no subprocess (but one, to
prove that `check` and `inspect` never import torch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loracheck.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "adapters"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_of_a_real_peft_adapter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", str(EXAMPLES / "healthy"), "--format", "json"], capsys)
    assert code == 0
    doc = json.loads(out)
    (entry,) = doc["files"]
    assert entry["format"] == "peft"
    assert entry["stage"] == "trained"
    assert entry["spec"]["rank"] == 8 and entry["spec"]["alpha"] == 16
    # make_adapters.py: 2 layers x q,k,v,o
    assert len(entry["layers"]) == 8
    assert {layer["scaling"] for layer in entry["layers"]} == {2.0}
    assert doc["diagnostics"] == []


def test_inspect_text_names_format_rank_and_scale(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", str(EXAMPLES / "healthy")], capsys)
    assert code == 0
    assert "  format   peft" in out and "q_proj" in out
    assert "  rank     8" in out and "alpha/r = 2" in out and "  stage    trained" in out


def test_check_clean_adapter_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(EXAMPLES / "healthy")], capsys)
    assert code == 0, out


def test_check_nan_adapter_exits_one_with_lc203(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(EXAMPLES / "broken-nan")], capsys)
    assert code == 1
    assert "LC203" in out


def test_exit_zero_and_fail_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["check", str(EXAMPLES / "broken-nan"), "--exit-zero"], capsys)[0] == 0
    code, out, _ = run(["check", str(EXAMPLES / "broken-no-op"), "--fail-on", "warning"], capsys)
    assert code == 1 and "LC207" in out
    assert run(["check", str(EXAMPLES / "broken-no-op"), "--fail-on", "info", "--exit-zero"],
               capsys)[0] == 0


def test_usage_errors_exit_two_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["check", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such file" in err
    code, _, err = run(["check", "--no-such-flag", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in err
    code, _, err = run(["rule", "LC999"], capsys)
    assert code == 2 and "LC999" in err


def test_corrupt_file_is_a_diagnostic_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLES / "healthy", bad)
    weights = bad / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    good = tmp_path / "good"
    shutil.copytree(EXAMPLES / "healthy", good)
    code, out, err = run(["check", str(bad), str(good)], capsys)
    assert code == 1
    assert "LC001" in out and "Traceback" not in out + err
    lines = [line for line in out.splitlines() if "LC001" in line]
    assert len(lines) == 1 and "adapter_model.safetensors" in lines[0]


def test_rule_explains_a_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["rule", "LC203"], capsys)
    assert code == 0 and "What it does" in out and "Why is this bad?" in out
    code, out, _ = run(["rule", "--all", "--format", "json"], capsys)
    codes = [r["code"] for r in json.loads(out)]
    assert code == 0 and codes == sorted(codes) and "LC204" in codes


def test_sarif_and_github_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sarif_file = tmp_path / "out.sarif"
    code, _, _ = run(["check", str(EXAMPLES / "broken-nan"), "--format", "sarif",
                      "--output", str(sarif_file)], capsys)
    assert code == 1
    sarif = json.loads(sarif_file.read_text())
    assert sarif["runs"][0]["results"][0]["ruleId"] == "LC203"
    code, out, _ = run(["check", str(EXAMPLES / "broken-nan"), "--format", "github"], capsys)
    assert code == 1 and out.startswith("::error file=") and "title=LC203" in out


@pytest.mark.parametrize("command", ["check", "inspect"])
def test_check_and_inspect_never_import_torch(command: str) -> None:
    # Nor pydantic: ~100 ms of start-up on every run (typer 0.29 imports it; issue 14).
    code = (
        "import sys\n"
        "from loracheck.cli import main\n"
        f"main([{command!r}, {str(EXAMPLES / 'healthy')!r}])\n"
        "heavy = [m for m in sys.modules\n"
        "         if m.split('.')[0] in ('torch', 'transformers', 'peft', 'pydantic')]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_command_runs_without_the_cyclic_collector_and_the_module_leaves_it() -> None:
    """The console script and ``python -m loracheck`` turn the collector off for their one
    command and set a 0.1 ms switch interval, and for ``verify``, which trains in the process,
    turn the collector back on (start-up objects frozen) and leave the interval
    (loracheck/_entry.py); importing loracheck.cli, as a test or a hook does, leaves both."""
    code = ("import gc, sys\n"
            "import loracheck.cli\n"
            "assert gc.isenabled() and sys.getswitchinterval() == 0.005\n"
            "import loracheck._entry\n"
            "assert not gc.isenabled() and sys.getswitchinterval() == 0.005\n"
            "loracheck.cli.main = lambda: print(gc.isenabled(), gc.get_freeze_count() > 0,\n"
            "                                   round(sys.getswitchinterval() * 1e6))\n"
            "loracheck._entry.main = loracheck.cli.main\n"
            "sys.argv = ['loracheck', 'inspect']\n"
            "loracheck._entry.run()\n"
            "sys.setswitchinterval(0.005)\n"
            "sys.argv = ['loracheck', 'verify']\n"
            "loracheck._entry.run()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == [
        "False", "False", "100", "True", "True", "5000"], proc.stdout + proc.stderr
    code = ("import sys\n"
            "import loracheck._entry\n"
            "sys.argv = ['loracheck', 'check', sys.argv[1]]\n"
            "raise SystemExit(loracheck._entry.run())\n")
    proc = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "broken-nan")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "LC203" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "loracheck", "check", str(EXAMPLES / "healthy")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_version_help_and_bare_command(capsys: pytest.CaptureFixture[str]) -> None:
    from loracheck import __version__
    from loracheck.fused import KERNEL
    from loracheck.render.json_out import LINE_WRITER

    code, out, _ = run(["--version"], capsys)
    # The version, which statistics kernel runs (compiled or numpy) and what writes the JSON
    # lines (issue 14).
    lines = "compiled" if LINE_WRITER is not None else "json"
    assert code == 0 and out.strip() == (
        f"loracheck {__version__} (statistics: {KERNEL}; JSON lines: {lines})")
    code, out, err = run([], capsys)
    assert code == 2 and "inspect" in out and "Traceback" not in err
    assert not err.strip(), err


def test_cli_needs_no_click() -> None:
    """typer >= 0.29 vendors click, so a plain install has none: main() must not import it."""
    code = (
        "import sys\n"
        "sys.modules['click'] = None\n"
        "from loracheck.cli import main\n"
        "assert main(['--version']) == 0\n"
        "assert main(['check', '--no-such-flag', '.']) == 2\n"
        f"assert main(['check', {str(EXAMPLES / 'healthy')!r}]) == 0\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
