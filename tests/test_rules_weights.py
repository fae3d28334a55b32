"""Weight rules LC201-LC214: a bad fixture fires exactly its code, a good one nothing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from loracheck.model import InitScheme, LoraSpec, Severity, Stage, StageSource
from loracheck.rules.weights import std_band
from loracheck.settings import Settings, load_profile
from rule_factories import (
    TensorRef,
    adapter,
    codes,
    factor,
    init_adapter,
    layer,
    layers,
    peft_name,
    run,
    spec,
)


def only(ad, code: str, severity: Severity | None = None, settings: Settings | None = None):
    diags = run(ad, settings)
    assert {d.code for d in diags} == {code}, [(d.code, d.message) for d in diags]
    if severity is not None:
        assert {d.severity for d in diags} == {severity}
    return diags


def test_healthy_trained_and_init_adapters_fire_nothing() -> None:
    assert codes(adapter()) == set()
    assert codes(adapter(forced=True)) == set()
    assert codes(init_adapter()) == set()
    gaussian = layers(b_zero=True, a_std=1 / 8, a_kurtosis=3.0)
    ad = adapter(gaussian, spec_=spec(init_lora_weights="gaussian"), stage=Stage.INIT,
                 forced=True, scheme=InitScheme.GAUSSIAN)
    assert codes(ad) == set()


def test_lc201_orphan() -> None:
    orphan = TensorRef(f"{peft_name(9, 'q_proj')}.lora_A.weight", "F32", (8, 64), 2048)
    diags = only(adapter(orphans=[orphan]), "LC201", Severity.ERROR)
    assert diags[0].location == orphan.key and diags[0].path.endswith(".safetensors")


def test_lc202_inner_dims_and_declared_rank() -> None:
    bad = [*layers(4), layer(peft_name(4, "q_proj"), b_inner=4)]
    only(adapter(bad), "LC202")
    diags = only(adapter(layers(r=16, alpha=32.0), spec_=spec(rank=8)), "LC202")
    assert "rank 16" in diags[0].message and "r = 8" in diags[0].message
    # a rank_pattern entry that explains the rank is fine
    mixed = [layer(peft_name(i, "q_proj"), r=16) for i in range(3)] + [
        layer(peft_name(i, "v_proj")) for i in range(3)]
    assert codes(adapter(mixed, spec_=spec(rank_pattern={"q_proj": 16}))) == set()


def test_lc203_nan() -> None:
    bad = [*layers(4), layer(peft_name(4, "q_proj"), b_nonfinite=17)]
    diags = only(adapter(bad), "LC203", Severity.ERROR)
    assert "17 non-finite" in diags[0].message
    assert diags[0].location == f"{peft_name(4, 'q_proj')}.lora_B.weight"


def test_lc204_identity_broken_at_init() -> None:
    bad = [*layers(4, b_zero=True), layer(peft_name(4, "q_proj"))]
    only(adapter(bad, stage=Stage.INIT, forced=True), "LC204", Severity.ERROR)
    # embeddings: the zero factor is A
    emb_ok = layer("base_model.model.model.embed_tokens", kind="embedding", n_in=128,
                   a_zero=True, b_std=1.0)
    assert codes(init_adapter()) == set()
    ad = adapter([*layers(b_zero=True), emb_ok], stage=Stage.INIT, forced=True,
                 spec_=spec(target_modules=["q_proj", "v_proj", "embed_tokens"]))
    assert codes(ad) == set()
    emb_bad = layer("base_model.model.model.embed_tokens", kind="embedding", n_in=128,
                    b_zero=True)
    ad = adapter([*layers(b_zero=True), emb_bad], stage=Stage.INIT, forced=True,
                 spec_=spec(target_modules=["q_proj", "v_proj", "embed_tokens"]))
    only(ad, "LC204")


def test_lc204_orthogonal_and_data_driven() -> None:
    ortho_ok = layers(b_std=0.07, a_std=0.07, a_kurtosis=3.0)
    for lay in ortho_ok:
        assert lay.delta is not None
        lay.delta = type(lay.delta)(1e-9, lay.delta.singular_values, 1e-9, 1.0, 1.0, 1e-8)
    ad = adapter(ortho_ok, spec_=spec(init_lora_weights="orthogonal"), stage=Stage.INIT,
                 forced=True, scheme=InitScheme.ORTHOGONAL)
    assert codes(ad) == set()
    ortho_bad = layers(b_std=0.07, a_std=0.07, a_kurtosis=3.0)
    ad = adapter(ortho_bad, spec_=spec(init_lora_weights="orthogonal"), stage=Stage.INIT,
                 forced=True, scheme=InitScheme.ORTHOGONAL)
    only(ad, "LC204")
    pissa = adapter(layers(a_std=0.02), spec_=spec(init_lora_weights="pissa", dropout=0.0),
                    stage=Stage.INIT, forced=True, scheme=InitScheme.PISSA)
    assert codes(pissa) == set()


def test_lc204_custom_python_layer() -> None:
    py = LoraSpec(source_format="python", path="/x/train.py", rank=8, alpha=16.0,
                  extras={"custom_lora_b_init": "nn.init.normal_"},
                  lines={"custom_lora_b_init": 14})
    ad = adapter(layers(), spec_=py)
    diags = only(ad, "LC204")
    assert diags[0].path == "/x/train.py" and diags[0].line == 14


def test_lc205_std_mismatch_at_init() -> None:
    bad = [*layers(4, b_zero=True),
           layer(peft_name(4, "q_proj"), b_zero=True, a_std=0.2)]
    diags = only(adapter(bad, stage=Stage.INIT, forced=True), "LC205", Severity.WARNING)
    assert "kaiming-uniform" in diags[0].message


def test_lc205_not_checked_when_trained_or_data_driven() -> None:
    drifted = layers(a_std=0.2)
    assert codes(adapter(drifted)) == set()
    pissa = adapter(layers(a_std=0.2, b_zero=False), spec_=spec(init_lora_weights="pissa",
                    dropout=0.0), stage=Stage.INIT, forced=True, scheme=InitScheme.PISSA)
    assert codes(pissa) == set()


def test_lc205_llmbook_profile_expects_normal_002() -> None:
    llmbook = Settings(profile=load_profile("llmbook"))
    nb = spec(source_format="llmbox", rank=16, alpha=16.0, init_lora_weights=None)
    good = layers(b_zero=True, r=16, a_std=0.02, a_kurtosis=3.0, n_in=1024)
    ad = adapter(good, spec_=nb, stage=Stage.INIT, forced=True, declared=False,
                 scheme=InitScheme.UNKNOWN, fmt="llmbook")
    assert codes(ad, llmbook) == set()
    kaiming = layers(b_zero=True, r=16, n_in=1024)
    ad = adapter(kaiming, spec_=nb, stage=Stage.INIT, forced=True, declared=False,
                 scheme=InitScheme.UNKNOWN, fmt="llmbook")
    only(ad, "LC205", settings=llmbook)


def test_lc205_family_by_kurtosis() -> None:
    normal_a = [layer(peft_name(i, "q_proj"), b_zero=True, n_in=4096, r=16,
                      a_kurtosis=3.0) for i in range(3)]
    ad = adapter(normal_a, stage=Stage.INIT, forced=True,
                 spec_=spec(rank=16, alpha=16.0, target_modules=["q_proj"]))
    diags = only(ad, "LC205")
    assert "kurtosis" in diags[0].message


def test_std_band_accounts_for_sample_size() -> None:
    assert std_band(0.15, 10**8, 3.0) == pytest.approx(0.15, abs=1e-3)
    small = std_band(0.15, 32, 1.8)
    assert small > 0.15 + 4 * math.sqrt(0.8 / 128) - 1e-9


def test_lc206_dead_module() -> None:
    bad = [*layers(4), layer(peft_name(4, "q_proj"), a_zero=True, b_zero=True)]
    diags = only(adapter(bad), "LC206", Severity.ERROR)
    assert "1 of 9 modules" in diags[0].message
    only(adapter(layers(a_zero=True, b_zero=True)), "LC206")


def test_lc207_no_op() -> None:
    zero = layers(b_zero=True)
    only(adapter(zero, forced=True), "LC207", Severity.ERROR)
    # Inferred init from the weights, nothing saying it trained: a fresh adapter, no finding.
    assert codes(adapter(zero, stage=Stage.INIT)) == set()
    assert codes(adapter(zero, stage=Stage.INIT, forced=True)) == set()
    evidence = adapter(zero, stage=Stage.TRAINED, stage_source=StageSource.TRAINING_EVIDENCE,
                       stage_evidence="checkpoint-500/trainer_state.json: global_step 500")
    (diag,) = only(evidence, "LC207", Severity.ERROR)
    assert "although training took steps (checkpoint-500/trainer_state.json: global_step " \
        "500)" in diag.message
    # No step-0 signature to judge by: said as a warning.
    only(adapter(zero, stage=Stage.UNKNOWN), "LC207", Severity.WARNING)


def test_lc208_some_modules_never_trained() -> None:
    lay = layers()
    lay[3] = layer(lay[3].name, b_zero=True)
    diags = only(adapter(lay), "LC208", Severity.WARNING)
    assert "1 of 10" in diags[0].message and lay[3].name[len("base_model.model."):] in \
        diags[0].message


def test_lc209_outlier_and_small_groups() -> None:
    lay = layers(6)
    lay[4] = layer(lay[4].name, frobenius=100.0)
    diags = only(adapter(lay), "LC209", Severity.WARNING)
    assert diags[0].location == lay[4].name
    few = layers(3)
    few[2] = layer(few[2].name, frobenius=100.0)
    assert codes(adapter(few)) == set()


@pytest.mark.parametrize(("ratio", "fires"), [(150.0, True), (50.0, False)])
def test_lc209_with_three_peers_needs_100x_all_of_them(ratio: float, fires: bool) -> None:
    lay = [layer(peft_name(i, "q_proj"), frobenius=1.0 + 0.1 * i) for i in range(4)]
    lay[3] = layer(lay[3].name, frobenius=ratio * 1.2)  # the largest peer is 1.2
    found = [d for d in run(adapter(lay)) if d.code == "LC209"]
    assert len(found) == (1 if fires else 0)
    if fires:
        assert found[0].location == lay[3].name and "3 q_proj peers" in found[0].message


def test_lc203_update_overflow_of_finite_factors() -> None:
    from loracheck.model import DeltaStats

    nan_delta = DeltaStats(float("nan"), (), float("nan"), 0.0, 0.0, 0.0)
    f64 = [*layers(2), replace(layer(peft_name(2, "q_proj")), delta=nan_delta)]
    diags = [d for d in run(adapter(f64)) if d.code == "LC203"]
    assert len(diags) == 1 and "overflows float64" in diags[0].message
    huge = replace(layer(peft_name(2, "q_proj")),
                   delta=DeltaStats(1e41, (1e41,), 1e41, 1.0, 1.0, 1.0))
    diags = [d for d in run(adapter([*layers(2), huge])) if d.code == "LC203"]
    assert len(diags) == 1 and "overflows F32" in diags[0].message
    assert "gives Inf" in diags[0].message
    fine = replace(layer(peft_name(2, "q_proj")),
                   delta=DeltaStats(1e30, (1e30,), 1e30, 1.0, 1.0, 1.0))
    assert "LC203" not in codes(adapter([*layers(2), fine]))


def test_lc210_rank_collapse() -> None:
    lay = [*layers(4, r=32, alpha=32.0),
           layer(peft_name(4, "q_proj"), r=32, alpha=32.0, effective_rank=1.1)]
    diags = only(adapter(lay, spec_=spec(rank=32, alpha=32.0)), "LC210")
    assert "r=32" in diags[0].message and "r=2 would do" in diags[0].message


def test_lc211_dtypes() -> None:
    mixed = [*layers(4), layer(peft_name(4, "q_proj"), b_dtype="F16")]
    only(adapter(mixed), "LC211", Severity.WARNING)
    hot = [layer(peft_name(i, "q_proj"), a_dtype="F16", b_dtype="F16",
                 b_absmax=40000.0 if i == 0 else None) for i in range(3)]
    only(adapter(hot, spec_=spec(target_modules=["q_proj"])), "LC211")
    tiny = [layer(peft_name(i, "q_proj"), a_dtype="F16", b_dtype="F16", b_std=1e-5,
                  b_absmax=2e-5) for i in range(3)]
    only(adapter(tiny, spec_=spec(target_modules=["q_proj"])), "LC211")
    assert codes(adapter(layers(a_dtype="BF16", b_dtype="BF16"))) == set()


def test_lc212_config_metadata_targets() -> None:
    meta = spec(source_format="kohya-metadata", path="", rank=8, alpha=4.0)
    only(adapter(metadata_spec=meta), "LC212", Severity.ERROR)
    extra = [*layers(), layer(peft_name(0, "k_proj"))]
    diags = only(adapter(extra), "LC212")
    assert "k_proj" in diags[0].message


def test_lc212_kohya_alpha_tensors_vs_metadata() -> None:
    names = [f"lora_unet_down_blocks_0_attn1_to_{x}" for x in "qkv"]
    kohya = [layer(n, r=4, alpha=1.0, alpha_source="tensor", alpha_tensor=True) for n in names]
    meta = LoraSpec(source_format="kohya-metadata", path="", rank=4, alpha=2.0)
    ad = adapter(kohya, spec_=meta, metadata_spec=meta, fmt="kohya")
    diags = only(ad, "LC212")
    assert "ss_network_alpha" in diags[0].message
    good = [layer(n, r=4, alpha=2.0, alpha_source="tensor", alpha_tensor=True) for n in names]
    assert codes(adapter(good, spec_=meta, metadata_spec=meta, fmt="kohya")) == set()


def test_lc213_empty() -> None:
    empty = TensorRef(f"{peft_name(0, 'q_proj')}.lora_A.weight", "F32", (0,), 0)
    only(adapter(empty_tensors=[empty]), "LC213", Severity.ERROR)
    only(adapter([], n_tensors=0), "LC213")


def test_lc214_dora() -> None:
    dora = spec(use_dora=True)
    assert codes(adapter(layers(magnitude=True), spec_=dora)) == set()
    only(adapter(layers(), spec_=dora), "LC214", Severity.ERROR)
    bad_m = factor(64, 0.1, nonfinite=2, kurtosis=3.0)
    lay = [*layers(4, magnitude=True),
           layer(peft_name(4, "q_proj"), magnitude=True, magnitude_stats=bad_m)]
    only(adapter(lay, spec_=dora), "LC214")
    zero_m = factor(64, 0.0, zero=True)
    lay = [*layers(4, magnitude=True),
           layer(peft_name(4, "q_proj"), magnitude=True, magnitude_stats=zero_m)]
    only(adapter(lay, spec_=dora), "LC214")
    # A few negative entries among positive ones: the mean is positive, the minimum is not.
    negative_m = replace(factor(64, 0.1), mean=1.0, min=-0.5, max=2.0)
    lay = [*layers(4, magnitude=True),
           layer(peft_name(4, "q_proj"), magnitude=True, magnitude_stats=negative_m)]
    only(adapter(lay, spec_=dora), "LC214")


def test_median_of_the_other_modules_is_statistics_median() -> None:
    """LC209's median of a module's peers, read off the group's sorted norms, is exactly
    statistics.median of the others: odd and even counts, ties, the ends."""
    import random
    import statistics

    from loracheck.rules.weights import _median_of_others

    rng = random.Random(5)
    for size in range(2, 40):
        values = [rng.choice([0.5, 1.0, 2.0]) if size % 3 == 0 else rng.lognormvariate(0, 2)
                  for _ in range(size)]
        ordered = sorted(values)
        for i in range(size):
            others = values[:i] + values[i + 1:]
            index = ordered.index(values[i])
            assert _median_of_others(ordered, index) == statistics.median(others)
