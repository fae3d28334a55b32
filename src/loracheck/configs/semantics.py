"""Each trainer's semantics: its defaults, its scaling convention, what it writes into the adapter.

A config is judged as its trainer reads it, so a value the file leaves out takes the trainer's
own default (origin ``trainer default``), looked up in the trainer's source at the version cited
beside each table. PEFT's own defaults (``adapter_config.json``) are not filled in: a saved PEFT
config always carries r and lora_alpha, so a missing one is worth a finding there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loracheck.configs.fields import SpecBuilder
from loracheck.model import MethodKind, ValueOrigin
from loracheck.scaling import ScaleConvention


@dataclass(frozen=True)
class TrainerSemantics:
    """How one trainer resolves a LoRA config.

    ``defaults``: spec field -> the value the trainer uses when the file omits it.
    ``alpha_per_rank``: alpha = k · rank when the file omits alpha (LLaMA-Factory v0: k = 2);
    it wins over ``defaults["alpha"]``.
    """

    trainer: str
    convention: ScaleConvention
    writes: str
    source: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    alpha_per_rank: float | None = None


_ALPHA_R = ScaleConvention.ALPHA_OVER_R

SEMANTICS: Mapping[str, TrainerSemantics] = {
    "peft": TrainerSemantics(
        "PEFT", _ALPHA_R, "itself (adapter_config.json)",
        "peft==0.21.2 tuners/lora/config.py (r 8, lora_alpha 8: not filled in, see module doc)",
    ),
    # axolotl-ai-cloud/axolotl@067b021 src/axolotl/utils/schemas/peft.py: lora_r and lora_alpha
    # have no default (None), lora_dropout 0.0; loaders/adapter.py passes them to LoraConfig.
    "axolotl": TrainerSemantics(
        "axolotl", _ALPHA_R, "a PEFT adapter_config.json with r, lora_alpha, target_modules",
        "axolotl@067b021 src/axolotl/utils/schemas/peft.py",
        defaults={"dropout": 0.0},
    ),
    # llamafactory==0.9.5 llamafactory/hparams/finetuning_args.py:77 lora_rank 8, :73 dropout
    # 0.0, :81 lora_target "all", :568 `lora_alpha = lora_alpha or lora_rank * 2`.
    "llama-factory": TrainerSemantics(
        "LLaMA-Factory", _ALPHA_R, "a PEFT adapter_config.json (alpha = 2·rank when unset)",
        "llamafactory==0.9.5 hparams/finetuning_args.py:69-81,568",
        defaults={"rank": 8, "dropout": 0.0, "target_modules": "all-linear",
                  "use_rslora": False, "use_dora": False},
        alpha_per_rank=2.0,
    ),
    # llamafactory==0.9.5 llamafactory/v1/plugins/model_plugins/peft.py:31-60: peft_config
    # {name: lora} with r 8, lora_alpha 16 (fixed), lora_dropout 0.05, target_modules "all".
    "llama-factory-v1": TrainerSemantics(
        "LLaMA-Factory v1", _ALPHA_R, "a PEFT adapter_config.json",
        "llamafactory==0.9.5 v1/plugins/model_plugins/peft.py:31-60",
        defaults={"rank": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": "all-linear",
                  "use_rslora": False, "use_dora": False},
    ),
    # pytorch/torchtune@fa59233 torchtune/models/*/_model_builders.py: lora_rank 8,
    # lora_alpha 16, lora_dropout 0.0 (lora_llama3_1_8b, lora_qwen2_5_*).
    "torchtune": TrainerSemantics(
        "torchtune", _ALPHA_R,
        "adapter_model.pt (torchtune keys), adapter_model.safetensors and adapter_config.json "
        "(PEFT keys, r and lora_alpha only)",
        "torchtune@fa59233 torchtune/models/qwen2_5/_model_builders.py",
        defaults={"rank": 8, "alpha": 16.0, "dropout": 0.0},
    ),
    # huggingface/trl@f2cd577 trl/trainer/model_config.py:103-145: lora_r 16, lora_alpha 32,
    # lora_dropout 0.05, lora_target_modules None (PEFT's per-architecture default).
    "trl": TrainerSemantics(
        "TRL", _ALPHA_R, "a PEFT adapter_config.json",
        "trl@f2cd577 trl/trainer/model_config.py:103-145",
        defaults={"rank": 16, "alpha": 32.0, "dropout": 0.05},
    ),
    # RUCAIBox/LLMBox training/train.py: lora_r 16, lora_alpha 16, lora_dropout 0.05.
    "llmbox": TrainerSemantics(
        "LLMBox", _ALPHA_R, "a PEFT adapter_config.json", "LLMBox training/train.py",
        defaults={"rank": 16, "alpha": 16.0, "dropout": 0.05},
    ),
    # unsloth==2026.10.9 unsloth/models/llama.py:4569-4593 get_peft_model: r 16,
    # lora_alpha 16, lora_dropout 0.0, bias "none", the seven projections (:3209-3217).
    "unsloth": TrainerSemantics(
        "unsloth", _ALPHA_R, "a PEFT adapter_config.json",
        "unsloth==2026.10.9 unsloth/models/llama.py:3209-3217,4569-4593",
        defaults={"rank": 16, "alpha": 16.0, "dropout": 0.0, "bias": "none",
                  "use_rslora": False,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"]},
    ),
    # unsloth==2026.10.9 unsloth_cli/config.py: the lora: section of `unsloth train --config`
    # (Studio) defaults lora_r 64, lora_alpha 16, lora_dropout 0.0, the seven projections.
    "unsloth-studio": TrainerSemantics(
        "Unsloth Studio", _ALPHA_R, "a PEFT adapter_config.json",
        "unsloth==2026.10.9 unsloth_cli/config.py",
        defaults={"rank": 64, "alpha": 16.0, "dropout": 0.0, "use_rslora": False,
                  "use_dora": False,
                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"]},
    ),
    # ms-swift==4.6.0 swift/arguments/tuner_args.py:116-175: lora_rank 8, lora_alpha 32,
    # lora_dropout 0.05, target_modules ['all-linear'], lora_bias 'none'.
    "ms-swift": TrainerSemantics(
        "ms-swift", _ALPHA_R, "a PEFT adapter_config.json",
        "ms-swift==4.6.0 swift/arguments/tuner_args.py:116-175",
        defaults={"rank": 8, "alpha": 32.0, "dropout": 0.05, "target_modules": "all-linear",
                  "bias": "none", "use_rslora": False, "use_dora": False},
    ),
    # Lightning-AI/litgpt@c16c72c litgpt/finetune/lora.py setup(): lora_r 8, lora_alpha 16,
    # lora_dropout 0.05, lora_query and lora_value on; litgpt/lora.py scaling = alpha / r.
    "litgpt": TrainerSemantics(
        "litgpt", _ALPHA_R, "lit_model.pth.lora (litgpt keys) and hyperparameters.yaml",
        "litgpt@c16c72c litgpt/finetune/lora.py; litgpt@01e39f5 litgpt/lora.py",
        defaults={"rank": 8, "alpha": 16.0, "dropout": 0.05},
    ),
    # ostris/ai-toolkit@f699f4b toolkit/config_modules.py NetworkConfig: alpha 1.0,
    # linear_alpha defaults to alpha, conv_alpha to conv; toolkit/lora_special.py@a6c70a7
    # scale = alpha / lora_dim (alpha None or 0 -> lora_dim), kohya style.
    "ai-toolkit": TrainerSemantics(
        "ai-toolkit", ScaleConvention.KOHYA, "kohya-style or PEFT-style safetensors",
        "ai-toolkit@f699f4b toolkit/config_modules.py; @a6c70a7 toolkit/lora_special.py",
        defaults={"alpha": 1.0},
    ),
    # kohya-ss/sd-scripts@48d368f train_network.py: --network_dim None -> 4 (networks/lora.py
    # create_network), --network_alpha 1; scale = alpha / dim per module.
    "kohya": TrainerSemantics(
        "kohya sd-scripts", ScaleConvention.KOHYA, "safetensors with per-module .alpha and ss_*",
        "sd-scripts@48d368f train_network.py, networks/lora.py",
        defaults={"rank": 4, "alpha": 1.0},
    ),
    "kohya-metadata": TrainerSemantics(
        "kohya sd-scripts", ScaleConvention.KOHYA, "safetensors with per-module .alpha and ss_*",
        "sd-scripts@48d368f train_network.py",
    ),
    # ml-explore/mlx-lm@9caed7f mlx_lm/lora.py CONFIG_DEFAULTS: lora_parameters {rank 8,
    # dropout 0.0, scale 10.0} used only when the file has no lora_parameters at all (a given
    # mapping replaces the default whole: mlx_lm/tuner/utils.py@c042c22 reads config["scale"]).
    "mlx": TrainerSemantics(
        "mlx-lm", ScaleConvention.MLX, "adapters.safetensors and adapter_config.json (all args)",
        "mlx-lm@9caed7f mlx_lm/lora.py CONFIG_DEFAULTS; @c042c22 mlx_lm/tuner/utils.py",
    ),
    "python": TrainerSemantics(
        "PEFT (script)", _ALPHA_R, "a PEFT adapter_config.json", "peft==0.21.2 LoraConfig",
        defaults={"rank": 8, "alpha": 8.0, "dropout": 0.0},
    ),
    "diffusers": TrainerSemantics(
        "diffusers", _ALPHA_R, "pytorch_lora_weights.safetensors with lora_adapter_metadata",
        "diffusers@58eb52c loaders/lora_base.py",
    ),
}

# mlx-lm's defaults when a config has no lora_parameters mapping at all (see SEMANTICS["mlx"]).
MLX_DEFAULT_PARAMETERS: Mapping[str, Any] = {"rank": 8, "dropout": 0.0, "scale": 10.0}


def apply_defaults(b: SpecBuilder, fmt: str) -> None:
    """Fill what the file leaves out with ``fmt``'s trainer defaults (LoRA family only)."""
    semantics = SEMANTICS.get(fmt)
    if semantics is None or b.method is not MethodKind.LORA:
        return
    if semantics.alpha_per_rank is not None and b.invalid.get("alpha") == "None":
        # LLaMA-Factory's `lora_alpha or lora_rank * 2` turns a null into 2·rank; elsewhere a
        # null reaches the layer as None and fails there, so it stays invalid.
        del b.invalid["alpha"]
    if semantics.alpha_per_rank is not None and "rank" in b.unresolved and not b.said("alpha"):
        b.mark_unresolved("alpha", f"{semantics.alpha_per_rank:g} × {b.unresolved['rank']}",
                          b.origins.get("rank", ValueOrigin.PLACEHOLDER))
    if "rank" in semantics.defaults:
        b.default("rank", semantics.defaults["rank"])
    if semantics.alpha_per_rank is not None and not b.said("alpha"):
        rank = b.get("rank")
        if isinstance(rank, int) and rank > 0:
            b.default("alpha", float(semantics.alpha_per_rank * rank))
    for spec_field, value in semantics.defaults.items():
        if spec_field == "alpha" and semantics.alpha_per_rank is not None:
            continue
        b.default(spec_field, list(value) if isinstance(value, list) else value)


def convention(fmt: str) -> ScaleConvention:
    """The scaling convention ``fmt``'s trainer applies (α/r unless the table says otherwise)."""
    semantics = SEMANTICS.get(fmt)
    return semantics.convention if semantics is not None else ScaleConvention.ALPHA_OVER_R
