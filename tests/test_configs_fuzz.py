"""Arbitrary input never makes the config readers raise anything but ArtifactError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loracheck.configs import read_spec, sniff_config
from loracheck.errors import ArtifactError
from loracheck.model import LoraSpec
from loracheck.render.json_out import spec_to_dict


def as_json(spec: LoraSpec) -> str:
    """The spec as the JSON report writes it (strict JSON: no NaN): a spec the renderers
    cannot write fails here."""
    return json.dumps(spec_to_dict(spec), allow_nan=False)

# Fragments that steer random text towards the readers' interesting paths.
FRAGMENTS = [
    "lora_r", "lora_alpha", "r", "peft_type", "network_dim", "lora_parameters", "model",
    "_component_", "lora_rank", "LoraConfig(", "class LoRA", "self.B.weight.data.normal_(",
    ":", "=", ",", "[", "]", "{", "}", "(", ")", '"', "'", "\n", "  ", "- ", "&a", "*a",
    "<<", "!!python/object", "# loracheck: ignore[LC1", "null", "1e999", "NaN", "-1", "16",
    "\x00", "\ufeff", "\\", "'''", '"""', "[[x]]",
]
TEXT = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join)
CASES = [
    ("x.json", "peft"), ("x.json", "llmbox"), ("x.yaml", "axolotl"), ("x.yaml", "mlx"),
    ("x.yaml", "torchtune"), ("x.yaml", "llama-factory"), ("x.toml", "kohya"),
    ("x.py", "python"), ("x.json", None), ("x.yaml", None),
]


@pytest.mark.parametrize(("name", "fmt"), CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_random_text_only_raises_artifact_error(name: str, fmt: str | None, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        sniff_config(path)
        try:
            spec = read_spec(path, fmt)
        except ArtifactError as err:
            assert err.code in ("LC001", "LC002")
        else:
            as_json(spec)


@settings(max_examples=60, deadline=None)
@given(meta=st.dictionaries(
    st.sampled_from(["ss_network_dim", "ss_network_alpha", "ss_network_dropout",
                     "ss_network_args", "ss_network_module", "lora_adapter_metadata", "x"]),
    TEXT,
))
def test_random_metadata_never_raises(meta: dict[str, str]) -> None:
    from loracheck.configs import spec_from_metadata

    spec = spec_from_metadata(meta, "x.safetensors")
    if spec is not None:
        as_json(spec)
