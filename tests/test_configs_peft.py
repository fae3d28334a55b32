"""PEFT adapter_config.json written by real PEFT (tests/builders.peft_adapter) -> LoraSpec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builders import peft_adapter
from loracheck.configs import read_spec, sniff_config
from loracheck.configs.peft import EXTRAS, FIELDS
from loracheck.model import LoraSpec

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "gaussian": {"init_lora_weights": "gaussian"},
    "rslora": {"use_rslora": True, "r": 16, "lora_alpha": 32},
    "dora": {"use_dora": True},
    "patterns": {"rank_pattern": {"q_proj": 8}, "alpha_pattern": {"v_proj": 16}},
    "pissa": {"init_lora_weights": "pissa"},
    "modules_to_save": {"modules_to_save": ["lm_head"]},
    "embedding": {"target_modules": ["embed_tokens", "q_proj"]},
    "layers": {"layers_to_transform": [0], "layers_pattern": "layers", "bias": "lora_only",
               "lora_dropout": 0.1},
    "regex_targets": {"target_modules": r".*\.(q|v)_proj", "exclude_modules": ["lm_head"]},
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    return {
        name: peft_adapter(root / name, **kwargs) / "adapter_config.json"
        for name, kwargs in CASES.items()
    }


def _read(written: dict[str, Path], name: str) -> tuple[LoraSpec, dict[str, Any], str]:
    path = written[name]
    text = path.read_text()
    return read_spec(path), json.loads(text), text


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(f'  "{key}":'):
            return number
    raise AssertionError(key)


@pytest.mark.parametrize("name", list(CASES))
def test_every_saved_key_is_accounted_for(written: dict[str, Path], name: str) -> None:
    spec, raw, text = _read(written, name)
    assert sniff_config(written[name]) == "peft"
    assert spec.source_format == "peft"
    assert spec.unknown_keys == []
    assert spec.invalid == {}
    for key in raw:
        assert key in FIELDS or key in EXTRAS, key
    # Every field came with the line of its key in the file PEFT wrote.
    for key, spec_field in FIELDS.items():
        if key in raw:
            assert spec.lines[spec_field] == _line_of(text, key), key
    assert spec.extras["peft_type"] == "LORA"
    assert spec.extras["loftq_config"] == {}


def test_default(written: dict[str, Path]) -> None:
    spec, _, _ = _read(written, "default")
    assert spec.rank == 4
    assert spec.alpha == 8.0
    assert spec.dropout == 0.0
    assert spec.init_lora_weights is True
    assert spec.use_rslora is False
    assert spec.use_dora is False
    assert sorted(spec.target_modules or []) == ["q_proj", "v_proj"]
    assert spec.bias == "none"
    assert spec.modules_to_save is None
    assert spec.rank_pattern == {} and spec.alpha_pattern == {}
    assert spec.fan_in_fan_out is False
    assert spec.task_type is None
    assert spec.extras["peft_version"] == "0.21.2"


def test_gaussian_init(written: dict[str, Path]) -> None:
    assert _read(written, "gaussian")[0].init_lora_weights == "gaussian"


def test_rslora(written: dict[str, Path]) -> None:
    spec = _read(written, "rslora")[0]
    assert (spec.use_rslora, spec.rank, spec.alpha) == (True, 16, 32.0)


def test_dora(written: dict[str, Path]) -> None:
    assert _read(written, "dora")[0].use_dora is True


def test_rank_and_alpha_patterns(written: dict[str, Path]) -> None:
    spec = _read(written, "patterns")[0]
    assert spec.rank_pattern == {"q_proj": 8}
    assert spec.alpha_pattern == {"v_proj": 16.0}


def test_pissa(written: dict[str, Path]) -> None:
    assert _read(written, "pissa")[0].init_lora_weights == "pissa"


def test_modules_to_save(written: dict[str, Path]) -> None:
    assert _read(written, "modules_to_save")[0].modules_to_save == ["lm_head"]


def test_embedding_targets(written: dict[str, Path]) -> None:
    spec = _read(written, "embedding")[0]
    assert sorted(spec.target_modules or []) == ["embed_tokens", "q_proj"]


def test_layers_bias_dropout(written: dict[str, Path]) -> None:
    spec = _read(written, "layers")[0]
    assert spec.layers_to_transform == [0]
    assert spec.layers_pattern == "layers"
    assert spec.bias == "lora_only"
    assert spec.dropout == 0.1


def test_regex_targets_and_excludes(written: dict[str, Path]) -> None:
    spec = _read(written, "regex_targets")[0]
    assert spec.target_modules == r".*\.(q|v)_proj"
    assert spec.exclude_modules == ["lm_head"]


def test_sub_configs_go_to_extras(tmp_path: Path) -> None:
    from peft import EvaConfig

    path = peft_adapter(tmp_path, init_lora_weights="eva", eva_config=EvaConfig(rho=3.0))
    spec = read_spec(path / "adapter_config.json")
    assert spec.init_lora_weights == "eva"
    assert spec.extras["eva_config"]["rho"] == 3.0
    assert "eva_config" in spec.lines


def test_unknown_and_old_keys_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
         "enable_lora": [True, False, True], "merge_weights": False, "future_key": 1},
        indent=2,
    ))
    spec = read_spec(path)
    assert spec.rank == 8
    assert spec.unknown_keys == ["enable_lora", "merge_weights", "future_key"]
    assert spec.lines["future_key"] == 14  # lists are written one item a line


def test_torchtune_minimal_config_is_peft(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "o_proj"],'
                    ' "peft_type": "LORA"}')
    assert sniff_config(path) == "peft"
    spec = read_spec(path)
    assert (spec.rank, spec.alpha, spec.lines["rank"]) == (8, 16.0, 1)
