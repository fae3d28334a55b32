"""mlx-lm LoRA config (YAML, or the adapter_config.json mlx-lm writes) -> LoraSpec.

``lora_parameters.scale`` is the multiplier itself (s = scale, not alpha/r). An ``alpha`` inside
``lora_parameters`` is what pre-2025 mlx-lm configs carried; it goes to extras, not to alpha.

mlx-lm fills its defaults top-level key by key (mlx_lm/lora.py@9caed7f ``main``): a config
without ``lora_parameters`` gets {rank 8, dropout 0.0, scale 10.0}, but a given mapping replaces
the default whole, and ``linear_to_lora_layers`` reads ``config["rank"]``, ``["scale"]`` and
``["dropout"]`` (mlx_lm/tuner/utils.py@c042c22): the ones missing are listed in
``extras["mlx_missing_parameters"]``.
"""

from __future__ import annotations

from loracheck.configs import methods
from loracheck.configs.documents import Doc
from loracheck.configs.fields import SpecBuilder, placeholder_text
from loracheck.configs.semantics import MLX_DEFAULT_PARAMETERS
from loracheck.model import LoraSpec, MethodKind

_PARAMS = {"rank": "rank", "scale": "scale", "dropout": "dropout", "keys": "target_modules"}
_TOP_EXTRAS = (
    "fine_tune_type",
    "num_layers",
    "lora_layers",
    "adapter_path",
    "resume_adapter_file",
    "train",
    "iters",
    "learning_rate",
    "batch_size",
)


def read_mlx(doc: Doc) -> LoraSpec:
    b = SpecBuilder("mlx", doc.path)
    found, params, line = doc.lookup("lora_parameters")
    if found:
        if isinstance(params, dict):
            for key, value in params.items():
                sub_line = doc.line("lora_parameters", key)
                if key in _PARAMS:
                    b.set(_PARAMS[key], value, sub_line, key=f"lora_parameters.{key}")
                elif key == "alpha":
                    b.extra("mlx_alpha", value, sub_line)
                elif isinstance(key, str):
                    b.extra(f"lora_parameters.{key}", value, sub_line)
        else:
            b.invalid["lora_parameters"] = repr(params)
            if line is not None:
                b.lines["lora_parameters"] = line
    for key in _TOP_EXTRAS:
        present, value, key_line = doc.lookup(key)
        if present:
            b.extra(key, value, key_line)
    present, ftype, ftype_line = doc.lookup("fine_tune_type")
    if present and isinstance(ftype, str):
        # DoRA is a fine-tune type in mlx-lm, not a flag.
        b.set("use_dora", ftype.lower() == "dora", ftype_line, key="fine_tune_type")
    method = methods.mlx_method(ftype) if placeholder_text(ftype) is None else None
    if method is not None:
        b.set_method(*method)
    if b.method is MethodKind.LORA:
        if not found:
            for key, value in MLX_DEFAULT_PARAMETERS.items():
                b.default(_PARAMS[key], value)
        elif isinstance(params, dict):
            missing = [k for k in ("rank", "scale", "dropout") if k not in params]
            if missing:
                b.extra("mlx_missing_parameters", missing)
    present, model, model_line = doc.lookup("model")
    if present:
        b.set("base_model", model, model_line, key="model")
    b.suppressions = doc.suppressions
    return b.build()
