"""Long fuzzing campaigns for loracheck's safetensors reader.

    python fuzz/fuzz_safetensors.py --examples 20000 [--seconds 120] [--seed 1] [--save-dir DIR]

Each input is a valid safetensors file put through 1-4 random mutations (bit flips, truncation,
splices, header-length edits, JSON header edits, dtype reinterpretation, or plain random bytes).
An input passes when loracheck raises ArtifactError, or reads every tensor exactly as the
`safetensors` package does (numpy API; torch API for BF16/F8). Anything else is a failure: another
exception type, a wrong value, or a file loracheck accepts that the reference refuses. Prints the
number of inputs tried and failures found; exits 1 if there were failures.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from loracheck.errors import ArtifactError
from loracheck.safetensors_io import DTYPE_BITS, SafetensorsFile

READABLE = sorted(set(DTYPE_BITS) - {"F4", "F6_E2M3", "F6_E3M2"})


def base_files() -> list[bytes]:
    """A handful of valid files covering every readable dtype, metadata and empty tensors."""
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    mixed = np_save(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": rng.normal(size=(4, 16)).astype(
                np.float32
            ),
            "base_model.model.layers.0.q_proj.lora_B.weight": rng.normal(size=(16, 4)).astype(
                np.float16
            ),
            "steps": np.array([1, -2, 3], dtype=np.int64),
            "mask": np.array([True, False, True]),
            "u": np.arange(7, dtype=np.uint8),
            "alpha": np.array(8.0, dtype=np.float64),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "c": np.array([1 + 2j], dtype=np.complex64),
        },
        metadata={"format": "pt", "ss_network_dim": "4", "ss_network_alpha": "8"},
    )
    wide = torch_save(
        {
            "a": torch.randn(4, 6, generator=gen).to(torch.bfloat16),
            "b": torch.randn(7, generator=gen).to(torch.float8_e4m3fn),
            "c": torch.randn(2, 2, generator=gen).to(torch.float8_e5m2),
            "d": torch.arange(3, dtype=torch.int32),
            "e": torch.arange(5, dtype=torch.int16),
        }
    )
    return [mixed, wide, np_save({}), np_save({"one": np.ones(1, np.float32)})]


# --- the oracle -----------------------------------------------------------------------------


def reference(data: bytes) -> dict[str, np.ndarray]:
    """The safetensors package's reading, converted to loracheck's output dtypes."""
    if b'"F8_E8M0"' in data:
        # safetensors 0.8 cannot load E8M0: read the bytes as U8 (same width) and decode in torch.
        out = reference(data.replace(b'"F8_E8M0"', b'"U8"     '))
        (n,) = struct.unpack("<Q", data[:8])
        for key, info in json.loads(data[8 : 8 + n]).items():
            if isinstance(info, dict) and info.get("dtype") == "F8_E8M0":
                raw = torch.from_numpy(out[key].copy())
                out[key] = raw.view(torch.float8_e8m0fnu).float().numpy()
        return out
    try:
        loaded = np_load(data)
    except KeyError:
        result: dict[str, np.ndarray] = {}
        for key, t in torch_load(data).items():
            narrow = t.is_floating_point() and t.dtype != torch.float64
            result[key] = t.float().numpy() if narrow else t.numpy()
        return result
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in loaded.items()}


def same(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if want.dtype == np.bool_:
        return bool(np.array_equal(got, want.view(np.uint8) != 0))
    if want.dtype.kind in "fc":
        nan_g, nan_w = np.isnan(got), np.isnan(want)
        if not np.array_equal(nan_g, nan_w):
            return False
        return bool(np.array_equal(got[~nan_g].view(np.uint8), want[~nan_w].view(np.uint8)))
    return bool(np.array_equal(got, want))


def check(data: bytes, scratch: Path) -> tuple[str, str | None]:
    """Run one input: ("rejected" | "accepted", None) or ("failure", why)."""
    scratch.write_bytes(data)
    try:
        with SafetensorsFile.open(scratch) as f:
            got = {k: f.read(k) for k in f.entries}
    except ArtifactError:
        return "rejected", None
    except Exception:
        return "failure", "non-ArtifactError exception:\n" + traceback.format_exc()
    try:
        want = reference(data)
    except Exception as e:
        return "failure", f"accepted a file the reference refuses: {e!r}"
    if sorted(got) != sorted(want):
        return "failure", f"keys differ: {sorted(got)} vs {sorted(want)}"
    for key in got:
        if not same(got[key], want[key]):
            return "failure", f"tensor {key!r} differs: {got[key]!r} vs {want[key]!r}"
    return "accepted", None


# --- mutations ------------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: Any, body: bytes, pad: bool) -> bytes:
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-3, 80)
    if kind == 3:
        return rng.randint(0, 2**70)
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    if kind == 5:
        return rng.choice(sorted(DTYPE_BITS))
    if kind == 6:
        return "".join(rng.choice("ab_.\u00e9\u4e2d") for _ in range(rng.randrange(4)))
    if kind == 7:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": json_value(rng, depth + 1) for i in range(rng.randrange(3))}


def flip(rng: random.Random, d: bytes) -> bytes:
    if not d:
        return d
    # Most flips go to the length field and header, where they change meaning most.
    (n,) = struct.unpack("<Q", d[:8]) if len(d) >= 8 else (len(d),)
    hi = min(len(d), 8 + n) if rng.random() < 0.8 else len(d)
    pos = rng.randrange(max(hi, 1))
    return d[:pos] + bytes([d[pos] ^ (1 << rng.randrange(8))]) + d[pos + 1 :]


def truncate(rng: random.Random, d: bytes) -> bytes:
    return d[: rng.randrange(len(d) + 1)]


def splice(rng: random.Random, d: bytes) -> bytes:
    pos = rng.randrange(len(d) + 1)
    blob = rng.randbytes(rng.randrange(17))
    return d[:pos] + blob + d[pos + rng.randrange(9) :]


def length_edit(rng: random.Random, d: bytes) -> bytes:
    if len(d) < 8:
        return d
    (n,) = struct.unpack("<Q", d[:8])
    delta = rng.randint(-16, 16) if rng.random() < 0.8 else rng.randrange(2**64)
    return struct.pack("<Q", (n + delta) % 2**64) + d[8:]


def header_edit(rng: random.Random, d: bytes) -> bytes:
    header, body = split(d)
    keys = [k for k in header if k != "__metadata__"]
    kind = rng.choice(["field", "offset", "shape", "dtype", "retype", "drop", "add", "meta"])
    if kind == "meta":
        header["__metadata__"] = json_value(rng)
    elif kind == "add":
        header[f"new{rng.randrange(9)}"] = json_value(rng)
    elif keys:
        key = rng.choice(keys)
        entry = header[key]
        if kind == "drop":
            del header[key]
        elif kind == "field":
            entry[rng.choice(["dtype", "shape", "data_offsets", "extra"])] = json_value(rng)
        elif kind == "offset":
            entry["data_offsets"][rng.randrange(2)] = rng.randint(-2, 300)
        elif kind == "shape":
            dim = rng.randint(-2, 64)
            entry["shape"] = [*entry["shape"], dim] if rng.random() < 0.5 else [dim]
        elif kind == "retype":
            width = DTYPE_BITS[entry["dtype"]]
            entry["dtype"] = rng.choice([t for t in READABLE if DTYPE_BITS[t] == width] or [
                entry["dtype"]
            ])
        else:
            entry["dtype"] = rng.choice(sorted(DTYPE_BITS))
    return join(header, body, pad=rng.random() < 0.7)


def random_bytes(rng: random.Random, d: bytes) -> bytes:
    n = rng.randrange(96)
    blob = rng.randbytes(rng.randrange(128))
    return struct.pack("<Q", n) + (b"{" if rng.random() < 0.5 else b"") + blob


Mutator = Callable[[random.Random, bytes], bytes]
MUTATORS: list[tuple[Mutator, int]] = [
    (flip, 4), (truncate, 1), (splice, 2), (length_edit, 1), (header_edit, 5), (random_bytes, 1),
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    funcs = [m for m, _ in MUTATORS]
    weights = [w for _, w in MUTATORS]
    for _ in range(rng.randint(1, 4)):
        func = rng.choices(funcs, weights)[0]
        try:
            data = func(rng, data)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
            # A header edit on a header that earlier steps already broke: skip that step.
            continue
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", type=Path, default=None, help="write failing inputs here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    bases = base_files()
    counts: Counter[str] = Counter()
    first_failures: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loracheck-fuzz-") as tmp:
        scratch = Path(tmp) / "input.safetensors"
        for i in range(args.examples):
            if args.seconds is not None and time.monotonic() - t0 > args.seconds:
                break
            data = mutate(rng, rng.choice(bases))
            outcome, why = check(data, scratch)
            counts[outcome] += 1
            if outcome == "failure":
                if len(first_failures) < 5:
                    first_failures.append(f"input {i}: {why}")
                if args.save_dir is not None:
                    args.save_dir.mkdir(parents=True, exist_ok=True)
                    (args.save_dir / f"failure-{i}.safetensors").write_bytes(data)
    tried = sum(counts.values())
    elapsed = time.monotonic() - t0
    print(
        f"tried {tried} inputs in {elapsed:.1f}s: {counts['accepted']} accepted and matched the "
        f"reference, {counts['rejected']} rejected with ArtifactError, "
        f"{counts['failure']} failures"
    )
    for line in first_failures:
        print(line)
    return 1 if counts["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
