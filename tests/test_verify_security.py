"""verify never runs code from the model folder: trust_remote_code is False on every
transformers call and stdin stays unread, even when a script answers "y" to every prompt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from builders import save_tiny_llama


def plant(folder: Path, marker: Path, *, model_type: str | None, tokenizer: bool) -> None:
    """A folder whose auto_map points at its own Python, which writes ``marker`` when run."""
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
            "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
            "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n"
            "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    if model_type is not None:
        config["model_type"] = model_type
        config["architectures"] = ["EvilModel"]
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer:
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
             "tokenizer_class": "EvilTokenizer"}))


@pytest.mark.parametrize(("model_type", "tokenizer"), [
    ("evil", False),   # only remote code can build it: transformers would ask, then run it
    (None, True),      # a known model type, but a tokenizer that exists only as remote code
])
def test_auto_map_code_never_runs(tmp_path: Path, model_type: str | None,
                                  tokenizer: bool) -> None:
    folder = save_tiny_llama(tmp_path / "model")
    marker = tmp_path / "marker"
    plant(folder, marker, model_type=model_type, tokenizer=tokenizer)
    run = subprocess.run(
        [sys.executable, "-m", "loracheck", "verify", "--model", str(folder),
         "--probe-steps", "1"],
        input="y\n" * 20, capture_output=True, text=True, timeout=300,
    )
    assert not marker.exists(), run.stdout + run.stderr
    assert "Do you wish to run the custom code" not in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    if model_type == "evil":
        assert run.returncode == 2
        (line,) = [x for x in run.stderr.splitlines() if x.startswith("loracheck:")]
        assert "custom code" in line and len(line) < 500


def test_inputs_are_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify --config with a value check rejects: check's finding, exit 1, no probe."""
    from loracheck.cli import main

    bad = tmp_path / "axolotl.yaml"
    bad.write_text("adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 1.5\n")
    assert main(["verify", "--config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "LC103" in out and "loracheck verify:" not in out
    ia3 = tmp_path / "ia3.json"
    ia3.write_text('{"peft_type": "IA3", "target_modules": ["k_proj"]}')
    assert main(["verify", "--config", str(ia3)]) == 2
    assert "IA3, not LoRA" in capsys.readouterr().err
