"""Input rules: loader faults become findings with the fault's path, line and detail."""

from __future__ import annotations

import pytest

from loracheck.model import Severity
from rule_factories import Fault, adapter, codes, config_only, run


@pytest.mark.parametrize("code", ["LC001", "LC002", "LC003"])
def test_fault_fires_exactly_its_code(code: str) -> None:
    ad = config_only(faults=[Fault(code, "/x/broken.safetensors", "detail", 3, "key")])
    diags = run(ad)
    assert [d.code for d in diags] == [code]
    assert diags[0].path == "/x/broken.safetensors"
    assert diags[0].line == 3 and diags[0].location == "key"
    assert diags[0].message == "detail"
    assert diags[0].severity is Severity.ERROR


def test_pickle_checkpoint_is_a_warning_and_the_weights_are_still_judged() -> None:
    ad = adapter(faults=[Fault("LC215", "/x/adapter_model.bin", "pickle")])
    diags = run(ad)
    assert [(d.code, d.severity) for d in diags] == [("LC215", Severity.WARNING)]


def test_good_inputs_fire_nothing() -> None:
    assert codes(config_only()) == set()
    assert codes(adapter()) == set()
