"""Wall time of ``loracheck verify`` with its defaults, per architecture, beside the same work
done by hand with PEFT.

    python benchmarks/bench_verify.py [--threads 2] [--runs 1]

For the built-in model and each tiny transformers model of the test matrix
(``tests/archmodels.py``: hidden 64, 2 layers, random weights), prints:

- ``cli wall``: ``loracheck verify --model DIR`` in a fresh process, imports included (goal:
  ≤ 3 s on the built-in model, ≤ 6 s on each tiny HF model);
- ``verify``: ``run_verify`` in this process (the model loaded twice: probe and reload);
- ``PEFT by hand``: the naive equivalent in this process: load the model, ``get_peft_model``
  with the same targets (r 16, α 16, dropout 0.05), 20 Adam steps on one batch, compare
  merged and unmerged outputs, ``save_pretrained`` and reload into a fresh model;
- the ratio verify / PEFT by hand.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from archmodels import ARCHITECTURES, dummy_inputs, load_arch, probe_loss, save_arch
from loracheck.default_targets import default_targets
from loracheck.verify import VerifyOptions, run_verify

PEFT_TASK = {"bert-seq-cls": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM"}


def cli_wall(model: str, runs: int) -> tuple[float, int]:
    walls, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "loracheck", "verify", "--model", model],
                              capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - t0)
        code = max(code, done.returncode)
    return statistics.median(walls), code


def peft_by_hand(arch: str, folder: Path) -> float:
    from peft import LoraConfig, PeftModel, get_peft_model

    t0 = time.perf_counter()
    model = load_arch(arch, folder)
    names = [n for n, _ in model.named_modules()]
    targets = default_targets(model.config.model_type, names)
    config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=targets,
                        task_type=PEFT_TASK.get(arch))
    peft_model = get_peft_model(model, config)
    inputs = dummy_inputs(arch, batch=8, seq=64)
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model.train()
    for _ in range(20):
        probe_loss(arch, peft_model, inputs).backward()
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        unmerged = _first(peft_model(**inputs))
        peft_model.merge_adapter()
        merged = _first(peft_model(**inputs))
        peft_model.unmerge_adapter()
        assert float((merged - unmerged).abs().max()) < 1e-3
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        fresh = PeftModel.from_pretrained(load_arch(arch, folder), tmp).eval()
        with torch.no_grad():
            _first(fresh(**inputs))
    return time.perf_counter() - t0


def _first(out: Any) -> Any:
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'model':14}{'cli wall s':>11}{'exit':>5}{'verify s':>10}{'PEFT by hand s':>16}"
          f"{'ratio':>7}")
    wall, code = cli_wall("builtin", args.runs)
    t0 = time.perf_counter()
    run_verify(VerifyOptions())
    inner = time.perf_counter() - t0
    print(f"{'builtin':14}{wall:11.2f}{code:5d}{inner:10.2f}{'-':>16}{'-':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHITECTURES:
            folder = save_arch(arch, Path(tmp) / arch)
            wall, code = cli_wall(str(folder), args.runs)
            t0 = time.perf_counter()
            run_verify(VerifyOptions(model=str(folder)))
            inner = time.perf_counter() - t0
            by_hand = peft_by_hand(arch, folder)
            print(f"{arch:14}{wall:11.2f}{code:5d}{inner:10.2f}{by_hand:16.2f}"
                  f"{inner / by_hand:7.2f}")


if __name__ == "__main__":
    main()
