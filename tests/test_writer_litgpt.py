"""litgpt ``finetune_lora`` output as litgpt 0.5.13 writes it (committed by
``scripts/writers/gen_litgpt.py``; litgpt pins an older huggingface_hub): ``lit_model.pth.lora``
(``torch.save({"model": …})``, keys without ``.weight``) with ``hyperparameters.yaml`` and
``model_config.yaml``. The fused qkv LoRA (one r-row block of A per enabled group) is read per
group and matches the writer's ``get_lora_AB`` ΔW; the merged ``lit_model.pth`` is skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.settings import Settings

LITGPT = Path(__file__).parent / "fixtures" / "writers" / "litgpt"
RUNS = [LITGPT / "qv" / "final", LITGPT / "qkv" / "step-000010"]


@pytest.mark.parametrize("run", RUNS, ids=["query+value", "qkv+proj+mlp"])
def test_litgpt_lora_checkpoint_matches_the_writer(run: Path) -> None:
    truth = json.loads((run / "truth.json").read_text())["modules"]
    adapters = load_paths([str(run)])
    assert [a.path for a in adapters] == [str(run / "lit_model.pth.lora")]  # merged skipped
    (adapter,) = adapters
    assert adapter.format == "litgpt" and adapter.spec is not None
    # LC215: a pickle, read by the restricted unpickler; nothing else
    assert [d.code for d in check_adapter(adapter, Settings())] == ["LC215"]
    layers = {layer.name.removeprefix("model."): layer for layer in adapter.layers}
    expected_names: set[str] = set()
    for module in truth:
        groups = {g: v for g, v in module.get("groups", {}).items() if v["enabled"]}
        parts = ({f"{module['name']}.{g}": v for g, v in groups.items()} if groups
                 else {module["name"]: {"fro": module["delta_fro"],
                                        "svals_top8": module["delta_svals_top8"]}})
        expected_names |= set(parts)
        for name, part in parts.items():
            layer = layers[name]
            assert layer.rank == module["rank"] and layer.scaling == module["scaling"]
            assert layer.delta is not None
            assert layer.delta.frobenius == pytest.approx(part["fro"], rel=1e-6)
            top = part["svals_top8"][: module["rank"]]
            assert list(layer.delta.singular_values) == pytest.approx(top, rel=1e-6)
        if groups:  # the groups own disjoint rows: their norms make up the module's
            total = math.sqrt(sum(layers[n].delta.frobenius ** 2 for n in parts))  # type: ignore[union-attr]
            assert total == pytest.approx(module["delta_fro"], rel=1e-6)
    assert set(layers) == expected_names
