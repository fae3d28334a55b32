"""GPU benchmark: a LoRA training step of the reference implementation against PEFT.

    python benchmarks/gpu_step.py             # ~1.1 B-parameter Llama shape, bf16, CUDA
    python benchmarks/gpu_step.py --tiny      # a small config on CPU in fp32 (a smoke test)

Both sides wrap the same seeded ``LlamaForCausalLM`` (TinyLlama-1.1B's shape: 2048 wide,
22 layers, 32 heads, 4 KV heads, vocab 32000) with LoRA r 16, α 16, no dropout on all seven
projections, the same A and B and the same batch. PEFT is built with
``autocast_adapter_dtype=False`` so that both keep the adapter in bf16. Timing uses CUDA events
around whole steps (forward, backward, AdamW) after warm-up. Printed: ms/step, tokens/s and
the ratio reference / PEFT (below 1.0: the reference is faster). One run takes about a minute
on an H100-class GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from loracheck.model import LoraSpec
from loracheck.reference import inject
from peft_pair import copy_factors_into_peft

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_1B = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
TINY = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def build(cfg: dict[str, Any], seed: int, device: str, dtype: torch.dtype) -> Any:
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation="sdpa"))
    return model.to(dtype)


def build_pair(cfg: dict[str, Any], device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    spec = LoraSpec(source_format="bench", rank=16, alpha=16.0, dropout=0.0, target_modules=TARGETS)
    ours = build(cfg, 0, device, dtype)
    inject(ours, spec, init="random", seed=0)
    peft_cfg = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    theirs = get_peft_model(build(cfg, 0, device, dtype), peft_cfg, autocast_adapter_dtype=False)
    copy_factors_into_peft(ours, theirs)
    return ours, theirs


def step_fn(model: Any, ids: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    model.train()

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_ms(fn: Callable[[], None], steps: int, cuda: bool) -> float:
    """Median ms per call of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""
    times: list[float] = []
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small config, CPU, fp32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    args = parser.parse_args()
    if args.tiny:
        cfg, device, dtype, seq = TINY, "cpu", torch.float32, min(args.seq, 128)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --tiny for the CPU smoke test")
        cfg, device, dtype, seq = LLAMA_1B, "cuda", torch.bfloat16, args.seq
        torch.backends.cuda.matmul.allow_tf32 = True
    cuda = device == "cuda"
    ids = torch.randint(
        0, int(cfg["vocab_size"]), (args.batch, seq), generator=torch.Generator().manual_seed(0)
    ).to(device)
    ours, theirs = build_pair(cfg, device, dtype)
    n_params = sum(p.numel() for p in ours.parameters())
    n_train = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    with torch.no_grad():
        diff = float(
            (ours(input_ids=ids).logits.float() - theirs(input_ids=ids).logits.float()).abs().max()
        )
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(
        f"device {name}, {str(dtype).removeprefix('torch.')}; model {n_params / 1e9:.3f} B "
        f"params, LoRA {n_train / 1e6:.2f} M trainable; batch {args.batch}x{seq}; "
        f"max |logit diff| {diff:.3g}"
    )
    runs = {"reference": step_fn(ours, ids), "peft": step_fn(theirs, ids)}
    for fn in runs.values():
        for _ in range(args.warmup):
            fn()
    if cuda:
        torch.cuda.synchronize()
    # Interleave in blocks so that clock or thermal drift hits both.
    results: dict[str, list[float]] = {k: [] for k in runs}
    for block in range(4):
        order = list(runs) if block % 2 == 0 else list(reversed(runs))
        for key in order:
            results[key].append(time_ms(runs[key], max(args.steps // 4, 1), cuda))
    tokens = args.batch * seq
    ms = {k: statistics.median(v) for k, v in results.items()}
    for key in runs:
        print(f"{key:10} {ms[key]:9.2f} ms/step  {tokens / ms[key] * 1000:12.0f} tokens/s")
    print(f"ratio reference / PEFT: {ms['reference'] / ms['peft']:.3f}")
    if cuda:
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
