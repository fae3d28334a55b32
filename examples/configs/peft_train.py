"""Fine-tune with PEFT: a sound LoraConfig."""

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

RANK = 16

model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.2-1B")
config = LoraConfig(
    r=RANK,
    lora_alpha=32,
    lora_dropout=0.05,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    bias="none",
    task_type="CAUSAL_LM",
)
model = get_peft_model(model, config)
