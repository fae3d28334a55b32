"""loracheck: a static analyzer and verifier for LoRA configs and checkpoints."""

__version__ = "0.1.0"
