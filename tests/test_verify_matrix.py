"""verify on the architectures people fine-tune (tiny models built from configs, random
weights): defaults pass, an all-linear config passes, real PEFT adapters (fresh and trained)
pass, and the reference's outputs equal PEFT's on the same adapter (≤ 1e-6 relative, fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from archmodels import ARCH_TASK, ARCHITECTURES, dummy_inputs, load_arch, probe_loss, save_arch  # noqa: E402
from builders import judge_probe, probe_text  # noqa: E402
from loracheck.model import LoraSpec  # noqa: E402
from loracheck.verify import VerifyOptions, run_verify  # noqa: E402

# MoE: PEFT's all-linear also adapts the fused experts and the router (target_parameters),
# which the reference does not implement: verify refuses with LC309 instead of a wrong answer.
ALL_LINEAR_REFUSED = {"mixtral"}
PEFT_TASK = {"seq-cls": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM", "causal-lm": "CAUSAL_LM"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch")
    return {name: save_arch(name, root / name) for name in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_defaults_pass(arch: str, folders: dict[str, Path]) -> None:
    record = run_verify(VerifyOptions(model=str(folders[arch])))
    assert not judge_probe(record), probe_text(record)
    assert record.n_modules >= 2 and record.losses is not None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_linear_config(arch: str, folders: dict[str, Path]) -> None:
    spec = LoraSpec(source_format="peft", rank=8, alpha=16, dropout=0.05,
                    target_modules="all-linear")
    record = run_verify(VerifyOptions(model=str(folders[arch]), spec=spec))
    found = {d.code for d in judge_probe(record)}
    if arch in ALL_LINEAR_REFUSED:
        assert found == {"LC309"} and record.losses is None
    else:
        assert not found, probe_text(record)


def _default_targets(arch: str, folder: Path) -> list[str]:
    from loracheck.default_targets import default_targets

    model = load_arch(arch, folder)
    names = [n for n, _ in model.named_modules()]
    targets = default_targets(model.config.model_type, names)
    assert isinstance(targets, list)
    return targets


def _peft_adapter(arch: str, folder: Path, out: Path, *, steps: int) -> tuple[Path, Any]:
    """A real PEFT adapter on the arch (dropout 0.05, B = 0 at init), trained ``steps`` Adam
    steps on a fixed batch; returns the folder and the PEFT model in eval mode."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = load_arch(arch, folder)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05,
                        target_modules=_default_targets(arch, folder),
                        task_type=PEFT_TASK.get(ARCH_TASK[arch]))
    peft_model = get_peft_model(model, config)
    inputs = dummy_inputs(arch, batch=2, seq=16, seed=3)
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(steps):
        probe_loss(arch, peft_model, inputs).backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    peft_model.save_pretrained(str(out))
    return out, peft_model


def _reference_outputs(arch: str, folder: Path, adapter: Path, inputs: dict[str, Any]) -> Any:
    from loracheck.reference.inject import inject, plan_targets
    from loracheck.reference.peft_format import (
        fit_adapter,
        load_adapter,
        load_saved_modules,
        read_adapter,
    )

    model = load_arch(arch, folder)
    factors = read_adapter(adapter)
    assert factors.spec is not None
    targets, mapping, problems = fit_adapter(model, factors)
    assert not problems
    saved = plan_targets(model, factors.spec).saved_modules
    inject(model, factors.spec, targets, saved_modules=saved)
    load_adapter(model, factors.factors, mapping=mapping)
    load_saved_modules(model, adapter, saved)
    model.eval()
    with torch.no_grad():
        return _first(model(**inputs))


def _first(out: Any) -> Any:
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


@pytest.mark.parametrize("steps", [0, 3], ids=["fresh", "trained"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_peft_adapter_passes_and_matches_peft(arch: str, steps: int, folders: dict[str, Path],
                                              tmp_path: Path) -> None:
    adapter, peft_model = _peft_adapter(arch, folders[arch], tmp_path / "adapter", steps=steps)
    record = run_verify(VerifyOptions(model=str(folders[arch]), adapter=adapter))
    assert not judge_probe(record), probe_text(record)
    assert record.n_modules >= 2
    inputs = dummy_inputs(arch, batch=2, seq=16, seed=5)
    with torch.no_grad():
        theirs = _first(peft_model(**inputs))
    ours = _reference_outputs(arch, folders[arch], adapter, inputs)
    scale = max(1.0, float(theirs.abs().max()))
    assert float((ours - theirs).abs().max()) <= 1e-6 * scale
    if steps:  # the trained adapter changes the outputs: the comparison is not vacuous
        base = load_arch(arch, folders[arch]).eval()
        with torch.no_grad():
            plain = _first(base(**inputs))
        assert float((plain - theirs).abs().max()) > 1e-4 * scale


def _refusals(record: Any) -> list[str]:
    return [d.message for d in judge_probe(record) if d.code == "LC309"]


def test_dora_adapter_is_refused_not_verified_as_lora(folders: dict[str, Path],
                                                      tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = load_arch("llama", folders["llama"])
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                     use_dora=True)).save_pretrained(str(tmp_path / "dora"))
    record = run_verify(VerifyOptions(model=str(folders["llama"]), adapter=tmp_path / "dora"))
    assert record.stopped and record.losses is None
    assert any(m.startswith("DoRA") for m in _refusals(record))


@pytest.mark.parametrize(("extra", "feature"), [
    ({"bias": "all"}, 'bias="all"'),
    ({"bias": "lora_only"}, 'bias="lora_only"'),
    ({"extras": {"lora_bias": True}}, "a trainable bias on lora_B"),
    ({"extras": {"target_parameters": ["mlp.experts.gate_up_proj"]}}, "LoRA on parameters"),
])
def test_unsupported_settings_are_refused(extra: dict[str, Any], feature: str,
                                          folders: dict[str, Path]) -> None:
    spec = LoraSpec(source_format="peft", rank=4, alpha=8, target_modules=["q_proj"], **extra)
    record = run_verify(VerifyOptions(model=str(folders["mixtral"]), spec=spec))
    assert [m for m in _refusals(record) if m.startswith(feature)], probe_text(record)


def test_a_conv2d_target_is_refused(folders: dict[str, Path]) -> None:
    spec = LoraSpec(source_format="peft", rank=4, alpha=8,
                    target_modules=["query", "patch_embeddings.projection"])
    record = run_verify(VerifyOptions(model=str(folders["vit"]), spec=spec))
    assert any("Conv2d" in m for m in _refusals(record)), probe_text(record)
