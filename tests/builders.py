"""Real artifacts for tests: tiny transformers models and adapters written by real PEFT.

Nothing is downloaded: models are built from a config. Every builder writes into a folder the
caller owns (a pytest tmp dir). Hand-written files (kohya, mlx, LLMBook, torchtune, diffusers)
follow the published key grammars, because those formats have no installable writer here.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TINY_LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(seed: int = 0, **overrides: Any) -> Any:
    """A seeded LlamaForCausalLM small enough for CPU tests (about 100k parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY_LLAMA, **overrides})
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model


def save_tiny_llama(out_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny base model folder (config.json + model.safetensors)."""
    model = tiny_llama(seed, **overrides)
    model.save_pretrained(str(out_dir))
    return out_dir


def train_steps(model: Any, steps: int, seed: int = 0, lr: float = 1e-2) -> None:
    """A few Adam steps on random tokens so that every adapter factor moves."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, vocab, (2, 16), generator=gen)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def peft_adapter(
    out_dir: Path,
    *,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: list[str] | str | None = None,
    init_lora_weights: bool | str = True,
    steps: int = 0,
    seed: int = 0,
    safe_serialization: bool = True,
    **config: Any,
) -> Path:
    """Write a PEFT adapter made by ``get_peft_model(...).save_pretrained`` on a tiny Llama.

    ``steps > 0`` trains it for that many steps first. Extra keyword arguments go to LoraConfig.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(seed)
    torch.manual_seed(seed + 1)
    cfg = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=target_modules if target_modules is not None else ["q_proj", "v_proj"],
        init_lora_weights=init_lora_weights,
        **config,
    )
    peft_model = get_peft_model(model, cfg)
    if steps:
        train_steps(peft_model, steps, seed=seed)
    peft_model.save_pretrained(str(out_dir), safe_serialization=safe_serialization)
    return out_dir


# --- hand-written formats (no installable writer) -------------------------------------------

_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("float64"): "F64",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}


def write_safetensors(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    bf16: frozenset[str] = frozenset(),
) -> Path:
    """Write a safetensors file by its published layout (u64 header length, JSON, data).

    Keys in ``bf16`` are stored as BF16 (float32 rounded to nearest even, upper 16 bits).
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    blobs: list[bytes] = []
    offset = 0
    for key, arr in tensors.items():
        arr = np.asarray(arr, order="C")  # ascontiguousarray would turn 0-dim into (1,)
        if key in bf16:
            bits = arr.astype(np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            blob, dtype = rounded.tobytes(), "BF16"
        else:
            blob, dtype = arr.tobytes(), _DTYPES[arr.dtype]
        header[key] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    return path


def kaiming_a(rng: np.random.Generator, r: int, fan_in: int) -> np.ndarray:
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=(r, fan_in)).astype(np.float32)


def kohya_file(
    path: Path,
    *,
    r: int = 4,
    alpha: float = 2.0,
    trained: bool = True,
    seed: int = 0,
    metadata: Mapping[str, str] | None = None,
    nan: bool = False,
) -> Path:
    """A kohya sd-scripts LoRA: ``lora_unet_*.lora_down/.lora_up/.alpha`` + ``ss_*`` metadata;
    ``nan`` plants a NaN in the first ``lora_up`` (an LC203 witness)."""
    rng = np.random.default_rng(seed)
    mods = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (64, 64),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": (64, 64),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (48, 48),
    }
    tensors: dict[str, np.ndarray] = {}
    for name, (out_f, in_f) in mods.items():
        tensors[f"{name}.lora_down.weight"] = kaiming_a(rng, r, in_f)
        up = rng.normal(0, 0.01, size=(out_f, r)) if trained else np.zeros((out_f, r))
        tensors[f"{name}.lora_up.weight"] = up.astype(np.float32)
        tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    if nan:
        tensors[next(k for k in tensors if k.endswith("lora_up.weight"))][0, 0] = np.nan
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(r),
        "ss_network_alpha": str(alpha),
        "ss_network_dropout": "None",
    }
    meta.update(metadata or {})
    return write_safetensors(path, tensors, meta)


def check_config(folder: Path, name: str, text: str) -> list[Any]:
    """Write a config file ``name`` holding ``text`` and return what ``check`` finds in it."""
    from loracheck.engine import check_adapter
    from loracheck.load import load_paths
    from loracheck.settings import Settings

    path = folder / name
    path.write_text(text)
    (adapter,) = load_paths([str(path)])
    return check_adapter(adapter, Settings())


def judge_probe(record: Any, **settings: Any) -> list[Any]:
    """The LC3xx diagnostics the engine gives for a verify record (isolated settings)."""
    from loracheck.engine import check_probe
    from loracheck.model import Adapter
    from loracheck.settings import load_settings

    resolved = load_settings([Path.cwd()], isolated=True, **settings)
    subject = Adapter(path=record.model, format="verify", files=[], spec=None)
    return check_probe(record, subject, resolved)


def probe_text(record: Any) -> str:
    """The verify text report of ``record`` judged with the default settings (for messages)."""
    from loracheck.model import Report
    from loracheck.render import render_verify_text

    diagnostics = judge_probe(record)
    report = Report(diagnostics=diagnostics, probe=record,
                    passed=not any(d.severity.value == "error" for d in diagnostics))
    return render_verify_text(report, color=False, root=Path.cwd())


# Address-space cap of a capped run: a regression that allocates without bound fails with
# MemoryError in the child instead of taking the machine down.
CAP_BYTES = 2**30


def run_capped(
    args: list[str], *, prelude: str = "", timeout: float = 60.0, cap: int = CAP_BYTES
) -> tuple[int, str, str, float]:
    """``loracheck ARGS`` in a child process capped at ``cap`` bytes of address space.

    ``prelude`` is Python run before ``main`` (a patch that simulates a concurrent writer).
    Returns the exit code, stdout, stderr and the wall time in seconds.
    """
    import resource
    import subprocess
    import sys
    import time

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = f"import sys\n{prelude}\nfrom loracheck.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start
