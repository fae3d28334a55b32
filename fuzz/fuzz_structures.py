"""Long fuzzing campaigns for shared references and degenerate shapes, through the CLI.

    python fuzz/fuzz_structures.py --examples 20000 [--seconds 120] [--seed 1] [--save-dir DIR]

Four families of inputs, in turn (the other campaigns mutate bytes; these build structures):

pickle   torch-style zip checkpoints (``<prefix>/data.pkl`` + ``<prefix>/version`` and
         ``<prefix>/data/N`` records) whose pickle shares references: DAGs of dicts sharing
         their children (fan-out 2..64, depth 1..8), dicts that contain themselves, lists and
         tuples sharing children, tied tensors, memo indices rewritten out of range (BINPUT,
         LONG_BINPUT, BINGET, LONG_BINGET, PUT), many entries, keys that are not strings,
         tensor views against their storage, odd archive layouts;
zip      compressed records: 64-256 MiB of zeros deflated to ~100 KB (a zip bomb) referenced
         from data.pkl, left unreferenced, or as data.pkl itself; central directories that lie
         about sizes, encryption or the method; corrupt deflate streams; small compressed
         records of a valid checkpoint (only one input in 50 is a big one);
yaml     training configs (axolotl, LLaMA-Factory) with YAML anchors and aliases: recursive
         anchors, billion laughs (k levels of m aliases), merge keys, anchors on the LoRA fields
         themselves, flow and block nesting 10..10000 deep;
shapes   PEFT safetensors adapters with degenerate factors: rank far above in/out, zero-size
         dims, 1-D and 3-D factors, pairs that do not chain, a config rank that disagrees,
         NaN/Inf/huge values, float16 overflow, single-row and single-column factors.

Every input goes through ``loracheck check PATH --format json --jobs 1`` in process, and passes
when the exit code is 0 or 1, stdout is JSON, nothing is on stderr, no "Traceback" and no
"internal error" LC001 appear, it finishes within SLOW_S seconds of CPU time, and the
tracemalloc peak of a second, traced run stays under PEAK_MIB (tracemalloc slows the run 5-30x,
so the time comes from the untraced one). An exit 2 or internal error is rerun with
LORACHECK_DEBUG=1 to print its traceback. Many inputs also have a known answer: codes the
report must hold (LC001 for a shared mapping, an out-of-range memo index or a zip bomb; LC101
for an invalid rank reached through an alias; LC104, LC202, LC203, LC211, LC213 for the
shapes) or must not hold (LC001 for a valid input). The campaign caps its own address space
(RLIMIT_AS) so that a regression fails with MemoryError instead of taking the machine down.
Prints how many inputs were tried and failed per family, the outcomes, the slowest input and
the largest memory peak; exits 1 if there were failures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# As loracheck's CLI does: its statistics are small products, OpenBLAS threads only add cost.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from safetensors.numpy import save_file

from loracheck.cli import main as cli_main

FAMILIES = ("pickle", "zip", "yaml", "shapes")
# A single input taking longer than this, or whose Python allocations peak above this, fails.
SLOW_S = 5.0  # of CPU time: the machine may be shared; wall time may be WALL_FACTOR x more
WALL_FACTOR = 4.0
PEAK_MIB = 256.0
# The address-space cap set at start (raised to what is mapped already plus headroom).
ADDRESS_SPACE_GIB = 4.0
# The zip family builds one big (64-256 MiB inflated) input every BIG_EVERY of its inputs.
BIG_EVERY = 50

PEFT_A = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_A.weight"
PEFT_B = "base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_B.weight"


@dataclass
class Case:
    """One input: written by ``build`` into an empty folder, which returns the path to check."""

    family: str
    variant: str
    build: Callable[[Path], Path]
    note: str
    must: frozenset[str] = frozenset()
    must_not: frozenset[str] = frozenset()
    # a fragment the LC001 message must hold, when LC001 is a must
    fragment: str | None = None
    # a tighter tracemalloc limit than PEAK_MIB for this input
    max_peak_mib: float | None = None
    # whether to trace allocations: CPython's tracemalloc walks the whole stack on every
    # allocation, so a parser recursing hundreds of frames deep runs 30x slower traced (16 s
    # for a 1000-deep flow list); such inputs are bounded by time and the address-space cap
    trace: bool = True


Files = dict[str, bytes]


def _writer(files: Files, target: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        for name, data in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return folder / target if target else folder

    return build


def peft_config(r: Any, alpha: Any = None, modules: Any = None, **extra: Any) -> bytes:
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r if alpha is None else alpha,
              "target_modules": modules if modules is not None else ["q_proj"], **extra}
    return json.dumps(config).encode()


# --- pickles without torch: stand-ins that pickle as torch.save's globals -------------------


class Global:
    """Pickles as ``GLOBAL module name`` (torch need not be importable to write it)."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> None:  # save_reduce insists on a callable
        raise TypeError("a stand-in")


_REBUILD_V2 = Global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_V3 = Global("torch._utils", "_rebuild_tensor_v3")
_STORAGES = {"F32": "FloatStorage", "F16": "HalfStorage", "F64": "DoubleStorage",
             "BF16": "BFloat16Storage", "I64": "LongStorage", "I32": "IntStorage"}
_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
          "I32": np.int32}


@dataclass(eq=False)
class Storage:
    """A ``<prefix>/data/<key>`` record: the pickle names it by a persistent id."""

    key: str
    dtype: str
    numel: int
    untyped: bool = False


@dataclass(eq=False)
class Tensor:
    """A tensor view as torch.save pickles it (``_rebuild_tensor_v2`` or ``_v3``)."""

    storage: Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    v3: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        hooks: OrderedDict[str, Any] = OrderedDict()
        if self.v3:
            dtype = Global("torch", {"F32": "float32", "F16": "float16", "F64": "float64",
                                     "BF16": "bfloat16", "I64": "int64",
                                     "I32": "int32"}[self.storage.dtype])
            return (_REBUILD_V3, (self.storage, self.offset, self.shape, self.stride, False,
                                  hooks, dtype))
        return (_REBUILD_V2, (self.storage, self.offset, self.shape, self.stride, False, hooks))


# The pure-Python pickler: its dispatch table can learn a type (the C one's cannot).
_PurePickler: Any = getattr(pickle, "_Pickler")  # noqa: B009


class _Pickler(_PurePickler):  # type: ignore[misc]
    """Protocol-2 pickler with torch.save's persistent ids for :class:`Storage`."""

    dispatch: ClassVar[dict[type, Any]] = dict(_PurePickler.dispatch)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Storage):
            kind = (Global("torch", "UntypedStorage") if obj.untyped
                    else Global("torch", _STORAGES[obj.dtype]))
            return ("storage", kind, obj.key, "cpu", obj.numel)
        return None

    def save_raw_global(self, obj: Global) -> None:
        self.write(b"c" + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Global] = save_raw_global


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def torch_zip(pkl: bytes, records: Files | None = None, *, prefix: str = "archive",
              version: bool = True, byteorder: bytes | None = None,
              compress: int = zipfile.ZIP_STORED, extra: Files | None = None) -> bytes:
    """A zip laid out as torch.save writes it."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buffer, "w", compression=compress) as archive:
            archive.writestr(f"{prefix}/data.pkl", pkl)
            if byteorder is not None:
                archive.writestr(f"{prefix}/byteorder", byteorder)
            for key, blob in (records or {}).items():
                archive.writestr(f"{prefix}/data/{key}", blob)
            if version:
                archive.writestr(f"{prefix}/version", "3\n")
            for name, blob in (extra or {}).items():
                archive.writestr(name, blob)
    return buffer.getvalue()


class StateDict:
    """Builds the tensors of a PEFT-like state dict and the records behind them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.records: Files = {}
        self.nprng = np.random.default_rng(rng.randrange(2**32))

    def storage(self, values: np.ndarray, dtype: str = "F32") -> Storage:
        key = str(len(self.records))
        self.records[key] = np.ascontiguousarray(values, dtype=_NUMPY[dtype]).tobytes()
        return Storage(key, dtype, int(values.size))

    def tensor(self, shape: tuple[int, ...], dtype: str = "F32", *, zeros: bool = False,
               v3: bool = False) -> Tensor:
        n = int(np.prod(shape)) if shape else 1
        values = np.zeros(n) if zeros else self.nprng.normal(0, 0.02, size=n)
        stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
        return Tensor(self.storage(values, dtype), 0, shape, stride, v3)

    def pairs(self, modules: int, r: int, n: int, dtype: str = "F32") -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i in range(modules):
            v3 = self.rng.random() < 0.3
            out[PEFT_A.format(i=i, m="q")] = self.tensor((r, n), dtype, v3=v3)
            out[PEFT_B.format(i=i, m="q")] = self.tensor((n, r), dtype, v3=v3)
        return out


def _pickle_case(rng: random.Random, variant: str, pkl: bytes, records: Files, note: str,
                 *, r: int = 4, must: frozenset[str] = frozenset(),
                 must_not: frozenset[str] = frozenset(), fragment: str | None = None,
                 **zip_args: Any) -> Case:
    data = torch_zip(pkl, records, **zip_args)
    if rng.random() < 0.75:
        files = {"adapter_config.json": peft_config(r), "adapter_model.bin": data}
        target = rng.choice(["", "adapter_model.bin"])
    else:
        name = rng.choice(["model.pt", "lora.pth", "adapter.bin"])
        files, target = {name: data}, name
    return Case("pickle", variant, _writer(files, target), note, must, must_not, fragment)


# --- family: pickle -------------------------------------------------------------------------


def pk_valid(rng: random.Random) -> Case:
    """A valid state dict, sometimes nested, with tied tensors and views sharing a storage."""
    sd = StateDict(rng)
    r, n = rng.choice([1, 2, 4, 8]), rng.choice([8, 16, 64])
    tensors = sd.pairs(rng.randint(1, 4), r, n, rng.choice(["F32", "F16"]))
    tied = rng.random() < 0.5
    if tied:  # one tensor object under two keys: a memo GET, as torch writes tied weights
        a, b = PEFT_A.format(i=0, m="q"), PEFT_B.format(i=0, m="q")
        for j in range(rng.randint(1, 8)):
            tensors[PEFT_A.format(i=j, m="v")] = tensors[a]
            tensors[PEFT_B.format(i=j, m="v")] = tensors[b]
    root: dict[str, Any] = dict(tensors)
    if rng.random() < 0.3:
        root = OrderedDict(root)
    order = rng.choice([None, b"little"])
    return _pickle_case(rng, "valid", dumps(root), sd.records,
                        f"{len(tensors)} tensors r={r} n={n} tied={tied}", r=r,
                        must_not=frozenset({"LC001"}), byteorder=order)


def pk_dag(rng: random.Random) -> Case:
    """Dicts sharing their children: fan-out 2..64, depth 1..8 (64^8 paths from a few KB)."""
    fanout, depth = rng.randint(2, 64), rng.randint(1, 8)
    sd = StateDict(rng)
    leaf_value: Any = sd.tensor((4, 8)) if rng.random() < 0.5 else 0
    cls: type[dict[str, Any]] = OrderedDict if rng.random() < 0.3 else dict
    node: dict[str, Any] = cls(weight=leaf_value)
    for level in range(depth):
        children: dict[str, Any] = cls()
        for i in range(fanout):
            # mostly the one shared child; sometimes a fresh copy beside it
            children[f"k{i}"] = node if i == 0 or rng.random() < 0.9 else cls(weight=level)
        node = children
    wrapped = rng.random() < 0.5
    root: dict[str, Any] = {"state_dict": node} if wrapped else node
    pkl = dumps(root)
    # loracheck walks a shared dict once per path to it and stops past 2^18 entries (or 8
    # levels): a DAG that expands well past that is refused, one well below it is read.
    expands = fanout**depth
    too_deep = depth + wrapped > 8
    verdict: dict[str, frozenset[str]] = {}
    if too_deep or expands > 4 * 2**18:
        verdict["must"] = frozenset({"LC001"})
    elif expands < 2**18 // 4:
        verdict["must_not"] = frozenset({"LC001"})
    return _pickle_case(rng, "dag", pkl, sd.records,
                        f"fan-out {fanout} depth {depth} ({len(pkl)} B pickle)", **verdict)


def pk_self(rng: random.Random) -> Case:
    """A dict that contains itself, or a cycle of 2..6 dicts."""
    sd = StateDict(rng)
    length = rng.randint(1, 6)
    ring: list[dict[str, Any]] = [dict(sd.pairs(1, 4, 8)) if i == 0 else {} for i in
                                  range(length)]
    for i, d in enumerate(ring):
        d[rng.choice(["self", "next", "0", "state_dict"])] = ring[(i + 1) % length]
    root: dict[str, Any] = ring[0] if rng.random() < 0.5 else {"model": ring[0]}
    return _pickle_case(rng, "self", dumps(root), sd.records, f"cycle of {length} dicts",
                        must=frozenset({"LC001"}))


def pk_lists(rng: random.Random) -> Case:
    """Lists and tuples sharing children (a DAG of 64^30 paths), or containing themselves,
    as values beside a valid pair: loracheck never walks them, so nothing may expand them."""
    sd = StateDict(rng)
    root: dict[str, Any] = dict(sd.pairs(1, 4, 16))
    fanout, depth = rng.randint(2, 64), rng.randint(1, 30)
    leaf: Any = sd.tensor((2, 2)) if rng.random() < 0.3 else "lol"
    node: Any = [leaf]
    for _ in range(depth):
        node = [node] * fanout if rng.random() < 0.5 else (node,) * fanout
    root["optimizer_state"] = node
    if rng.random() < 0.5:
        cyclic: list[Any] = [1, 2]
        cyclic.append(cyclic)
        cyclic.append({"again": cyclic})
        root["cyclic"] = cyclic
    if rng.random() < 0.3:
        root["tensors"] = [root[PEFT_A.format(i=0, m="q")]] * fanout
    return _pickle_case(rng, "lists", dumps(root), sd.records,
                        f"list/tuple DAG fan-out {fanout} depth {depth}")


def _memo_ops(data: bytes) -> Iterator[tuple[str, Any, int, int]]:
    ops = list(pickletools.genops(data))
    for k, (op, arg, pos) in enumerate(ops):
        end = (ops[k + 1][2] or 0) if k + 1 < len(ops) else len(data)
        yield op.name, arg, pos or 0, end


def _encode_memo(name: str, index: int) -> bytes:
    put = name in ("PUT", "BINPUT", "LONG_BINPUT")
    if name in ("PUT", "GET"):
        return (b"p" if put else b"g") + str(index).encode() + b"\n"
    if 0 <= index < 256 and name in ("BINPUT", "BINGET"):
        return (b"q" if put else b"h") + bytes([index])
    return (b"r" if put else b"j") + struct.pack("<I", index % 2**32)


def rewrite_memo(data: bytes, put: Callable[[str, int], tuple[str, int]],
                 get: Callable[[str, int], tuple[str, int]]) -> bytes:
    """The pickle with each memo opcode's (name, index) replaced."""
    out = bytearray()
    for name, arg, pos, end in _memo_ops(data):
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            out += _encode_memo(*put(name, arg))
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            out += _encode_memo(*get(name, arg))
        else:
            out += data[pos:end]
    return bytes(out)


def pk_memo(rng: random.Random) -> Case:
    """A valid state dict whose memo indices are rewritten: renumbered sparsely or as text
    PUT/GET (still valid), one put out of range, or one get of an index never put."""
    sd = StateDict(rng)
    tensors = sd.pairs(rng.randint(1, 3), 4, 8)
    tensors[PEFT_A.format(i=9, m="v")] = tensors[PEFT_A.format(i=0, m="q")]
    tensors[PEFT_B.format(i=9, m="v")] = tensors[PEFT_B.format(i=0, m="q")]
    base = dumps(tensors)
    ops = list(_memo_ops(base))
    puts = [arg for name, arg, _, _ in ops if name.endswith("PUT")]
    fetched = sorted({arg for name, arg, _, _ in ops if name.endswith("GET")})
    kind = rng.choice(["renumber", "text", "put-huge", "put-past-end", "get-missing",
                       "get-huge"])
    limit = len(base)
    if kind == "text":
        mapping = {i: i for i in puts}
    else:  # injective, order kept, every index within the pickle's length
        mapping = dict(zip(puts, sorted(rng.sample(range(limit), len(puts))), strict=True))
    victim = rng.choice(fetched if kind.startswith("get-") else puts)
    huge = rng.choice([2**31 - 1, 2**31, 2**32 - 1, 8 * limit + rng.randint(1, 10**6)])
    missing = max(mapping.values()) + 1

    def put(name: str, index: int) -> tuple[str, int]:
        if kind == "text":
            return "PUT", mapping[index]
        if kind.startswith("put-") and index == victim:
            return "LONG_BINPUT", huge if kind == "put-huge" else 8 * limit + 1
        return "BINPUT", mapping[index]

    def get(name: str, index: int) -> tuple[str, int]:
        if kind == "text":
            return "GET", mapping[index]
        if kind == "get-missing" and index == victim:
            return "BINGET", missing
        if kind == "get-huge" and index == victim:
            return "LONG_BINGET", huge
        return "BINGET", mapping[index]

    pkl = rewrite_memo(base, put, get)
    expect: dict[str, Any]
    if kind in ("renumber", "text"):
        expect = {"must_not": frozenset({"LC001"})}
    else:
        expect = {"must": frozenset({"LC001"})}
    return _pickle_case(rng, "memo", pkl, sd.records,
                        f"memo {kind} (victim {victim}, {len(puts)} puts, {limit} B)", **expect)


def pk_many(rng: random.Random) -> Case:
    """Many entries: up to 40,000 small values, or up to 1,000 pairs viewing one storage."""
    sd = StateDict(rng)
    if rng.random() < 0.5:
        n = rng.choice([1000, 10_000, 40_000])
        root: dict[str, Any] = dict(sd.pairs(1, 2, 8))
        kind = rng.choice(["int", "str", "none"])
        for i in range(n):
            root[f"step.{i}"] = i if kind == "int" else f"v{i}" if kind == "str" else None
        note = f"{n} {kind} entries"
    else:
        n = rng.choice([10, 100, 1000])
        r, width = 2, 8
        storage = sd.storage(sd.nprng.normal(0, 0.02, size=2 * n * r * width))
        root = {}
        for i in range(n):
            off = 2 * i * r * width
            root[PEFT_A.format(i=i, m="q")] = Tensor(storage, off, (r, width), (width, 1))
            root[PEFT_B.format(i=i, m="q")] = Tensor(storage, off + r * width, (width, r),
                                                     (r, 1))
        note = f"{n} pairs viewing one storage"
    pkl = dumps(root)
    return _pickle_case(rng, "many", pkl, sd.records, f"{note} ({len(pkl)} B pickle)", r=2,
                        must_not=frozenset({"LC001"}))


BAD_KEYS: list[Any] = [None, 1.5, float("nan"), (1, 2), b"bytes", frozenset({1}), True,
                       False, ("a",), 2**100 + 0.5]
GOOD_KEYS: list[Any] = [0, -1, 7, 2**100, "", "a.b", "\x00", "\ud800", "é" * 50, "x" * 10_000,
                        "lora_A", "weight"]


def pk_keys(rng: random.Random) -> Case:
    """State dicts whose keys are not strings: ints (accepted), others (refused), collisions."""
    sd = StateDict(rng)
    root: dict[Any, Any] = dict(sd.pairs(1, 4, 8))
    kind = rng.choice(["bad", "good", "collide", "nested-int"])
    target: dict[Any, Any] = root
    if rng.random() < 0.4:
        target = {}
        root["extra"] = target
    expect: dict[str, Any]
    if kind == "bad":
        for key in rng.sample(BAD_KEYS, rng.randint(1, 3)):
            target[key] = rng.choice([0, "x", sd.tensor((2, 2))])
        expect = {"must": frozenset({"LC001"})}
    elif kind == "good":
        for key in rng.sample(GOOD_KEYS, rng.randint(1, 4)):
            target[key] = rng.choice([0, "x", None])
        expect = {"must_not": frozenset({"LC001"})}
    elif kind == "collide":  # 0 and "0" both holding tensors: the key "0" twice
        target[0] = sd.tensor((2, 2))
        target["0"] = sd.tensor((2, 2))
        expect = {"must": frozenset({"LC001"})}
    else:  # {0: {1: tensor}} flattens to "0.1"
        root[0] = {1: sd.tensor((2, 2)), 2: {3: 4}}
        expect = {"must_not": frozenset({"LC001"})}
    return _pickle_case(rng, "keys", dumps(root), sd.records, f"keys {kind}", **expect)


def pk_views(rng: random.Random) -> Case:
    """Tensor views (offset, shape, stride) drawn against their storage's size; the view is
    valid exactly when its last element is inside the storage (or it has no elements).
    One in four is a broadcast view (strides 0, as torch.save writes an expanded tensor):
    A of 1-64 Mi elements over a storage of one element, from a file under 2 KB."""
    sd = StateDict(rng)
    if rng.random() < 0.25:
        r, n = rng.choice([4, 8, 16]), 2 ** rng.randint(18, 22)
        one = sd.storage(np.ones(1))
        spread = rng.choice([(0, 0), (0, 0), (1, 0)])
        if spread == (1, 0):  # row i is element i of the storage
            one = sd.storage(np.ones(r))
        root = {PEFT_A.format(i=0, m="q"): Tensor(one, 0, (r, n), spread),
                PEFT_B.format(i=0, m="q"): sd.tensor((8, r))}
        return _pickle_case(rng, "views", dumps(root), sd.records,
                            f"broadcast A ({r}, {n}) stride {spread} over {one.numel} "
                            f"element(s) ({r * n * 4 >> 20} MiB)", r=r)
    numel = rng.choice([0, 1, 16, 64])
    storage = sd.storage(sd.nprng.normal(size=numel), rng.choice(["F32", "F16"]))
    if rng.random() < 0.2:  # a record shorter than the storage claims
        storage.numel += rng.randint(1, 10**6)
    ndim = rng.randint(0, 3)
    shape = tuple(rng.choice([0, 1, 2, 4, 8, 8, 2**20, 2**40]) for _ in range(ndim))
    stride = tuple(rng.choice([0, 0, 1, 2, 4, 8, 2**62]) for _ in range(ndim))
    offset = rng.choice([0, 0, 1, 8, 63, 64, 2**62])
    count, last = 1, offset
    for d, s in zip(shape, stride, strict=True):
        count *= d
        last += (d - 1) * s if d else 0
    width = 4 if storage.dtype == "F32" else 2
    short = storage.numel * width > len(sd.records[storage.key])
    inside = not short and (count == 0 or last < storage.numel)
    b = sd.tensor((8, 4))
    root = {PEFT_A.format(i=0, m="q"): Tensor(storage, offset, shape, stride),
            PEFT_B.format(i=0, m="q"): b}
    expect: dict[str, Any] = {}
    if not inside or count * width > 8 * 2**30:  # out of its storage, or past max_bytes
        expect = {"must": frozenset({"LC001"})}
    elif count * width <= 2**20:
        expect = {"must_not": frozenset({"LC001"})}
    # else a broadcast (stride 0) view of up to 8 GiB over a tiny storage: no known answer,
    # but the time and memory limits hold
    return _pickle_case(rng, "views", dumps(root), sd.records,
                        f"storage {storage.numel} view offset {offset} shape {shape} "
                        f"stride {stride}", **expect)


def pk_layout(rng: random.Random) -> Case:
    """The archive around a valid pickle: prefix names, version and byteorder records,
    data.pkl at the wrong depth or twice, a storage with no record."""
    sd = StateDict(rng)
    tensors = sd.pairs(1, 4, 8)
    pkl = dumps(tensors)
    kind = rng.choice(["prefix", "no-version", "big-endian", "byteorder", "deep", "twice",
                       "missing-record", "junk-records"])
    args: dict[str, Any] = {}
    extra: Files = {}
    expect: dict[str, Any] = {"must_not": frozenset({"LC001"})}
    records = sd.records
    if kind == "prefix":
        args["prefix"] = rng.choice(["x", "a" * 200, "модель", "with space", "archive.d"])
    elif kind == "no-version":
        args["version"] = False
    elif kind == "big-endian":
        args["byteorder"] = b"big"
        records = {k: np.frombuffer(v, "<f4").astype(">f4").tobytes() for k, v in
                   records.items()}
    elif kind == "byteorder":
        args["byteorder"] = rng.choice([b"", b"LITTLE", b"middle", b"\x00" * 16, b"x" * 100])
        expect = {"must": frozenset({"LC001"})}
    elif kind == "deep":
        args["prefix"] = "a/b"
        expect = {"must": frozenset({"LC001"})}
    elif kind == "twice":
        extra["other/data.pkl"] = pkl
        expect = {"must": frozenset({"LC001"})}
    elif kind == "missing-record":
        records = dict(records)
        records.pop(rng.choice(sorted(records)))
        expect = {"must": frozenset({"LC001"})}
    else:
        extra = {"../escape": b"x", "/abs/path": b"y", "archive/data/../../z": b"z",
                 "archive\\data\\0": b"w", "archive/.data/version": b"3\n",
                 "archive/data/" + "9" * 300: b"q"}
    args["extra"] = extra
    return _pickle_case(rng, "layout", pkl, records, f"layout {kind}", **expect, **args)


PICKLE_VARIANTS: list[Callable[[random.Random], Case]] = [
    pk_valid, pk_dag, pk_self, pk_lists, pk_memo, pk_many, pk_keys, pk_views, pk_layout,
]


# --- family: zip ----------------------------------------------------------------------------


def _central_entries(data: bytes) -> Iterator[tuple[int, str]]:
    """(offset of the central-directory header, file name) of each entry of a small zip."""
    eocd = data.rfind(b"PK\x05\x06")
    count, _size, start = struct.unpack("<HII", data[eocd + 10 : eocd + 20])
    pos = start
    for _ in range(count):
        fnlen, extralen, commentlen = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        yield pos, data[pos + 46 : pos + 46 + fnlen].decode("utf-8", "replace")
        pos += 46 + fnlen + extralen + commentlen


def patch_central(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one field of ``name``'s central-directory header set to ``value``."""
    out = bytearray(data)
    for pos, entry in _central_entries(data):
        if entry == name:
            struct.pack_into(fmt, out, pos + offset, value)
    return bytes(out)


_FLAGS, _METHOD, _CSIZE, _USIZE = 8, 10, 20, 24


def _zip_case(rng: random.Random, variant: str, build: Callable[[Path], Path], note: str,
              **expect: Any) -> Case:
    return Case("zip", variant, build, note, **expect)


def _small_checkpoint(rng: random.Random) -> tuple[bytes, Files]:
    sd = StateDict(rng)
    return dumps(sd.pairs(1, 4, rng.choice([8, 64, 256]))), sd.records


def _peft_bin(data: bytes, rng: random.Random) -> Callable[[Path], Path]:
    files = {"adapter_config.json": peft_config(4), "adapter_model.bin": data}
    return _writer(files, rng.choice(["", "adapter_model.bin"]))


def zp_compressed(rng: random.Random) -> Case:
    """A valid checkpoint whose records are compressed (deflate, bzip2, lzma)."""
    pkl, records = _small_checkpoint(rng)
    method = rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
    data = torch_zip(pkl, records, compress=method)
    return _zip_case(rng, "compressed", _peft_bin(data, rng), f"method {method}",
                     must_not=frozenset({"LC001"}))


def zp_corrupt(rng: random.Random) -> Case:
    """A deflated record (data.pkl or a tensor) whose stream has 1-8 bytes flipped."""
    pkl, records = _small_checkpoint(rng)
    data = bytearray(torch_zip(pkl, records, compress=zipfile.ZIP_DEFLATED))
    name = rng.choice(["archive/data.pkl", "archive/data/0", "archive/data/1"])
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for _ in range(rng.randint(1, 8)):
        pos = start + rng.randrange(max(info.compress_size, 1))
        data[pos] ^= 1 << rng.randrange(8)
    return _zip_case(rng, "corrupt", _peft_bin(bytes(data), rng), f"flipped bits in {name}",
                     must=frozenset({"LC001"}))


def zp_lying(rng: random.Random) -> Case:
    """The central directory lies about a referenced record: its size (a tiny or a huge
    inflated size), its encryption flag or its compression method."""
    pkl, records = _small_checkpoint(rng)
    data = torch_zip(pkl, records, compress=zipfile.ZIP_DEFLATED)
    name = rng.choice(["archive/data.pkl", "archive/data/0", "archive/data/1"])
    kind = rng.choice(["tiny", "huge", "encrypted", "method"])
    if kind == "tiny":
        data = patch_central(data, name, _USIZE, "<I", rng.choice([0, 1, 7, 100]))
    elif kind == "huge":
        data = patch_central(data, name, _USIZE, "<I", rng.choice([2**27, 2**31, 2**32 - 2]))
    elif kind == "encrypted":
        data = patch_central(data, name, _FLAGS, "<H", 0x1)
    else:
        data = patch_central(data, name, _METHOD, "<H", rng.choice([1, 6, 9, 97, 99, 0xFFFF]))
    return _zip_case(rng, "lying", _peft_bin(data, rng), f"{name}: {kind}",
                     must=frozenset({"LC001"}))


def zp_names(rng: random.Random) -> Case:
    """Two data.pkl records under one name, a second prefix, or odd names beside a valid one."""
    pkl, records = _small_checkpoint(rng)
    kind = rng.choice(["duplicate", "second-prefix", "unreferenced-junk"])
    if kind == "duplicate":
        data = torch_zip(pkl, records, extra={"archive/data.pkl": dumps({})})
        expect = {"must": frozenset({"LC001"})}
    elif kind == "second-prefix":
        data = torch_zip(pkl, records, extra={"b/data.pkl": pkl, "b/version": b"3\n"})
        expect = {"must": frozenset({"LC001"})}
    else:
        data = torch_zip(pkl, records, compress=zipfile.ZIP_DEFLATED,
                         extra={"archive/data/77": os.urandom(rng.randrange(4096)),
                                "archive/extra.pkl": b"\x80\x02cos\nsystem\n."})
        expect = {"must_not": frozenset({"LC001"})}
    return _zip_case(rng, "names", _peft_bin(data, rng), kind, **expect)


def _stream_deflated(archive: zipfile.ZipFile, name: str, size: int,
                     chunk: Callable[[int], bytes] | None = None, *,
                     zip64: bool = True) -> None:
    """Write ``size`` bytes (zeros, or ``chunk(i)``) deflated, never holding them all."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    block = 2**22
    zeros = bytes(block)
    with archive.open(info, "w", force_zip64=zip64) as member:
        written = 0
        while written < size:
            n = min(block, size - written)
            member.write(chunk(n) if chunk is not None else zeros[:n])
            written += n


def _deflated_pickle(archive: zipfile.ZipFile, head: bytes, size: int, fill: bytes,
                     tail: bytes) -> None:
    """Write data.pkl deflated: ``head``, ``size`` bytes of ``fill``, then ``tail``."""
    info = zipfile.ZipInfo("archive/data.pkl")
    info.compress_type = zipfile.ZIP_DEFLATED
    block = fill * (2**20 // len(fill))
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(head)
        for _ in range(size // len(block)):
            member.write(block)
        member.write(tail)


def _moderate_chunk(noise: random.Random) -> Callable[[int], bytes]:
    """Blocks of 4 KiB: 80 random bytes, then zeros; they deflate about 45 times."""

    def chunk(n: int) -> bytes:
        out = bytearray(n)
        for j in range(0, n - 80, 4096):
            out[j : j + 80] = noise.randbytes(80)
        return bytes(out)

    return chunk


def _big_zip(rng: random.Random, kind: str) -> tuple[Callable[[Path], Path], str, dict[str, Any]]:
    """One of the big (16-256 MiB inflated) inputs: (builder, note, expectations).

    bomb-tensor        A's storage record: zeros deflated >1000x, referenced (refused unread);
    bomb-pkl           data.pkl itself is the bomb (refused unread);
    bomb-unreferenced  the bomb is a record nothing refers to (never read);
    bomb-lying         the bomb (A's record, or data.pkl followed by zeros) has a central
                       directory that claims only its real content (256 bytes, or the
                       pickle's length): what is inflated must stay bounded by the claim;
    moderate           65 MiB that deflates ~45x (under the ratio): inflated, A views 64 of it;
    pkl-string         a data.pkl under the 64 MiB inflated freely, one big string inside.
    """
    size = rng.choice([64, 65, 128, 256]) * 2**20
    if kind == "bomb-lying":
        size = rng.choice([128, 256]) * 2**20
    elif kind == "moderate":
        size = 65 * 2**20
    elif kind == "pkl-string":
        size = rng.choice([16, 32, 63]) * 2**20
    sd = StateDict(rng)
    b = sd.tensor((16, 4))
    numel = size // 4 if kind in ("bomb-tensor", "moderate") else 64
    a = Tensor(Storage("0", "F32", numel), 0, (4, 16), (16, 1))
    if kind == "bomb-tensor" and size > 64 * 2**20 and rng.random() < 0.5:
        # the view covers the whole storage (at 64 MiB exactly the record is inflated: a real
        # 64 MiB factor, measured at ~6x its size, is not what this input is about)
        a = Tensor(a.storage, 0, (4, numel // 4), (numel // 4, 1))
    b.storage.key = "1"
    root = {PEFT_A.format(i=0, m="q"): a, PEFT_B.format(i=0, m="q"): b}
    peak: float | None = None
    lie_about_pkl = kind == "bomb-lying" and rng.random() < 0.5
    expect: dict[str, Any] = {}
    if kind in ("bomb-tensor", "bomb-pkl") and size > 64 * 2**20:
        # past INFLATE_FREE_BYTES and 100x: refused unread (64 MiB exactly is inflated)
        expect = {"must": frozenset({"LC001"}), "fragment": "would inflate"}
    elif kind in ("bomb-unreferenced", "moderate"):
        expect = {"must_not": frozenset({"LC001"})}
    if kind == "bomb-lying":
        # The record claims 256 bytes; a reader may inflate at most the 64 MiB that
        # pickle_io inflates freely (INFLATE_FREE_BYTES) for it, plus slack.
        peak = 80.0

    def build(folder: Path) -> Path:
        (folder / "adapter_config.json").write_bytes(peft_config(4))
        path = folder / "adapter_model.bin"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            if kind == "bomb-pkl":
                _deflated_pickle(archive, b"\x80\x02}q\x00.", size, b"\x00", b"")
            elif kind == "bomb-lying" and lie_about_pkl:
                _deflated_pickle(archive, dumps(root), size, b"\x00", b"")
            elif kind == "pkl-string":
                head = (b"\x80\x02}q\x00X\x09\x00\x00\x00step_infoq\x01X"
                        + struct.pack("<I", size))
                _deflated_pickle(archive, head, size, b"a", b"q\x02s.")
            else:
                archive.writestr("archive/data.pkl", dumps(root))
            archive.writestr("archive/version", "3\n")
            archive.writestr("archive/data/1", sd.records["0"])
            if kind == "bomb-tensor":
                _stream_deflated(archive, "archive/data/0", size)
            elif kind == "bomb-lying" and not lie_about_pkl:
                _stream_deflated(archive, "archive/data/0", size, zip64=False)
            elif kind == "bomb-lying":
                archive.writestr("archive/data/0", bytes(4 * numel))
            elif kind == "moderate":
                _stream_deflated(archive, "archive/data/0", size,
                                 _moderate_chunk(random.Random(7)))
            elif kind == "bomb-unreferenced":
                archive.writestr("archive/data/0", bytes(4 * numel))
                _stream_deflated(archive, "archive/data/99", size)
        data = buffer.getvalue()
        if kind == "bomb-lying" and lie_about_pkl:
            data = patch_central(data, "archive/data.pkl", _USIZE, "<I", len(dumps(root)))
        elif kind == "bomb-lying":
            data = patch_central(data, "archive/data/0", _USIZE, "<I", 4 * numel)
        path.write_bytes(data)
        return rng.choice([folder, path])

    if peak is not None:
        expect["max_peak_mib"] = peak
    where = " (data.pkl)" if lie_about_pkl else ""
    return build, f"{kind} {size >> 20} MiB{where}", expect


BIG_KINDS = ["bomb-tensor", "bomb-lying", "moderate", "bomb-pkl", "pkl-string",
             "bomb-unreferenced"]


def zp_big(rng: random.Random, nth: int) -> Case:
    kind = BIG_KINDS[nth % len(BIG_KINDS)]
    build, note, expect = _big_zip(rng, kind)
    return _zip_case(rng, "big", build, note, **expect)


ZIP_VARIANTS: list[Callable[[random.Random], Case]] = [
    zp_compressed, zp_corrupt, zp_lying, zp_names,
]


# --- family: yaml ---------------------------------------------------------------------------

# (text as YAML, valid rank?)
RANKS: list[tuple[str, bool]] = [("8", True), ("16", True), ("1", True), ("64", True),
                                 ("0", False), ("-4", False), ("sixteen", False),
                                 ("null", False), ("[8]", False), ("16.5", False)]


def _yaml_head(fmt: str) -> str:
    if fmt == "axolotl":
        return "base_model: m\nadapter: lora\n"
    return "stage: sft\nfinetuning_type: lora\n"


def _rank_key(fmt: str) -> str:
    return "lora_r" if fmt == "axolotl" else "lora_rank"


def _yaml_name(rng: random.Random, fmt: str) -> str:
    if fmt == "axolotl":
        return rng.choice(["axolotl.yaml", "train.yaml", "config.yml"])
    return rng.choice(["llama_factory.yaml", "train_lora.yaml", "sft.yaml"])


def _yaml_case(rng: random.Random, variant: str, fmt: str, text: str, note: str,
               **expect: Any) -> Case:
    name = _yaml_name(rng, fmt)
    return Case("yaml", variant, _writer({name: text.encode()}, name), note, **expect)


def ym_recursive(rng: random.Random) -> Case:
    """An anchor whose node contains its own alias."""
    fmt = rng.choice(["axolotl", "llama-factory"])
    body = rng.choice([
        "x: &a {y: *a}\n", "x: &a [*a]\n", "x: &a [*a, *a, *a]\n", "x: &a {<<: *a}\n",
        "x: &a\n  y: *a\n  z: [*a, *a]\n", "x: &a {y: [{z: *a}]}\n",
        "lora_target_modules: &a [q_proj, *a]\n",
    ])
    text = _yaml_head(fmt) + f"{_rank_key(fmt)}: 8\nlora_alpha: 16\n" + body
    return _yaml_case(rng, "recursive", fmt, text, body.strip(), must=frozenset({"LC001"}))


def ym_laughs(rng: random.Random) -> Case:
    """k levels of m aliases each: m^k leaves from a few hundred bytes."""
    fmt = rng.choice(["axolotl", "llama-factory"])
    k, m = rng.randint(1, 10), rng.randint(1, 10)
    lines = [f"l0: &l0 [{', '.join(['lol'] * m)}]"]
    for i in range(1, k):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * m)}]")
    if rng.random() < 0.5:
        lines.append(f"lora_target_modules: *l{k - 1}")
    text = _yaml_head(fmt) + f"{_rank_key(fmt)}: 8\nlora_alpha: 16\n" + "\n".join(lines) + "\n"
    expanded = sum(m**i for i in range(1, k + 1)) * 2
    expect: dict[str, Any] = {}
    if expanded > 1_000_000:
        expect = {"must": frozenset({"LC001"})}
    elif expanded < 10_000:
        expect = {"must_not": frozenset({"LC001"})}
    return _yaml_case(rng, "laughs", fmt, text, f"{k} levels of {m} aliases", **expect)


def ym_merge(rng: random.Random) -> Case:
    """LoRA fields set through merge keys (``<<: *base``, ``<<: [*a, *b]``), with or without
    an override: LC101 exactly when the rank that wins is invalid."""
    fmt = rng.choice(["axolotl", "llama-factory"])
    key = _rank_key(fmt)
    base_rank, base_ok = rng.choice(RANKS)
    lines = [f"base: &base {{{key}: {base_rank}, lora_alpha: 16, lora_dropout: 0.05}}",
             "other: &other {lora_alpha: 32, extra: 1}"]
    effective_ok = base_ok
    merge = rng.choice(["<<: *base", "<<: [*base, *other]", "<<: [*other, *base]"])
    head = _yaml_head(fmt).rstrip("\n").split("\n")
    lines += head
    lines.append(merge)
    if rng.random() < 0.4:
        rank, effective_ok = rng.choice(RANKS)
        lines.append(f"{key}: {rank}")
    text = "\n".join(lines) + "\n"
    return _yaml_case(rng, "merge", fmt, text, f"{merge}, rank valid: {effective_ok}",
                      must=frozenset() if effective_ok else frozenset({"LC101"}),
                      must_not=frozenset({"LC001", "LC101"} if effective_ok else {"LC001"}))


def ym_fields(rng: random.Random) -> Case:
    """Anchors on the LoRA fields themselves: ``lora_r: &r 8``, ``lora_alpha: *r``, the rank
    an alias to an anchor set elsewhere, the targets shared with another key."""
    fmt = rng.choice(["axolotl", "llama-factory"])
    key = _rank_key(fmt)
    rank, ok = rng.choice(RANKS)
    kind = rng.choice(["alpha-is-rank", "rank-is-alias", "targets", "all"])
    head = _yaml_head(fmt)
    if kind == "alpha-is-rank":
        text = head + f"{key}: &r {rank}\nlora_alpha: *r\n"
    elif kind == "rank-is-alias":
        text = f"defaults: {{width: &w {rank}}}\n" + head + f"{key}: *w\nlora_alpha: 16\n"
    elif kind == "targets":
        ok = True
        targets = "lora_target_modules" if fmt == "axolotl" else "lora_target"
        text = (head + f"{key}: 8\nlora_alpha: &a 16\n{targets}: &t [q_proj, v_proj]\n"
                "mirror: *t\nscale: *a\n")
    else:
        text = (f"anchors:\n  - &r {rank}\n  - &d 0.05\n  - &t [q_proj]\n" + head
                + f"{key}: *r\nlora_alpha: *r\nlora_dropout: *d\nlora_target_modules: *t\n")
    return _yaml_case(rng, "fields", fmt, text, f"{kind}, rank {rank}",
                      must=frozenset() if ok else frozenset({"LC101"}),
                      must_not=frozenset({"LC001", "LC101"} if ok else {"LC001"}))


def ym_deep(rng: random.Random) -> Case:
    """Flow sequences or mappings nested 10..10000 deep, or block mappings nested 10..300."""
    fmt = rng.choice(["axolotl", "llama-factory"])
    depth = rng.choice([10, 30, 60, 65, 100, 1000, 5000, 10_000])
    kind = rng.choice(["flow-seq", "flow-map", "block", "aliased"])
    if kind == "flow-seq":
        value = "[" * depth + "]" * depth
    elif kind == "flow-map":
        value = "{a: " * depth + "1" + "}" * depth
    elif kind == "block":
        depth = min(depth, 300)
        value = "".join(f"\n{'  ' * (i + 1)}a:" for i in range(depth)) + " 1"
    else:  # the deep list behind an anchor, aliased from the targets
        value = "&deep " + "[" * depth + "]" * depth + "\nlora_target_modules: *deep"
    where = rng.choice(["extra", "lora_target_modules"]) if kind != "aliased" else "extra"
    text = _yaml_head(fmt) + f"{_rank_key(fmt)}: 8\nlora_alpha: 16\n{where}: {value}\n"
    expect: dict[str, Any] = {"trace": depth <= 200}
    if depth > 70:
        expect["must"] = frozenset({"LC001"})
    elif depth < 50:
        expect["must_not"] = frozenset({"LC001"})
    return _yaml_case(rng, "deep", fmt, text, f"{kind} {depth} deep under {where}", **expect)


YAML_VARIANTS: list[Callable[[random.Random], Case]] = [
    ym_recursive, ym_laughs, ym_merge, ym_fields, ym_deep,
]


# --- family: shapes -------------------------------------------------------------------------


def _shapes_case(rng: random.Random, variant: str, tensors: dict[str, np.ndarray],
                 config: bytes, note: str, **expect: Any) -> Case:
    def build(folder: Path) -> Path:
        (folder / "adapter_config.json").write_bytes(config)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        return rng.choice([folder, folder / "adapter_model.safetensors"])

    return Case("shapes", variant, build, note, **expect)


def _pair(a: np.ndarray, b: np.ndarray, i: int = 0, m: str = "q") -> dict[str, np.ndarray]:
    return {PEFT_A.format(i=i, m=m): a, PEFT_B.format(i=i, m=m): b}


def _normal(rng: random.Random, shape: tuple[int, ...], dtype: Any = np.float32,
            scale: float = 0.02) -> np.ndarray:
    gen = np.random.default_rng(rng.randrange(2**32))
    return gen.normal(0, scale, size=shape).astype(dtype)


def sh_wide(rng: random.Random) -> Case:
    """Rank far above the module's sides: A (r, k), B (k, r) with r up to 8192, k 1..64."""
    r = rng.choice([64, 512, 2048, 8192])
    k_in, k_out = rng.choice([1, 1, 2, 16, 64]), rng.choice([1, 1, 2, 16, 64])
    tensors = _pair(_normal(rng, (r, k_in)), _normal(rng, (k_out, r)))
    return _shapes_case(rng, "wide", tensors, peft_config(r), f"A ({r}, {k_in}) "
                        f"B ({k_out}, {r})", must=frozenset({"LC104"}),
                        must_not=frozenset({"LC001"}))


def sh_zero(rng: random.Random) -> Case:
    """A zero-size dimension in A or B (or both)."""
    r, n = rng.choice([4, 8]), rng.choice([16, 32])
    shapes = rng.choice([((0, n), (n, 0)), ((r, 0), (n, r)), ((r, n), (0, r)),
                         ((0, 0), (0, 0)), ((r, n), (n, 0))])
    tensors = _pair(np.zeros(shapes[0], np.float32), np.zeros(shapes[1], np.float32))
    return _shapes_case(rng, "zero", tensors, peft_config(r), f"A {shapes[0]} B {shapes[1]}",
                        must=frozenset({"LC213"}), must_not=frozenset({"LC001"}))


def sh_flat(rng: random.Random) -> Case:
    """Factors flattened to one dimension, or 0-dim."""
    r, n = 4, rng.choice([8, 16])
    a = _normal(rng, (r * n,)) if rng.random() < 0.7 else np.array(1.0, np.float32)
    b = _normal(rng, (n * r,)) if rng.random() < 0.7 else _normal(rng, (n, r))
    return _shapes_case(rng, "flat", _pair(a, b), peft_config(r), f"A {a.shape} B {b.shape}",
                        must_not=frozenset({"LC001"}),
                        must=frozenset({"LC213"}) if a.ndim == 1 else frozenset())


def sh_3d(rng: random.Random) -> Case:
    """3-D (conv1d-like) and 5-D factors."""
    r, n = 4, 8
    a_shape = rng.choice([(r, n, 3), (r, n, 1), (r, n, 1, 1, 1), (1, r, n)])
    b_shape = rng.choice([(n, r, 1), (n, r), (n, r, 1, 1, 1), (1, n, r)])
    tensors = _pair(_normal(rng, a_shape), _normal(rng, b_shape))
    return _shapes_case(rng, "3d", tensors, peft_config(r), f"A {a_shape} B {b_shape}",
                        must_not=frozenset({"LC001"}))


def sh_chain(rng: random.Random) -> Case:
    """A (r1, in), B (out, r2) with r1 != r2: the pair cannot be multiplied."""
    r1, r2 = rng.sample([1, 2, 4, 8, 16], 2)
    n = rng.choice([16, 64])
    tensors = _pair(_normal(rng, (r1, n)), _normal(rng, (n, r2)))
    return _shapes_case(rng, "chain", tensors, peft_config(r1), f"A ({r1}, {n}) B ({n}, {r2})",
                        must=frozenset({"LC202"}), must_not=frozenset({"LC001"}))


def sh_config_rank(rng: random.Random) -> Case:
    """The config's r disagrees with the tensors' rank."""
    r = rng.choice([2, 4, 8])
    declared = rng.choice([1, r * 2, r * 16, 1024])
    n = 32
    tensors = _pair(_normal(rng, (r, n)), _normal(rng, (n, r)))
    return _shapes_case(rng, "config-rank", tensors, peft_config(declared, alpha=16),
                        f"tensors r={r}, config r={declared}", must=frozenset({"LC202"}),
                        must_not=frozenset({"LC001"}))


def sh_values(rng: random.Random) -> Case:
    """NaN/Inf in a factor; finite values whose update overflows; float16 near its maximum."""
    r, n = rng.choice([2, 4, 8]), rng.choice([8, 64])
    kind = rng.choice(["nan", "inf", "huge", "f16-near-max", "f16-inf", "tiny"])
    a, b = _normal(rng, (r, n)), _normal(rng, (n, r))
    must: frozenset[str] = frozenset()
    if kind in ("nan", "inf"):
        target = rng.choice([a, b])
        flat = target.reshape(-1)
        for j in rng.sample(range(flat.size), rng.randint(1, 4)):
            flat[j] = np.nan if kind == "nan" else rng.choice([np.inf, -np.inf])
        must = frozenset({"LC203"})
    elif kind == "huge":  # ΔW = r · 1e50 per entry: past float32's 3.4e38
        a = np.full((r, n), 1e25, np.float32)
        b = np.full((n, r), 1e25, np.float32)
        must = frozenset({"LC203"})
    elif kind == "f16-near-max":
        a = np.full((r, n), 40000, np.float16)
        b = np.full((n, r), rng.choice([40000, 60000, 65504]), np.float16)
        must = frozenset({"LC211", "LC203"})
    elif kind == "f16-inf":
        a = a.astype(np.float16)
        b = b.astype(np.float16)
        with np.errstate(over="ignore"):
            b[0, 0] = np.float32(70000).astype(np.float16)  # overflows to inf
        must = frozenset({"LC203"})
    else:  # every non-zero float16 value subnormal
        a = np.full((r, n), 1e-7, np.float16)
        b = np.full((n, r), 1e-7, np.float16)
        must = frozenset({"LC211"})
    return _shapes_case(rng, "values", _pair(a, b), peft_config(r), f"{kind} r={r} n={n}",
                        must=must, must_not=frozenset({"LC001"}))


def sh_thin(rng: random.Random) -> Case:
    """Single-row and single-column factors: r = 1, or in or out = 1."""
    r = rng.choice([1, 1, 4])
    n_in, n_out = rng.choice([1, 4096]), rng.choice([1, 4096])
    a, b = _normal(rng, (r, n_in)), _normal(rng, (n_out, r))
    must = frozenset({"LC104"}) if r >= min(n_in, n_out) else frozenset()
    return _shapes_case(rng, "thin", _pair(a, b), peft_config(r), f"A ({r}, {n_in}) "
                        f"B ({n_out}, {r})", must=must, must_not=frozenset({"LC001"}))


def sh_mixed(rng: random.Random) -> Case:
    """Several modules, each drawn from the shapes above, in mixed dtypes."""
    tensors: dict[str, np.ndarray] = {}
    for i in range(rng.randint(2, 6)):
        r = rng.choice([0, 1, 4, 8, 300])
        n = rng.choice([0, 1, 8, 64])
        dtype = rng.choice([np.float32, np.float16, np.float64])
        a_shape = rng.choice([(r, n), (r * n,), (r, n, 1), (n, r)])
        b_shape = rng.choice([(n, r), (n, r + 1), (r, n), (n,)])
        a, b = _normal(rng, a_shape, dtype), _normal(rng, b_shape, dtype)
        if rng.random() < 0.2 and a.size:
            with np.errstate(over="ignore"):  # 1e30 overflows float16 to inf
                a.reshape(-1)[0] = rng.choice([np.nan, np.inf, 1e30])
        m = rng.choice(["q", "k", "v", "o"])
        tensors.update(_pair(a, b, i, m))
        if rng.random() < 0.2:  # half a pair
            tensors.pop(PEFT_B.format(i=i, m=m))
    config = peft_config(rng.choice([1, 4, 8, 300]), modules=rng.choice(
        [["q_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"], "all-linear", []]))
    return _shapes_case(rng, "mixed", tensors, config, f"{len(tensors)} tensors",
                        must_not=frozenset({"LC001"}))


SHAPE_VARIANTS: list[Callable[[random.Random], Case]] = [
    sh_wide, sh_zero, sh_flat, sh_3d, sh_chain, sh_config_rank, sh_values, sh_thin, sh_mixed,
]


# --- the oracle -----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int | None
    out: str
    err: str
    seconds: float  # CPU time of the process (the machine may be shared)
    wall: float
    peak: int
    raised: str | None = None
    doc: dict[str, Any] | None = field(default=None)


def run_cli(target: Path, *, trace: bool, timeout: float = 60.0) -> Outcome:
    """``loracheck check TARGET`` in process, timed; with ``trace``, its Python allocations
    traced (tracemalloc slows allocation-heavy code 5-20x, so times come from a run without)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["check", str(target), "--format", "json", "--jobs", "1", "--timeout", str(timeout)]
    code: int | None = None
    raised: str | None = None
    if trace:
        tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(argv)
    except MemoryError:
        raised = "MemoryError (address-space cap reached)"
    except BaseException:  # main() must catch everything itself
        raised = "main() raised:\n" + traceback.format_exc(limit=8)
    finally:
        seconds = time.process_time() - cpu_start
        wall = time.perf_counter() - start
        peak = 0
        if trace:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    result = Outcome(code, out.getvalue(), err.getvalue(), seconds, wall, peak, raised)
    with contextlib.suppress(ValueError):
        doc = json.loads(result.out)
        result.doc = doc if isinstance(doc, dict) else None
    return result


def measure(case: Case, target: Path) -> Outcome:
    """The untraced run's outcome and time, with the peak of a second, traced run (skipped
    when the first already failed or ran far past SLOW_S, or the case says not to trace)."""
    result = run_cli(target, trace=False)
    if case.trace and result.raised is None and result.seconds <= 2 * SLOW_S:
        # the traced run's own --timeout bounds its cost; its report is not judged
        traced = run_cli(target, trace=True, timeout=30.0)
        result.peak = traced.peak
        result.raised = traced.raised
    return result


def warm_up(folder: Path) -> None:
    """One input of each family, untimed: the first check of a kind pays lazy imports."""
    rng = random.Random(-1)
    for i, make in enumerate([pk_valid, zp_compressed, ym_fields, ym_laughs, sh_thin]):
        sub = folder / f"warm-{i}"
        sub.mkdir()
        target = make(rng).build(sub)
        run_cli(target, trace=False)
        run_cli(target, trace=True)
        shutil.rmtree(sub, ignore_errors=True)


def debug_traceback(target: Path) -> str:
    """The traceback behind an exit 2 or an "internal error" LC001 (LORACHECK_DEBUG re-raises)."""
    previous = os.environ.get("LORACHECK_DEBUG")
    os.environ["LORACHECK_DEBUG"] = "1"
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main(["check", str(target), "--format", "json", "--jobs", "1"])
    except BaseException:
        return traceback.format_exc(limit=-6)
    finally:
        if previous is None:
            os.environ.pop("LORACHECK_DEBUG", None)
        else:
            os.environ["LORACHECK_DEBUG"] = previous
    return "(no traceback on a second run)"


def judge(case: Case, result: Outcome) -> str | None:
    """None when the input passes; else why not."""
    if result.raised is not None:
        return result.raised
    problems: list[str] = []
    if result.code not in (0, 1):
        problems.append(f"exit {result.code}")
    if result.err:
        problems.append(f"stderr {result.err[:300]!r}")
    if "Traceback" in result.out:
        problems.append("a traceback on stdout")
    if result.seconds > SLOW_S:
        problems.append(f"took {result.seconds:.2f} s of CPU (limit {SLOW_S:g} s)")
    if result.wall > WALL_FACTOR * SLOW_S:
        problems.append(f"took {result.wall:.2f} s of wall time (limit "
                        f"{WALL_FACTOR * SLOW_S:g} s)")
    peak_limit = case.max_peak_mib if case.max_peak_mib is not None else PEAK_MIB
    if result.peak > peak_limit * 2**20:
        problems.append(f"tracemalloc peak {result.peak / 2**20:.1f} MiB (limit "
                        f"{peak_limit:g} MiB)")
    if result.doc is None:
        problems.append(f"stdout is not a JSON report: {result.out[:200]!r}")
        return "; ".join(problems)
    diagnostics = result.doc.get("diagnostics", [])
    codes = {d.get("code") for d in diagnostics}
    internal = [d["message"] for d in diagnostics if d.get("code") == "LC001" and (
        "internal error" in d.get("message", "") or "did not finish" in d.get("message", ""))]
    if internal:
        problems.append(f"LC001 {internal[0][:300]!r}")
    missing = sorted(case.must - codes)
    if missing:
        problems.append(f"expected {', '.join(missing)}, got {sorted(c for c in codes if c)}")
    unwanted = sorted(case.must_not & codes)
    if unwanted:
        messages = [d["message"][:200] for d in diagnostics if d.get("code") in unwanted]
        problems.append(f"unexpected {', '.join(unwanted)}: {messages[:2]}")
    if case.fragment and "LC001" in case.must and "LC001" in codes:
        messages = [d["message"] for d in diagnostics if d.get("code") == "LC001"]
        if not any(case.fragment in m for m in messages):
            problems.append(f"LC001 without {case.fragment!r}: {messages[0][:200]!r}")
    return "; ".join(problems) or None


def outcome_name(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return "no report"
    codes = {d.get("code") for d in doc.get("diagnostics", [])}
    if "LC001" in codes:
        return "LC001"
    if "LC002" in codes:
        return "LC002"
    return "findings" if codes else "clean"


# --- the campaign ---------------------------------------------------------------------------


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def cap_address_space(gib: float) -> tuple[Callable[[], None], str]:
    """Lower RLIMIT_AS's soft limit to ``gib`` GiB (at least what is mapped now plus 2 GiB);
    returns a function that restores the previous limit, and a line saying what was set."""
    try:
        import resource
    except ImportError:
        return lambda: None, "address space: not capped (no resource module)"
    if gib <= 0:
        return lambda: None, "address space: not capped (--address-space-gib 0)"
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(gib * 2**30)
    mapped = _mapped_bytes()
    if mapped is not None:
        cap = max(cap, mapped + 2 * 2**30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return lambda: None, f"address space: already capped at {soft / 2**30:.1f} GiB"
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError) as exc:
        return lambda: None, f"address space: not capped ({exc})"

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    return restore, f"address space: capped at {cap / 2**30:.1f} GiB"


class Schedule:
    """Which generator makes the next input of each family: variants in turn, the zip
    family's big inputs once every BIG_EVERY of its inputs."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.big = 0

    def next(self, family: str, rng: random.Random) -> Case:
        k = self.count[family]
        self.count[family] += 1
        if family == "pickle":
            return PICKLE_VARIANTS[k % len(PICKLE_VARIANTS)](rng)
        if family == "zip":
            if k % BIG_EVERY == 1:
                self.big += 1
                return zp_big(rng, self.big - 1)
            return ZIP_VARIANTS[k % len(ZIP_VARIANTS)](rng)
        if family == "yaml":
            return YAML_VARIANTS[k % len(YAML_VARIANTS)](rng)
        return SHAPE_VARIANTS[k % len(SHAPE_VARIANTS)](rng)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", type=Path, default=None, help="write failing inputs here")
    parser.add_argument("--address-space-gib", type=float, default=ADDRESS_SPACE_GIB,
                        help="cap RLIMIT_AS at this many GiB while running (0: no cap)")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    schedule = Schedule()
    tried: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    first_failures: list[str] = []
    slowest = (0.0, "")
    largest = (0, "")
    restore, cap_line = cap_address_space(args.address_space_gib)
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="loracheck-fuzz-struct-") as tmp:
            warm_up(Path(tmp))
            for i in range(args.examples):
                if args.seconds is not None and time.monotonic() - t0 > args.seconds:
                    break
                family = FAMILIES[i % len(FAMILIES)]
                folder = Path(tmp) / str(i)
                folder.mkdir()
                label = family
                try:
                    case = schedule.next(family, rng)
                    label = f"{family}:{case.variant}"
                    target = case.build(folder)
                except MemoryError:
                    shutil.rmtree(folder, ignore_errors=True)
                    first_failures.append(f"input {i} ({label}): MemoryError while generating")
                    failed[family] += 1
                    tried[family] += 1
                    continue
                result = measure(case, target)
                why = judge(case, result)
                tried[family] += 1
                variants[label] += 1
                outcomes[outcome_name(result.doc)] += 1
                if result.seconds > slowest[0]:
                    slowest = (result.seconds, f"{label}, {case.note}; "
                                               f"{result.wall * 1000:.0f} ms wall")
                if result.peak > largest[0]:
                    largest = (result.peak, f"{label}, {case.note}")
                if why is not None:
                    failed[family] += 1
                    if result.code == 2 or "internal error" in why or "raised" in why:
                        why += "\n" + debug_traceback(target)
                    if len(first_failures) < 8:
                        first_failures.append(f"input {i} ({label}, {case.note}): {why}")
                    if args.save_dir is not None:
                        dest = args.save_dir / f"failure-{i}-{family}-{case.variant}"
                        shutil.copytree(folder, dest, dirs_exist_ok=True)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        restore()
    elapsed = time.monotonic() - t0
    total, failures = sum(tried.values()), sum(failed.values())
    print(f"tried {total} inputs in {elapsed:.1f}s "
          f"({', '.join(f'{k} {tried[k]}' for k in FAMILIES)}): {failures} failures "
          f"({', '.join(f'{k} {failed[k]}' for k in FAMILIES)})")
    for family in FAMILIES:
        names = sorted(v for v in variants if v.startswith(family + ":"))
        print(f"  {family}: " + ", ".join(f"{v.split(':', 1)[1]} {variants[v]}" for v in names))
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"slowest input: {slowest[0] * 1000:.0f} ms CPU ({slowest[1]})")
    print(f"largest tracemalloc peak: {largest[0] / 2**20:.1f} MiB ({largest[1]})")
    print(cap_line)
    for line in first_failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
