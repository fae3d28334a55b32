"""A LoraConfig with a random B (init_lora_weights=False) and a rank read at run time."""

import sys

from peft import LoraConfig, get_peft_model

rank = int(sys.argv[1])
config = LoraConfig(
    r=rank,
    lora_alpha=16,
    init_lora_weights=False,
    target_modules=["q_proj", "v_proj"],
)
model = get_peft_model(None, config)
