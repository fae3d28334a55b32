"""Init-scheme and stage inference on real PEFT adapters (at init and trained) and other formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from builders import kaiming_a, kohya_file, peft_adapter, write_safetensors
from loracheck.initscheme import declared_scheme, expected_a_std, infer_init, infer_stage
from loracheck.keys import canonical_shapes, group_keys, to_canonical
from loracheck.model import InitScheme, LayerRecord, LoraSpec, Stage
from loracheck.scaling import effective_scale, resolve_rank_alpha
from loracheck.stats import pair_stats


def records(weights: Path, spec: LoraSpec | None) -> list[LayerRecord]:
    """LayerRecords with statistics, built the way a loader would."""
    tensors = load_file(str(weights))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    out = []
    for p in group_keys(shapes).pairs:
        if p.a_key is None or p.b_key is None:
            continue
        rank, in_f, out_f = canonical_shapes(p, shapes[p.a_key], shapes[p.b_key])
        alpha: float | None = None
        scale: float | None = 1.0
        if p.alpha_key is not None:
            alpha = float(tensors[p.alpha_key].reshape(-1)[0])
            scale = alpha / rank
        elif spec is not None:
            _, alpha, _ = resolve_rank_alpha(p.module, spec)
            scale = effective_scale(rank, alpha, use_rslora=bool(spec.use_rslora), scale=spec.scale)
        a, b = to_canonical(p, tensors[p.a_key], tensors[p.b_key])
        a_st, b_st, d = pair_stats(a, b, scale if scale is not None else 1.0)
        out.append(
            LayerRecord(
                name=p.module,
                kind=p.kind,
                a=None,
                b=None,
                rank=rank,
                in_features=in_f,
                out_features=out_f,
                alpha=alpha,
                alpha_source="test",
                scaling=scale,
                a_stats=a_st,
                b_stats=b_st,
                delta=d,
            )
        )
    return out


def peft_spec(path: Path) -> LoraSpec:
    cfg = json.loads((path / "adapter_config.json").read_text())
    return LoraSpec(
        source_format="peft",
        rank=cfg["r"],
        alpha=cfg["lora_alpha"],
        init_lora_weights=cfg["init_lora_weights"],
        use_rslora=cfg["use_rslora"],
        rank_pattern=cfg["rank_pattern"],
        alpha_pattern=cfg["alpha_pattern"],
    )


# name -> (LoraConfig kwargs, scheme inferred from the weights alone)
CASES: dict[str, tuple[dict[str, Any], InitScheme]] = {
    "default": ({}, InitScheme.KAIMING_UNIFORM),
    "gaussian": ({"init_lora_weights": "gaussian"}, InitScheme.GAUSSIAN),
    "rslora": ({"use_rslora": True, "r": 8, "lora_alpha": 16}, InitScheme.KAIMING_UNIFORM),
    "dora": ({"use_dora": True}, InitScheme.KAIMING_UNIFORM),
    "pattern": (
        {
            "target_modules": ["q_proj", "v_proj", "down_proj"],
            "rank_pattern": {"q_proj": 2},
            "alpha_pattern": {"v_proj": 2.0},
        },
        InitScheme.KAIMING_UNIFORM,
    ),
    "embedding": (
        {"target_modules": ["q_proj", "v_proj", "embed_tokens"]},
        InitScheme.KAIMING_UNIFORM,
    ),
    "embedding_only": ({"target_modules": ["embed_tokens"]}, InitScheme.EMBEDDING),
    "pissa": ({"init_lora_weights": "pissa"}, InitScheme.DATA_DRIVEN),
    "olora": ({"init_lora_weights": "olora"}, InitScheme.OLORA),
    "orthogonal": ({"init_lora_weights": "orthogonal"}, InitScheme.ORTHOGONAL),
    "random": ({"init_lora_weights": False}, InitScheme.RANDOM),
    "mica": ({"init_lora_weights": "mica"}, InitScheme.MICA),
}
DECLARED = {
    "pissa": InitScheme.PISSA,
    "gaussian": InitScheme.GAUSSIAN,
    "olora": InitScheme.OLORA,
    "orthogonal": InitScheme.ORTHOGONAL,
    "random": InitScheme.RANDOM,
    "mica": InitScheme.MICA,
}
STEPS = (0, 5)


@pytest.fixture(scope="module")
def peft_records(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, int], tuple[list[LayerRecord], LoraSpec]]:
    root = tmp_path_factory.mktemp("init")
    out = {}
    for name, (kw, _) in CASES.items():
        for steps in STEPS:
            path = peft_adapter(root / f"{name}-{steps}", steps=steps, **kw)
            spec = peft_spec(path)
            out[name, steps] = (records(path / "adapter_model.safetensors", spec), spec)
    return out


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", list(CASES))
def test_peft_inference(
    peft_records: dict[tuple[str, int], tuple[list[LayerRecord], LoraSpec]], name: str, steps: int
) -> None:
    layers, spec = peft_records[name, steps]
    stage = Stage.INIT if steps == 0 else Stage.TRAINED
    inferred = infer_init(layers, None)
    assert inferred.scheme is CASES[name][1], inferred.evidence
    assert not inferred.declared
    assert infer_stage(layers, inferred.scheme) is stage
    declared = infer_init(layers, spec)
    want = DECLARED.get(name, InitScheme.KAIMING_UNIFORM)
    assert declared.scheme is want and declared.declared
    assert infer_stage(layers, declared.scheme) is stage
    if want is InitScheme.KAIMING_UNIFORM and name != "embedding_only":
        # "A std 0.0727 vs kaiming-uniform 0.07217 at in=64 ..."
        assert "vs kaiming-uniform 0.07217 at in=64" in declared.evidence
        assert declared.expected_std == pytest.approx(1 / np.sqrt(3 * 64))


def test_embedding_layers_do_not_vote(
    peft_records: dict[tuple[str, int], tuple[list[LayerRecord], LoraSpec]],
) -> None:
    layers, _ = peft_records["embedding", 0]
    emb = [x for x in layers if x.kind == "embedding"]
    assert len(emb) == 1 and emb[0].a_stats is not None and emb[0].a_stats.absmax == 0.0
    assert emb[0].b_stats is not None and abs(emb[0].b_stats.std - 1.0) < 0.2
    assert infer_stage(emb, InitScheme.EMBEDDING) is Stage.INIT
    trained, _ = peft_records["embedding", 5]
    # only the embedding moved: still trained
    linear_init = [x for x in layers if x.kind != "embedding"]
    emb_trained = [x for x in trained if x.kind == "embedding"]
    assert infer_stage(linear_init + emb_trained, InitScheme.KAIMING_UNIFORM) is Stage.TRAINED


def test_kohya_default_and_inference(tmp_path: Path) -> None:
    spec = LoraSpec(source_format="kohya")
    for trained in (False, True):
        path = kohya_file(tmp_path / f"k{trained}.safetensors", trained=trained)
        layers = records(path, None)
        assert len(layers) == 3
        got = infer_init(layers, spec)
        assert (got.scheme, got.declared) == (InitScheme.KAIMING_UNIFORM, True)
        assert "kohya default" in got.evidence
        assert infer_init(layers, None).scheme is InitScheme.KAIMING_UNIFORM
        want = Stage.TRAINED if trained else Stage.INIT
        assert infer_stage(layers, got.scheme) is want


def test_mlx_llmbook_torchtune_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    mlx = {}
    for i, (in_f, out_f) in enumerate([(64, 64), (96, 32)]):
        mlx[f"model.layers.{i}.self_attn.q_proj.lora_a"] = kaiming_a(rng, 8, in_f).T.copy()
        mlx[f"model.layers.{i}.self_attn.q_proj.lora_b"] = np.zeros((8, out_f), np.float32)
    path = write_safetensors(tmp_path / "adapters.safetensors", mlx, {"format": "mlx"})
    layers = records(path, LoraSpec(source_format="mlx", scale=20.0))
    assert [(x.rank, x.in_features, x.out_features) for x in layers] == [(8, 64, 64), (8, 96, 32)]
    got = infer_init(layers, None)
    assert got.scheme is InitScheme.KAIMING_UNIFORM
    assert infer_stage(layers, got.scheme) is Stage.INIT

    book = {}
    for i, in_f in enumerate((64, 96, 128)):
        book[f"model.layers.{i}.mlp.up_proj.A.weight"] = rng.normal(0, 0.02, (8, in_f)).astype(
            np.float32
        )
        book[f"model.layers.{i}.mlp.up_proj.B.weight"] = rng.normal(0, 1e-3, (48, 8)).astype(
            np.float32
        )
    path = write_safetensors(tmp_path / "book.safetensors", book)
    layers = records(path, None)
    got = infer_init(layers, None)
    assert got.scheme is InitScheme.NORMAL, got.evidence
    assert got.expected_std is not None and abs(got.expected_std - 0.02) < 0.002
    assert infer_stage(layers, got.scheme) is Stage.TRAINED
    declared = infer_init(layers, LoraSpec(source_format="llmbook"))
    assert declared.scheme is InitScheme.NORMAL and declared.expected_std == 0.02

    tt = {}
    for i in range(3):
        tt[f"layers.{i}.attn.q_proj.lora_a.weight"] = kaiming_a(rng, 8, 64)
        tt[f"layers.{i}.attn.q_proj.lora_b.weight"] = rng.normal(0, 1e-3, (64, 8)).astype(
            np.float32
        )
    layers = records(write_safetensors(tmp_path / "tt.safetensors", tt), None)
    got = infer_init(layers, LoraSpec(source_format="torchtune"))
    assert got.scheme is InitScheme.KAIMING_UNIFORM and got.declared
    assert infer_init(layers, None).scheme is InitScheme.KAIMING_UNIFORM
    assert infer_stage(layers, got.scheme) is Stage.TRAINED


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        (True, InitScheme.KAIMING_UNIFORM),
        (False, InitScheme.RANDOM),
        ("gaussian", InitScheme.GAUSSIAN),
        ("Gaussian", InitScheme.GAUSSIAN),
        ("pissa", InitScheme.PISSA),
        ("pissa_niter_4", InitScheme.PISSA),
        ("olora", InitScheme.OLORA),
        ("corda", InitScheme.CORDA),
        ("loftq", InitScheme.LOFTQ),
        ("eva", InitScheme.EVA),
        ("orthogonal", InitScheme.ORTHOGONAL),
        ("MICA", InitScheme.MICA),
        ("lora_ga", InitScheme.LORA_GA),
        ("PiSSA", InitScheme.UNKNOWN),
        ("xavier", InitScheme.UNKNOWN),
    ],
)
def test_declared_scheme(value: bool | str, scheme: InitScheme) -> None:
    assert declared_scheme(LoraSpec(source_format="peft", init_lora_weights=value)) is scheme


def test_declared_defaults_and_expected_std() -> None:
    assert declared_scheme(None) is None
    assert declared_scheme(LoraSpec(source_format="diffusers")) is None
    assert declared_scheme(LoraSpec(source_format="mlx")) is InitScheme.KAIMING_UNIFORM
    assert declared_scheme(LoraSpec(source_format="torchtune")) is InitScheme.KAIMING_UNIFORM
    assert declared_scheme(LoraSpec(source_format="python", init_std=0.01)) is InitScheme.NORMAL
    assert expected_a_std(InitScheme.KAIMING_UNIFORM, 4096, 16) == pytest.approx(0.00902, rel=1e-3)
    assert expected_a_std(InitScheme.GAUSSIAN, 4096, 16) == 1 / 16
    assert expected_a_std(InitScheme.NORMAL, 4096, 16) == 0.02
    assert expected_a_std(InitScheme.NORMAL, 4096, 16, init_std=0.05) == 0.05
    assert expected_a_std(InitScheme.PISSA, 4096, 16) is None
    assert infer_init([], None).scheme is InitScheme.UNKNOWN
    assert infer_stage([], InitScheme.KAIMING_UNIFORM) is Stage.UNKNOWN
    # an unknown declared string falls back to inference and says so
    spec = LoraSpec(source_format="peft", init_lora_weights="xavier")
    assert infer_init([], spec).declared is False
