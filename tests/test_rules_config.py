"""Config rules LC101-LC109: a bad fixture fires exactly its code, a good one nothing."""

from __future__ import annotations

import pytest

from loracheck.model import Severity
from loracheck.settings import Settings, load_profile
from rule_factories import adapter, codes, config_only, layer, peft_name, run, spec


def only(ad, code: str, severity: Severity | None = None, settings: Settings | None = None):
    diags = run(ad, settings)
    assert {d.code for d in diags} == {code}, [(d.code, d.message) for d in diags]
    if severity is not None:
        assert {d.severity for d in diags} == {severity}
    return diags


def test_good_config_fires_nothing() -> None:
    assert codes(config_only()) == set()
    for source in ("axolotl", "llama-factory", "python", "kohya", "mlx", "trl"):
        assert codes(config_only(spec(source_format=source))) == set(), source


@pytest.mark.parametrize(
    "overrides",
    [dict(rank=0), dict(rank=-4), dict(rank=None, invalid={"rank": "'16'"}),
     dict(rank=None, source_format="axolotl"), dict(rank_pattern={"q_proj": 0})],
)
def test_lc101_invalid_rank(overrides: dict) -> None:
    diags = only(config_only(spec(**overrides)), "LC101", Severity.ERROR)
    if "rank_pattern" not in overrides:
        assert diags[0].line == 12 and diags[0].path.endswith("adapter_config.json")


def test_lc101_missing_rank_with_a_tool_default_is_fine() -> None:
    assert codes(config_only(spec(rank=None, source_format="llama-factory"))) == set()


def test_lc102_scale_band_and_invalid_alpha() -> None:
    diags = only(config_only(spec(rank=128, alpha=1.0)), "LC102", Severity.WARNING)
    assert "1/128" in diags[0].message and diags[0].line == 8
    only(config_only(spec(alpha=-8.0)), "LC102", Severity.ERROR)
    only(config_only(spec(alpha=float("nan"))), "LC102", Severity.ERROR)
    only(config_only(spec(alpha=None, invalid={"alpha": "'x'"})), "LC102", Severity.ERROR)
    # rsLoRA: α/√r = 16/√8 ≈ 5.7 is inside the band (LC108 notes rsLoRA itself)
    assert codes(config_only(spec(use_rslora=True))) == {"LC108"}


def test_lc102_mlx_default_scale_is_not_out_of_band() -> None:
    mlx = spec(source_format="mlx", alpha=None, scale=20.0)
    assert codes(config_only(mlx)) == set()
    # mlx's scale is s itself, its shipped default 20: the band reaches 64 under mlx.
    assert codes(config_only(spec(source_format="mlx", alpha=None, scale=50.0))) == set()
    only(config_only(spec(source_format="mlx", alpha=None, scale=100.0)), "LC102")
    # The same s = 20 under α/r is outside the default band: one convention per consumer.
    only(config_only(spec(rank=8, alpha=160.0)), "LC102")


def test_lc102_kohya_alpha_tensors() -> None:
    # kohya's default α = 1 gives s = 1/dim, inside its band; 0.01/64 is below 1/1024.
    kohya = [layer(f"lora_unet_block_{i}_to_q", alpha=0.01, r=64, n_in=320, n_out=320,
                   alpha_source="tensor",
                   alpha_tensor=True) for i in range(3)]
    ad = adapter(kohya, spec_=spec(source_format="kohya-metadata", rank=64, alpha=None,
                                   target_modules=None), fmt="kohya")
    diags = only(ad, "LC102", Severity.WARNING)
    assert diags[0].location == "lora_unet_block_0_to_q.alpha"


def test_lc103_dropout() -> None:
    only(config_only(spec(dropout=1.0)), "LC103", Severity.ERROR)
    only(config_only(spec(dropout=-0.1)), "LC103", Severity.ERROR)
    only(config_only(spec(dropout=0.5)), "LC103", Severity.WARNING)
    llmbook = Settings(profile=load_profile("llmbook"))
    only(config_only(spec(dropout=0.2, rank=16, alpha=16.0)), "LC103", settings=llmbook)


def test_lc104_rank_too_high() -> None:
    only(config_only(spec(rank=512, alpha=512.0)), "LC104")
    full = [layer(peft_name(0, "k_proj"), r=32, n_out=32, alpha=32.0)]
    ad = adapter(full, spec_=spec(rank=32, alpha=32.0, target_modules=["k_proj"]))
    diags = only(ad, "LC104")
    assert "min(in, out) = 32" in diags[0].message


def test_lc105_init() -> None:
    # A trainer config that will train from this init: certain. A saved adapter_config.json or
    # a script may load weights right after: the context decides, so a warning.
    only(config_only(spec(source_format="axolotl", init_lora_weights=False)), "LC105",
         Severity.ERROR)
    for source in ("peft", "python"):
        diags = only(config_only(spec(source_format=source, init_lora_weights=False)),
                     "LC105", Severity.WARNING)
        assert "assuming" in diags[0].message
    only(config_only(spec(init_lora_weights="pisa")), "LC105", Severity.WARNING)
    for ok in ("pissa_niter_4", "Gaussian", "olora", "corda", "eva", "lora_ga"):
        assert codes(config_only(spec(init_lora_weights=ok, dropout=0.0))) == set(), ok


def test_lc106_targets() -> None:
    only(config_only(spec(target_modules=[])), "LC106")
    only(config_only(spec(target_modules="(q_proj")), "LC106")
    diags = only(adapter(spec_=spec(target_modules=["q_proj", "v_proj", "v_prj"])), "LC106")
    assert diags[0].location == "target_modules.v_prj"
    # a regex that matches the file's modules is fine
    regex = r".*\.(q_proj|v_proj)"
    assert codes(adapter(spec_=spec(target_modules=regex))) == set()


def test_lc107_patterns() -> None:
    diags = only(adapter(spec_=spec(rank_pattern={"proj": 4})), "LC107")
    assert "matches no targeted module" in diags[0].message
    shadowed = {"q_proj": 8, "layers.0.self_attn.q_proj": 16}
    diags = only(adapter(spec_=spec(rank_pattern=shadowed)), "LC107")
    assert "shadowed" in diags[0].message
    assert codes(adapter(spec_=spec(alpha_pattern={"v_proj": 16.0}))) == set()


def test_lc108_rslora_and_missing_alpha() -> None:
    diags = only(config_only(spec(use_rslora=True)), "LC108", Severity.INFO)
    assert "√r" in diags[0].message
    diags = only(config_only(spec(alpha=None)), "LC108", Severity.INFO)
    assert "peft: lora_alpha = 8" in diags[0].message and "kohya" in diags[0].message


@pytest.mark.parametrize(
    "overrides",
    [dict(init_lora_weights="pissa", dropout=0.1), dict(init_lora_weights="loftq"),
     dict(use_dora=True, bias="all"), dict(init_lora_weights="orthogonal", rank=7, alpha=7.0),
     dict(layers_pattern="layers"), dict(extras={"eva_config": {"rho": 2.0}})],
)
def test_lc109_contradictions(overrides: dict) -> None:
    only(config_only(spec(**overrides)), "LC109", Severity.WARNING)


def test_lc109_data_driven_without_dropout_is_fine() -> None:
    assert codes(config_only(spec(init_lora_weights="olora", dropout=0.0))) == set()
