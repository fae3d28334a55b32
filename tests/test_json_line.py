"""The compiled per-layer JSON writer (loracheck._json_line): the same bytes as json's encoder.

Its floats are its own shortest round-trip formatting, so they are compared with ``repr`` (what
json writes) on random bit patterns over the whole double range, on the boundary cases of the
method (powers of two, powers of ten and their neighbours, integers) and on the values a report
holds; everything else with json's ASCII encoder. The Python path (json's encoder, where the
extension did not build) is the one the rest of the suite runs whenever LINE_WRITER is None.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import random
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from loracheck.render import json_out

ROOT = Path(__file__).resolve().parents[1]
writer = json_out.LINE_WRITER
needs_writer = pytest.mark.skipif(writer is None, reason="loracheck._json_line is not built")


def _json(obj: Any) -> str:
    """What the Python path writes for a per-layer object (cleaned: non-finite -> null)."""
    return json_out._LINE_ENCODER.encode(json_out.clean(obj))


def _first_mismatches(values: list[float]) -> list[tuple[str, str]]:
    assert writer is not None
    got, want = writer(values), json.dumps(values)
    if got == want:
        return []
    pairs = zip(got[1:-1].split(", "), want[1:-1].split(", "), strict=True)
    return [(g, w) for g, w in pairs if g != w][:5]


def _double(bits: int) -> float:
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


def test_the_powers_of_ten_header_is_what_its_script_writes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_pow10
    finally:
        sys.path.pop(0)
    assert gen_pow10.HEADER.read_text(encoding="ascii") == gen_pow10.header()


@needs_writer
def test_random_doubles_over_the_whole_range_are_written_as_repr_writes_them() -> None:
    rng = random.Random(20261204)
    values = [x for x in (_double(rng.getrandbits(64)) for _ in range(400_000))
              if math.isfinite(x)]
    assert _first_mismatches(values) == []


@needs_writer
def test_the_method_s_boundary_cases_are_written_as_repr_writes_them() -> None:
    values: list[float] = [0.0, -0.0, 5e-324, 1e-323, 2.225073858507201e-308,
                           2.2250738585072014e-308, sys.float_info.max, 0.1, 0.2, 0.3, 1 / 3]
    # every binary exponent, at the bottom of its binade (the interval is lopsided there), just
    # above it, and at its top
    for e in range(-1074, 1024):
        for m in (1.0, 1.0000000000000002, 1.5, 1.9999999999999998):
            with contextlib.suppress(OverflowError):
                values.append(math.ldexp(m, e))
    # every power of ten and its neighbours (ties and the last digit's rounding)
    for k in range(-323, 309):
        x = float(f"1e{k}")
        values += [x, math.nextafter(x, 0.0), math.nextafter(x, math.inf)]
    # integers, exact up to 2^53, and the fixed/exponent switch at 10^16
    values += [float(i) for i in range(1, 20_000)]
    values += [float(2**n + d) for n in range(50, 64) for d in (-1, 0, 1)]
    values += [9999999999999998.0, 1e16, 1234567890123456.0, 0.0001, 0.00001, 1e-4 * 0.999]
    values += [-x for x in values]
    assert _first_mismatches(values) == []


@needs_writer
def test_report_like_and_short_decimal_values_are_written_as_repr_writes_them() -> None:
    rng = random.Random(7)
    values = [rng.gauss(0.0, 0.02) for _ in range(100_000)]  # A ~ N(0, 0.02)
    values += [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(100_000)]
    # decimals of 1 to 17 digits: the shortest form is the one read in
    for _ in range(100_000):
        x = float(f"{rng.randint(1, 10 ** rng.randint(1, 17))}e{rng.randint(-320, 300)}")
        if math.isfinite(x):
            values.append(x)
    assert _first_mismatches(values) == []


@needs_writer
def test_non_finite_floats_are_null_as_cleaning_makes_them() -> None:
    assert writer is not None
    row = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": -0.0}
    assert writer(row) == _json(row) == '{"a": null, "b": [1.0, null, null], "c": -0.0}'


@needs_writer
def test_strings_are_escaped_as_json_escapes_them() -> None:
    assert writer is not None
    rng = random.Random(3)
    alphabet = ([chr(c) for c in range(0, 0x80)] + ["\u00e9", "\u2028", "\ud800", "\ufffe",
                                                     "\U0001f600", "\U0010ffff"])
    for _ in range(2_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert writer([text, {text: text}]) == _json([text, {text: text}]), repr(text)


class _Kind(str, enum.Enum):
    LORA = "lora"


class _Count(enum.IntEnum):
    TWO = 2


@needs_writer
def test_plain_data_is_written_as_json_writes_it() -> None:
    assert writer is not None
    row: dict[str, Any] = {
        "name": "base_model.model.layers.0.self_attn.q_proj", "rank": 16, "big": 2**100,
        "neg": -(2**70), "small": -3, "flag": True, "off": False, "none": None,
        "shape": [16, 4096], "tuple": (1, (2, [3.5])), "empty": [], "empty_dict": {},
        "nested": {"x": {"y": [None, "z"]}}, "kind": _Kind.LORA, "count": _Count.TWO,
        "numpy_like": float.__new__(type("F", (float,), {}), 0.25),
    }
    assert writer(row) == _json(row) == json.dumps(row)


class _ListOfItsOwn(list[Any]):
    """A list subclass whose iteration is Python code (which could change what holds it)."""


@needs_writer
@pytest.mark.parametrize("value", [{"a", "b"}, {1: "int key"}, enum.Enum("E", "A").A, object(),
                                   [[[[[[[[[1]]]]]]]]], _ListOfItsOwn([1.5]),
                                   type("T", (tuple,), {})((1,))])
def test_what_it_does_not_write_is_refused_and_cleaned_by_the_caller(value: Any) -> None:
    assert writer is not None
    with pytest.raises(TypeError):
        writer({"x": value})
    assert json_out._one_line({"x": value}) == _json({"x": value})


def _reports() -> list[Path]:
    adapters = sorted((ROOT / "examples" / "adapters").iterdir())
    writers = sorted(p for p in (ROOT / "tests" / "fixtures" / "writers").glob("*/*") if p.is_dir())
    return adapters + writers


@needs_writer
@pytest.mark.parametrize("path", _reports(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_reports_are_byte_identical_on_both_paths(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loracheck.runner import RunOptions, run

    report = run([str(path)], RunOptions())[0]
    assert report.adapters and any(a.layers for a in report.adapters)
    compiled = json_out.render_json(report)
    monkeypatch.setattr(json_out, "LINE_WRITER", None)
    assert compiled == json_out.render_json(report)


@needs_writer
def test_a_container_changed_by_its_item_s_python_code_is_left_to_json() -> None:
    """A list subclass whose __iter__ empties the list holding it: the writer refuses the
    subclass before any Python code runs (it read freed items before), and json writes it."""
    outer: list[Any] = []

    class Emptying(list[Any]):
        def __iter__(self) -> Any:
            outer.clear()
            return iter([])

    outer += [Emptying(), 1.5, "x"]
    assert writer is not None
    with pytest.raises(TypeError):
        writer(list(outer))
    assert len(outer) == 3  # refused before any of its Python ran
    assert json_out._one_line({"x": outer}) == '{"x": [[]]}'  # json's encoder ran it
