"""Scripts in any Python 3.8–3.14 syntax are read whatever Python runs loracheck, and LoRA
values written as expressions are folded, or left unknown, never executed."""

from __future__ import annotations

import ast
import contextlib
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import check_config
from loracheck.configs import read_spec
from loracheck.configs.pysource import blank_fstrings, parse_python
from loracheck.model import ValueOrigin

# A notebook export valid on Python 3.12 (PEP 701 f-strings, PEP 695 type parameters) and
# 3.11 (except*): the standard ast of 3.10/3.11 refuses the f-string line.
NEW_SYNTAX = '''\
import peft
songs = {"a": 1}
print(f"{songs["a"]} and {'x'!r:>{10}} {{literal}}")
report = f"""
rank {songs["a"]:04d}
"""
type Pair[T] = tuple[T, T]
class Box[T: (int, str)]:
    pass
def first[T](items: list[T]) -> T:
    return items[0]
try:
    pass
except* ValueError:
    pass
config = peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"])
'''


def test_new_syntax_is_read_on_an_older_interpreter(tmp_path: Path) -> None:
    path = tmp_path / "notebook.py"
    path.write_text(NEW_SYNTAX)
    if sys.version_info < (3, 12):
        with pytest.raises(SyntaxError):
            ast.parse(NEW_SYNTAX)  # what the interpreter alone cannot do
    spec = read_spec(path)
    assert (spec.rank, spec.alpha, spec.target_modules) == (16, 32.0, ["q_proj", "v_proj"])
    assert spec.lines["rank"] == NEW_SYNTAX.splitlines().index(
        next(line for line in NEW_SYNTAX.splitlines() if "LoraConfig" in line)) + 1


def test_a_real_syntax_error_is_still_reported(tmp_path: Path) -> None:
    diags = check_config(tmp_path, "broken.py", "from peft import LoraConfig\nLoraConfig(r=8\n")
    assert [d.code for d in diags] == ["LC001"]
    assert diags[0].line is not None


def test_blanking_keeps_lengths_and_lines() -> None:
    out = blank_fstrings(NEW_SYNTAX)
    before, after = NEW_SYNTAX.splitlines(), out.splitlines()
    assert len(after) == len(before)
    # a one-line f-string keeps its length, so every column after it stays put
    assert len(after[2]) == len(before[2]) and "songs" not in after[2]
    assert after[-1] == before[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("fFrRbt'\"{}[]()#:=\\\n xé1_!")), max_size=60))
def test_rewriting_any_text_ends(text: str) -> None:
    with contextlib.suppress(SyntaxError, ValueError):
        parse_python(text, "x.py")


def script(tmp_path: Path, body: str) -> object:
    path = tmp_path / "train.py"
    path.write_text("from peft import LoraConfig\n" + body)
    return read_spec(path)


def test_names_and_arithmetic_fold(tmp_path: Path) -> None:
    spec = script(tmp_path, "lora_rank = 16\nconfig = LoraConfig(r=lora_rank, "
                            "lora_alpha=lora_rank * 2, lora_dropout=5e-2)\n")
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 32.0, 0.05)  # type: ignore[attr-defined]
    assert spec.origin("alpha") is ValueOrigin.EXPRESSION  # type: ignore[attr-defined]
    assert spec.origin("dropout") is ValueOrigin.FILE  # type: ignore[attr-defined]


def test_function_scope_parameters_dataclasses_and_argparse(tmp_path: Path) -> None:
    spec = script(tmp_path, "def main(alpha=64):\n    rank = 8\n"
                            "    return LoraConfig(r=rank, lora_alpha=alpha)\n")
    assert (spec.rank, spec.alpha) == (8, 64.0)  # type: ignore[attr-defined]
    spec = script(tmp_path, "from dataclasses import dataclass, field\n@dataclass\n"
                            "class Args:\n    lora_r: int = 16\n"
                            "    lora_alpha: int = field(default=32)\n"
                            "args = Args()\n"
                            "LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha)\n")
    assert (spec.rank, spec.alpha) == (16, 32.0)  # type: ignore[attr-defined]
    spec = script(tmp_path, "import argparse\np = argparse.ArgumentParser()\n"
                            "p.add_argument('--lora-r', type=int, default=64)\n"
                            "args = p.parse_args()\nLoraConfig(r=args.lora_r, lora_alpha=128)\n")
    assert (spec.rank, spec.alpha) == (64, 128.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [
    "import os\nLoraConfig(r=int(os.environ['R']), lora_alpha=cfg['alpha'])\n",
    "r = 8\nr = 16\nLoraConfig(r=r, lora_alpha=r)\n",          # bound twice
    "a = a + a\nLoraConfig(r=a, lora_alpha=a * 2)\n",            # refers to itself
    "for r in (8, 16):\n    LoraConfig(r=r, lora_alpha=2 * r)\n",  # a loop variable
    "LoraConfig(r=10 ** 400, lora_alpha=f'{16}')\n",              # too big, an f-string
])
def test_what_cannot_be_folded_is_unknown_not_missing(tmp_path: Path, body: str) -> None:
    spec = script(tmp_path, body)
    assert spec.rank is None and "rank" in spec.unresolved  # type: ignore[attr-defined]
    assert "rank" not in spec.invalid and not spec.alpha_missing  # type: ignore[attr-defined]
    path = tmp_path / "train.py"
    assert check_config(tmp_path, "train.py", path.read_text()) == []


def test_parameters_bound_at_their_one_call_site(tmp_path: Path) -> None:
    """The shape of PEFT's own examples/dora_finetuning: argparse defaults handed to a function
    by keyword, a conditional target list, a store_true flag."""
    spec = script(tmp_path, (
        "def train(use_dora: bool, lora_r: int, lora_alpha: int, targets: str):\n"
        "    return LoraConfig(use_dora=use_dora, r=lora_r, lora_alpha=lora_alpha,\n"
        "        target_modules=targets.split(',') if targets else ['q_proj', 'v_proj'])\n"
        "if __name__ == '__main__':\n"
        "    import argparse\n"
        "    parser = argparse.ArgumentParser()\n"
        "    parser.add_argument('--use_dora', action='store_true')\n"
        "    parser.add_argument('--lora_r', type=int, default=8)\n"
        "    parser.add_argument('--lora_alpha', type=int, default=16)\n"
        "    parser.add_argument('--targets', type=str, default=None)\n"
        "    args = parser.parse_args()\n"
        "    train(use_dora=args.use_dora, lora_r=args.lora_r, lora_alpha=args.lora_alpha,\n"
        "          targets=args.targets)\n"
    ))
    assert (spec.rank, spec.alpha, spec.use_dora) == (8, 16.0, False)  # type: ignore[attr-defined]
    assert spec.target_modules == ["q_proj", "v_proj"]  # type: ignore[attr-defined]


def test_an_option_without_a_default_is_unknown_not_invalid(tmp_path: Path) -> None:
    body = ("import argparse\np = argparse.ArgumentParser()\n"
            "p.add_argument('--lora_r', type=int, required=True)\nargs = p.parse_args()\n"
            "LoraConfig(r=args.lora_r, lora_alpha=16)\n")
    spec = script(tmp_path, body)
    assert spec.rank is None and "rank" in spec.unresolved  # type: ignore[attr-defined]
    assert check_config(tmp_path, "train.py", (tmp_path / "train.py").read_text()) == []


def test_blanked_fstrings_are_not_values(tmp_path: Path) -> None:
    spec = script(tmp_path, 'd = {"a": 1}\nprint(f"{d["a"]}")\n'
                            "LoraConfig(r=8, lora_alpha=16, target_modules=f\"{'q'}_proj\")\n")
    assert spec.target_modules is None  # type: ignore[attr-defined]
    assert spec.unresolved["target_modules"] == "f\"{'q'}_proj\""  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [
    "from conf import LORA_R\nif False:\n    LORA_R = 0\nLoraConfig(r=LORA_R, lora_alpha=16)\n",
    "class Conf:\n    r = 0\nconf = load()\nLoraConfig(r=conf.r, lora_alpha=16)\n",
    "def make(r=0):\n    return LoraConfig(r=r, lora_alpha=16)\nmake(8)\nmake(16)\n",
])
def test_no_invented_values(tmp_path: Path, body: str) -> None:
    spec = script(tmp_path, body)
    assert spec.rank is None and "rank" in spec.unresolved  # type: ignore[attr-defined]


def test_argparse_converts_a_string_default(tmp_path: Path) -> None:
    body = ("import argparse\np = argparse.ArgumentParser()\n"
            "p.add_argument('--lora_r', type=int, default='16')\nargs = p.parse_args()\n"
            "LoraConfig(r=args.lora_r, lora_alpha=16)\n")
    assert script(tmp_path, body).rank == 16  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [
    "LoraConfig(r=round(5, -99999999999999))\n",
    "x = 10 ** 18\nLoraConfig(r=x * x * x * x, lora_alpha=16)\n",
])
def test_hostile_expressions_are_unknown(tmp_path: Path, body: str) -> None:
    """Bounded folding (operand sizes, round's digits): unknown at once, never computed."""
    spec = script(tmp_path, body)
    assert spec.rank is None and "rank" in spec.unresolved  # type: ignore[attr-defined]


def test_a_long_except_tuple_is_reported_not_backtracked(tmp_path: Path) -> None:
    from loracheck.errors import ArtifactError

    body = "try:\n    pass\nexcept " + ", ".join(["E"] * 20000) + " b\n"
    with pytest.raises(ArtifactError, match="invalid Python"):
        script(tmp_path, body)
