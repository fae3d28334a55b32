"""A CI-sized run of fuzz/fuzz_structures.py: shared references and degenerate shapes.

The campaign builds pickle DAGs and cycles, memo indices out of range, zip bombs, YAML anchor
bombs and degenerate LoRA factors, and runs each through ``loracheck check`` in process; here
64 inputs (16 per family, every generator at least once, one 64-256 MiB zip bomb) must all
pass: exit 0 or 1, a JSON report, no traceback, within the time and memory limits, and the
known answers (LC001 for a shared mapping, LC202 for a pair that does not chain, ...).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

CAMPAIGN = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_structures.py"
EXAMPLES = 64


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_structures", CAMPAIGN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being made
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    return _load()


def test_the_campaign_passes_and_covers_every_family(
    campaign: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    code = campaign.main(["--examples", str(EXAMPLES), "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = out.splitlines()[0]
    assert summary.startswith(f"tried {EXAMPLES} inputs"), summary
    share = EXAMPLES // len(campaign.FAMILIES)
    for family in campaign.FAMILIES:
        assert f"{family} {share}" in summary, summary  # tried per family
        assert f"{family} 0" in summary.split(": ", 1)[1], summary  # failed per family
        assert f"\n  {family}: " in out, out
    # every generator ran, and the zip bomb was built exactly once
    variants = {
        "pickle": [f.__name__.removeprefix("pk_") for f in campaign.PICKLE_VARIANTS],
        "zip": ["compressed", "corrupt", "lying", "names", "big"],
        "yaml": [f.__name__.removeprefix("ym_") for f in campaign.YAML_VARIANTS],
    }
    for family, names in variants.items():
        line = next(x for x in out.splitlines() if x.startswith(f"  {family}: "))
        for name in names:
            assert re.search(rf"[:,] {name} [1-9]", line), (name, line)
    assert "big 1" in out, out
    for heading in ("outcomes: ", "slowest input: ", "largest tracemalloc peak: "):
        assert heading in out, out
    assert "LC001" in out.split("outcomes: ", 1)[1].splitlines()[0]


def test_shared_references_come_out_as_one_lc001(campaign: ModuleType, tmp_path: Path) -> None:
    """The campaign's oracle on its own: a DAG of dicts that expands past the entry limit is
    refused."""
    import random

    seed = next(k for k in range(100) if "LC001" in campaign.pk_dag(random.Random(k)).must)
    case = campaign.pk_dag(random.Random(seed))
    target = case.build(tmp_path)
    result = campaign.measure(case, target)
    assert campaign.judge(case, result) is None
    assert result.doc is not None
    messages = [d["message"] for d in result.doc["diagnostics"] if d["code"] == "LC001"]
    assert len(messages) == 1, messages
    assert "expands to more than" in messages[0] or "nested more than" in messages[0], messages
