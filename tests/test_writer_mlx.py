"""Adapters written by the real mlx-lm trainer (``mlx_lm lora``, LoRA and DoRA, committed by
``scripts/writers/gen_mlx.py``; mlx is not a test dependency): rank, scale and ΔW statistics
equal the writer's own ΔW (``fuse()`` minus the base weight, in ``truth.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.model import Stage
from loracheck.settings import Settings

MLX = Path(__file__).parent / "fixtures" / "writers" / "mlx"


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_mlx_adapters_read_as_the_writer_applies_them(kind: str) -> None:
    folder = MLX / kind
    truth = json.loads((folder / "truth.json").read_text())
    (adapter,) = [a for a in load_paths([str(folder)]) if a.path == str(folder)]
    assert adapter.format == "mlx" and adapter.stage is Stage.TRAINED
    assert adapter.method_name == ("DoRA" if kind == "dora" else "LoRA")
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == {m["prefix"] for m in truth["modules"]}
    for module in truth["modules"]:
        layer = layers[module["prefix"]]
        assert layer.rank == module["rank"] and layer.scaling == module["scale"]
        assert (layer.in_features, layer.out_features) == (module["in_features"],
                                                           module["out_features"])
        # loracheck measures the low-rank update s·B·A; for DoRA the fused ΔW also holds the
        # magnitude renormalisation, so the writer's s·B·A norm is the one to compare.
        expected = module["lora_only_delta_fro"] if kind == "dora" else module["delta_fro"]
        assert layer.delta is not None
        assert layer.delta.frobenius == pytest.approx(expected, rel=1e-6)
        if kind == "lora":
            # the writer's SVD of the materialised ΔW lists values past r (float32 noise)
            top = module["top_singular_values"][: module["rank"]]
            assert list(layer.delta.singular_values) == pytest.approx(top, rel=1e-5)
        else:
            assert layer.magnitude is not None
            assert layer.magnitude.shape == tuple(module["magnitude_shape"])
    assert [d.code for d in check_adapter(adapter, Settings())] == []
