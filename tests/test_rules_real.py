"""The engine on adapters written by real PEFT (every init scheme, at init and trained) and on
planted faults in real files: healthy ones give no warning and no error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import ALL_LINEAR, kohya_file, peft_adapter, save_tiny_llama, write_safetensors
from loracheck.basemodel import read_base_model
from loracheck.engine import check_adapter
from loracheck.load import LoadOptions, load_paths
from loracheck.model import Adapter, Diagnostic, Severity
from loracheck.settings import Settings

pytest.importorskip("peft")

SCHEMES: dict[str, dict[str, Any]] = {
    "default": {},
    "gaussian": {"init_lora_weights": "gaussian"},
    "pissa": {"init_lora_weights": "pissa"},
    "olora": {"init_lora_weights": "olora"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "embedding": {"target_modules": ["embed_tokens", "q_proj", "v_proj"]},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "rank_pattern": {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 4}},
    "all_linear_r16": {"r": 16, "lora_alpha": 16, "target_modules": ALL_LINEAR},
}


def load_one(path: Path, stage: str = "auto") -> Adapter:
    (adapter,) = load_paths([str(path)], LoadOptions(stage=stage))
    return adapter


def serious(diags: list[Diagnostic]) -> list[tuple[str, str]]:
    return [(d.code, d.message) for d in diags if d.severity is not Severity.INFO]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return read_base_model(save_tiny_llama(tmp_path_factory.mktemp("base")))


@pytest.mark.parametrize("steps", [0, 4], ids=["init", "trained"])
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_healthy_peft_adapters_pass(
    tmp_path: Path, base: Any, scheme: str, steps: int
) -> None:
    folder = peft_adapter(tmp_path / scheme, steps=steps, **SCHEMES[scheme])
    stage = "init" if steps == 0 else "auto"
    adapter = load_one(folder, stage)
    assert serious(check_adapter(adapter, Settings(), base)) == []
    if steps:
        assert serious(check_adapter(load_one(folder, "trained"), Settings(), base)) == []


def test_fresh_adapter_under_auto_is_clean(tmp_path: Path) -> None:
    adapter = load_one(peft_adapter(tmp_path / "a"))
    assert check_adapter(adapter, Settings()) == []
    assert [d.code for d in check_adapter(load_one(tmp_path / "a", "trained"), Settings())] \
        == ["LC207"]


def test_forcing_init_on_a_trained_adapter_breaks_identity(tmp_path: Path) -> None:
    folder = peft_adapter(tmp_path / "a", steps=3)
    assert {d.code for d in check_adapter(load_one(folder, "init"), Settings())} == {"LC204"}


def _rewrite_tensor(path: Path, key_part: str, fn: Any) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    for key in sorted(tensors):
        if key_part in key:
            tensors[key] = fn(tensors[key].copy())
            break
    write_safetensors(path, tensors, {"format": "pt"})


def test_planted_nan(tmp_path: Path) -> None:
    folder = peft_adapter(tmp_path / "a", steps=3)

    def poison(b: np.ndarray) -> np.ndarray:
        b[0, 0] = np.nan
        return b

    _rewrite_tensor(folder / "adapter_model.safetensors", "lora_B", poison)
    diags = check_adapter(load_one(folder), Settings())
    assert {d.code for d in diags} == {"LC203"}
    assert diags[0].location is not None and diags[0].location.endswith("lora_B.weight")


def test_planted_config_faults_carry_lines(tmp_path: Path) -> None:
    folder = peft_adapter(tmp_path / "a", steps=3)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = 8
    cfg["lora_dropout"] = 1.0
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    diags = check_adapter(load_one(folder), Settings())
    assert {d.code for d in diags} == {"LC202", "LC103"}
    (drop,) = [d for d in diags if d.code == "LC103"]
    lines = cfg_path.read_text().splitlines()
    assert drop.line is not None and '"lora_dropout"' in lines[drop.line - 1]


def test_zero_b_after_training_is_an_error(tmp_path: Path) -> None:
    folder = peft_adapter(tmp_path / "a")
    diags = check_adapter(load_one(folder, "trained"), Settings())
    assert [(d.code, d.severity) for d in diags] == [("LC207", Severity.ERROR)]


def test_kohya_files(tmp_path: Path) -> None:
    good = load_one(kohya_file(tmp_path / "good.safetensors"))
    assert serious(check_adapter(good, Settings())) == []
    bad = load_one(kohya_file(tmp_path / "bad.safetensors",
                              metadata={"ss_network_alpha": "8.0"}))
    assert {d.code for d in check_adapter(bad, Settings())} == {"LC212"}
