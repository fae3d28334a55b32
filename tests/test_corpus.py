"""The published configs of ../shared/corpus: checked as their trainers read them.

Every file there is a working config its trainer accepts, so an error is a false alarm; every
warning must be listed, with its reason, in tests/corpus_expectations.tsv. A known-answer table
(tests/corpus_answers.json, resolved by hand from each trainer's documented defaults) states
method, rank, alpha, effective scale, dropout and targets for a sample across all sources.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loracheck.cli import main
from loracheck.configs import read_spec
from loracheck.model import LoraSpec, MethodKind
from loracheck.scaling import effective_scale

HERE = Path(__file__).resolve().parent
EXPECTATIONS = HERE / "corpus_expectations.tsv"
ANSWERS = HERE / "corpus_answers.json"


@pytest.fixture(scope="module")
def report(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("corpus") / "report.json"
    code = main(["check", str(corpus), "--format", "json", "--output", str(out),
                 "--exit-zero"])
    assert code == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _relative(path: str, corpus: Path) -> str:
    return Path(path).resolve().relative_to(corpus.resolve()).as_posix()


def _expected_warnings() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for line in EXPECTATIONS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, code, reason = line.split("\t")
        assert reason.strip(), f"no reason given for {path} {code}"
        found.add((path, code))
    return found


def test_every_corpus_file_is_read(report: dict[str, Any], corpus: Path) -> None:
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    seen = {_relative(f["path"], corpus) for f in report["files"]}
    missing = [_relative(str(p), corpus) for p in files if _relative(str(p), corpus) not in seen]
    assert len(files) >= 480
    assert missing == []


def test_no_error_on_a_published_config(report: dict[str, Any], corpus: Path) -> None:
    errors = [
        f"{_relative(d['path'], corpus)}: {d['code']} {d['message']}"
        for d in report["diagnostics"] if d["severity"] == "error"
    ]
    assert errors == []


def test_every_warning_is_listed_with_its_reason(report: dict[str, Any], corpus: Path) -> None:
    fired = {(_relative(d["path"], corpus), d["code"])
             for d in report["diagnostics"] if d["severity"] == "warning"}
    expected = _expected_warnings()
    assert sorted(fired - expected) == [], "new warnings: judge them, then list them"
    assert sorted(expected - fired) == [], "listed warnings that no longer fire"


def test_every_file_says_its_method(report: dict[str, Any]) -> None:
    methods = {f["method"] for f in report["files"]}
    assert methods <= {m.value for m in MethodKind}
    assert {"lora", "other", "full"} <= methods


# --- known answers --------------------------------------------------------------------------


def _answers() -> Iterator[dict[str, Any]]:
    yield from json.loads(ANSWERS.read_text())


def _scale(spec: LoraSpec) -> float | None:
    return effective_scale(spec.rank, spec.alpha, use_rslora=bool(spec.use_rslora),
                           scale=spec.scale)


def _same_targets(got: Any, want: Any) -> bool:
    if isinstance(want, list) and isinstance(got, list):
        return sorted(got) == sorted(want)
    return bool(got == want)


def _close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def test_known_answers_cover_every_source() -> None:
    answers = list(_answers())
    assert len(answers) >= 60
    sources = {a["file"].split("/", 1)[0] for a in answers}
    assert len(sources) == 7, sources


@pytest.mark.parametrize("answer", list(_answers()), ids=lambda a: a["file"])
def test_known_answer(answer: dict[str, Any], corpus: Path) -> None:
    spec = read_spec(corpus / answer["file"])
    assert spec.method.value == answer["method"], answer["why"]
    if answer["method"] != "lora":
        return
    got = {
        "rank": spec.rank,
        "alpha": spec.alpha,
        "scale": _scale(spec),
        "dropout": spec.dropout,
        "targets": spec.target_modules,
    }
    assert got["rank"] == answer["rank"], answer["why"]
    assert _close(got["alpha"], answer["alpha"]), (got, answer)
    assert _close(got["scale"], answer["scale"]), (got, answer)
    assert _close(got["dropout"], answer["dropout"]), (got, answer)
    assert _same_targets(got["targets"], answer["targets"]), (got, answer)
