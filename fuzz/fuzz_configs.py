"""Long fuzzing campaigns for loracheck's config readers, through the reader API and the CLI.

    python fuzz/fuzz_configs.py --examples 20000 [--seconds 120] [--seed 1] [--save-dir DIR]

Three families of inputs, in turn:

random   text assembled from fragments that steer towards the readers' interesting paths (the
         strategies of tests/test_configs_fuzz.py, drawn here with `random` instead of hypothesis),
         under every file name / format pair of that test;
mutate   the shipped example configs (examples/configs/) put through 1-4 byte- or line-level
         mutations: bit flips, truncation, deletion, duplication, line swaps, fragment inserts;
typed    known-answer configs: a PEFT JSON, axolotl / LLaMA-Factory YAML or kohya TOML whose rank
         and dropout are drawn from valid and invalid values (strings, null, lists, bools, zero,
         negatives, huge numbers), with the verdict known in advance.

Every input goes through `sniff_config` + `read_spec` (only ArtifactError may escape, and the spec
must serialise) and through `loracheck check --format json` in process (exit 0 or 1, valid JSON,
nothing on stderr, within a time bound). For `typed` inputs the report must also hold LC101
exactly when the rank is invalid and an LC103 error exactly when the dropout is. Prints how many
inputs were tried and how many failures were found; exits 1 if there were failures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loracheck.cli import main as cli_main
from loracheck.configs import read_spec, sniff_config
from loracheck.errors import ArtifactError
from loracheck.render.json_out import spec_to_dict

ROOT = Path(__file__).resolve().parent.parent


def _strategies() -> tuple[list[str], list[tuple[str, str | None]]]:
    """The CI-sized test's fragments and (file name, format) cases, when tests/ is there."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        module = importlib.import_module("test_configs_fuzz")
    except ImportError:  # pragma: no cover - a stripped source tree
        fragments = ["lora_r", "lora_alpha", "r", "peft_type", "network_dim", ":", "=", "\n",
                     "[", "]", "{", "}", '"', "&a", "*a", "null", "-1", "16", "\x00", "\ufeff"]
        cases: list[tuple[str, str | None]] = [
            ("x.json", "peft"), ("x.yaml", "axolotl"), ("x.toml", "kohya"),
            ("x.py", "python"), ("x.json", None), ("x.yaml", None),
        ]
        return fragments, cases
    return list(module.FRAGMENTS), list(module.CASES)


FRAGMENTS, CASES = _strategies()

# A single input taking longer than this is a failure (issue 5: bounded time).
SLOW_S = 2.0
EXAMPLE_CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.*"))

# --- input families -----------------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(41)):
        if rng.random() < 0.7:
            parts.append(rng.choice(FRAGMENTS))
        else:
            parts.append("".join(chr(rng.randrange(0x20, 0x7F) if rng.random() < 0.9
                                     else rng.randrange(0, 0x3000)) for _ in range(5)))
    return "".join(parts)


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _delete(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + data[i + rng.randrange(1, 40):]


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    j = min(len(data), i + rng.randrange(1, 200))
    return data[:j] + data[i:j] * rng.randrange(1, 4) + data[j:]


def _swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    if len(lines) > 1:
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    blob: str = rng.choice([*FRAGMENTS, "\t", "\r", " : ", "---\n", "- ", "'", "~", "1e400"])
    return data[:i] + blob.encode("utf-8", "surrogatepass") + data[i:]


def _retype_value(rng: random.Random, data: bytes) -> bytes:
    """Replace one number in the file by a value of another type or an absurd number."""
    digits = [i for i, c in enumerate(data) if 0x30 <= c <= 0x39]
    if not digits:
        return data
    i = rng.choice(digits)
    j = i
    while j < len(data) and (0x30 <= data[j] <= 0x39 or data[j] == 0x2E):
        j += 1
    value = rng.choice([b'"sixteen"', b"null", b"[1, 2]", b"{}", b"true", b"-1", b"0",
                        b"9" * 400, b"1e999", b"nan", b".inf", b"0x10", b"1_000"])
    return data[:i] + value + data[j:]


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _flip, _flip, _truncate, _delete, _duplicate, _swap_lines, _insert, _insert, _retype_value,
    _retype_value,
]


def mutated(rng: random.Random) -> tuple[str, bytes]:
    seed = rng.choice(EXAMPLE_CONFIGS)
    data = seed.read_bytes()
    for _ in range(rng.randint(1, 4)):
        data = rng.choice(MUTATORS)(rng, data)
    return seed.name, data


# Known-answer values: (text per syntax, valid?) where text is (json, yaml, toml).
RANKS: list[tuple[tuple[str, str, str], bool]] = [
    *(((str(r), str(r), str(r)), True) for r in (1, 4, 8, 16, 64, 128)),
    (("0", "0", "0"), False),
    (("-8", "-8", "-8"), False),
    (('"sixteen"', "sixteen", '"sixteen"'), False),
    (("null", "null", '""'), False),
    (("[8]", "[8]", "[8]"), False),
    (("16.5", "16.5", "16.5"), False),
    (("true", "true", "true"), False),
    (("{}", "{}", "{}"), False),
]
DROPOUTS: list[tuple[tuple[str, str, str], bool]] = [
    *(((d, d, d), True) for d in ("0", "0.0", "0.05", "0.1", "0.25")),
    (("1", "1", "1"), False),
    (("1.5", "1.5", "1.5"), False),
    (("-0.1", "-0.1", "-0.1"), False),
    (('"high"', "high", '"high"'), False),
    (("[0.1]", "[0.1]", "[0.1]"), False),
    (("{}", "{}", "{}"), False),
]


def typed(rng: random.Random) -> tuple[str, bytes, bool, bool]:
    """A known-answer config: (file name, bytes, rank valid?, dropout valid?)."""
    (rj, ry, rt), rank_ok = rng.choice(RANKS)
    (dj, dy, dt), drop_ok = rng.choice(DROPOUTS)
    fmt = rng.choice(["peft", "axolotl", "llama-factory", "kohya"])
    if fmt == "peft":
        text = (f'{{"peft_type": "LORA", "r": {rj}, "lora_alpha": 16, "lora_dropout": {dj},\n'
                f' "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}}\n')
        return "adapter_config.json", text.encode(), rank_ok, drop_ok
    if fmt == "axolotl":
        text = (f"base_model: m\nadapter: lora\nlora_r: {ry}\nlora_alpha: 16\n"
                f"lora_dropout: {dy}\nlora_target_linear: true\n")
        return "axolotl.yaml", text.encode(), rank_ok, drop_ok
    if fmt == "llama-factory":
        text = (f"stage: sft\nfinetuning_type: lora\nlora_rank: {ry}\nlora_alpha: 16\n"
                f"lora_dropout: {dy}\nlora_target: all\n")
        return "llama_factory.yaml", text.encode(), rank_ok, drop_ok
    text = (f'[additional_network_arguments]\nnetwork_module = "networks.lora"\n'
            f"network_dim = {rt}\nnetwork_alpha = 8\nnetwork_dropout = {dt}\n")
    return "kohya.toml", text.encode(), rank_ok, drop_ok


# --- the oracle ---------------------------------------------------------------------------


def through_reader(path: Path, fmt: str | None) -> str | None:
    """None when the readers behave; else why not."""
    try:
        sniff_config(path)
        spec = read_spec(path, fmt)
        json.dumps(spec_to_dict(spec), allow_nan=False)  # the JSON report can write it
    except ArtifactError as err:
        if err.code not in ("LC001", "LC002"):
            return f"ArtifactError with code {err.code}"
    except Exception:
        return "reader raised:\n" + traceback.format_exc(limit=6)
    return None


def through_cli(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["check", str(path), "--format", "json", "--jobs", "1"])
    except BaseException:  # main() must catch everything itself
        return "main() raised:\n" + traceback.format_exc(limit=6), None
    if code not in (0, 1) or err.getvalue() or "Traceback" in out.getvalue():
        return f"exit {code}, stderr {err.getvalue()[:400]!r}", None
    try:
        doc = json.loads(out.getvalue())
    except ValueError as exc:
        return f"report is not JSON: {exc}", None
    return None, doc


def known_answer(doc: dict[str, Any], rank_ok: bool, drop_ok: bool) -> str | None:
    codes = {(d["code"], d["severity"]) for d in doc["diagnostics"]}
    has_rank = any(c == "LC101" for c, _ in codes)
    has_drop = ("LC103", "error") in codes
    problems = []
    if has_rank == rank_ok:
        problems.append(f"rank {'valid' if rank_ok else 'invalid'} but LC101 "
                        f"{'reported' if has_rank else 'missing'}")
    if has_drop == drop_ok:
        problems.append(f"dropout {'valid' if drop_ok else 'invalid'} but LC103 error "
                        f"{'reported' if has_drop else 'missing'}")
    if any(c.startswith("LC00") for c, _ in codes):
        problems.append("a well-formed config reported as unreadable")
    return "; ".join(problems) or None


# --- the campaign -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", type=Path, default=None, help="write failing inputs here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    tried: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    first_failures: list[str] = []
    slowest = (0.0, "")
    t0 = time.monotonic()
    families = ["random", "mutate", "typed"]
    with tempfile.TemporaryDirectory(prefix="loracheck-fuzz-cfg-") as tmp:
        for i in range(args.examples):
            if args.seconds is not None and time.monotonic() - t0 > args.seconds:
                break
            family = families[i % 3]
            fmt: str | None = None
            answer: tuple[bool, bool] | None = None
            if family == "random":
                name, fmt = rng.choice(CASES)
                data = random_text(rng).encode("utf-8", "surrogatepass")
            elif family == "mutate":
                name, data = mutated(rng)
            else:
                name, data, rank_ok, drop_ok = typed(rng)
                answer = (rank_ok, drop_ok)
            folder = Path(tmp) / str(i)
            folder.mkdir()
            path = folder / name
            path.write_bytes(data)
            start = time.monotonic()
            why = through_reader(path, fmt)
            cli_why, doc = through_cli(path)
            elapsed = time.monotonic() - start
            why = why or cli_why
            if why is None and elapsed > SLOW_S:
                why = f"took {elapsed:.2f} s"
            if why is None and doc is not None:
                codes = {d["code"] for d in doc["diagnostics"]}
                outcomes["unreadable (LC001)" if "LC001" in codes else
                         "no LoRA (LC002)" if "LC002" in codes else
                         "findings" if codes else "clean"] += 1
                if answer is not None:
                    why = known_answer(doc, *answer)
            if elapsed > slowest[0]:
                slowest = (elapsed, f"{family}:{name}")
            tried[family] += 1
            if why is not None:
                failed[family] += 1
                if len(first_failures) < 8:
                    first_failures.append(f"input {i} ({family}, {name}, {data[:120]!r}): {why}")
                if args.save_dir is not None:
                    args.save_dir.mkdir(parents=True, exist_ok=True)
                    (args.save_dir / f"failure-{i}-{name}").write_bytes(data)
            for child in folder.iterdir():
                child.unlink()
            folder.rmdir()
    elapsed = time.monotonic() - t0
    total, failures = sum(tried.values()), sum(failed.values())
    print(f"tried {total} inputs in {elapsed:.1f}s "
          f"({', '.join(f'{k} {tried[k]}' for k in families)}): {failures} failures "
          f"({', '.join(f'{k} {failed[k]}' for k in families)})")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    print(f"slowest input: {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    for line in first_failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
