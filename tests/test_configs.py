"""loracheck.configs: sniffing, dispatch, safety limits, lines and suppressions."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pytest

from loracheck.configs import FORMATS, read_spec, sniff_config, spec_from_metadata
from loracheck.configs.documents import MAX_CONFIG_BYTES
from loracheck.configs.lines import find_suppressions, json_key_lines, toml_key_lines
from loracheck.errors import ArtifactError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix != ".md")

GITHUB_WORKFLOW = """\
name: CI
on: [push, pull_request]
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: pip install -e . && pytest
"""
PACKAGE_JSON = (
    '{"name": "web", "version": "1.0.0", "scripts": {"test": "jest"}, "dependencies": {}}'
)
PYPROJECT = """\
[project]
name = "thing"
dependencies = ["numpy", "peft"]

[tool.ruff]
line-length = 100
"""
PLAIN_PY = "import os\n\n\ndef main() -> None:\n    print(os.getcwd())\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- sniffing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ci.yml", GITHUB_WORKFLOW),
        ("package.json", PACKAGE_JSON),
        ("pyproject.toml", PYPROJECT),
        ("tool.py", PLAIN_PY),
        ("notes.txt", "lora_r: 8\n"),
        ("empty.yaml", ""),
    ],
)
def test_sniff_returns_none_for_unrelated_files(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, text)
    assert sniff_config(path) is None
    assert sniff_config(path, text) is None


def test_read_spec_on_unrelated_file_is_lc002(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        read_spec(write(tmp_path, "package.json", PACKAGE_JSON))
    assert info.value.code == "LC002"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.yaml", "base_model: x\nadapter: lora\nlora_r: 8\n", "axolotl"),
        ("a.yaml", "lora_rank: 8\nlora_target: all\n", "llama-factory"),
        ("a.yaml", "model:\n  _component_: t.lora_llama\n  lora_rank: 8\n", "torchtune"),
        ("a.yaml", "use_peft: true\nlora_r: 8\n", "trl"),
        ("a.json", '{"use_peft": true, "lora_r": 8}', "trl"),
        ("a.json", '{"lora": true, "lora_r": 8, "lora_target_modules": "q,v"}', "llmbox"),
        ("a.toml", "[net]\nnetwork_dim = 8\n", "kohya"),
        ("a.json", '{"network_dim": 8, "network_alpha": 4}', "kohya"),
        ("a.yaml", "lora_parameters:\n  rank: 8\n", "mlx"),
        ("adapter_config.json", '{"fine_tune_type": "lora", "lora_parameters": {}}', "mlx"),
        ("adapter_config.json", '{"peft_type": "LORA", "r": 8}', "peft"),
        ("t.py", "from peft import LoraConfig\nc = LoraConfig(r=8)\n", "python"),
        ("t.py", "m = FastLanguageModel.get_peft_model(m, r=8)\n", "unsloth"),
        ("t.py", "class LoRALinear(nn.Module):\n    pass\n", "python"),
    ],
)
def test_sniff_and_read_agree(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = write(tmp_path, name, text)
    assert sniff_config(path) == expected
    assert read_spec(path).source_format == expected


def test_sniff_is_fast_on_large_unrelated_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yaml", "".join(f"key{i}: value {i}\n" for i in range(50_000)))
    start = time.perf_counter()
    assert sniff_config(path) is None
    assert time.perf_counter() - start < 0.5


def test_examples_all_sniff_to_a_known_format() -> None:
    for path in EXAMPLE_FILES:
        assert sniff_config(path) in FORMATS, path.name


def test_unknown_format_name_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        read_spec(write(tmp_path, "a.yaml", "lora_r: 8\n"), "nonsense")


# --- safety -----------------------------------------------------------------------------------


BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "lora_r: 8",
    ]
)


def test_yaml_alias_bomb_refused_quickly(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.yaml", BOMB)
    start = time.perf_counter()
    with pytest.raises(ArtifactError) as info:
        read_spec(path, "axolotl")
    assert time.perf_counter() - start < 1.0
    assert "alias bomb" in info.value.detail
    assert info.value.code == "LC001"


def test_yaml_with_too_many_nodes_refused(tmp_path: Path) -> None:
    text = "lora_r: 8\n" + "".join(f"k{i}: {i}\n" for i in range(20_000))
    with pytest.raises(ArtifactError, match="nodes refused"):
        read_spec(write(tmp_path, "many.yaml", text))


def test_yaml_recursive_alias_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        read_spec(write(tmp_path, "rec.yaml", "lora_r: 8\nx: &x [*x]\n"), "axolotl")


def test_yaml_python_tags_never_constructed(tmp_path: Path) -> None:
    text = "lora_r: 8\nboom: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(ArtifactError) as info:
        read_spec(write(tmp_path, "evil.yaml", text), "axolotl")
    assert info.value.line == 2


def test_yaml_merge_keys_and_anchors(tmp_path: Path) -> None:
    text = "base: &base\n  lora_r: 8\n  lora_alpha: 16\nlora_dropout: 0.1\n<<: *base\n"
    spec = read_spec(write(tmp_path, "merge.yaml", text), "axolotl")
    assert (spec.rank, spec.alpha, spec.dropout) == (8, 16.0, 0.1)
    assert spec.lines["rank"] == 2


def test_yaml_first_document_is_used(tmp_path: Path) -> None:
    spec = read_spec(write(tmp_path, "multi.yaml", "lora_r: 8\n---\nlora_r: 4\n"), "axolotl")
    assert spec.rank == 8


def test_deeply_nested_inputs_refused(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for name, text in (
        ("deep.json", '{"lora_r": ' + deep + "}"),
        ("deep.yaml", "lora_r: " + deep + "\n"),
        ("deep.toml", "network_dim = " + deep + "\n"),
        ("deep.py", "LoraConfig(r=" + deep + ")\n"),
    ):
        with pytest.raises(ArtifactError) as info:
            read_spec(write(tmp_path, name, text))
        assert info.value.code == "LC001", name


def test_oversized_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.write(b'{"r": 8, "peft_type": "LORA", "pad": "')
        handle.truncate(MAX_CONFIG_BYTES + 10)
    with pytest.raises(ArtifactError, match="larger than"):
        read_spec(path)


def test_oversized_python_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.py", "LoraConfig(r=8)\n" + "# x\n" * 1_000_000)
    with pytest.raises(ArtifactError, match="larger than"):
        read_spec(path)


def test_non_utf8_refused_with_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"lora_r: 8\nname: caf\xe9\n")
    with pytest.raises(ArtifactError) as info:
        read_spec(path, "axolotl")
    assert info.value.line == 2
    assert sniff_config(path) == "axolotl"


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("bad.json", '{\n  "r": 8,\n  "lora_alpha": 16,,\n  "peft_type": "LORA"\n}\n', 3),
        ("bad.yaml", "lora_r: 8\nlora_alpha: [16\nlora_dropout: 0.1\n", 3),
        ("bad.toml", "[a]\nnetwork_dim = 8\nnetwork_alpha = = 4\n", 3),
        ("bad.py", "from peft import LoraConfig\n\nLoraConfig(r=8,\n    lora_alpha=16 16)\n", 4),
    ],
)
def test_syntax_errors_carry_the_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    with pytest.raises(ArtifactError) as info:
        read_spec(write(tmp_path, name, text))
    assert info.value.code == "LC001"
    assert info.value.line == line


def test_json_top_level_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        read_spec(write(tmp_path, "list.json", '[{"r": 8}]'), "peft")


def test_missing_file_is_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        read_spec(tmp_path / "absent.yaml", "axolotl")


def test_json_duplicate_keys_last_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.json", '{"peft_type": "LORA",\n"r": 4,\n"r": 16}')
    spec = read_spec(path)
    assert spec.rank == 16
    assert spec.lines["rank"] == 3


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_reading_never_modifies_the_file(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    os.utime(copy, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = (copy.read_bytes(), copy.stat().st_mtime_ns)
    sniff_config(copy)
    with contextlib.suppress(ArtifactError):
        read_spec(copy)
    assert (copy.read_bytes(), copy.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# --- wrong types ------------------------------------------------------------------------------


def test_wrong_types_recorded_not_raised(tmp_path: Path) -> None:
    text = (
        "base_model: x\n"
        "adapter: lora\n"
        "lora_r: sixteen\n"
        "lora_alpha: null\n"
        "lora_dropout: [0.1]\n"
        "lora_target_modules: 7\n"
        "peft_use_rslora: maybe\n"
        "lora_rank_pattern: [q_proj]\n"
    )
    spec = read_spec(write(tmp_path, "wrong.yaml", text))
    assert spec.rank is None and spec.alpha is None and spec.dropout is None
    assert spec.invalid == {
        "rank": "'sixteen'",
        "alpha": "None",
        "dropout": "[0.1]",
        "target_modules": "7",
        "use_rslora": "'maybe'",
        "rank_pattern": "['q_proj']",
    }
    assert spec.lines["rank"] == 3
    assert spec.lines["alpha"] == 4
    assert spec.lines["dropout"] == 5
    assert spec.lines["rank_pattern"] == 8
    assert not spec.alpha_missing  # alpha was present, just wrong


@pytest.mark.parametrize("raw", ["true", "16.5", '"16"', "[16]", "{}"])
def test_peft_rank_of_wrong_type(tmp_path: Path, raw: str) -> None:
    spec = read_spec(write(tmp_path, "adapter_config.json",
                           '{"peft_type": "LORA",\n "r": ' + raw + "}"))
    assert spec.rank is None
    assert "rank" in spec.invalid
    assert spec.lines["rank"] == 2


def test_non_finite_alpha_is_invalid(tmp_path: Path) -> None:
    spec = read_spec(write(tmp_path, "a.json", '{"peft_type": "LORA", "r": 8, "lora_alpha": NaN}'))
    assert spec.alpha is None and spec.invalid["alpha"] == "nan"


def test_missing_alpha_stays_none(tmp_path: Path) -> None:
    spec = read_spec(write(tmp_path, "adapter_config.json", '{"peft_type": "LORA", "r": 8}'))
    assert spec.alpha is None and spec.alpha_missing
    assert "alpha" not in spec.lines


# --- lines and suppressions -------------------------------------------------------------------


def test_json_key_lines_nested_and_arrays() -> None:
    text = '{\n "a": {\n  "b": [1, {"c": 2}],\n  "d": "x:y"\n },\n "e\\"q": 3\n}'
    assert json_key_lines(text) == {
        ("a",): 2,
        ("a", "b"): 3,
        ("a", "b", 1, "c"): 3,
        ("a", "d"): 4,
        ('e"q',): 6,
    }


def test_toml_key_lines() -> None:
    text = (
        "top = 1\n"
        "[net]\n"
        "network_dim = 8\n"
        'notes = """\n'
        "fake = 1\n"
        '"""\n'
        "sub.key = 2\n"
        "[[runs]]\n"
        "x = 1\n"
        "[[runs]]\n"
        "x = 2\n"
    )
    lines = toml_key_lines(text)
    assert lines[("top",)] == 1
    assert lines[("net", "network_dim")] == 3
    assert ("net", "fake") not in lines
    assert lines[("net", "sub", "key")] == 7
    assert lines[("runs", 0, "x")] == 9
    assert lines[("runs", 1, "x")] == 11


def test_find_suppressions() -> None:
    text = (
        "lora_r: 8  # loracheck: ignore[LC103]\n"
        "lora_alpha: 1  # loracheck: ignore[LC103, lc108]\n"
        "x: 1 # loracheck: ignore\n"
        "y: 2 # unrelated comment\n"
        "z: 3 # LORACHECK: IGNORE[]\n"
    )
    assert find_suppressions(text) == {1: ["LC103"], 2: ["LC103", "LC108"], 3: [], 5: []}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.yaml", "adapter: lora\nlora_r: 8\nlora_alpha: 1  # loracheck: ignore[LC103]\n"),
        ("a.toml", "network_dim = 8\nnetwork_module = 'networks.lora'\n"
                   "network_alpha = 1  # loracheck: ignore[LC103]\n"),
        ("a.py", "from peft import LoraConfig\nc = LoraConfig(r=8,\n"
                 "    lora_alpha=1)  # loracheck: ignore[LC103]\n"),
    ],
)
def test_suppressions_in_each_syntax(tmp_path: Path, name: str, text: str) -> None:
    spec = read_spec(write(tmp_path, name, text))
    assert spec.suppressions == {3: ["LC103"]}
    assert spec.lines["alpha"] == 3


# --- metadata ---------------------------------------------------------------------------------


def test_spec_from_metadata_none_when_nothing_lora() -> None:
    assert spec_from_metadata({"format": "pt"}, "x.safetensors") is None
    assert spec_from_metadata({}, "x.safetensors") is None


def test_spec_from_metadata_kohya_strings() -> None:
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "16",
        "ss_network_alpha": "8.0",
        "ss_network_dropout": "None",
        "ss_network_args": json.dumps({"conv_dim": "4", "algo": "locon"}),
        "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
    }
    spec = spec_from_metadata(meta, "k.safetensors")
    assert spec is not None
    assert spec.source_format == "kohya-metadata"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 8.0, None)
    assert spec.extras["network_args"] == {"conv_dim": "4", "algo": "locon"}
    assert spec.extras["network_module"] == "networks.lora"
    assert spec.base_model == "sd_xl_base_1.0.safetensors"
    assert spec.lines == {}


def test_spec_from_metadata_kohya_bad_values() -> None:
    spec = spec_from_metadata(
        {"ss_network_dim": "big", "ss_network_alpha": "None", "ss_network_args": "{oops"}, "k"
    )
    assert spec is not None
    assert spec.rank is None and spec.invalid["rank"] == "'big'"
    assert spec.alpha is None and spec.alpha_missing
    assert "network_args" in spec.invalid


def test_spec_from_metadata_diffusers_prefixed() -> None:
    config = {
        "transformer.r": 16,
        "transformer.lora_alpha": 16,
        "transformer.target_modules": ["to_q", "to_k"],
        "transformer.init_lora_weights": "gaussian",
        "transformer.use_dora": False,
        "text_encoder.r": 8,
        "text_encoder.lora_alpha": 4,
    }
    spec = spec_from_metadata(
        {"format": "pt", "lora_adapter_metadata": json.dumps(config)}, "pytorch_lora.safetensors"
    )
    assert spec is not None and spec.source_format == "diffusers"
    assert (spec.rank, spec.alpha, spec.init_lora_weights) == (16, 16.0, "gaussian")
    assert spec.target_modules == ["to_q", "to_k"]
    assert spec.extras["component"] == "transformer"
    assert spec.extras["components"]["text_encoder"] == {"r": 8, "lora_alpha": 4}


def test_spec_from_metadata_diffusers_unprefixed_and_broken() -> None:
    spec = spec_from_metadata({"lora_adapter_metadata": '{"r": 4, "lora_alpha": 2}'}, "p")
    assert spec is not None and (spec.rank, spec.alpha) == (4, 2.0)
    broken = spec_from_metadata({"lora_adapter_metadata": "{not json"}, "p")
    assert broken is not None and "lora_adapter_metadata" in broken.invalid


def test_read_spec_on_safetensors_header(tmp_path: Path) -> None:
    from builders import kohya_file

    path = kohya_file(tmp_path / "k.safetensors", r=8, alpha=4.0)
    assert sniff_config(path) == "kohya-metadata"
    spec = read_spec(path)
    assert (spec.rank, spec.alpha) == (8, 4.0)


def test_diffusers_metadata_json_file(tmp_path: Path) -> None:
    config = json.dumps({"unet.r": 4, "unet.lora_alpha": 4, "unet.target_modules": ["to_q"]})
    text = json.dumps({"__metadata__": {"format": "pt", "lora_adapter_metadata": config}},
                      indent=2)
    path = write(tmp_path, "header.json", text)
    assert sniff_config(path) == "diffusers"
    spec = read_spec(path)
    assert (spec.rank, spec.alpha, spec.target_modules) == (4, 4.0, ["to_q"])
    assert spec.extras["component"] == "unet"
    assert spec.lines["lora_adapter_metadata"] == 4


@pytest.mark.parametrize(("size", "limit"), [(0, 10), (100, 50), (100, 100), (100, 101),
                                             (5000, 4097)])
def test_read_prefix_reads_up_to_its_limit(tmp_path: Path, size: int, limit: int) -> None:
    from loracheck.configs.documents import read_prefix

    path = tmp_path / "f.bin"
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    path.write_bytes(data)
    assert read_prefix(path, limit) == data[:limit]
