"""`run_verify`: the built-in model passes; each planted fault is caught by its own code."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from builders import peft_adapter, save_tiny_llama  # noqa: E402
from loracheck.errors import UsageError  # noqa: E402
from loracheck.model import Diagnostic, Severity  # noqa: E402
from loracheck.reference.inject import lora_modules  # noqa: E402
from loracheck.reference.layers import LoRALinear  # noqa: E402
from loracheck.verify import (  # noqa: E402
    VerifyOptions,
    VerifyResult,
    render_verify_text,
    run_verify,
)


def codes(result: VerifyResult) -> set[str]:
    return {d.code for d in result.diagnostics}


def failed(result: VerifyResult) -> set[str]:
    return {c.code for c in result.checks if not c.passed}


@pytest.mark.parametrize("init", [None, "kaiming"])
def test_builtin_passes_every_check(init: str | None) -> None:
    steps: list[tuple[int, int]] = []
    result = run_verify(VerifyOptions(init=init), progress=lambda i, n: steps.append((i, n)))
    assert result.passed, render_verify_text(result)
    assert not result.diagnostics
    assert [c.code for c in result.checks] == [
        "LC301",
        "LC303",
        "LC304",
        "LC302",
        "LC305",
        "LC306",
        "LC307",
    ]
    assert steps == [(i, 20) for i in range(1, 21)]
    identity = result.check("identity")
    assert identity is not None and identity.numbers["eval_max_abs"] == 0.0
    assert identity.numbers["init"] == (init or "normal")
    body = json.loads(json.dumps(result.to_dict()))
    assert set(body) == {"checks", "diagnostics", "timing"}
    assert body["checks"][0]["name"] == "identity" and "passed" in body["checks"][0]
    assert "verify passed" in render_verify_text(result)


def test_pissa_is_an_identity_on_its_residual_base(tmp_path: Path) -> None:
    result = run_verify(VerifyOptions(init="pissa", probe_steps=3, save_adapter=tmp_path / "s"))
    assert "LC301" not in failed(result), render_verify_text(result)
    assert {"LC303", "LC304", "LC305", "LC306", "LC307"}.isdisjoint(failed(result))
    assert (tmp_path / "s" / "adapter_config.json").is_file()


def test_random_b_is_lc301() -> None:
    result = run_verify(VerifyOptions(init="random", probe_steps=2))
    assert "LC301" in codes(result) and "LC301" in failed(result)


def test_frozen_b_is_lc304() -> None:
    def freeze_b(model: Any) -> None:
        _, module = lora_modules(model)[0]
        assert isinstance(module, LoRALinear)
        module.lora_B.weight.requires_grad_(False)

    result = run_verify(VerifyOptions(probe_steps=3, tamper=freeze_b))
    assert "LC304" in failed(result)
    named = [d.location for d in result.diagnostics if d.code == "LC304"]
    assert named == ["model.layers.0.self_attn.q_proj.lora_B"]


def test_lr_zero_is_lc302() -> None:
    result = run_verify(VerifyOptions(lr=0.0, probe_steps=5))
    assert failed(result) == {"LC302"}, render_verify_text(result)


def test_unfrozen_base_is_lc303() -> None:
    def unfreeze(model: Any) -> None:
        model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)

    result = run_verify(VerifyOptions(probe_steps=2, tamper=unfreeze))
    assert "LC303" in failed(result)
    locations = {d.location for d in result.diagnostics if d.code == "LC303"}
    assert "model.layers.0.mlp.down_proj.weight" in locations


def test_corrupted_merge_is_lc305(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = LoRALinear.delta_weight

    def doubled(self: LoRALinear) -> Any:
        return 2 * honest(self)

    monkeypatch.setattr(LoRALinear, "delta_weight", doubled)
    result = run_verify(VerifyOptions(probe_steps=3, min_loss_drop=-1.0))
    assert failed(result) == {"LC305"}, render_verify_text(result)


def test_adapter_for_another_width_is_lc308(tmp_path: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=1)  # a tiny Llama of width 64
    result = run_verify(VerifyOptions(adapter=adapter, probe_steps=2))
    assert "LC308" in failed(result) and "LC308" in codes(result)
    assert [c.name for c in result.checks] == ["fit"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_all_zero_b_adapter_is_lc207(tmp_path: Path, llama_dir: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=0)
    result = run_verify(VerifyOptions(model=str(llama_dir), adapter=adapter, probe_steps=2))
    assert "LC207" in codes(result) and "LC207" in failed(result)
    lc207 = [d for d in result.diagnostics if d.code == "LC207"]
    assert lc207[0].severity == Severity.WARNING
    assert {"LC303", "LC304", "LC305", "LC306", "LC308"}.isdisjoint(failed(result))


def test_trained_peft_adapter_on_its_model(tmp_path: Path, llama_dir: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=2)
    seen: list[Path] = []

    def post_check(path: Path) -> list[Diagnostic]:
        seen.append(path)
        assert (path / "adapter_model.safetensors").is_file()
        return []

    result = run_verify(
        VerifyOptions(
            model=str(llama_dir),
            adapter=adapter,
            probe_steps=3,
            lr=1e-2,
            min_loss_drop=-1.0,
            post_save_check=post_check,
        )
    )
    assert result.passed, render_verify_text(result)
    effect = result.check("effect")
    assert effect is not None and effect.numbers["eval_max_abs"] > 0
    assert len(seen) == 1


def test_post_save_errors_fail_lc306() -> None:
    def bad(path: Path) -> list[Diagnostic]:
        return [Diagnostic("LC101", "x", Severity.ERROR, str(path), "broken")]

    result = run_verify(VerifyOptions(probe_steps=2, post_save_check=bad))
    assert "LC306" in failed(result)


def test_model_without_lm_head_gets_a_generic_objective(tmp_path: Path) -> None:
    from builders import tiny_llama

    base = tiny_llama(0).model  # LlamaModel: no LM head
    base.config.architectures = ["LlamaModel"]
    base.save_pretrained(str(tmp_path / "m"))
    result = run_verify(VerifyOptions(model=str(tmp_path / "m"), probe_steps=12, lr=1e-2))
    assert result.passed, render_verify_text(result)


def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(UsageError):
        run_verify(VerifyOptions(save_adapter=tmp_path / "full"))
    with pytest.raises(UsageError):
        run_verify(VerifyOptions(profile="nope"))
    with pytest.raises(UsageError):
        run_verify(VerifyOptions(dtype="int8"))
    ia3 = tmp_path / "ia3.json"
    ia3.write_text('{"peft_type": "IA3", "target_modules": ["k_proj"]}')
    with pytest.raises(UsageError, match="IA3, not LoRA"):
        run_verify(VerifyOptions(config=ia3))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match=r"loracheck\[hf\]"):
        run_verify(VerifyOptions(model=str(tmp_path / "m")))


def test_bfloat16_and_data_file(tmp_path: Path) -> None:
    data = tmp_path / "probe.txt"
    data.write_text("abcabcabd " * 40)
    result = run_verify(VerifyOptions(dtype="bfloat16", data=data, probe_steps=4, lr=1e-2))
    assert {"LC301", "LC303", "LC304", "LC305", "LC306", "LC307"}.isdisjoint(failed(result)), (
        render_verify_text(result)
    )


def test_device_map_auto_through_accelerate(llama_dir: Path) -> None:
    pytest.importorskip("accelerate")
    result = run_verify(
        VerifyOptions(model=str(llama_dir), device_map="auto", probe_steps=2, min_loss_drop=-1.0)
    )
    assert result.passed, render_verify_text(result)


@pytest.mark.skipif(not os.environ.get("LORACHECK_SLOW"), reason="torch.compile on CPU: ~40 s")
def test_compile() -> None:
    result = run_verify(VerifyOptions(compile=True, probe_steps=4, min_loss_drop=-1.0))
    assert result.passed, render_verify_text(result)


def test_config_file_sets_the_lora(tmp_path: Path) -> None:
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj", "o_proj"],
            }
        )
    )
    result = run_verify(VerifyOptions(config=cfg, probe_steps=2, min_loss_drop=-1.0))
    assert result.passed, render_verify_text(result)
    assert result.meta["rank"] == 8 and result.meta["modules"] == 6
    assert result.meta["init"] == "kaiming"
    yml = tmp_path / "axolotl.yml"
    yml.write_text("adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_modules:\n  - up_proj\n")
    result = run_verify(VerifyOptions(config=yml, probe_steps=2, min_loss_drop=-1.0))
    assert result.passed, render_verify_text(result)
    assert result.meta["rank"] == 4 and result.meta["modules"] == 2
