"""Tiny transformers models of many architectures, built from a config (nothing is downloaded).

Each entry is a seeded, float32, eval-mode model with hidden size <= 128, two layers (per stack)
and a vocabulary <= 1000, so building and saving one takes well under a second on a CPU.
``save_arch`` writes ``config.json`` (with ``architectures``) and ``model.safetensors``; no
tokenizer is written. Tests reload a folder with ``AUTO_CLASS[name]`` and feed it
``dummy_inputs(name, ...)``.

Tied and untied heads are set explicitly (see ``TIED``): gemma, gemma3 text, gpt2, opt and
t5 tie the output head to the input embedding; llama, mistral, qwen2, qwen3, phi3, gpt_neox,
falcon and mixtral do not. The encoder and vision entries (bert-seq-cls, vit) have no LM head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VOCAB = 512
HIDDEN = 64
IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_LABELS = 3

_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)

# name -> (config class, model class, config kwargs); classes are looked up in transformers.
_SPECS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**_DECODER, "tie_word_embeddings": False}),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {**_DECODER, "sliding_window": None, "tie_word_embeddings": False},
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**_DECODER, "tie_word_embeddings": False}),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {**_DECODER, "head_dim": 16, "tie_word_embeddings": False},
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        {**_DECODER, "head_dim": 16, "tie_word_embeddings": True},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            **_DECODER,
            "head_dim": 16,
            "sliding_window": 32,
            "layer_types": ["sliding_attention", "full_attention"],
            "tie_word_embeddings": True,
        },
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            **_DECODER,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        },
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=2,
            n_head=4,
            n_inner=96,
            n_positions=128,
            bos_token_id=VOCAB - 1,
            eos_token_id=VOCAB - 1,
            tie_word_embeddings=True,
        ),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        ),
    ),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            pad_token_id=1,
            tie_word_embeddings=True,
        ),
    ),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            new_decoder_architecture=False,
            multi_query=True,
            parallel_attn=True,
            bias=False,
            alibi=False,
            max_position_embeddings=128,
            tie_word_embeddings=False,
        ),
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {
            **_DECODER,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": None,
            "tie_word_embeddings": False,
        },
    ),
    "bert-seq-cls": (
        "BertConfig",
        "BertForSequenceClassification",
        dict(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            num_labels=NUM_LABELS,
        ),
    ),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        dict(
            vocab_size=VOCAB,
            d_model=HIDDEN,
            d_kv=16,
            d_ff=96,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            tie_word_embeddings=True,
        ),
    ),
    "vit": (
        "ViTConfig",
        "ViTForImageClassification",
        dict(
            hidden_size=HIDDEN,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            num_channels=3,
            num_labels=NUM_LABELS,
        ),
    ),
}

ARCHITECTURES: tuple[str, ...] = tuple(_SPECS)

# What the model is for: picks the Auto class, the inputs and a natural loss.
ARCH_TASK: dict[str, str] = {
    name: "causal-lm" for name in ARCHITECTURES if name not in ("bert-seq-cls", "t5", "vit")
}
ARCH_TASK.update({"bert-seq-cls": "seq-cls", "t5": "seq2seq", "vit": "vision"})

AUTO_CLASS: dict[str, str] = {
    name: {
        "causal-lm": "AutoModelForCausalLM",
        "seq-cls": "AutoModelForSequenceClassification",
        "seq2seq": "AutoModelForSeq2SeqLM",
        "vision": "AutoModelForImageClassification",
    }[task]
    for name, task in ARCH_TASK.items()
}

# config.model_type of each entry (the key PEFT's default target_modules mapping is keyed by).
MODEL_TYPE: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "opt": "opt",
    "falcon": "falcon",
    "mixtral": "mixtral",
    "bert-seq-cls": "bert",
    "t5": "t5",
    "vit": "vit",
}

# Whether the output head shares its weight with the input embedding (set in the configs above).
TIED: dict[str, bool] = {
    name: bool(_SPECS[name][2].get("tie_word_embeddings", False)) for name in ARCHITECTURES
}

# Entries whose model.safetensors keys differ from their in-memory module names: transformers 5
# saves the original (v4) names by default (vit: vit.encoder.layer.N.attention.attention.query;
# mixtral: block_sparse_moe.experts.E.w1/w2/w3 instead of the fused mlp.experts.gate_up_proj /
# down_proj parameters; gpt_neox: embed_out instead of lm_head).
SAVED_KEYS_DIFFER: frozenset[str] = frozenset({"vit", "mixtral", "gpt_neox"})

# Name of the output head / classifier module (excluded by PEFT's "all-linear").
HEAD: dict[str, str] = {name: "lm_head" for name in ARCHITECTURES}
HEAD.update({"bert-seq-cls": "classifier", "vit": "classifier"})


def build_arch(name: str, seed: int = 0) -> Any:
    """A seeded, float32, eval-mode model of architecture ``name`` (one of ``ARCHITECTURES``)."""
    import torch
    import transformers

    if name not in _SPECS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    config_cls, model_cls, kwargs = _SPECS[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config)
    model.to(torch.float32)
    model.eval()
    return model


def save_arch(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny model folder (``config.json`` with ``architectures`` + ``model.safetensors``).

    transformers 5 always writes safetensors (its ``save_pretrained`` has no
    ``safe_serialization`` switch any more), so none is passed.
    """
    model = build_arch(name, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir


def load_arch(name: str, folder: Path) -> Any:
    """Reload a ``save_arch`` folder with its Auto class, offline and without remote code."""
    import transformers

    auto = getattr(transformers, AUTO_CLASS[name])
    model = auto.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    model.eval()
    return model


def dummy_inputs(name: str, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, Any]:
    """Fixed random inputs for ``name``: token ids, or ``pixel_values`` (B, 3, 32, 32) for vit.

    Token ids avoid 0 and 1 (pad / eos in some configs). t5 gets ``decoder_input_ids`` too.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    task = ARCH_TASK[name]
    if task == "vision":
        pixels = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        return {"pixel_values": pixels}
    ids = torch.randint(2, VOCAB, (batch, seq), generator=gen)
    if task == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids.clone()}
    return {"input_ids": ids}


def probe_loss(name: str, model: Any, inputs: dict[str, Any], labels: Any = None) -> Any:
    """A natural scalar loss for a "memorise one fixed batch" probe.

    causal-lm and seq2seq: the model's own LM cross-entropy with ``labels = input_ids``.
    seq-cls and vision: cross-entropy of the logits against ``labels`` (fixed random class ids,
    shape (batch,)); when ``labels`` is None they are drawn from a generator seeded with 0.
    """
    import torch

    task = ARCH_TASK[name]
    if task in ("causal-lm", "seq2seq"):
        feed = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
        return model(**feed, labels=inputs["input_ids"]).loss
    logits = model(**inputs).logits
    if labels is None:
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, NUM_LABELS, (logits.shape[0],), generator=gen)
    return torch.nn.functional.cross_entropy(logits, labels)
