"""Adapters written by the real mlx-lm trainer (``mlx_lm lora``, LoRA and DoRA): rank, scale
and ΔW statistics equal the writer's own ΔW (``fuse()`` minus the base weight). With mlx-lm
installed (a pinned test dependency) the trainer runs here, through
``scripts/writers/gen_mlx.py``; the committed fixtures it wrote are checked as well."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.model import Stage
from loracheck.settings import Settings

MLX = Path(__file__).parent / "fixtures" / "writers" / "mlx"


GENERATOR = Path(__file__).resolve().parents[1] / "scripts" / "writers" / "gen_mlx.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA and DoRA adapters from the real trainer, run now, with their truth.json."""
    if importlib.util.find_spec("mlx_lm") is None:
        pytest.skip("mlx-lm is not installed")
    spec = importlib.util.spec_from_file_location("gen_mlx", GENERATOR)
    assert spec is not None and spec.loader is not None
    gen: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    work, out = tmp_path_factory.mktemp("mlx-work"), tmp_path_factory.mktemp("mlx")
    gen.write_model(work / "model")
    gen.write_data(work / "data")
    for kind in ("lora", "dora"):
        adapters = gen.run_trainer(work, kind)
        truth = gen.compute_truth(work, adapters, kind)
        shutil.copytree(adapters, out / kind)
        (out / kind / "truth.json").write_text(json.dumps(truth))
    return out


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_the_trainer_writes_now(kind: str, trained: Path) -> None:
    _check(trained / kind, kind)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_committed_mlx_fixtures(kind: str) -> None:
    _check(MLX / kind, kind)


def _check(folder: Path, kind: str) -> None:
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
