"""torchtune output folders as torchtune 0.6.1 writes them (committed by
``scripts/writers/gen_torchtune.py``; torchtune needs an older torchao than PEFT accepts):
``epoch_N/`` with ``adapter_model.safetensors`` (PEFT keys) + ``adapter_config.json``,
``adapter_model.pt`` (torchtune keys) and, unless adapter-only, the merged model. Each config
is paired with the weights it describes, the merged model is skipped quietly, and the numbers
equal the writer's own ΔW (``get_merged_lora_ckpt`` in float64)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.settings import Settings

TORCHTUNE = Path(__file__).parent / "fixtures" / "writers" / "torchtune"
FOLDERS = [TORCHTUNE / "epoch_0", TORCHTUNE / "mlp_adapter_only" / "epoch_0"]


@pytest.mark.parametrize("folder", FOLDERS, ids=["full-save", "adapter-only"])
def test_a_torchtune_folder_is_one_peft_adapter(folder: Path) -> None:
    truth = json.loads((folder / "truth.json").read_text())["modules"]
    adapters = load_paths([str(folder)])
    assert [a.path for a in adapters] == [str(folder)]  # .pt copy and merged model skipped
    (adapter,) = adapters
    assert adapter.format == "peft" and not check_adapter(adapter, Settings())
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == {m["peft_name"].removeprefix("base_model.model.") for m in truth}
    for module in truth:
        layer = layers[module["peft_name"].removeprefix("base_model.model.")]
        assert (layer.rank, layer.scaling) == (module["rank"], module["scaling"])
        assert (layer.in_features, layer.out_features) == (module["in_features"],
                                                           module["out_features"])
        assert layer.delta is not None
        assert layer.delta.frobenius == pytest.approx(module["delta_fro"], rel=1e-6)
        top = module["delta_svals_top8"][: module["rank"]]
        assert list(layer.delta.singular_values) == pytest.approx(top, rel=1e-6)


def test_the_torchtune_key_copy_named_explicitly_reads_the_same_update() -> None:
    folder = FOLDERS[1]
    truth = {m["tune_name"]: m for m in json.loads((folder / "truth.json").read_text())["modules"]}
    (adapter,) = load_paths([str(folder / "adapter_model.pt")])
    assert {layer.name for layer in adapter.layers} == set(truth)
    errors = [d for d in check_adapter(adapter, Settings()) if d.severity.value == "error"]
    assert not errors
    for layer in adapter.layers:
        # torchtune's own file holds no alpha: the scale is unknown (None) and ΔW is measured
        # as B·A, the writer's ΔW divided by its scale
        assert layer.delta is not None and layer.scaling is None
        expected = truth[layer.name]["delta_fro"] / truth[layer.name]["scaling"]
        assert layer.delta.frobenius == pytest.approx(expected, rel=1e-6)
