"""The reference LoRA layers, init schemes, injection, freezing and merge on their own."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from loracheck.errors import UsageError  # noqa: E402
from loracheck.model import LoraSpec  # noqa: E402
from loracheck.reference.init import init_lora, scheme_from_peft  # noqa: E402
from loracheck.reference.inject import (  # noqa: E402
    inject,
    lora_modules,
    merge,
    plan_targets,
    unmerge,
)
from loracheck.reference.layers import LoRAEmbedding, LoRALinear  # noqa: E402
from loracheck.reference.tinymodel import build_tiny  # noqa: E402


def spec(**kw: object) -> LoraSpec:
    base: dict[str, object] = {"source_format": "test", "rank": 4, "alpha": 8.0}
    base.update(kw)
    return LoraSpec(**base)  # type: ignore[arg-type]


def test_linear_forward_is_the_equation() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = LoRALinear(base, 4, 8.0)
    init_lora(layer, "random")
    x = torch.randn(3, 5, 12)
    expected = base(x) + 2.0 * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected)
    assert layer.scaling == 2.0
    assert isinstance(layer.lora_dropout, nn.Identity)
    assert LoRALinear(nn.Linear(4, 4), 16, 16.0, use_rslora=True).scaling == 4.0


def test_embedding_forward_and_delta() -> None:
    torch.manual_seed(0)
    base = nn.Embedding(20, 6)
    layer = LoRAEmbedding(base, 3, 3.0)
    init_lora(layer, "random")
    ids = torch.tensor([[1, 5, 19]])
    merged = nn.functional.embedding(ids, base.weight + layer.delta_weight())
    torch.testing.assert_close(layer(ids), merged)


@pytest.mark.parametrize("scheme", ["normal", "kaiming", "gaussian"])
def test_zero_b_schemes(scheme: str) -> None:
    layer = LoRALinear(nn.Linear(256, 64), 8, 8.0)
    init_lora(layer, scheme, std=0.02, generator=torch.Generator().manual_seed(1))
    assert not layer.lora_B.weight.any()
    std = float(layer.lora_A.weight.std())
    want = {"normal": 0.02, "kaiming": 1 / math.sqrt(3 * 256), "gaussian": 1 / 8}[scheme]
    assert abs(std - want) / want < 0.1


def test_embedding_init_is_a_zero() -> None:
    layer = LoRAEmbedding(nn.Embedding(50, 16), 4, 4.0)
    init_lora(layer, "kaiming")
    assert not layer.lora_embedding_A.any()
    assert layer.lora_embedding_B.std() > 0.5


def test_pissa_keeps_the_output_on_a_residual_base() -> None:
    torch.manual_seed(0)
    base = nn.Linear(32, 24, bias=False)
    w = base.weight.detach().clone()
    layer = LoRALinear(base, 4, 8.0)
    init_lora(layer, "pissa")
    assert layer.lora_B.weight.any() and not torch.equal(base.weight, w)
    x = torch.randn(7, 32)
    torch.testing.assert_close(layer(x), x @ w.T, atol=1e-5, rtol=1e-5)


def test_scheme_from_peft() -> None:
    assert scheme_from_peft(True) == "kaiming"
    assert scheme_from_peft(None, init_std=0.02) == "normal"
    assert scheme_from_peft("pissa_niter_4") == "pissa"
    assert scheme_from_peft(False) == "random"
    with pytest.raises(ValueError):
        scheme_from_peft("loftq")


def test_targets_follow_peft_semantics() -> None:
    model = build_tiny(0)
    names = [t.name for t in plan_targets(model, spec(target_modules=["q_proj"])).targets]
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    regex = plan_targets(model, spec(target_modules=r".*\.1\.mlp\.(up|down)_proj")).targets
    assert [t.name for t in regex] == ["model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    every = plan_targets(model, spec(target_modules="all-linear")).targets
    assert len(every) == 14 and all("lm_head" not in t.name for t in every)
    excluded = plan_targets(
        model, spec(target_modules="all-linear", exclude_modules=["o_proj", "down_proj"])
    ).targets
    assert len(excluded) == 10
    patterned = plan_targets(
        model,
        spec(
            target_modules=["q_proj", "v_proj"],
            rank_pattern={"0.self_attn.q_proj": 2},
            alpha_pattern={"v_proj": 32},
        ),
    ).targets
    by_name = {t.name: (t.rank, t.alpha) for t in patterned}
    assert by_name["model.layers.0.self_attn.q_proj"] == (2, 8.0)
    assert by_name["model.layers.1.self_attn.q_proj"] == (4, 8.0)
    assert by_name["model.layers.1.self_attn.v_proj"] == (4, 32.0)
    layered = plan_targets(model, spec(target_modules=["q_proj"], layers_to_transform=[1]))
    assert [t.name for t in layered.targets] == ["model.layers.1.self_attn.q_proj"]
    assert plan_targets(model, spec(target_modules=["nope"])).targets == []
    with pytest.raises(UsageError):
        inject(model, spec(target_modules=["nope"]))


def test_freezing_goes_by_type_not_by_name() -> None:
    model = build_tiny(0)
    # A base parameter whose name contains "lora_" must stay frozen.
    model.model.register_parameter("lora_A_lookalike", nn.Parameter(torch.zeros(3)))
    plan = inject(model, spec(target_modules=["q_proj", "embed_tokens"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n for n in trainable)
    assert "model.lora_A_lookalike" not in trainable
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        t.n_params for t in plan
    )


def test_merge_twice_is_a_noop_and_unmerge_restores() -> None:
    model = build_tiny(0)
    inject(model, spec(target_modules="all-linear"), init="random")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    weights = {n: m.base_layer.weight.detach().clone() for n, m in lora_modules(model)}
    with torch.no_grad():
        before = model(ids)
        assert merge(model) == 14
        once = {n: m.base_layer.weight.detach().clone() for n, m in lora_modules(model)}
        assert merge(model) == 0
        for n, m in lora_modules(model):
            assert torch.equal(m.base_layer.weight, once[n])
        torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
        assert unmerge(model) == 14 and unmerge(model) == 0
    for n, m in lora_modules(model):
        torch.testing.assert_close(m.base_layer.weight, weights[n], atol=1e-7, rtol=0)


def test_trained_step_leaves_base_bit_identical() -> None:
    model = build_tiny(0)
    inject(model, spec(target_modules=["q_proj", "v_proj", "embed_tokens"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(2):
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], w) for n, w in frozen.items())
    assert all(m.factor_a.any() and m.factor_b.any() for _, m in lora_modules(model))


def test_lora_dropout_rate_stream_and_rescaling() -> None:
    from loracheck.reference.layers import LoRADropout

    gen = torch.Generator().manual_seed(3)
    drop = LoRADropout(0.05, gen).train()
    x = torch.ones(1000, 1000)
    out, gain = drop.masked(x)
    rate = round(0.05 * 2**16) / 2**16
    n = x.numel()
    dropped = int((out == 0).sum())
    assert abs(dropped - rate * n) <= 5 * math.sqrt(n * rate * (1 - rate))
    assert gain == 1 / 0.95
    again = LoRADropout(0.05, torch.Generator().manual_seed(3)).train()
    assert torch.equal(again(x), out * gain)  # the same generator state, the same mask
    # The global stream (the base model's own dropout) is untouched by LoRA's masks.
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    drop(x)
    assert torch.equal(torch.rand(4), expected)
    assert drop.eval().masked(x) == (x, 1.0)


def test_train_mode_layer_equals_the_masked_formula() -> None:
    from loracheck.reference.layers import LoRADropout

    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    gen = torch.Generator().manual_seed(5)
    layer = LoRALinear(base, 4, 8.0, dropout=0.25, generator=gen).train()
    with torch.no_grad():
        layer.lora_A.weight.normal_()
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 7, 16)
    state = gen.get_state()
    got = layer(x)
    gen.set_state(state)
    mask = LoRADropout(0.25, gen).train()(x)  # the same draws: x · keep / (1 − p)
    expected = base(x) + 2.0 * (mask @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    assert float((got - expected).abs().max()) <= 1e-6 * float(expected.abs().max())
