"""CPU benchmark: the reference LoRA against PEFT, side by side, on the same model and batch.

    python benchmarks/bench_train_step.py [--steps 20] [--threads 2]

Both sides wrap the same seeded transformers Llama with the same config (r 16, α 16, dropout
0.05, all seven projections), the same A and B, the same batch and the same seed, and run
interleaved so that machine noise hits both. Printed: median ms of a training step (forward,
backward, AdamW step), of inference unmerged and merged, the ratios reference / PEFT (below
1.0 means the reference is faster), and the wall time of ``run_verify`` with defaults in a
fresh interpreter (imports included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from loracheck.model import LoraSpec
from loracheck.reference import inject, merge
from peft_pair import copy_factors_into_peft

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIG = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def base_model(seed: int) -> Any:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa"))


def build_pair(seed: int) -> tuple[Any, Any]:
    spec = LoraSpec(
        source_format="bench", rank=16, alpha=16.0, dropout=0.05, target_modules=TARGETS
    )
    ours = base_model(seed)
    inject(ours, spec, init="random", seed=seed)
    cfg = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS)
    theirs = get_peft_model(base_model(seed), cfg)
    copy_factors_into_peft(ours, theirs)
    return ours, theirs


def train_step_fn(model: Any, ids: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def step() -> None:
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_fn(model: Any, ids: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)

    return run


def interleaved(a: Callable[[], None], b: Callable[[], None], n: int) -> tuple[float, float]:
    """Median ms of ``a`` and ``b``, alternating, after two warm-up calls each."""
    for _ in range(2):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(n):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(ta), statistics.median(tb)


def verify_wall(runs: int) -> tuple[float, float]:
    code = (
        "import time; t=time.perf_counter();"
        "from loracheck.verify import VerifyOptions, run_verify;"
        "r=run_verify(VerifyOptions()); assert r.losses is not None;"
        "print(time.perf_counter()-t, r.timing['total_s'])"
    )
    walls, inner = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
        walls.append(time.perf_counter() - t0)
        inner.append(float(out[1]))
    return statistics.median(walls), statistics.median(inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--verify-runs", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ids = torch.randint(
        0, CONFIG["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    ours, theirs = build_pair(0)
    with torch.no_grad():
        ours.eval()
        theirs.eval()
        diff = float((ours(input_ids=ids).logits - theirs(input_ids=ids).logits).abs().max())
    print(
        f"model: Llama {CONFIG['hidden_size']}d x {CONFIG['num_hidden_layers']} layers, "
        f"LoRA r16 a16 dropout 0.05 on {len(TARGETS)} projections; batch {args.batch}x"
        f"{args.seq}; torch threads {torch.get_num_threads()}; max |logit diff| {diff:.2e}"
    )
    rows = []
    t_ours, t_peft = interleaved(train_step_fn(ours, ids), train_step_fn(theirs, ids), args.steps)
    rows.append(("train step", t_ours, t_peft))
    t_ours, t_peft = interleaved(infer_fn(ours, ids), infer_fn(theirs, ids), args.steps)
    rows.append(("inference, unmerged", t_ours, t_peft))
    merge(ours)
    theirs.merge_adapter()
    t_ours, t_peft = interleaved(infer_fn(ours, ids), infer_fn(theirs, ids), args.steps)
    rows.append(("inference, merged", t_ours, t_peft))
    print(f"{'':22}{'reference ms':>14}{'PEFT ms':>10}{'ratio':>8}")
    for name, a, b in rows:
        print(f"{name:22}{a:14.2f}{b:10.2f}{a / b:8.3f}")
    wall, inner = verify_wall(args.verify_runs)
    print(
        f"loracheck verify (defaults, built-in model): {wall:.2f} s wall in a fresh process "
        f"(run_verify itself {inner:.2f} s), median of {args.verify_runs}"
    )


if __name__ == "__main__":
    main()
