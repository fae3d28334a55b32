"""Adapters written by transformers' own PEFT integration (``add_adapter`` +
``save_pretrained``; transformers 5.24 wants PEFT ≥ 0.22, the tests pin 0.21.2, so
``scripts/writers/gen_transformers.py`` wrote committed fixtures in its own venv): GPT-2's
Conv1D (``fan_in_fan_out``) and a Llama with rsLoRA read with the writer's ΔW
(``get_delta_weight`` in float64)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.settings import Settings

WRITTEN = Path(__file__).parent / "fixtures" / "writers" / "transformers"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_add_adapter_save_pretrained(name: str) -> None:
    folder = WRITTEN / name
    truth = json.loads((folder / "truth.json").read_text())["modules"]
    # (truth.json, which holds the adapter's config too, is a unit of its own: not compared)
    (adapter,) = [a for a in load_paths([str(folder)]) if a.path == str(folder)]
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == {m["module"] for m in truth}
    for module in truth:
        layer = layers[module["module"]]
        assert layer.rank == module["rank"]
        assert layer.scaling == pytest.approx(module["scaling"], rel=1e-12)  # rsLoRA: α/√r
        assert (layer.out_features, layer.in_features) == tuple(module["delta_shape"])
        assert layer.delta is not None
        assert layer.delta.frobenius == pytest.approx(module["delta_fro"], rel=1e-6)
        top = module["delta_svals_top8"][: module["rank"]]
        assert list(layer.delta.singular_values) == pytest.approx(top, rel=1e-6)
    errors = [d for d in check_adapter(adapter, Settings()) if d.severity.value != "info"]
    assert not errors
