"""The registry's documentation contract, and the generated rules/ pages being up to date."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from loracheck.model import Severity
from loracheck.rules import registry
from loracheck.rules.context import SECTIONS

ROOT = Path(__file__).resolve().parent.parent


def _gen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_rule_docs",
                                                  ROOT / "scripts" / "gen_rule_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("meta", registry.all_rules(), ids=lambda m: m.code)
def test_every_rule_has_the_four_sections(meta) -> None:  # type: ignore[no-untyped-def]
    positions = [meta.explanation.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), meta.code
    assert positions == sorted(positions)
    assert re.fullmatch(r"LC\d{3}", meta.code)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", meta.name)
    assert not meta.name.startswith(("no-", "banned-"))
    assert meta.summary and "\n" not in meta.summary


def test_codes_and_names_are_unique_and_sorted() -> None:
    metas = registry.all_rules()
    codes = [m.code for m in metas]
    assert codes == sorted(codes) and len(set(codes)) == len(codes)
    assert len({m.name for m in metas}) == len(metas)
    assert not set(registry.REMOVED) & {r.code for r in registry.RULES}


def test_the_whole_catalog_is_there() -> None:
    expected = {"LC001", "LC002", "LC003", *(f"LC10{i}" for i in range(1, 10)),
                *(f"LC2{i:02d}" for i in range(1, 16)), "LC250", "LC251"}
    assert expected <= {m.code for m in registry.all_rules()}


def test_get_rule() -> None:
    meta = registry.get_rule("lc204")
    assert meta is not None and meta.name == "identity-broken-at-init"
    assert meta.severity is Severity.ERROR
    assert registry.get_rule("LC999") is None


def test_retired_codes_stay_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.REMOVED, "LC299", ("old-rule", "replaced by LC212"))
    meta = registry.get_rule("LC299")
    assert meta is not None and meta.status == "removed"
    assert "LC299" not in {r.code for r in registry.select_rules()}
    assert registry.is_known_selector("LC299")


def test_rule_pages_are_up_to_date(tmp_path: Path) -> None:
    assert _gen().main(["--out", str(tmp_path)]) == 0
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in (ROOT / "rules").iterdir()}
    stale = sorted(n for n in fresh.keys() | committed.keys()
                   if fresh.get(n) != committed.get(n))
    assert not stale, f"run `python scripts/gen_rule_docs.py`; stale: {stale}"
    assert fresh["LC204.md"].startswith("# LC204 identity-broken-at-init\n")
