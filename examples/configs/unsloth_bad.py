"""unsloth with an alpha of 1 at rank 128 (scale 1/128) and bias training on."""

from unsloth import FastLanguageModel

model, tokenizer = FastLanguageModel.from_pretrained("unsloth/llama-3-8b-bnb-4bit")
model = FastLanguageModel.get_peft_model(
    model,
    r=128,
    lora_alpha=1,
    lora_dropout=0.3,
    target_modules=["q_proj", "v_proj"],
    bias="all",
)
