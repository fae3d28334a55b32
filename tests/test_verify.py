"""`run_verify` measures, the LC3xx rules judge: the built-in model passes; each planted fault
is caught by its own code, with the root cause named first."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from builders import judge_probe, peft_adapter, probe_text, save_tiny_llama  # noqa: E402
from loracheck.errors import UsageError  # noqa: E402
from loracheck.model import Diagnostic, Severity  # noqa: E402
from loracheck.probe_record import IdentityMode, ProbeRecord  # noqa: E402
from loracheck.reference.inject import lora_modules  # noqa: E402
from loracheck.reference.layers import LoRALinear  # noqa: E402
from loracheck.verify import VerifyOptions, run_verify  # noqa: E402


def codes(record: ProbeRecord) -> set[str]:
    return {d.code for d in judge_probe(record)}


def messages(record: ProbeRecord, code: str) -> list[str]:
    return [d.message for d in judge_probe(record) if d.code == code]


@pytest.mark.parametrize("init", [None, "kaiming"])
def test_builtin_passes_every_check(init: str | None) -> None:
    steps: list[tuple[int, int]] = []
    record = run_verify(VerifyOptions(init=init), progress=lambda i, n: steps.append((i, n)))
    assert not judge_probe(record), probe_text(record)
    assert steps == [(i, 20) for i in range(1, 21)]
    assert record.identity is not None and record.identity.mode is IdentityMode.EXACT
    assert record.identity.eval_max_abs == 0.0 and record.identity.train_max_abs == 0.0
    assert record.init == (init or "normal")
    assert record.losses is not None and record.losses.drop is not None
    assert record.losses.drop > 10 * record.losses.min_drop
    from loracheck.reference.tinymodel import build_tiny

    qv = [m for n, m in build_tiny(0).named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert len(qv) == record.n_modules == 4
    assert record.trainable == record.expected_trainable == 16 * sum(
        m.in_features + m.out_features for m in qv)
    assert "verify passed" in probe_text(record)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_builtin_passes_in_half_precision(dtype: str) -> None:
    # fp32 master factors: Adam's eps does not round to 0 in fp16, the loss falls.
    record = run_verify(VerifyOptions(dtype=dtype))
    assert not judge_probe(record), probe_text(record)
    assert record.identity is not None and record.identity.mode is IdentityMode.WITHIN_TOLERANCE


def test_pissa_is_an_identity_on_its_residual_base(tmp_path: Path) -> None:
    record = run_verify(VerifyOptions(init="pissa", probe_steps=3, save_adapter=tmp_path / "s"))
    assert not codes(record), probe_text(record)
    assert (tmp_path / "s" / "adapter_config.json").is_file()


# --- planted faults: each caught with its code, the root cause first -------------------------


def _freeze(factor: str) -> Any:
    def tamper(model: Any) -> None:
        for _, module in lora_modules(model):
            getattr(module, f"lora_{factor}").weight.requires_grad_(False)
    return tamper


def _set_scaling(value: float) -> Any:
    def tamper(model: Any) -> None:
        for _, module in lora_modules(model):
            module.scaling = value
    return tamper


def _dropout_one(model: Any) -> None:
    from loracheck.reference.layers import LoRADropout

    for _, module in lora_modules(model):
        module.lora_dropout = LoRADropout(1.0, None)
        module.lora_dropout.train(model.training)


def _detach(model: Any) -> None:
    # The update is computed, then cut from the graph: y = base(x) + (s·B·A·x).detach()
    for _, module in lora_modules(model):
        full = module.forward

        def detached(x: Any, m: Any = module, full: Any = full) -> Any:
            base = m.base_layer(x)
            return base + (full(x) - base).detach()

        module.forward = detached


def _nan_factor(model: Any) -> None:
    _, module = lora_modules(model)[0]
    with torch.no_grad():
        module.lora_A.weight[0, 0] = float("nan")


def test_random_b_is_lc301() -> None:
    record = run_verify(VerifyOptions(init="random", probe_steps=2))
    assert "LC301" in codes(record)
    assert "init random" in messages(record, "LC301")[0]


def test_frozen_b_is_lc304_and_lc302_with_the_cause_first() -> None:
    record = run_verify(VerifyOptions(probe_steps=3, tamper=_freeze("B")))
    assert {"LC302", "LC304"} <= codes(record)
    # A's gradient is exactly 0 while B = 0, so nothing learns: the loss stays put exactly.
    assert record.losses is not None and record.losses.drop == 0.0
    for code in ("LC302", "LC304"):
        assert messages(record, code)[0].startswith("4 LoRA factors are frozen (first "
                                                    "model.layers.0.self_attn.q_proj.lora_B;")


def test_one_frozen_b_is_named() -> None:
    def freeze_first_b(model: Any) -> None:
        _, module = lora_modules(model)[0]
        assert isinstance(module, LoRALinear)
        module.lora_B.weight.requires_grad_(False)

    record = run_verify(VerifyOptions(probe_steps=3, tamper=freeze_first_b))
    located = [d.location for d in judge_probe(record) if d.code == "LC304"]
    assert located == ["model.layers.0.self_attn.q_proj.lora_B"]


def test_frozen_a_is_lc304() -> None:
    record = run_verify(VerifyOptions(probe_steps=3, tamper=_freeze("A")))
    assert "LC304" in codes(record)
    assert all("lora_A" in m for m in messages(record, "LC304"))


@pytest.mark.parametrize(("tamper", "cause"), [
    (_set_scaling(0.0), "the scale s is 0"),
    (_dropout_one, "no LoRA factor receives a gradient"),
    (_detach, "no LoRA factor receives a gradient"),
])
def test_nothing_learns_names_the_cause_first(tamper: Any, cause: str) -> None:
    record = run_verify(VerifyOptions(probe_steps=3, tamper=tamper))
    assert {"LC302", "LC304"} <= codes(record), probe_text(record)
    for code in ("LC302", "LC304"):
        assert messages(record, code)[0].startswith(cause), messages(record, code)


def test_alpha_zero_in_the_config_names_alpha(tmp_path: Path) -> None:
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 0,
                               "target_modules": ["q_proj", "v_proj"]}))
    record = run_verify(VerifyOptions(config=cfg, probe_steps=3))
    assert {"LC302", "LC304"} <= codes(record)
    assert messages(record, "LC302")[0].startswith("the scale s is 0 in every module (alpha 0)")


def test_lora_dropout_one_in_the_spec_names_dropout(tmp_path: Path) -> None:
    from loracheck.model import LoraSpec

    spec = LoraSpec(source_format="peft", rank=8, alpha=8, dropout=1.0,
                    target_modules=["q_proj", "v_proj"])
    record = run_verify(VerifyOptions(spec=spec, probe_steps=3))
    assert messages(record, "LC302")[0].startswith("lora_dropout 1 zeroes the input")


def test_diverging_scale_is_lc302_or_lc307() -> None:
    from loracheck.model import LoraSpec

    # On the output head (a scale on q/v is absorbed by the final RMSNorm): s = 62,500.
    spec = LoraSpec(source_format="peft", rank=16, alpha=1e6, target_modules=["lm_head"])
    record = run_verify(VerifyOptions(spec=spec))
    found = codes(record)
    assert found & {"LC302", "LC307"}, probe_text(record)
    if "LC302" in found:
        assert messages(record, "LC302")[0].startswith("the updates diverge")


def test_nan_in_a_factor_is_lc307() -> None:
    record = run_verify(VerifyOptions(probe_steps=2, tamper=_nan_factor))
    assert "LC307" in codes(record)


def test_lr_zero_is_lc302() -> None:
    record = run_verify(VerifyOptions(lr=0.0, probe_steps=5))
    assert codes(record) == {"LC302"}, probe_text(record)
    assert messages(record, "LC302")[0].startswith("the learning rate is 0")


def test_unfrozen_base_is_lc303() -> None:
    def unfreeze(model: Any) -> None:
        model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)

    record = run_verify(VerifyOptions(probe_steps=2, tamper=unfreeze))
    assert "model.layers.0.mlp.down_proj.weight" in record.leaked
    locations = {d.location for d in judge_probe(record) if d.code == "LC303"}
    assert "model.layers.0.mlp.down_proj.weight" in locations


def test_corrupted_merge_is_lc305(monkeypatch: pytest.MonkeyPatch) -> None:
    honest = LoRALinear.delta_weight

    def doubled(self: LoRALinear) -> Any:
        return 2 * honest(self)

    monkeypatch.setattr(LoRALinear, "delta_weight", doubled)
    record = run_verify(VerifyOptions(probe_steps=3))
    assert codes(record) == {"LC305"}, probe_text(record)


def test_adapter_for_another_width_is_lc308(tmp_path: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=1)  # a tiny Llama of width 64
    record = run_verify(VerifyOptions(adapter=adapter, probe_steps=2))
    assert record.stopped and "LC308" in codes(record)
    assert record.losses is None and record.identity is None


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_fresh_peft_adapter_passes_with_an_exact_identity(tmp_path: Path,
                                                          llama_dir: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=0)
    record = run_verify(VerifyOptions(model=str(llama_dir), adapter=adapter))
    assert not judge_probe(record), probe_text(record)
    assert record.identity is not None and record.identity.mode is IdentityMode.EXACT


def test_trained_peft_adapter_on_its_model(tmp_path: Path, llama_dir: Path) -> None:
    adapter = peft_adapter(tmp_path / "a", r=4, steps=2)
    seen: list[Path] = []

    def post_check(path: Path) -> list[Diagnostic]:
        seen.append(path)
        assert (path / "adapter_model.safetensors").is_file()
        return []

    record = run_verify(VerifyOptions(model=str(llama_dir), adapter=adapter,
                                      post_save_check=post_check))
    assert not judge_probe(record), probe_text(record)
    assert record.identity is not None and record.identity.mode is IdentityMode.NOT_EXPECTED
    assert len(seen) == 1


def test_post_save_errors_fail_lc306() -> None:
    def bad(path: Path) -> list[Diagnostic]:
        return [Diagnostic("LC101", "x", Severity.ERROR, str(path), "broken")]

    record = run_verify(VerifyOptions(probe_steps=2, post_save_check=bad))
    assert "LC306" in codes(record)


def test_model_without_lm_head_gets_a_generic_objective(tmp_path: Path) -> None:
    from builders import tiny_llama

    base = tiny_llama(0).model  # LlamaModel: no LM head
    base.config.architectures = ["LlamaModel"]
    base.save_pretrained(str(tmp_path / "m"))
    record = run_verify(VerifyOptions(model=str(tmp_path / "m")))
    assert record.task.value == "features"
    assert not judge_probe(record), probe_text(record)


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


def test_absurd_rank_is_refused_before_allocating() -> None:
    from loracheck.model import LoraSpec

    spec = LoraSpec(source_format="peft", rank=10**9, alpha=16, target_modules=["q_proj"])
    with pytest.raises(UsageError, match="refused before allocating"):
        run_verify(VerifyOptions(spec=spec))


def test_data_file_is_read_with_a_cap(tmp_path: Path) -> None:
    import loracheck.verify as verify

    data = tmp_path / "probe.txt"
    data.write_text("abcabcabd " * 40 + "Z" * (verify.DATA_CAP_BYTES * 2))
    record = run_verify(VerifyOptions(data=data, probe_steps=4))
    assert not judge_probe(record), probe_text(record)
    assert verify._probe_text(VerifyOptions(data=data)).count("Z") < verify.DATA_CAP_BYTES


def test_device_map_auto_through_accelerate(llama_dir: Path) -> None:
    pytest.importorskip("accelerate")
    record = run_verify(VerifyOptions(model=str(llama_dir), device_map="auto"))
    assert not judge_probe(record), probe_text(record)


@pytest.mark.skipif(not os.environ.get("LORACHECK_SLOW"), reason="torch.compile on CPU: ~40 s")
def test_compile() -> None:
    record = run_verify(VerifyOptions(compile=True, probe_steps=4))
    assert not judge_probe(record), probe_text(record)


def test_config_file_sets_the_lora(tmp_path: Path) -> None:
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                               "lora_dropout": 0.0,
                               "target_modules": ["q_proj", "v_proj", "o_proj"]}))
    record = run_verify(VerifyOptions(config=cfg, probe_steps=4))
    assert not judge_probe(record), probe_text(record)
    assert record.rank == 8 and record.n_modules == 6 and record.init == "kaiming"
    yml = tmp_path / "axolotl.yml"
    yml.write_text("adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_target_modules:\n  - up_proj\n")
    record = run_verify(VerifyOptions(config=yml, probe_steps=4))
    assert not judge_probe(record), probe_text(record)
    assert record.rank == 4 and record.n_modules == 2


def test_selection_and_severity_apply_to_verify_findings() -> None:
    record = run_verify(VerifyOptions(lr=0.0, probe_steps=3))
    assert {d.code for d in judge_probe(record)} == {"LC302"}
    assert not judge_probe(record, ignore=["LC302"])
    assert not judge_probe(record, select=["LC301"])
    demoted = judge_probe(record, severity={"LC302": "warning"})
    assert [d.severity for d in demoted] == [Severity.WARNING]
