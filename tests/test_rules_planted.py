"""One planted fault per code, in copies of adapters written by real PEFT (issue 3: "for every
code, a bad fixture that fires exactly that code"), and the unplanted copies that fire nothing.

A few base adapters are built once per module (a tiny Llama, trained a few Adam steps or fresh
at init); each test copies one, plants exactly one fault by rewriting the safetensors file or
``adapter_config.json``, and runs discover → load_unit → check_adapter with default Settings.
The assertion is on the whole set of codes, infos included: a planted fault must fire its own
code and nothing else. Input faults (LC001-LC003) go through the CLI's ``main``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import save_tiny_llama
from loracheck.basemodel import BaseModelInfo, read_base_model
from loracheck.cli import main
from loracheck.model import Severity
from planting import (
    CONFIG,
    WEIGHTS,
    Tensors,
    build_peft,
    codes,
    copy_adapter,
    diagnose,
    edit_config,
    explain,
    factor_keys,
    load_weights,
    rewrite_weights,
    save_weights,
)

pytest.importorskip("peft")

SIX_LAYERS = {"num_hidden_layers": 6}  # 6 q_proj and 6 v_proj peers: enough for LC209
ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


# --- the base adapters, built once --------------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every base adapter by name (all real PEFT ``save_pretrained`` output)."""
    root = tmp_path_factory.mktemp("bases")
    return {
        # r=16, α=16 on q_proj/v_proj of a 6-layer tiny Llama: 12 modules.
        "trained": build_peft(root / "trained", steps=4, model=SIX_LAYERS),
        "fresh": build_peft(root / "fresh", model=SIX_LAYERS),
        "gaussian": build_peft(root / "gaussian", init_lora_weights="gaussian"),
        "orthogonal": build_peft(root / "orthogonal", init_lora_weights="orthogonal"),
        "embedding": build_peft(
            root / "embedding", target_modules=("embed_tokens", "q_proj", "v_proj")),
        "dora": build_peft(root / "dora", steps=4, use_dora=True),
        "pickle": build_peft(root / "pickle", steps=2, safe_serialization=False),
        # Both the profile's maximum 256 and min(in, out) = 64: LC104 twice, nothing else.
        "r512": build_peft(root / "r512", r=512, lora_alpha=512, target_modules=("q_proj",)),
        # 2 layers, the shapes of builders.save_tiny_llama: for the --model checks.
        "matching": build_peft(root / "matching", steps=2),
        "wide": build_peft(root / "wide", steps=2, model={"hidden_size": 128}),
        "vocab": build_peft(
            root / "vocab", steps=2, target_modules=("embed_tokens", "q_proj", "v_proj"),
            model={"vocab_size": 160}),
        # LoRA on lm_head of a 160-token model, saved without the embedding copy.
        "lm_head": build_peft(
            root / "lm_head", steps=2, target_modules=("lm_head", "q_proj"),
            model={"vocab_size": 160}, save_embedding_layers=False),
    }


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModelInfo:
    return read_base_model(save_tiny_llama(tmp_path_factory.mktemp("base-model")))


# --- healthy stays clean ------------------------------------------------------------------------

# (base, stage) pairs: every base that faults are planted into, at the stage it is checked at.
HEALTHY = [
    ("trained", "auto"),
    ("trained", "trained"),
    ("fresh", "init"),
    ("gaussian", "init"),
    ("orthogonal", "init"),
    ("embedding", "init"),
    ("dora", "auto"),
    ("matching", "auto"),
    # The --model faults are faults only against the 64-wide, 128-token base.
    ("wide", "auto"),
    ("vocab", "auto"),
    ("lm_head", "auto"),
]


@pytest.mark.parametrize(("name", "stage"), HEALTHY, ids=[f"{n}-{s}" for n, s in HEALTHY])
def test_unplanted_copy_is_clean(
    tmp_path: Path, bases: dict[str, Path], name: str, stage: str
) -> None:
    """No finding at all, infos included: PEFT writes lora_alpha and no rsLoRA here."""
    folder = copy_adapter(bases[name], tmp_path / name)
    diags = diagnose(folder, stage)
    assert diags == [], explain(diags)


def test_unplanted_copies_are_clean_against_their_base(
    tmp_path: Path, bases: dict[str, Path], base_model: BaseModelInfo
) -> None:
    for name, stage in (("matching", "auto"), ("embedding", "init")):
        diags = diagnose(copy_adapter(bases[name], tmp_path / name), stage, base_model)
        assert diags == [], explain(diags)


def test_rewriting_without_a_fault_changes_nothing(tmp_path: Path, bases: dict[str, Path]) -> None:
    """The planting round trip itself (load_file → save_file) plants nothing."""
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    rewrite_weights(folder, lambda t: None)
    assert diagnose(folder) == []


def test_fp16_copy_is_clean(tmp_path: Path, bases: dict[str, Path]) -> None:
    """The control for the fp16 plants: every factor cast to fp16 is still healthy."""
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    rewrite_weights(folder, _all_fp16)
    diags = diagnose(folder)
    assert diags == [], explain(diags)


# --- weight plants ------------------------------------------------------------------------------

Plant = Callable[[Tensors], None]
RNG_SEED = 1234


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _delete_one_b(t: Tensors) -> None:
    del t[factor_keys(t, "lora_B")[0]]


def _delete_one_a(t: Tensors) -> None:
    del t[factor_keys(t, "lora_A", "layers.4.")[0]]


def _inner_dims_differ(t: Tensors) -> None:
    key = factor_keys(t, "lora_B")[0]
    t[key] = np.ascontiguousarray(t[key][:, :8])  # A (16, in), B (out, 8)


def _poison(factor: str, value: float) -> Plant:
    def plant(t: Tensors) -> None:
        key = factor_keys(t, factor)[2]
        t[key] = t[key].copy()
        t[key][3, 5] = value

    return plant


def _poison_a(value: float) -> Plant:
    return _poison("lora_A", value)


def _random_b_at_init(t: Tensors) -> None:
    key = factor_keys(t, "lora_B", "layers.2.")[0]
    t[key] = _rng().normal(0.0, 0.01, t[key].shape).astype(np.float32)


def _random_embedding_a_at_init(t: Tensors) -> None:
    (key,) = factor_keys(t, "lora_embedding_A")
    t[key] = _rng().normal(0.0, 0.02, t[key].shape).astype(np.float32)


def _a_times_3(t: Tensors) -> None:
    key = factor_keys(t, "lora_A", "layers.1.")[0]
    t[key] = t[key] * 3.0


def _a_normal_not_uniform(t: Tensors) -> None:
    """A redrawn from a normal with the kaiming-uniform std: right scale, wrong family."""
    key = factor_keys(t, "lora_A", "layers.1.")[0]
    t[key] = _rng().normal(0.0, float(t[key].std()), t[key].shape).astype(np.float32)


def _random_b_orthogonal(t: Tensors) -> None:
    """Under the orthogonal init B ≠ 0 but B·A = 0; a random B breaks that."""
    key = factor_keys(t, "lora_B", "layers.1.")[0]
    t[key] = _rng().normal(0.0, 0.05, t[key].shape).astype(np.float32)


def _zero(t: Tensors, key: str) -> None:
    t[key] = np.zeros_like(t[key])


def _dead_module(t: Tensors) -> None:
    _zero(t, factor_keys(t, "lora_A", "layers.4.self_attn.q_proj")[0])
    _zero(t, factor_keys(t, "lora_B", "layers.4.self_attn.q_proj")[0])


def _zero_all_b(t: Tensors) -> None:
    for key in factor_keys(t, "lora_B"):
        _zero(t, key)


def _zero_some_b(t: Tensors) -> None:
    for key in factor_keys(t, "lora_B", "layers.5."):
        _zero(t, key)


def _b_times_1000(t: Tensors) -> None:
    key = factor_keys(t, "lora_B", "layers.3.self_attn.q_proj")[0]
    t[key] = t[key] * 1000.0


def _rank_one_b(t: Tensors) -> None:
    """B = u vᵀ with B's own Frobenius norm: ΔW = B·A becomes rank 1 at r = 16."""
    key = factor_keys(t, "lora_B", "layers.2.self_attn.q_proj")[0]
    b = t[key].astype(np.float64)
    u, _, vt = np.linalg.svd(b, full_matrices=False)
    t[key] = (np.linalg.norm(b) * np.outer(u[:, 0], vt[0])).astype(np.float32)


def _all_fp16(t: Tensors) -> None:
    for key in list(t):
        t[key] = t[key].astype(np.float16)


def _fp16_near_overflow(t: Tensors) -> None:
    """All factors fp16; one A entry at 40000 (within 2× of 65504). Its B column is zeroed so
    that ΔW does not blow up (which would be a norm outlier, LC209, on top)."""
    _all_fp16(t)
    a_key = factor_keys(t, "lora_A", "layers.0.self_attn.q_proj")[0]
    b_key = factor_keys(t, "lora_B", "layers.0.self_attn.q_proj")[0]
    a, b = t[a_key].copy(), t[b_key].copy()
    a[0, 0] = 40000.0
    b[:, 0] = 0.0
    t[a_key], t[b_key] = a, b


def _subnormal_fp16_b(t: Tensors) -> None:
    """All factors fp16; one B scaled by 1e-4, so every non-zero value is subnormal."""
    _all_fp16(t)
    key = factor_keys(t, "lora_B", "layers.2.self_attn.q_proj")[0]
    t[key] = (t[key].astype(np.float32) * 1e-4).astype(np.float16)


def _mixed_dtypes(t: Tensors) -> None:
    key = factor_keys(t, "lora_A", "layers.1.self_attn.v_proj")[0]
    t[key] = t[key].astype(np.float16)  # A fp16, B fp32


def _zero3_placeholder(t: Tensors) -> None:
    key = factor_keys(t, "lora_A", "layers.3.")[0]
    t[key] = np.zeros((0,), dtype=np.float32)  # ZeRO-3 without a gather: shape [0]


def _zero_width_a(t: Tensors) -> None:
    key = factor_keys(t, "lora_A", "layers.3.")[0]
    t[key] = np.zeros((16, 0), dtype=np.float32)


def _zero3_everything(t: Tensors) -> None:
    for key in list(t):
        t[key] = np.zeros((0,), dtype=np.float32)


def _no_tensors(t: Tensors) -> None:
    t.clear()


def _negative_magnitude(t: Tensors) -> None:
    key = factor_keys(t, "lora_magnitude_vector")[1]
    t[key] = t[key].copy()
    t[key][7] = -t[key][7]


def _magnitude_entry(value: float) -> Plant:
    def plant(t: Tensors) -> None:
        key = factor_keys(t, "lora_magnitude_vector")[2]
        t[key] = t[key].copy()
        t[key][0] = value

    return plant


def _missing_magnitude(t: Tensors) -> None:
    del t[factor_keys(t, "lora_magnitude_vector")[0]]


@dataclass(frozen=True)
class WeightCase:
    code: str
    base: str
    stage: str
    plant: Plant
    severity: Severity


WEIGHT_CASES: dict[str, WeightCase] = {
    "LC201-no-B": WeightCase("LC201", "trained", "auto", _delete_one_b, ERROR),
    "LC201-no-A": WeightCase("LC201", "trained", "auto", _delete_one_a, ERROR),
    "LC202-inner-dims": WeightCase("LC202", "trained", "auto", _inner_dims_differ, ERROR),
    "LC203-nan-in-A": WeightCase("LC203", "trained", "auto", _poison_a(np.nan), ERROR),
    "LC203-inf-in-A": WeightCase("LC203", "trained", "auto", _poison_a(np.inf), ERROR),
    "LC203-neg-inf-in-A": WeightCase("LC203", "trained", "auto", _poison_a(-np.inf), ERROR),
    "LC203-nan-in-B": WeightCase(
        "LC203", "trained", "auto", _poison("lora_B", np.nan), ERROR),
    "LC204-B-at-init": WeightCase("LC204", "fresh", "init", _random_b_at_init, ERROR),
    "LC204-embedding-A-at-init": WeightCase(
        "LC204", "embedding", "init", _random_embedding_a_at_init, ERROR),
    "LC204-orthogonal-BA-at-init": WeightCase(
        "LC204", "orthogonal", "init", _random_b_orthogonal, ERROR),
    "LC205-A-times-3": WeightCase("LC205", "fresh", "init", _a_times_3, WARNING),
    "LC205-gaussian-A-times-3": WeightCase("LC205", "gaussian", "init", _a_times_3, WARNING),
    "LC205-wrong-family": WeightCase(
        "LC205", "fresh", "init", _a_normal_not_uniform, WARNING),
    "LC206-dead-module": WeightCase("LC206", "trained", "auto", _dead_module, ERROR),
    "LC206-dead-module-at-init": WeightCase("LC206", "fresh", "init", _dead_module, ERROR),
    "LC207-no-op-trained": WeightCase("LC207", "trained", "trained", _zero_all_b, ERROR),
    "LC208-some-B-zero": WeightCase("LC208", "trained", "auto", _zero_some_b, WARNING),
    "LC209-B-times-1000": WeightCase("LC209", "trained", "auto", _b_times_1000, WARNING),
    "LC210-rank-one-B": WeightCase("LC210", "trained", "auto", _rank_one_b, WARNING),
    "LC211-fp16-near-overflow": WeightCase(
        "LC211", "trained", "auto", _fp16_near_overflow, WARNING),
    "LC211-subnormal-fp16": WeightCase(
        "LC211", "trained", "auto", _subnormal_fp16_b, WARNING),
    "LC211-mixed-dtypes": WeightCase("LC211", "trained", "auto", _mixed_dtypes, WARNING),
    "LC213-zero3-one-tensor": WeightCase("LC213", "trained", "auto", _zero3_placeholder, ERROR),
    "LC213-zero-width-A": WeightCase("LC213", "trained", "auto", _zero_width_a, ERROR),
    "LC213-zero3-every-tensor": WeightCase(
        "LC213", "trained", "auto", _zero3_everything, ERROR),
    "LC213-no-tensors": WeightCase("LC213", "trained", "auto", _no_tensors, ERROR),
    "LC214-negative-magnitude": WeightCase(
        "LC214", "dora", "auto", _negative_magnitude, ERROR),
    "LC214-zero-magnitude": WeightCase("LC214", "dora", "auto", _magnitude_entry(0.0), ERROR),
    "LC214-nan-magnitude": WeightCase(
        "LC214", "dora", "auto", _magnitude_entry(np.nan), ERROR),
    "LC214-missing-magnitude": WeightCase("LC214", "dora", "auto", _missing_magnitude, ERROR),
}


@pytest.mark.parametrize("case_id", list(WEIGHT_CASES))
def test_planted_weight_fault_fires_exactly_its_code(
    tmp_path: Path, bases: dict[str, Path], case_id: str
) -> None:
    case = WEIGHT_CASES[case_id]
    folder = copy_adapter(bases[case.base], tmp_path / case.base)
    rewrite_weights(folder, case.plant)
    diags = diagnose(folder, case.stage)
    assert codes(diags) == {case.code}, explain(diags)
    assert {d.severity for d in diags} == {case.severity}, explain(diags)


def test_planted_nan_names_the_tensor(tmp_path: Path, bases: dict[str, Path]) -> None:
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    tensors = rewrite_weights(folder, _poison_a(np.nan))
    (diag,) = diagnose(folder)
    assert diag.location == factor_keys(tensors, "lora_A")[2]
    assert diag.path.endswith(WEIGHTS)


def test_dead_module_is_not_also_counted_as_never_trained(
    tmp_path: Path, bases: dict[str, Path]
) -> None:
    """Decided: a module with A = B = 0 is LC206's alone. LC208 counts only live modules
    (ΔW = 0 with a non-zero factor), so the dead one does not fire LC208 as well, and the
    eleven modules that moved keep LC207 quiet too."""
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    rewrite_weights(folder, _dead_module)
    (diag,) = diagnose(folder)
    assert diag.code == "LC206" and "1 of 12 modules" in diag.message


def test_some_b_zero_names_the_modules(tmp_path: Path, bases: dict[str, Path]) -> None:
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    rewrite_weights(folder, _zero_some_b)
    (diag,) = diagnose(folder)
    assert "2 of 12 modules" in diag.message
    assert "layers.5.self_attn.q_proj" in diag.message
    assert "layers.5.self_attn.v_proj" in diag.message


def test_pickle_checkpoint(tmp_path: Path, bases: dict[str, Path]) -> None:
    """``save_pretrained(safe_serialization=False)``: adapter_model.bin, read safely."""
    folder = copy_adapter(bases["pickle"], tmp_path / "a")
    assert (folder / "adapter_model.bin").is_file() and not (folder / WEIGHTS).exists()
    diags = diagnose(folder)
    assert [(d.code, d.severity) for d in diags] == [("LC215", WARNING)], explain(diags)


def test_rank_above_maximum_and_not_low_rank(tmp_path: Path, bases: dict[str, Path]) -> None:
    """A real PEFT adapter at r = 512 (α = 512, so the scale stays 1) on 64-wide layers."""
    folder = copy_adapter(bases["r512"], tmp_path / "a")
    diags = diagnose(folder, "init")
    assert codes(diags) == {"LC104"}, explain(diags)
    assert {d.severity for d in diags} == {WARNING}
    messages = " ".join(d.message for d in diags)
    assert "above the default profile's maximum 256" in messages
    assert "not low-rank" in messages


# --- config plants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigCase:
    code: str
    changes: dict[str, Any]
    severity: Severity
    key: str  # the adapter_config.json key the finding's line must point at ("" = no line)
    remove: tuple[str, ...] = ()



CONFIG_CASES: dict[str, Any] = {
    "LC101-rank-as-word": ConfigCase("LC101", {"r": "sixteen"}, ERROR, "r"),
    "LC101-rank-zero": ConfigCase("LC101", {"r": 0}, ERROR, "r"),
    "LC101-rank-missing": ConfigCase("LC101", {}, ERROR, "", remove=("r",)),
    "LC101-rank-as-string": ConfigCase("LC101", {"r": "16"}, ERROR, "r"),
    "LC101-rank-as-float": ConfigCase("LC101", {"r": 16.0}, ERROR, "r"),
    "LC101-rank-pattern-zero": ConfigCase(
        "LC101", {"rank_pattern": {"q_proj": 0}}, ERROR, "rank_pattern"),
    "LC102-huge-alpha": ConfigCase("LC102", {"lora_alpha": 1e6}, WARNING, "lora_alpha"),
    "LC102-negative-alpha": ConfigCase("LC102", {"lora_alpha": -16}, ERROR, "lora_alpha"),
    "LC102-nan-alpha": ConfigCase("LC102", {"lora_alpha": float("nan")}, ERROR, "lora_alpha"),
    "LC102-tiny-alpha": ConfigCase("LC102", {"lora_alpha": 0.5}, WARNING, "lora_alpha"),
    "LC103-dropout-0.6": ConfigCase("LC103", {"lora_dropout": 0.6}, WARNING, "lora_dropout"),
    "LC103-dropout-1.5": ConfigCase("LC103", {"lora_dropout": 1.5}, ERROR, "lora_dropout"),
    "LC103-dropout-1.0": ConfigCase("LC103", {"lora_dropout": 1.0}, ERROR, "lora_dropout"),
    "LC103-dropout-negative": ConfigCase(
        "LC103", {"lora_dropout": -0.1}, ERROR, "lora_dropout"),
    # A saved adapter may have been created with random factors and then trained: a warning.
    "LC105-init-false": ConfigCase(
        "LC105", {"init_lora_weights": False}, WARNING, "init_lora_weights"),
    "LC105-init-typo": ConfigCase(
        "LC105", {"init_lora_weights": "pisa"}, WARNING, "init_lora_weights"),
    "LC106-target-typo": ConfigCase(
        "LC106", {"target_modules": ["q_proj", "v_proj", "x_proj"]}, ERROR, "target_modules"),
    # Once LC212 also restated these (fixed): targets matching none of the file's modules are
    # LC106's finding alone.
    "LC106-no-targets": ConfigCase("LC106", {"target_modules": []}, ERROR, "target_modules"),
    "LC106-regex-matches-nothing": ConfigCase(
        "LC106", {"target_modules": r".*\.x_proj"}, ERROR, "target_modules"),
    "LC107-rank-pattern-key": ConfigCase(
        "LC107", {"rank_pattern": {"x_proj": 8}}, WARNING, "rank_pattern"),
    "LC107-alpha-pattern-key": ConfigCase(
        "LC107", {"alpha_pattern": {"x_proj": 8}}, WARNING, "alpha_pattern"),
    "LC108-rslora": ConfigCase("LC108", {"use_rslora": True}, INFO, "use_rslora"),
    "LC108-no-alpha": ConfigCase("LC108", {}, INFO, "", remove=("lora_alpha",)),
    "LC109-pissa-with-dropout": ConfigCase(
        "LC109", {"init_lora_weights": "pissa", "lora_dropout": 0.1}, WARNING, "lora_dropout"),
    "LC109-loftq-without-config": ConfigCase(
        "LC109", {"init_lora_weights": "loftq"}, WARNING, "init_lora_weights"),
    "LC109-layers-pattern-alone": ConfigCase(
        "LC109", {"layers_pattern": "layers"}, WARNING, "layers_pattern"),
    "LC202-rank-pattern": ConfigCase("LC202", {"rank_pattern": {"q_proj": 8}}, ERROR, ""),
    "LC202-config-r": ConfigCase("LC202", {"r": 8}, ERROR, ""),
    "LC212-targets-miss-a-module": ConfigCase(
        "LC212", {"target_modules": ["q_proj"]}, ERROR, ""),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES.values()), ids=list(CONFIG_CASES))
def test_planted_config_fault_fires_exactly_its_code(
    tmp_path: Path, bases: dict[str, Path], case: ConfigCase
) -> None:
    folder = copy_adapter(bases["trained"], tmp_path / "a")
    edit_config(folder, remove=case.remove, **case.changes)
    diags = diagnose(folder)
    assert codes(diags) == {case.code}, explain(diags)
    assert {d.severity for d in diags} == {case.severity}, explain(diags)
    if case.key:  # config findings point at the offending key's line
        lines = (folder / CONFIG).read_text(encoding="utf-8").splitlines()
        for d in diags:
            assert d.path.endswith(CONFIG) and d.line is not None, explain(diags)
            assert lines[d.line - 1].lstrip().startswith(f'"{case.key}"'), lines[d.line - 1]


def test_config_only_unit_with_huge_rank(tmp_path: Path, bases: dict[str, Path]) -> None:
    """r = 512 written into a real PEFT config checked without its weights (a config unit, as
    pre-commit hands it over): LC104 alone, since no file rank contradicts it."""
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / CONFIG).write_text((bases["trained"] / CONFIG).read_text(encoding="utf-8"))
    edit_config(folder, r=512, lora_alpha=512)
    diags = diagnose(folder / CONFIG)
    assert codes(diags) == {"LC104"}, explain(diags)


# --- against a base model (--model) -------------------------------------------------------------


def test_adapter_for_another_width(
    tmp_path: Path, bases: dict[str, Path], base_model: BaseModelInfo
) -> None:
    """Trained on hidden_size 128, checked against the 64-wide tiny Llama."""
    diags = diagnose(copy_adapter(bases["wide"], tmp_path / "a"), "auto", base_model)
    assert codes(diags) == {"LC250"}, explain(diags)
    assert {d.severity for d in diags} == {ERROR}


def test_adapter_for_another_vocabulary(
    tmp_path: Path, bases: dict[str, Path], base_model: BaseModelInfo
) -> None:
    """LoRA on embed_tokens of a 160-token model (PEFT also saves the embedding itself),
    checked against the 128-token tiny Llama: the vocabulary is LC251's, not LC250's."""
    diags = diagnose(copy_adapter(bases["vocab"], tmp_path / "a"), "auto", base_model)
    assert codes(diags) == {"LC251"}, explain(diags)
    assert {d.severity for d in diags} == {ERROR}


def test_lora_on_lm_head_for_another_vocabulary(
    tmp_path: Path, bases: dict[str, Path], base_model: BaseModelInfo
) -> None:
    """LoRA on lm_head of a 160-token model, saved with ``save_embedding_layers=False`` (only
    lora_A/lora_B), against the 128-token base: lora_B is (160, r), the base head (128, 64)."""
    folder = copy_adapter(bases["lm_head"], tmp_path / "a")
    assert not [k for k in load_weights(folder) if "base_layer" in k]
    diags = diagnose(folder, "auto", base_model)
    assert codes(diags) == {"LC251"}, explain(diags)


def test_adapter_module_absent_from_the_base(
    tmp_path: Path, bases: dict[str, Path], base_model: BaseModelInfo
) -> None:
    """The 6-layer adapter on the 2-layer base: layers 2-5 do not exist there."""
    diags = diagnose(copy_adapter(bases["trained"], tmp_path / "a"), "auto", base_model)
    assert codes(diags) == {"LC250"}, explain(diags)
    assert "8 modules not in the base model" in " ".join(d.message for d in diags)


# --- input faults, through the CLI --------------------------------------------------------------


def _cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, set[tuple[str, str]]]:
    """``loracheck check PATH --format json``: the exit code and every (code, severity)."""
    rc = main(["check", str(path), "--format", "json"])
    out, err = capsys.readouterr()
    assert out, err
    doc = json.loads(out)
    return rc, {(d["code"], d["severity"]) for d in doc["diagnostics"]}


def _truncate(folder: Path) -> Path:
    raw = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(raw[: len(raw) // 2])
    return folder


def _garbage_header(folder: Path) -> Path:
    (folder / WEIGHTS).write_bytes(b"\xff" * 64)
    return folder


def _zero_bytes(folder: Path) -> Path:
    (folder / WEIGHTS).write_bytes(b"")
    return folder


def _lfs_pointer(folder: Path) -> Path:
    size = (folder / WEIGHTS).stat().st_size
    (folder / WEIGHTS).write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        f"size {size}\n"
    )
    return folder


def _truncate_config(keep: float) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        raw = (folder / CONFIG).read_text(encoding="utf-8")
        (folder / CONFIG).write_text(raw[: int(len(raw) * keep)], encoding="utf-8")
        return folder

    return damage


# Without a readable config the weights carry no alpha, so LC108's info on a missing alpha
# legitimately comes with a corrupt config (decided: expected, not a second fault).
NO_ALPHA = ("LC108", "info")

INPUT_CASES: dict[str, Any] = {
    "LC001-truncated": ({("LC001", "error")}, _truncate),
    "LC001-garbage-header": ({("LC001", "error")}, _garbage_header),
    "LC001-zero-bytes": ({("LC001", "error")}, _zero_bytes),
    "LC003-lfs-pointer": ({("LC003", "error")}, _lfs_pointer),
    "LC001-config-cut-at-the-end": ({("LC001", "error"), NO_ALPHA}, _truncate_config(0.99)),
    # Once silently dropped (fixed): an adapter's own config is read whatever it holds.
    "LC001-config-cut-in-half": ({("LC001", "error"), NO_ALPHA}, _truncate_config(0.5)),
}


@pytest.mark.parametrize("case", list(INPUT_CASES.values()), ids=list(INPUT_CASES))
def test_input_fault_through_the_cli(
    tmp_path: Path,
    bases: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    case: tuple[set[tuple[str, str]], Callable[[Path], Path]],
) -> None:
    expected, damage = case
    folder = damage(copy_adapter(bases["matching"], tmp_path / "a"))
    assert _cli(folder, capsys) == (1, expected)


def test_full_model_instead_of_adapter_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base model's own model.safetensors handed over as if it were the adapter."""
    weights = save_tiny_llama(tmp_path / "model") / "model.safetensors"
    assert _cli(weights, capsys) == (1, {("LC002", "error")})


def test_config_without_lora_settings_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty JSON object as adapter_config.json, handed over explicitly."""
    config = tmp_path / CONFIG
    config.write_text("{}\n", encoding="utf-8")
    assert _cli(config, capsys) == (1, {("LC002", "error")})


def test_tensorless_lora_file_through_the_cli(
    tmp_path: Path, bases: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The empty-file plant of LC213 also through the CLI (exit 1, one code)."""
    folder = copy_adapter(bases["matching"], tmp_path / "a")
    save_weights(folder, {})
    assert load_weights(folder) == {}
    assert _cli(folder, capsys) == (1, {("LC213", "error")})


def test_healthy_copy_through_the_cli(
    tmp_path: Path, bases: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_adapter(bases["matching"], tmp_path / "a")
    assert _cli(folder, capsys) == (0, set())
