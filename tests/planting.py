"""Plant one fault into a copy of a real PEFT adapter, then check it the way the CLI does.

The adapters are written by ``get_peft_model(...).save_pretrained`` on a tiny Llama (see
``builders``); a fault is planted by rewriting the safetensors file (``safetensors.numpy``,
metadata ``{"format": "pt"}`` as PEFT writes it) or the ``adapter_config.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from builders import tiny_llama, train_steps
from loracheck.discover import discover
from loracheck.engine import check_adapter
from loracheck.load import LoadOptions, load_unit
from loracheck.model import Diagnostic, Severity
from loracheck.settings import Settings

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
Tensors = dict[str, np.ndarray]


def build_peft(
    out_dir: Path,
    *,
    steps: int = 0,
    r: int = 16,
    lora_alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    model: Mapping[str, Any] | None = None,
    safe_serialization: bool = True,
    save_embedding_layers: bool | str = "auto",
    seed: int = 0,
    **config: Any,
) -> Path:
    """A real PEFT adapter on ``tiny_llama(**model)``, trained ``steps`` Adam steps first.

    Unlike ``builders.peft_adapter`` the base model's config can be overridden (more layers,
    another width or vocabulary), and ``save_embedding_layers`` passed to ``save_pretrained``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(seed, **dict(model or {}))
    torch.manual_seed(seed + 1)
    cfg = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), **config)
    peft_model = get_peft_model(base, cfg)
    if steps:
        train_steps(peft_model, steps, seed=seed)
    peft_model.save_pretrained(
        str(out_dir),
        safe_serialization=safe_serialization,
        save_embedding_layers=save_embedding_layers,
    )
    return out_dir


def copy_adapter(src: Path, dst: Path) -> Path:
    """A fresh copy of an adapter folder to plant into (the module-scoped original stays)."""
    shutil.copytree(src, dst)
    return dst


def load_weights(folder: Path) -> Tensors:
    from safetensors.numpy import load_file

    return dict(load_file(str(folder / WEIGHTS)))


def save_weights(folder: Path, tensors: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(dict(tensors), str(folder / WEIGHTS), metadata={"format": "pt"})


def rewrite_weights(folder: Path, plant: Callable[[Tensors], None]) -> Tensors:
    """Load the adapter's tensors, let ``plant`` change the dict in place, write it back."""
    tensors = load_weights(folder)
    plant(tensors)
    save_weights(folder, tensors)
    return tensors


def edit_config(folder: Path, remove: Sequence[str] = (), **changes: Any) -> dict[str, Any]:
    """Set (and ``remove``) keys of ``adapter_config.json``, written back indented as PEFT
    writes it."""
    path = folder / CONFIG
    cfg: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    for key in remove:
        del cfg[key]
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return cfg


def factor_keys(tensors: Mapping[str, np.ndarray], factor: str, part: str = "") -> list[str]:
    """Sorted keys of one factor (``lora_A``, ``lora_B``, ``lora_magnitude_vector``,
    ``lora_embedding_A``...) whose key also contains ``part``."""
    return sorted(
        k for k in tensors
        if (f".{factor}." in k or k.endswith(f".{factor}")) and part in k
    )


def diagnose(folder: Path, stage: str = "auto", base: Any = None) -> list[Diagnostic]:
    """discover → load_unit → check_adapter with default Settings, as ``loracheck check``."""
    out: list[Diagnostic] = []
    for unit in discover([folder]):
        adapter = load_unit(unit, LoadOptions(stage=stage))
        if adapter is not None:
            out.extend(check_adapter(adapter, Settings(), base))
    return out


def codes(diags: Sequence[Diagnostic], *, infos: bool = True) -> set[str]:
    """The codes found, with or without those at severity info."""
    return {d.code for d in diags if infos or d.severity is not Severity.INFO}


def explain(diags: Sequence[Diagnostic]) -> str:
    """One line per diagnostic, for assertion messages."""
    return "\n".join(f"{d.code} [{d.severity.value}] {d.location}: {d.message}" for d in diags)
