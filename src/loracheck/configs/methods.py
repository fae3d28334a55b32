"""Which fine-tuning method a config names: the LoRA family, another method, or a full fine-tune.

One owner for every trainer's method vocabulary (PEFT's ``peft_type``, axolotl's ``adapter``,
LLaMA-Factory's ``finetuning_type``, mlx-lm's ``fine_tune_type``, ms-swift's ``train_type``,
kohya's ``network_module`` / ``LoRA_type`` / ``algo=``, ai-toolkit's ``network.type``). Each
function maps a raw value to ``(MethodKind, display name)``; None means "the value does not
decide" (not a string, or a name the trainer does not know), and the reader keeps LoRA. Where a
trainer gives an absent or blank key a meaning (axolotl: a full fine-tune), the function says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loracheck.model import MethodKind

Method = tuple[MethodKind, str]
LORA: Method = (MethodKind.LORA, "LoRA")
FULL: Method = (MethodKind.FULL, "full fine-tune")

# PEFT 0.21.2 PeftType values (peft/utils/peft_types.py) -> display names. Only LORA carries
# the LoRA family (DoRA and rsLoRA are LoraConfig flags); every other type has its own config
# class, in which r, alpha and the init mean something else (OFT's r counts blocks, so r = 0
# is legal there).
PEFT_TYPE_NAMES: Mapping[str, str] = {
    "LORA": "LoRA",
    "ADALORA": "AdaLoRA",
    "ADAMSS": "AdaMSS",
    "ADAPTION_PROMPT": "adaption prompt",
    "BEFT": "BEFT",
    "BOFT": "BOFT",
    "BONE": "Bone",
    "C3A": "C3A",
    "CARTRIDGE": "Cartridge",
    "CPT": "CPT",
    "DEFT": "DEFT",
    "DELORA": "DeLoRA",
    "FOURIERFT": "FourierFT",
    "FROD": "FRoD",
    "GLORA": "GLoRA",
    "GRALORA": "GraLoRA",
    "HIRA": "HiRA",
    "HRA": "HRA",
    "IA3": "IA3",
    "LILY": "LiLy",
    "LN_TUNING": "LN tuning",
    "LOHA": "LoHa",
    "LOKR": "LoKr",
    "MISS": "MiSS",
    "MULTITASK_PROMPT_TUNING": "multitask prompt tuning",
    "OFT": "OFT",
    "OSF": "OSF",
    "P_TUNING": "p-tuning",
    "PEANUT": "PEANuT",
    "POLY": "Poly",
    "PREFIX_TUNING": "prefix tuning",
    "PROMPT_TUNING": "prompt tuning",
    "PSOFT": "PSOFT",
    "PVERA": "PVeRA",
    "RANDLORA": "RandLoRA",
    "ROAD": "RoAd",
    "SHADOW": "Shadow",
    "SHIRA": "SHiRA",
    "SUPERTUNING": "SuperTuning",
    "TINYLORA": "TinyLoRA",
    "TRAINABLE_TOKENS": "trainable tokens",
    "UNILORA": "UniLoRA",
    "VBLORA": "VB-LoRA",
    "VERA": "VeRA",
    "WAVEFT": "WaveFT",
    "XLORA": "X-LoRA",
}


def _text(raw: Any) -> str | None:
    return raw.strip() if isinstance(raw, str) else None


def peft_method(peft_type: Any) -> Method | None:
    """``peft_type`` of an adapter_config.json (PEFT accepts any case)."""
    text = _text(peft_type)
    if text is None:
        return None
    key = text.upper().replace("-", "_")
    if key == "LORA":
        return LORA
    # A name PEFT does not know (a typo, a template placeholder) decides nothing: PEFT refuses
    # it, and the LoRA rules keep judging the rest of the file.
    return (MethodKind.OTHER, PEFT_TYPE_NAMES[key]) if key in PEFT_TYPE_NAMES else None


# LyCORIS algorithms (lycoris/kohya.py ``algo=``; kohya_ss GUI ``LoRA_type`` suffixes).
# LoCon is LoRA on conv layers too, with LoRA's α/dim scale: the LoRA family.
_LYCORIS_ALGOS: Mapping[str, Method] = {
    "lora": LORA,
    "locon": (MethodKind.LORA, "LoCon"),
    "loha": (MethodKind.OTHER, "LyCORIS LoHa"),
    "lokr": (MethodKind.OTHER, "LyCORIS LoKr"),
    "ia3": (MethodKind.OTHER, "LyCORIS (IA)3"),
    "dylora": (MethodKind.OTHER, "DyLoRA"),
    "glora": (MethodKind.OTHER, "LyCORIS GLoRA"),
    "full": (MethodKind.OTHER, "LyCORIS native fine-tuning"),
    "diag-oft": (MethodKind.OTHER, "LyCORIS diag-OFT"),
    "oft": (MethodKind.OTHER, "LyCORIS diag-OFT"),
    "boft": (MethodKind.OTHER, "LyCORIS BOFT"),
}


def lycoris_algo(algo: Any) -> Method | None:
    text = _text(algo)
    if text is None:
        return None
    key = text.lower().replace("_", "-")
    return _LYCORIS_ALGOS.get(key, (MethodKind.OTHER, f"LyCORIS {text}"))


def kohya_method(
    network_module: Any, lora_type: Any, network_args: Mapping[str, Any] | None
) -> Method:
    """A kohya sd-scripts / kohya_ss GUI config: algo= wins, then LoRA_type, then the module."""
    if network_args is not None and "algo" in network_args:
        found = lycoris_algo(network_args["algo"])
        if found is not None:
            return found
    gui = _text(lora_type)
    if gui:
        lowered = gui.lower()
        # kohya_ss GUI (kohya_gui/lora_gui.py): "LyCORIS/LoKr", "LyCORIS/iA3", "Kohya DyLoRA" …
        if lowered.startswith("lycoris/"):
            algo = lowered.split("/", 1)[1].replace(" ", "-")
            aliases = {"native-fine-tuning": "full", "diag-oft": "diag-oft", "ia3": "ia3"}
            found = lycoris_algo(aliases.get(algo, algo))
            if found is not None:
                return found
        if "dylora" in lowered:
            return (MethodKind.OTHER, "DyLoRA")
        if "locon" in lowered:
            return (MethodKind.LORA, "LoCon")
    module = _text(network_module) or ""
    if module.endswith("dylora"):
        return (MethodKind.OTHER, "DyLoRA")
    if module.startswith("lycoris"):
        return (MethodKind.LORA, "LoCon")  # lycoris.kohya without algo= is LoCon
    if module.endswith("oft"):
        return (MethodKind.OTHER, "OFT")
    return LORA


def axolotl_method(adapter: Any) -> Method | None:
    """axolotl's ``adapter``: blank or absent trains every parameter and ignores the lora_*
    keys (schemas/peft.py@00564c8 "leave blank to train all parameters"; loaders/adapter.py
    ``load_adapter`` returns the model unchanged for None); ``llama-adapter`` is PEFT's
    adaption prompt."""
    if adapter is None or (isinstance(adapter, str) and not adapter.strip()):
        return FULL
    text = _text(adapter)
    if text is None:
        return None
    name = text.lower()
    if name == "lora":
        return LORA
    if name == "qlora":
        return (MethodKind.LORA, "QLoRA")
    return (MethodKind.OTHER, "LLaMA-Adapter" if name == "llama-adapter" else text)


def llama_factory_method(finetuning_type: Any) -> Method | None:
    """LLaMA-Factory v0 ``finetuning_type`` (hparams/finetuning_args.py:464: lora, oft,
    freeze, full; default lora)."""
    text = _text(finetuning_type)
    if text is None:
        return None
    name = text.lower()
    if name in ("full", "freeze"):
        return (MethodKind.FULL, f"{name} fine-tune")
    if name == "lora":
        return LORA
    return (MethodKind.OTHER, "OFT" if name == "oft" else text)


# ms-swift==4.6.0 swift/pipelines/train/tuner.py:180-350: lora, longlora (and the lora_llm
# plugin) build a peft LoraConfig from lora_rank / lora_alpha; adalora builds an AdaLoraConfig
# (target_r / init_r), the others their own configs.
_SWIFT: Mapping[str, Method] = {
    "lora": LORA,
    "longlora": (MethodKind.LORA, "LongLoRA"),
    "lora_llm": LORA,
    "full": FULL,
    "adalora": (MethodKind.OTHER, "AdaLoRA"),
    "ia3": (MethodKind.OTHER, "IA3"),
    "vera": (MethodKind.OTHER, "VeRA"),
    "boft": (MethodKind.OTHER, "BOFT"),
    "fourierft": (MethodKind.OTHER, "FourierFT"),
    "reft": (MethodKind.OTHER, "ReFT"),
    "bone": (MethodKind.OTHER, "Bone"),
    "llamapro": (MethodKind.OTHER, "LLaMA-Pro"),
    "adapter": (MethodKind.OTHER, "adapter"),
}


def swift_method(tuner_type: Any) -> Method | None:
    """ms-swift ``tuner_type`` (4.x), ``train_type`` (3.x) or ``sft_type`` (2.x)."""
    text = _text(tuner_type)
    if text is None:
        return None
    return _SWIFT.get(text.lower(), (MethodKind.OTHER, text))


# ai-toolkit@f699f4b toolkit/config_modules.py NetworkType (lora_special.py also takes dora).
_AI_TOOLKIT: Mapping[str, Method] = {
    "lora": LORA,
    "lierla": LORA,  # kohya's name for LoRA on Linear layers only
    "locon": (MethodKind.LORA, "LoCon"),
    "dora": (MethodKind.LORA, "DoRA"),
    "lokr": (MethodKind.OTHER, "LyCORIS LoKr"),
    "lorm": (MethodKind.OTHER, "LoRM"),
}


def ai_toolkit_method(network_type: Any) -> Method | None:
    """ai-toolkit ``network.type`` (default lora)."""
    text = _text(network_type)
    if text is None:
        return None
    return _AI_TOOLKIT.get(text.lower(), (MethodKind.OTHER, text))


def mlx_method(fine_tune_type: Any) -> Method | None:
    """mlx-lm ``fine_tune_type`` (mlx_lm/lora.py@9caed7f: lora, dora, full; default lora)."""
    text = _text(fine_tune_type)
    if text is None:
        return None
    return {"lora": LORA, "dora": (MethodKind.LORA, "DoRA"), "full": FULL}.get(
        text.lower(), (MethodKind.OTHER, text))


def unsloth_studio_method(training_type: Any) -> Method | None:
    """Unsloth Studio ``training.training_type`` (unsloth_cli/config.py: lora or full)."""
    text = _text(training_type)
    if text is None:
        return None
    return FULL if text.lower() == "full" else LORA if text.lower() == "lora" else None


def trl_method(use_peft: Any) -> Method:
    """TRL's ``use_peft``: trl/trainer/utils.py ``get_peft_config`` returns None unless it is
    true, and it defaults to False (trl/trainer/model_config.py@bc13ae6): lora_* keys alone
    train nothing."""
    on = use_peft is True or (isinstance(use_peft, str)
                              and use_peft.strip().lower() in ("true", "1", "yes"))
    return LORA if on else (MethodKind.FULL, "full fine-tune (use_peft is not true)")
