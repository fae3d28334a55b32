"""Benchmark `loracheck merged` on a ~1B-parameter Llama-shaped base and merged model in bf16
(synthetic weights, sharded), with an all-linear r=16 adapter, side by side with reading both
checkpoints once and with the naive approach a user writes.

    python benchmarks/bench_merged.py [--small] [--workdir DIR] [--keep]

The checkpoints are written with torch and the `safetensors` package (not loracheck): the base
W at random, the merge PEFT's way, M = bf16(W + s·B·A) with the product in float32. Prints:

- `loracheck merged` wall time, as a ratio to the time a Python process takes to read the
  bytes of both checkpoints once (warm page cache, minus the bare interpreter start);
- peak RSS of `loracheck merged` (the child's ru_maxrss) against 2× the largest tensor + 200 MB;
- the naive approach, timed in the same run: transformers loads BASE, PEFT loads the adapter
  and merges it (``merge_and_unload``), torch loads MERGED's state dict and compares; its wall
  time and peak RSS.

``--small`` runs a 4-layer, 512-wide model for a quick check. Temporary files are deleted at the
end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
# TinyLlama-1.1B's shape: 1.10B parameters.
FULL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
SMALL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, vocab_size=8000)
RANK, ALPHA = 16, 32
SHARD_BYTES = 1 << 30
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shapes(cfg: dict[str, int]) -> dict[str, tuple[int, ...]]:
    h, inter, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"]
    head = h // cfg["num_attention_heads"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.update({
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (h, h),
            f"{p}.self_attn.k_proj.weight": (kv * head, h),
            f"{p}.self_attn.v_proj.weight": (kv * head, h),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.mlp.gate_proj.weight": (inter, h),
            f"{p}.mlp.up_proj.weight": (inter, h),
            f"{p}.mlp.down_proj.weight": (h, inter),
        })
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (cfg["vocab_size"], h)
    return out


def write_models(work: Path, cfg: dict[str, int]) -> tuple[Path, Path, Path]:
    """BASE and MERGED (sharded bf16) and the PEFT adapter (fp32), tensor by tensor."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base, merged, adapter = work / "base", work / "merged", work / "adapter"
    for folder in (base, merged, adapter):
        folder.mkdir(parents=True)
    scale = ALPHA / RANK
    factors: dict[str, torch.Tensor] = {}
    shards: dict[str, list[dict[str, torch.Tensor]]] = {"base": [{}], "merged": [{}]}
    sizes = {"base": 0, "merged": 0}
    maps: dict[str, dict[str, str]] = {"base": {}, "merged": {}}

    def flush(which: str, folder: Path, final: bool = False) -> None:
        current = shards[which][-1]
        if not current:
            return
        name = f"model-{len(shards[which]):05d}.safetensors"
        save_file(current, str(folder / name), metadata={"format": "pt"})
        for key in current:
            maps[which][key] = name
        shards[which][-1] = {}
        if not final:
            sizes[which] = 0

    for key, shape in shapes(cfg).items():
        if len(shape) == 1:
            w = torch.ones(shape, dtype=torch.bfloat16)
        else:
            w = (torch.randn(shape) * 0.02).to(torch.bfloat16)
        m = w
        module = key[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in TARGETS:
            a = torch.empty(RANK, shape[1]).uniform_(-shape[1] ** -0.5, shape[1] ** -0.5)
            b = torch.randn(shape[0], RANK) * 1e-3
            factors[f"base_model.model.{module}.lora_A.weight"] = a
            factors[f"base_model.model.{module}.lora_B.weight"] = b
            m = (w.float() + scale * (b @ a)).to(torch.bfloat16)
        for which, folder, tensor in (("base", base, w), ("merged", merged, m)):
            if sizes[which] + tensor.numel() * 2 > SHARD_BYTES:
                flush(which, folder)
                shards[which].append({})
            shards[which][-1][key] = tensor.contiguous()
            sizes[which] += tensor.numel() * 2
    for which, folder in (("base", base), ("merged", merged)):
        flush(which, folder, final=True)
        index = {"metadata": {"total_size": 0}, "weight_map": maps[which]}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "torch_dtype": "bfloat16", "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
                  "max_position_embeddings": 2048, **cfg}
        (folder / "config.json").write_text(json.dumps(config))
    save_file(factors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": list(TARGETS),
        "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}))
    return merged, base, adapter


def run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (KiB) and stdout of one child, measured in a wrapper process by
    resource.getrusage(RUSAGE_CHILDREN), so nothing but the command itself is counted."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "wall = time.perf_counter() - t\n"
               "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "sys.stderr.write(p.stderr[-800:])\n"
               "print(f'@@ {wall} {rss} {p.returncode}')\n"
               "print(p.stdout[-4000:])\n")
    proc = subprocess.run([PY, "-c", wrapper, *cmd], capture_output=True, text=True)
    head, _, rest = proc.stdout.partition("\n")
    if not head.startswith("@@"):
        raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr[-800:]}")
    _, wall, rss, code = head.split()
    if int(code) not in (0, 1):
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}: {proc.stderr[-800:]}")
    return float(wall), int(rss), rest


def read_cmd(folders: list[Path]) -> list[str]:
    files = [str(p) for folder in folders for p in sorted(folder.glob("*.safetensors"))]
    code = ("import sys\nbuf = bytearray(1 << 24)\n"
            "for name in sys.argv[1:]:\n"
            "    with open(name, 'rb', buffering=0) as f:\n"
            "        while f.readinto(buf): pass\n")
    return [PY, "-c", code, *files]


NAIVE = r'''
import sys, time, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
merged_dir, base_dir, adapter_dir = map(Path, sys.argv[1:4])
torch.set_num_threads(2)
model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
ours = model.state_dict()
theirs = {}
for shard in sorted(merged_dir.glob("*.safetensors")):
    theirs.update(load_file(str(shard)))
worst, differ = 0.0, 0
for key, tensor in theirs.items():
    mine = ours[key]
    if not torch.equal(mine, tensor):
        differ += 1
        worst = max(worst, (mine.float() - tensor.float()).abs().max().item())
print(f"naive: {differ} of {len(theirs)} tensors differ, max |diff| {worst:.3g}")
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="a 4-layer 512-wide model")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument("--no-naive", action="store_true")
    args = parser.parse_args()
    cfg = SMALL if args.small else FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lc-bench-merged-"))
    try:
        start = time.perf_counter()
        merged, base, adapter = write_models(work, cfg)
        n_params = sum(_numel(s) for s in shapes(cfg).values())
        largest = max(_numel(s) for s in shapes(cfg).values()) * 2
        ckpt = sum(p.stat().st_size for f in (base, merged) for p in f.glob("*.safetensors"))
        print(f"wrote BASE + MERGED ({n_params / 1e9:.2f}B parameters each, bf16, "
              f"{ckpt / 1e9:.2f} GB together) and an all-linear r={RANK} adapter in "
              f"{time.perf_counter() - start:.0f} s")
        bare, _, _ = run_measured([PY, "-c", "pass"])
        run_measured(read_cmd([base, merged]))  # warm the page cache
        reads = [run_measured(read_cmd([base, merged]))[0] for _ in range(3)]
        read_s = min(reads) - bare
        cmd = [PY, "-m", "loracheck", "merged", str(merged), "--base", str(base), "--adapter",
               str(adapter)]
        ours = [run_measured(cmd) for _ in range(2)]
        wall, rss, out = min(ours, key=lambda r: r[0])
        verdict = [line for line in out.splitlines() if "modules match" in line or
                   "merged check" in line]
        goal = 2 * largest / 2**20 + 200
        print(f"bare interpreter: {bare:.2f} s; read both checkpoints once (warm): "
              f"{read_s:.2f} s")
        print("\n| run | wall s | ratio to read | peak RSS MiB | goal |")
        print("|---|---|---|---|---|")
        print(f"| loracheck merged | {wall:.2f} | {(wall - bare) / read_s:.2f}x | "
              f"{rss / 1024:.0f} | ≤ 2x, ≤ {goal:.0f} MiB (2 × largest tensor "
              f"{largest / 2**20:.0f} MiB + 200) |")
        if not args.no_naive:
            n_wall, n_rss, n_out = run_measured([PY, "-c", NAIVE, str(merged), str(base),
                                                 str(adapter)])
            print(f"| naive (transformers + PEFT merge + torch compare) | {n_wall:.2f} | "
                  f"{(n_wall - bare) / read_s:.2f}x | {n_rss / 1024:.0f} | |")
            print(f"\n{n_out.strip()}")
            print(f"loracheck vs naive: {n_wall / wall:.2f}x the speed, "
                  f"{n_rss / max(rss, 1):.1f}x less memory")
        print("\n" + "\n".join(verdict))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
