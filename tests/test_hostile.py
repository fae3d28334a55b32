"""Issue 5, end to end through the CLI: hostile and broken inputs never crash, never execute,
never hang, and never hide the other inputs.

Every malformed input of issue 5 §1 is handed to ``loracheck check`` (in process, through
``main(argv)``) together with a healthy adapter and a NaN adapter. Each must come back as exactly
the expected diagnostic naming the file, one text line per finding, exit code 1, no traceback, and
the two witnesses must still be checked (the healthy one listed with its layers and no finding,
the NaN one with its LC203).

Pickles are planted in subprocesses, with torch importable and with torch blocked. Inputs are
built in pytest tmp dirs at test time; nothing large is committed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loracheck.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "adapters"
HEALTHY = EXAMPLES / "healthy"
NAN = EXAMPLES / "broken-nan"

A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
PEFT_CONFIG = {
    "peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
    "target_modules": ["q_proj"], "init_lora_weights": True,
}


# --- building inputs ------------------------------------------------------------------------


def _factors() -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.25, 0.25, (4, 16)).astype(np.float32)
    b = rng.normal(0, 0.01, (16, 4)).astype(np.float32)
    return a.tobytes(), b.tobytes()


def _entries() -> dict[str, Any]:
    return {
        A_KEY: {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]},
        B_KEY: {"dtype": "F32", "shape": [16, 4], "data_offsets": [256, 512]},
    }


def st_bytes(header: dict[str, Any] | bytes, data: bytes | None = None) -> bytes:
    """A safetensors file from a header (dict or raw bytes) and a data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if data is None:
        data = b"".join(_factors())
    return struct.pack("<Q", len(raw)) + raw + data


VALID = st_bytes(_entries())
HEADER_LEN = struct.unpack("<Q", VALID[:8])[0]


def with_entry(key: str, **fields: Any) -> bytes:
    entries = _entries()
    entries[key] = {**entries[key], **fields}
    return st_bytes(entries)


def peft_folder(root: Path, weights: bytes, name: str = "adapter") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def file_case(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        path = root / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path

    return build


def truncated(cut: int) -> Callable[[Path], Path]:
    return lambda root: peft_folder(root, VALID[:cut])


def _nested(depth: int) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def _duplicate_keys() -> bytes:
    text = json.dumps(_entries())
    entry = json.dumps(_entries()[B_KEY])
    # The B entry twice (the second one wins in a naive json.loads).
    return st_bytes(text[:-1].encode() + f', "{B_KEY}": {entry}}}'.encode())


def _alias_bomb() -> str:
    lines = ["adapter: lora", "lora_r: 8", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# (case id, builder, the one code expected on the bad input)
CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("empty-file", file_case("empty.safetensors", b""), "LC001"),
    ("truncated-in-length", truncated(3), "LC001"),
    ("truncated-after-length", truncated(8), "LC001"),
    ("truncated-in-header-start", truncated(9), "LC001"),
    ("truncated-in-header-middle", truncated(8 + HEADER_LEN // 2), "LC001"),
    ("truncated-in-header-end", truncated(8 + HEADER_LEN - 1), "LC001"),
    ("truncated-after-header", truncated(8 + HEADER_LEN), "LC001"),
    ("truncated-in-data-start", truncated(8 + HEADER_LEN + 1), "LC001"),
    ("truncated-between-tensors", truncated(8 + HEADER_LEN + 256), "LC001"),
    ("truncated-in-data-end", truncated(len(VALID) - 1), "LC001"),
    ("header-length-beyond-file",
     file_case("long.safetensors", struct.pack("<Q", 10_000) + b'{"a": 1}'), "LC001"),
    ("header-length-2-62",
     file_case("huge.safetensors", struct.pack("<Q", 2**62) + VALID[8:]), "LC001"),
    ("header-not-json", file_case("notjson.safetensors", st_bytes(b"{this is not json}  ")),
     "LC001"),
    ("header-json-list", file_case("list.safetensors", st_bytes(b"[1, 2, 3]")), "LC001"),
    ("header-json-string", file_case("str.safetensors", st_bytes(b'"lora"')), "LC001"),
    ("header-not-utf8", file_case("latin.safetensors", st_bytes(b'{"caf\xe9": 1}')), "LC001"),
    ("header-deeply-nested", file_case("deep.safetensors", st_bytes(_nested(200_000))),
     "LC001"),
    ("header-duplicate-keys", file_case("dup.safetensors", _duplicate_keys()), "LC001"),
    ("offsets-out-of-range",
     file_case("range.safetensors", with_entry(B_KEY, data_offsets=[256, 4096])), "LC001"),
    ("offsets-overlapping",
     file_case("overlap.safetensors", with_entry(B_KEY, data_offsets=[128, 384])), "LC001"),
    ("offsets-reversed",
     file_case("reversed.safetensors", with_entry(B_KEY, data_offsets=[512, 256])), "LC001"),
    ("offsets-vs-dtype-shape",
     file_case("mismatch.safetensors", with_entry(B_KEY, shape=[16, 8])), "LC001"),
    ("offsets-not-integers",
     file_case("floats.safetensors", with_entry(B_KEY, data_offsets=[256.0, 512.0])), "LC001"),
    ("unknown-dtype", file_case("dtype.safetensors", with_entry(A_KEY, dtype="F128")), "LC001"),
    ("negative-shape", file_case("neg.safetensors", with_entry(A_KEY, shape=[-4, -16])),
     "LC001"),
    ("huge-shape", file_case("hugeshape.safetensors", with_entry(A_KEY, shape=[2**31, 2**20])),
     "LC001"),
    ("shape-product-overflow",
     file_case("overflow.safetensors", with_entry(A_KEY, shape=[2**32, 2**32, 2**32])), "LC001"),
    ("metadata-not-str-map",
     file_case("meta.safetensors", st_bytes({"__metadata__": {"ss_network_dim": 8},
                                             **_entries()})), "LC001"),
    ("metadata-a-list",
     file_case("metalist.safetensors", st_bytes({"__metadata__": ["x"], **_entries()})), "LC001"),
    ("config-invalid-json",
     file_case("adapter_config.json", '{"peft_type": "LORA", "r": 8, "lora_alpha": '), "LC001"),
    ("config-invalid-yaml",
     file_case("axolotl.yaml", "adapter: lora\nlora_r: 8\n  lora_alpha: [16\n"), "LC001"),
    ("config-invalid-toml",
     file_case("kohya.toml", "network_dim = 8\nnetwork_alpha = = 4\n"), "LC001"),
    ("config-not-utf8", file_case("cfg.yaml", b"adapter: lora\nlora_r: 8 # \xff\xfe\n"), "LC001"),
    ("rank-a-string",
     file_case("rank.json", json.dumps({**PEFT_CONFIG, "r": "sixteen"})), "LC101"),
    ("alpha-null",
     file_case("alpha.yaml", "adapter: lora\nlora_r: 16\nlora_alpha: null\nlora_dropout: 0.05\n"
               "lora_target_linear: true\n"), "LC102"),
    ("dropout-a-list",
     file_case("dropout.toml", "network_dim = 8\nnetwork_alpha = 4\nnetwork_dropout = [0.1]\n"),
     "LC103"),
    # Found by fuzz/fuzz_configs.py: a rank no float can hold crashed the scale rule (exit 2).
    ("rank-beyond-int64",
     file_case("big_rank.yaml", "adapter: lora\nlora_r: " + "9" * 400 + "\nlora_alpha: 16\n"
               "lora_dropout: 0.05\nlora_target_linear: true\n"), "LC101"),
    ("yaml-alias-bomb", file_case("bomb.yaml", _alias_bomb()), "LC001"),
    ("python-syntax-error",
     file_case("train.py", "from peft import LoraConfig\ncfg = LoraConfig(r=8, lora_alpha=\n"),
     "LC001"),
    # Found by fuzz/fuzz_configs.py: the compiler's SyntaxWarnings about a script reached stderr.
    ("python-compiler-warnings",
     file_case("warns.py", "from peft import LoraConfig\nrank = 8\nassert (rank, 'positive')\n"
               "if rank is 8:\n    cfg = LoraConfig(r=rank, lora_alpha=16, lora_dropout=1.5)\n"),
     "LC103"),
    ("python-warning-then-syntax-error",
     file_case("warns_bad.py",
               "from peft import LoraConfig\ncfg = LoraConfig(r=8, lora_alpha=1.inf)\n"),
     "LC001"),
    ("python-huge",
     file_case("big_train.py", "from peft import LoraConfig\ncfg = LoraConfig(r=8)\n"
               + "x = 1  # padding\n" * 700_000), "LC001"),
    ("git-lfs-pointer",
     lambda root: peft_folder(root, b"version https://git-lfs.github.com/spec/v1\n"
                              b"oid sha256:" + b"0" * 64 + b"\nsize 16800560\n"), "LC003"),
]


def _symlink_loop_file(root: Path) -> Path:
    (root / "a.yaml").symlink_to("b.yaml")
    (root / "b.yaml").symlink_to("a.yaml")
    return root / "a.yaml"


def _dangling(root: Path) -> Path:
    (root / "gone.safetensors").symlink_to(root / "nowhere.safetensors")
    return root / "gone.safetensors"


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "pipe.safetensors")
    return root / "pipe.safetensors"


CASES += [
    ("symlink-loop-named", _symlink_loop_file, "LC001"),
    ("dangling-symlink", _dangling, "LC001"),
    ("fifo-named", _fifo, "LC001"),
]


# --- running --------------------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _under(path: str, bad: str) -> bool:
    return path == bad or path.startswith(bad.rstrip("/") + "/")


def check_with_witnesses(
    bad: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check ``bad`` with the two witnesses, in JSON then text; return the bad input's findings
    (JSON) and text lines. Asserts everything that holds for every hostile input."""
    argv = ["check", bad, str(HEALTHY), str(NAN), *extra]
    code, out, err = run([*argv, "--format", "json"], capsys)
    assert code == 1, (out, err)
    assert "Traceback" not in out + err and err == ""
    doc = json.loads(out)
    files = {Path(f["path"]).name: f for f in doc["files"]}
    # The witnesses were read and judged as usual.
    assert len(files["healthy"]["layers"]) == 8
    assert not [d for d in doc["diagnostics"] if _under(d["path"], str(HEALTHY))]
    assert {d["code"] for d in doc["diagnostics"] if _under(d["path"], str(NAN))} == {"LC203"}
    findings = [d for d in doc["diagnostics"] if _under(d["path"], bad)]

    code, text, err = run([*argv, "--format", "text"], capsys)
    assert code == 1
    assert "Traceback" not in text + err and err == ""
    assert any("LC203" in line and "broken-nan" in line for line in text.splitlines())
    lines = text.splitlines()
    # One line per finding, then the summary line.
    assert len(lines) == len(doc["diagnostics"]) + 1
    assert lines[-1].startswith("Found ")
    return findings, lines


@pytest.mark.parametrize(("builder", "code"), [(b, c) for _, b, c in CASES],
                         ids=[i for i, _, _ in CASES])
def test_hostile_input_is_one_diagnostic_and_the_rest_is_checked(
    builder: Callable[[Path], Path], code: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = builder(tmp_path)
    findings, lines = check_with_witnesses(str(bad), capsys, "--jobs", "1")
    assert [d["code"] for d in findings] == [code], findings
    (finding,) = findings
    # The finding names the faulty file (the weights file inside a PEFT folder).
    assert finding["path"] == str(bad if not bad.is_dir() else bad / "adapter_model.safetensors")
    assert finding["message"]
    shown = [line for line in lines if f" {code} " in line and Path(finding["path"]).name in line]
    assert len(shown) == 1


def test_the_valid_base_file_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: what every case above mutates reads cleanly (no LC0xx), header key order
    different from data order included (the format allows it)."""
    peft_folder(tmp_path, VALID, "plain")
    entries = _entries()
    swapped = {B_KEY: entries[B_KEY], A_KEY: entries[A_KEY]}
    peft_folder(tmp_path, st_bytes(swapped), "swapped")
    _, out, err = run(["check", str(tmp_path), "--format", "json", "--jobs", "1"], capsys)
    assert err == ""
    doc = json.loads(out)
    assert [f["format"] for f in doc["files"]] == ["peft", "peft"]
    assert all(len(f["layers"]) == 1 for f in doc["files"])
    assert not [d for d in doc["diagnostics"] if d["code"].startswith("LC0")], doc["diagnostics"]


def test_every_hostile_input_at_once_with_two_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All the cases in one invocation, in parallel workers: each gets its own diagnostic."""
    expected: dict[str, str] = {}
    for case_id, builder, code in CASES:
        folder = tmp_path / case_id
        folder.mkdir()
        bad = builder(folder)
        expected[str(bad if not bad.is_dir() else bad / "adapter_model.safetensors")] = code
    # Name the bad files themselves (a folder walk skips symlinks and FIFOs quietly).
    named = [str(Path(k).parent) if Path(k).name == "adapter_model.safetensors" else k
             for k in expected]
    exit_code, out, err = run(["check", *named, str(HEALTHY), str(NAN), "--format", "json",
                               "--jobs", "2"], capsys)
    assert exit_code == 1 and err == "" and "Traceback" not in out
    doc = json.loads(out)
    got: dict[str, list[str]] = {}
    for d in doc["diagnostics"]:
        got.setdefault(d["path"], []).append(d["code"])
    for path, want in expected.items():
        assert got.get(path) == [want], (path, got.get(path))
    assert len(next(f for f in doc["files"] if f["path"] == str(HEALTHY))["layers"]) == 8


# --- folders that fight back ----------------------------------------------------------------


BAD_DROPOUT = (
    "adapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 1.5\nlora_target_linear: true\n"
)


def test_folder_with_symlink_loops_fifo_and_odd_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A walk meets a folder symlinked to itself, file symlinks in a loop, a FIFO and a folder
    named like a weights file: it finishes at once, skips them quietly, and still finds the
    real bad config inside."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "up").symlink_to(tree, target_is_directory=True)
    (tree / "self").symlink_to(".", target_is_directory=True)
    _symlink_loop_file(tree)
    os.mkfifo(tree / "sub" / "adapter_model.safetensors")
    os.mkfifo(tree / "queue.yaml")
    (tree / "dir.safetensors").mkdir()
    (tree / "sub" / "bad.yaml").write_text(BAD_DROPOUT)
    start = time.perf_counter()
    findings, _ = check_with_witnesses(str(tree), capsys, "--jobs", "1", "--timeout", "20")
    assert time.perf_counter() - start < 10
    assert [(Path(d["path"]).name, d["code"]) for d in findings] == [("bad.yaml", "LC103")]


@pytest.mark.parametrize("name", [
    "with space.yaml", "ünïcødé-日本.yaml", "new\nline.yaml", "tab\tand;semicolon,comma.yaml",
    "-starts-with-dash.yaml", "percent%0A%s{}.yaml",
])
def test_odd_characters_in_names(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "odd dir ü"
    folder.mkdir()
    bad = folder / name
    bad.write_text(BAD_DROPOUT)
    findings, lines = check_with_witnesses(str(folder), capsys, "--jobs", "1")
    assert [(d["path"], d["code"]) for d in findings] == [(str(bad), "LC103")]
    # The text line names the file on one line (control characters escaped).
    escaped = name.replace("\n", "\\n").replace("\t", "\\t")
    assert len([line for line in lines if escaped in line and "LC103" in line]) == 1
    for fmt in ("sarif", "github"):
        code, _, err = run(["check", str(folder), "--format", fmt, "--jobs", "1"], capsys)
        assert code == 1 and err == "", err


def test_file_name_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = os.fsencode(tmp_path) + b"/bad\xff\xfe.yaml"
    with open(raw, "wb") as handle:
        handle.write(BAD_DROPOUT.encode())
    for fmt in ("text", "json", "sarif", "github"):
        code, out, err = run(["check", str(tmp_path), "--format", fmt, "--jobs", "1"], capsys)
        assert code == 1 and err == "" and "LC103" in out, (fmt, err)
    code, out, err = run(["inspect", str(tmp_path)], capsys)
    assert code == 1 and err == "" and "LC103" in out
    code, out, err = run(["check", str(tmp_path), "--format", "sarif", "--output",
                          str(tmp_path / "out.sarif")], capsys)
    assert code == 1 and err == ""
    uri = json.loads((tmp_path / "out.sarif").read_text())["runs"][0]["results"][0][
        "locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.endswith("bad%FF%FE.yaml")


def _as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` as a user without privileges. Running as root (CI containers), a forked
    child drops its effective uid to nobody; modules must be imported beforehand, since root's
    interpreter tree is not readable to nobody."""
    if os.geteuid() != 0:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return code, out.getvalue(), err.getvalue()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 3
        try:
            os.close(read_fd)
            try:
                os.setegid(65534)
                os.seteuid(65534)
            except OSError as exc:  # a root without CAP_SETUID (some sandboxes)
                os.write(write_fd, json.dumps(["skip", str(exc), ""]).encode())
                status = 0
                return (0, "", "")  # never reached: finally exits
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            os.write(write_fd, json.dumps([code, out.getvalue(), err.getvalue()]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    code, out, err = json.loads(b"".join(chunks))
    if code == "skip":
        pytest.skip(f"cannot drop privileges to test permissions: {out}")
    return int(code), str(out), str(err)


@pytest.mark.parametrize("kind", ["config", "weights", "folder-not-searchable"])
def test_file_without_read_permission(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """chmod 000 on a config, on weights, and on the folder holding a named config."""
    # A world-readable place (pytest's tmp root is private to root), with readable witnesses.
    public = Path(tempfile.mkdtemp(prefix="loracheck-perm-"))
    try:
        public.chmod(0o755)
        witnesses = []
        for src in (HEALTHY, NAN):
            dst = public / src.name
            shutil.copytree(src, dst)
            for f in dst.iterdir():
                f.chmod(0o644)
            witnesses.append(str(dst))
        if kind == "weights":
            bad = public / "locked.safetensors"
            bad.write_bytes(VALID)
            locked = bad
        else:
            bad = public / "locked" / "bad.yaml"
            bad.parent.mkdir()
            bad.write_text(BAD_DROPOUT)
            locked = bad if kind == "config" else bad.parent
        argv = ["check", str(bad), *witnesses, "--jobs", "1"]
        # Warm every module the run needs while it can still be read.
        assert run(argv, capsys)[0] == 1
        locked.chmod(0)
        code, out, err = _as_nobody(argv)
        locked.chmod(0o755)
    finally:
        shutil.rmtree(public)
    assert code == 1 and err == "" and "Traceback" not in out, (code, out, err)
    mine = [line for line in out.splitlines() if "locked" in line]
    assert len(mine) == 1 and " LC001 " in mine[0] and "ermission denied" in mine[0], out
    assert any("LC203" in line for line in out.splitlines())


# --- bounded time and memory ----------------------------------------------------------------


def _garbage_header_file(path: Path) -> Path:
    """A file announcing a 100 MB header of random bytes (sparse after the first MB)."""
    n = 100_000_000
    rng = np.random.default_rng(1)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", n))
        handle.write(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
        handle.seek(8 + n + 15)
        handle.write(b"\0")
    return path


@pytest.mark.parametrize("make", ["2^62", "100MB-garbage", "100MB-garbage-after-brace",
                                  "alias-bomb"])
def test_absurd_headers_are_refused_fast_and_small(
    make: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if make == "2^62":
        bad = tmp_path / "h.safetensors"
        bad.write_bytes(struct.pack("<Q", 2**62) + VALID[8:])
    elif make == "100MB-garbage":
        bad = _garbage_header_file(tmp_path / "g.safetensors")
    elif make == "100MB-garbage-after-brace":
        # Starts like JSON, so the cheap prefix check passes and the full header is parsed.
        bad = _garbage_header_file(tmp_path / "b.safetensors")
        with open(bad, "r+b") as handle:
            handle.seek(8)
            handle.write(b'{"a": "' + b"x" * 5000)
    else:
        bad = tmp_path / "bomb.yaml"
        bad.write_text(_alias_bomb())
    run(["check", str(HEALTHY), "--jobs", "1"], capsys)  # imports done before measuring
    tracemalloc.start()
    start = time.perf_counter()
    code, out, err = run(["check", str(bad), "--jobs", "1"], capsys)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert code == 1 and err == "" and out.count(" LC001 ") == 1, out
    # Safety bounds, not benchmarks.
    assert elapsed < 2.0, elapsed
    if make != "100MB-garbage-after-brace":
        assert peak < 16 * 2**20, peak


# --- --timeout ------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_timeout_turns_a_stuck_unit_into_lc001(
    jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two units that would take 60 s each become "did not finish" diagnostics after --timeout;
    the others are checked as usual. (Workers are forked, so they inherit the patch.)"""
    import multiprocessing

    import loracheck.runner as runner

    if jobs != "1" and multiprocessing.get_start_method() != "fork":
        pytest.skip("workers inherit the patch only when forked")
    original = runner._load_one

    def slow(unit: Any, stage: str, *rest: Any) -> Any:
        if "stuck" in unit.path:
            time.sleep(60)
        return original(unit, stage, *rest)

    monkeypatch.setattr(runner, "_load_one", slow)
    stuck = [peft_folder(tmp_path, VALID, f"stuck{i}") for i in (1, 2)]
    start = time.perf_counter()
    findings, lines = check_with_witnesses(str(stuck[0]), capsys, str(stuck[1]), "--jobs", jobs,
                                           "--timeout", "0.5")
    # JSON and text runs, two stuck units each: well under one sleep.
    assert time.perf_counter() - start < 20
    late = [line for line in lines if "did not finish within 0.5 s" in line]
    assert len(late) == 2 and all(" LC001 " in line for line in late)
    assert [d["code"] for d in findings] == ["LC001"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_timeout_on_a_real_slow_file(
    jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No patching: a valid 2.4 MB adapter of 3,000 layers (about 1 s of measuring) under a
    0.1 s limit becomes an LC001 while the witnesses are checked."""
    rng = np.random.default_rng(0)
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    for i in range(3000):
        base = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        for factor, shape in (("A", (4, 16)), ("B", (16, 4))):
            start = 256 * len(blobs)
            header[f"{base}.lora_{factor}.weight"] = {
                "dtype": "F32", "shape": list(shape), "data_offsets": [start, start + 256]
            }
            blobs.append(rng.normal(0, 0.1, shape).astype(np.float32).tobytes())
    slow = tmp_path / "slow.safetensors"
    slow.write_bytes(st_bytes(header, b"".join(blobs)))
    findings, _ = check_with_witnesses(str(slow), capsys, "--jobs", jobs, "--timeout", "0.1")
    assert [d["code"] for d in findings] == ["LC001"]
    assert "did not finish within 0.1 s" in findings[0]["message"]


# --- never execute: planted pickles ---------------------------------------------------------


class _Planted:
    """Unpickling this calls ``os.system(command)``: what a malicious checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _PlantedExec:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _plant(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A PEFT folder whose adapter_model.bin is a torch.save zip that runs a shell command, and
    a loose .pt that is a bare pickle running Python; both would write ``marker``."""
    import torch

    marker = tmp_path / "MARKER"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    state = {
        A_KEY: torch.zeros(4, 16),
        "payload": _Planted(f"echo pwned > '{marker}'"),
    }
    torch.save(state, folder / "adapter_model.bin")
    loose = tmp_path / "lora.pt"
    loose.write_bytes(pickle.dumps({"x": _PlantedExec(f"open({str(marker)!r}, 'w').write('x')")}))
    return folder, loose, marker


RUN_BOTH = """
import json, sys
{prelude}
from loracheck.cli import main
results = []
for command in ("check", "inspect"):
    code = main([command, *sys.argv[1:]])
    results.append(code)
print("EXIT", json.dumps(results))
print("TORCH", "torch" in sys.modules and sys.modules["torch"] is not None)
"""


@pytest.mark.parametrize("torch_mode", ["torch-importable", "torch-blocked"])
def test_planted_pickle_never_runs(torch_mode: str, tmp_path: Path) -> None:
    folder, loose, marker = _plant(tmp_path)
    if torch_mode == "torch-importable":
        prelude = "import torch  # loaded and ready: loracheck still must not unpickle"
    else:
        prelude = "sys.modules['torch'] = None  # `import torch` now raises ImportError"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_BOTH.format(prelude=prelude), str(folder), str(loose)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "EXIT [1, 1]" in out
    assert f"TORCH {torch_mode == 'torch-importable'}" in out
    assert not marker.exists()
    bin_lines = [line for line in out.splitlines() if "adapter_model.bin" in line]
    pt_lines = [line for line in out.splitlines() if "lora.pt" in line]
    # check and inspect each: LC215 for the pickle, LC001 for the refused global.
    assert sum(" LC215 " in line for line in bin_lines) == 2, out
    assert sum(" LC001 " in line and "system" in line for line in bin_lines) == 2, out
    assert sum(" LC215 " in line for line in pt_lines) == 2, out
    assert sum(" LC001 " in line for line in pt_lines) == 2, out


def test_planted_pickle_is_live(tmp_path: Path) -> None:
    """The control: the planted files do run their code when loaded the unsafe way."""
    folder, loose, marker = _plant(tmp_path)
    code = (
        "import pickle, sys, torch\n"
        "torch.load(sys.argv[1], weights_only=False)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(folder / "adapter_model.bin")],
                   capture_output=True, timeout=120, check=True)
    assert marker.read_text().strip() == "pwned"
    marker.unlink()
    pickle.loads(loose.read_bytes())
    assert marker.exists()


def test_yaml_tags_are_never_constructed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    bad = tmp_path / "cfg.yaml"
    bad.write_text(
        "adapter: lora\nlora_r: 8\n"
        f"x: !!python/object/apply:os.system [\"touch '{marker}'\"]\n"
    )
    code, out, err = run(["check", str(bad), "--jobs", "1"], capsys)
    assert code == 1 and " LC001 " in out and err == ""
    assert not marker.exists()


def test_python_scripts_are_parsed_not_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    script = tmp_path / "train.py"
    script.write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from peft import LoraConfig\n"
        "config = LoraConfig(r=8, lora_alpha=16, lora_dropout=1.5, target_modules=['q_proj'])\n"
    )
    code, out, err = run(["check", str(script), "--jobs", "1"], capsys)
    assert code == 1 and " LC103 " in out and err == ""
    assert not marker.exists()


def test_python_compiler_warnings_never_reach_stderr(tmp_path: Path) -> None:
    """In a real process (pytest would capture warnings): a script that makes the compiler warn
    gives its finding and nothing on stderr. Found by fuzz/fuzz_configs.py."""
    script = tmp_path / "train.py"
    script.write_text("from peft import LoraConfig\nrank = 8\nassert (rank, 'positive')\n"
                      "if rank is 8:\n    cfg = LoraConfig(r=rank, lora_alpha=1.inf)\n")
    proc = subprocess.run([sys.executable, "-m", "loracheck", "check", str(script)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and " LC001 " in proc.stdout
    assert proc.stderr == ""
