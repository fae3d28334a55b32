"""Write the example adapters shipped in examples/adapters/, with real PEFT on a tiny Llama.

    pip install 'loracheck[test]' && python examples/make_adapters.py [OUT_DIR]

healthy/        trained for 20 steps (trainer_state.json says so): `loracheck check` passes
at-init/        saved right after get_peft_model: B = 0, stage init, nothing to report
broken-nan/     the healthy adapter with a NaN planted in one lora_B (LC203)
broken-no-op/   its trainer_state.json says 20 steps, but every lora_B is still zero (LC207)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, TrainerState


def tiny_peft_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return get_peft_model(LlamaForCausalLM(cfg), lora)


def train(model: torch.nn.Module, steps: int = 20) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, 128, (4, 32), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def plant(src: Path, dst: Path, edit: str) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = dst / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    for key in sorted(tensors):
        if key.endswith("lora_B.weight"):
            if edit == "nan":
                tensors[key][0, 0] = float("nan")
                break
            tensors[key].zero_()
    save_file(tensors, str(weights), metadata={"format": "pt"})


def record_steps(folder: Path, steps: int) -> None:
    """trainer_state.json as transformers' Trainer writes it into each checkpoint folder."""
    TrainerState(global_step=steps, max_steps=steps, num_train_epochs=1, epoch=1.0,
                 logging_steps=5, save_steps=steps).save_to_json(str(folder / "trainer_state.json"))


def main(out: Path) -> None:
    model = tiny_peft_model()
    model.save_pretrained(str(out / "at-init"))
    train(model)
    model.save_pretrained(str(out / "healthy"))
    plant(out / "healthy", out / "broken-nan", "nan")
    plant(out / "healthy", out / "broken-no-op", "zero")
    for name in ("healthy", "broken-nan", "broken-no-op"):
        record_steps(out / name, 20)
    for folder in out.iterdir():
        (folder / "README.md").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "adapters")
