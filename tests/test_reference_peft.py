"""Conformance with PEFT: same base, same A and B, same config -> the same forward; and each
side loads what the other saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from builders import peft_adapter, tiny_llama  # noqa: E402
from loracheck.errors import UsageError  # noqa: E402
from loracheck.model import LoraSpec  # noqa: E402
from loracheck.reference.inject import inject, lora_modules  # noqa: E402
from loracheck.reference.layers import LoRALinear  # noqa: E402
from loracheck.reference.peft_format import (  # noqa: E402
    adapter_state_dict,
    fit_adapter,
    load_adapter,
    read_peft_dir,
    save_adapter,
)

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))


def logits(model: Any) -> Any:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def assert_rel(ours: Any, theirs: Any, rel: float = 1e-6) -> None:
    err = float((ours - theirs).abs().max())
    assert err <= rel * float(theirs.abs().max()), err


CASES: dict[str, dict[str, Any]] = {
    "default": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "rslora": {
        "r": 16,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "down_proj"],
        "use_rslora": True,
    },
    "rank_pattern": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj", "up_proj"],
        "rank_pattern": {"layers.0.self_attn.q_proj": 2, "up_proj": 6},
    },
    "alpha_pattern": {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": "all-linear",
        "alpha_pattern": {"v_proj": 32, "1.mlp.down_proj": 2},
    },
    "embedding": {"r": 4, "lora_alpha": 4, "target_modules": ["embed_tokens", "o_proj"]},
}


def to_spec(cfg: dict[str, Any]) -> LoraSpec:
    return LoraSpec(
        source_format="peft",
        rank=cfg["r"],
        alpha=cfg["lora_alpha"],
        target_modules=cfg["target_modules"],
        use_rslora=cfg.get("use_rslora", False),
        rank_pattern=cfg.get("rank_pattern", {}),
        alpha_pattern=cfg.get("alpha_pattern", {}),
    )


def peft_model(cfg: dict[str, Any]) -> Any:
    return peft.get_peft_model(tiny_llama(0), peft.LoraConfig(init_lora_weights=False, **cfg))


def copy_factors_into_peft(ours: Any, theirs: Any) -> None:
    """Give PEFT's model exactly our A and B."""
    sd = {k.replace("base_model.model.", ""): v for k, v in adapter_state_dict(ours).items()}
    n = 0
    with torch.no_grad():
        for name, module in theirs.base_model.model.named_modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                module.lora_A["default"].weight.copy_(sd[f"{name}.lora_A.weight"])
                module.lora_B["default"].weight.copy_(sd[f"{name}.lora_B.weight"])
                n += 1
            elif hasattr(module, "lora_embedding_A") and "default" in module.lora_embedding_A:
                module.lora_embedding_A["default"].copy_(sd[f"{name}.lora_embedding_A"])
                module.lora_embedding_B["default"].copy_(sd[f"{name}.lora_embedding_B"])
                n += 1
    assert n == len(lora_modules(ours))


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_equals_peft(case: str) -> None:
    cfg = CASES[case]
    ours = tiny_llama(0)
    inject(ours, to_spec(cfg), init="random", seed=1)
    theirs = peft_model(cfg)
    copy_factors_into_peft(ours, theirs)
    # Same scales, module by module.
    peft_scales = {
        n: m.scaling["default"]
        for n, m in theirs.base_model.model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling
    }
    assert {n: m.scaling for n, m in lora_modules(ours)} == pytest.approx(peft_scales)
    assert_rel(logits(ours), logits(theirs))
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    assert n_ours == n_theirs


@pytest.mark.parametrize("case", ["default", "rank_pattern", "alpha_pattern", "embedding"])
def test_peft_loads_what_we_save(tmp_path: Path, case: str) -> None:
    cfg = CASES[case]
    spec = to_spec(cfg)
    ours = tiny_llama(0)
    inject(ours, spec, init="random", seed=2)
    save_adapter(ours, spec, tmp_path / "a", scheme="random")
    body = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert body["peft_type"] == "LORA"
    theirs = peft.PeftModel.from_pretrained(tiny_llama(0), str(tmp_path / "a"))
    assert_rel(logits(ours), logits(theirs))


def test_we_load_what_peft_saves(tmp_path: Path) -> None:
    path = peft_adapter(
        tmp_path / "p",
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "gate_proj"],
        steps=2,
        rank_pattern={"gate_proj": 2},
        use_rslora=True,
    )
    theirs = peft.PeftModel.from_pretrained(tiny_llama(0), str(path))
    adapter = read_peft_dir(path)
    ours = tiny_llama(0)
    targets, mapping, problems = fit_adapter(ours, adapter)
    assert not problems and len(targets) == 6
    assert adapter.spec is not None
    inject(ours, adapter.spec, targets=targets)
    assert load_adapter(ours, adapter.factors, mapping=mapping) == 6
    assert_rel(logits(ours), logits(theirs))


def test_save_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    model = tiny_llama(0)
    spec = to_spec(CASES["default"])
    inject(model, spec)
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(UsageError):
        save_adapter(model, spec, tmp_path)
    save_adapter(model, spec, tmp_path, overwrite=True)
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_load_adapter_rejects_a_bad_shape() -> None:
    model = tiny_llama(0)
    inject(model, to_spec(CASES["default"]))
    name = lora_modules(model)[0][0]
    with pytest.raises(UsageError):
        load_adapter(model, {name: (np.zeros((4, 3), np.float32), np.zeros((64, 4), np.float32))})
    assert isinstance(lora_modules(model)[0][1], LoRALinear)


def test_load_integration(tmp_path: Path) -> None:
    """With the core loader: any adapter format the core reads goes onto the model."""
    load = pytest.importorskip("loracheck.load", reason="loracheck.load not written yet")
    from loracheck.reference.peft_format import read_adapter

    path = peft_adapter(tmp_path / "p", r=4, target_modules=["q_proj", "v_proj"], steps=2)
    assert hasattr(load, "load_factors")
    adapter = read_adapter(path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(0), str(path))
    ours = tiny_llama(0)
    targets, mapping, problems = fit_adapter(ours, adapter)
    assert not problems and len(targets) == 4
    inject(ours, adapter.spec or to_spec(CASES["default"]), targets=targets)
    load_adapter(ours, adapter.factors, mapping=mapping)
    assert_rel(logits(ours), logits(theirs))
