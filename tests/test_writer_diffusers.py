"""Files written by diffusers itself (a tiny Stable Diffusion UNet + CLIP text encoder with PEFT
LoRA, ``save_lora_weights`` with per-component metadata): every layer's rank, alpha, scale and
ΔW statistics equal the writer's own ΔW (PEFT's ``get_delta_weight``) in float64."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from loracheck.engine import check_adapter  # noqa: E402
from loracheck.load import load_paths  # noqa: E402
from loracheck.settings import Settings  # noqa: E402

UNET_CONFIG = {"r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
TEXT_CONFIG = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                            "out_proj"],
               "rank_pattern": {"out_proj": 2}, "alpha_pattern": {"out_proj": 8}}


def _tiny_pipeline_parts() -> tuple[Any, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=4)
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=100, projection_dim=32, bos_token_id=0, eos_token_id=2))
    return unet, text


def _randomise_b(model: Any, seed: int) -> None:
    """A trained state: every lora_B drawn at random (B = 0 would make ΔW trivially zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet, text = _tiny_pipeline_parts()
    unet_config, text_config = LoraConfig(**UNET_CONFIG), LoraConfig(**TEXT_CONFIG)
    unet.add_adapter(unet_config)
    # transformers' own add_adapter wants PEFT ≥ 0.22; diffusers' loader injects like this.
    text = inject_adapter_in_model(text_config, text)
    _randomise_b(unet, 1)
    _randomise_b(text, 2)
    folder = tmp_path_factory.mktemp("diffusers")
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict())
    truth: dict[str, Any] = {}
    for prefix, model in (("unet", unet), ("text_encoder", text)):
        for name, module in model.named_modules():
            if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
                delta = module.get_delta_weight("default").detach().double().numpy()
                truth[f"{prefix}.{name}"] = (module.r["default"], module.scaling["default"],
                                             delta)
    return folder / "pytorch_lora_weights.safetensors", truth


def test_each_component_uses_its_own_config(written: tuple[Path, dict[str, Any]]) -> None:
    path, truth = written
    (adapter,) = load_paths([str(path)])
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == set(truth) and len(truth) == 40
    for name, (rank, scale, delta) in truth.items():
        layer = layers[name]
        assert layer.rank == rank, name
        assert layer.scaling == pytest.approx(scale, rel=1e-12), name
        sigma = np.linalg.svd(delta, compute_uv=False)
        assert layer.delta is not None
        assert layer.delta.frobenius == pytest.approx(float(np.linalg.norm(delta)), rel=1e-6)
        assert layer.delta.sigma_max == pytest.approx(float(sigma[0]), rel=1e-6)
    # The text encoder's scale is its own α/r = 2 (out_proj: 8/2 = 4), not the unet's 1.
    assert {layers[n].scaling for n in truth if n.startswith("text_encoder")} == {2.0, 4.0}
    assert {layers[n].scaling for n in truth if n.startswith("unet")} == {1.0}


def test_no_false_findings_on_the_writers_file(written: tuple[Path, dict[str, Any]]) -> None:
    path, _ = written
    (adapter,) = load_paths([str(path)])
    assert [d.code for d in check_adapter(adapter, Settings())] == []


def test_without_metadata_diffusers_reads_alpha_as_rank(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, _ = _tiny_pipeline_parts()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"]))
    _randomise_b(unet, 3)
    StableDiffusionPipeline.save_lora_weights(str(tmp_path),
                                              unet_lora_layers=get_peft_model_state_dict(unet))
    (adapter,) = load_paths([str(tmp_path / "pytorch_lora_weights.safetensors")])
    # diffusers loads a file without metadata with lora_alpha = r: s = 1 everywhere
    assert {layer.scaling for layer in adapter.layers} == {1.0}
    errors = [d for d in check_adapter(adapter, Settings()) if d.severity.value == "error"]
    assert not errors


def test_converted_to_kohya_keeps_every_update(written: tuple[Path, dict[str, Any]],
                                               tmp_path: Path) -> None:
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    path, truth = written
    peft_keys = {k: v for k, v in load_file(str(path)).items() if k.startswith("unet.")}
    kohya = convert_state_dict_to_kohya(
        {k.removeprefix("unet."): v for k, v in peft_keys.items()})
    for key in [k for k in kohya if k.endswith(".lora_down.weight")]:  # alpha = 4 (r 4): s = 1
        kohya[key.removesuffix(".lora_down.weight") + ".alpha"] = torch.tensor(4.0)
    out = tmp_path / "kohya.safetensors"
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(out))
    (adapter,) = load_paths([str(out)])
    norms = sorted(layer.delta.frobenius for layer in adapter.layers if layer.delta)
    expected = sorted(float(np.linalg.norm(d)) for n, (_, _, d) in truth.items()
                      if n.startswith("unet."))
    assert adapter.format.startswith("kohya") and len(norms) == len(expected) == 32
    assert norms == pytest.approx(expected, rel=1e-6)


def test_a_flux_transformer_lora_as_diffusers_saves_it(tmp_path: Path) -> None:
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    transformer.add_adapter(config)
    _randomise_b(transformer, 4)
    FluxPipeline.save_lora_weights(str(tmp_path),
                                   transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   transformer_lora_adapter_metadata=config.to_dict())
    truth = {f"transformer.{n}": m.get_delta_weight("default").detach().double().numpy()
             for n, m in transformer.named_modules()
             if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})}
    (adapter,) = load_paths([str(tmp_path / "pytorch_lora_weights.safetensors")])
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == set(truth) and len(truth) >= 7
    for name, delta in truth.items():
        layer = layers[name]
        assert layer.scaling == 2.0 and layer.delta is not None
        assert layer.delta.frobenius == pytest.approx(float(np.linalg.norm(delta)), rel=1e-6)
    assert [d.code for d in check_adapter(adapter, Settings())] == []


def test_a_kohya_file_reads_as_diffusers_loads_it(tmp_path: Path) -> None:
    """kohya → diffusers: the kohya file (from diffusers' own convert_state_dict_to_kohya,
    with .alpha tensors) read by loracheck, against the same file loaded by diffusers'
    ``lora_state_dict`` + ``load_lora_into_unet`` (the consumer's ΔW)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet, _ = _tiny_pipeline_parts()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"]))
    _randomise_b(unet, 5)
    kohya = convert_state_dict_to_kohya(
        {f"unet.{k}": v for k, v in get_peft_model_state_dict(unet).items()})
    for key in [k for k in kohya if k.endswith(".lora_down.weight")]:
        kohya[key.removesuffix(".lora_down.weight") + ".alpha"] = torch.tensor(8.0)
    path = tmp_path / "kohya.safetensors"
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    consumer, _ = _tiny_pipeline_parts()
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=consumer)
    truth = {}
    for name, module in consumer.named_modules():
        if hasattr(module, "get_delta_weight") and getattr(module, "lora_A", None):
            (adapter_name,) = module.lora_A.keys()
            delta = module.get_delta_weight(adapter_name).detach().double().numpy()
            truth["lora_unet_" + name.replace(".", "_")] = (module.scaling[adapter_name], delta)
    (adapter,) = load_paths([str(path)])
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == set(truth) and len(truth) == 16
    for name, (scale, delta) in truth.items():
        assert layers[name].scaling == scale == 2.0
        assert layers[name].delta is not None
        assert layers[name].delta.frobenius == pytest.approx(float(np.linalg.norm(delta)),
                                                             rel=1e-6)
    assert [d.code for d in check_adapter(adapter, Settings())] == []
