"""Rules that know a trainer's own semantics (LC110–LC114): each fires on its documented
example and not on the fix, on real config files read from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import check_config
from loracheck.model import Severity


def codes(diags: list[object]) -> set[str]:
    return {d.code for d in diags}  # type: ignore[attr-defined]


def only(diags: list[object], code: str, severity: Severity | None = None) -> object:
    assert codes(diags) == {code}, [(d.code, d.message) for d in diags]  # type: ignore[attr-defined]
    (diag,) = diags
    if severity is not None:
        assert diag.severity is severity  # type: ignore[attr-defined]
    return diag


@pytest.mark.parametrize(("name", "text", "what"), [
    ("adapter_config.json", '{"peft_type": "IA3", "target_modules": ["k_proj"]}', "IA3"),
    ("adapter_config.json", '{"peft_type": "OFT", "r": 0, "oft_block_size": 32}', "OFT"),
    ("lokr.json", '{"LoRA_type": "LyCORIS/LoKr", "network_dim": 100000, "network_alpha": 1}',
     "LyCORIS LoKr"),
    ("swift.yaml", "model: Qwen/Qwen2.5-7B\ntuner_type: vera\nlora_rank: 0\n", "VeRA"),
])
def test_lc110_another_method_gets_one_info(tmp_path: Path, name: str, text: str,
                                            what: str) -> None:
    diag = only(check_config(tmp_path, name, text), "LC110", Severity.INFO)
    assert what in diag.message  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "text"), [
    ("ax.yaml", "base_model: x\nadapter:\nlora_r:\nlora_alpha:\ndatasets: []\n"),
    ("lf.yaml", "model_name_or_path: x\nfinetuning_type: full\nlora_rank: 0\n"),
    ("mlx.yaml", "model: x\nfine_tune_type: full\nlora_parameters: {rank: 0}\n"),
    ("lit.yaml", "checkpoint_dir: x\nlora_r: 0\nlora_alpha: 16\n"),
    ("trl.yaml", "model_name_or_path: x\nlora_r: 0\nuse_peft: false\n"),
])
def test_a_full_fine_tune_gets_nothing(tmp_path: Path, name: str, text: str) -> None:
    assert check_config(tmp_path, name, text) == []


def test_lc111_qlora_without_4bit(tmp_path: Path) -> None:
    bad = "base_model: x\nadapter: qlora\nlora_r: 16\nlora_alpha: 16\n"
    only(check_config(tmp_path, "bad.yaml", bad), "LC111", Severity.ERROR)
    eight = bad + "load_in_8bit: true\n"
    assert "8bit" in only(check_config(tmp_path, "eight.yaml", eight), "LC111").message  # type: ignore[attr-defined]
    good = bad + "load_in_4bit: true\n"
    assert check_config(tmp_path, "good.yaml", good) == []
    # a rendered template decides at run time: unknown, not wrong
    template = bad + "load_in_4bit: ${LOAD_IN_4BIT}\n"
    assert check_config(tmp_path, "template.yaml", template) == []


def test_lc112_torchtune_names(tmp_path: Path) -> None:
    head = "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
    bad = head + "  lora_attn_modules: [q_proj, v_proj, o_proj]\n  lora_rank: 8\n"
    diag = only(check_config(tmp_path, "bad.yaml", bad), "LC112", Severity.ERROR)
    assert "output_proj" in diag.message  # type: ignore[attr-defined]
    good = head + "  lora_attn_modules: [q_proj, v_proj, output_proj]\n  lora_rank: 8\n"
    assert check_config(tmp_path, "good.yaml", good) == []


def test_lc113_mlx_lora_parameters_replace_the_defaults(tmp_path: Path) -> None:
    bad = "model: x\nlora_parameters:\n  rank: 16\n  alpha: 32\n"
    diag = only(check_config(tmp_path, "bad.yaml", bad), "LC113", Severity.ERROR)
    assert "scale" in diag.message and "alpha is never read" in diag.message  # type: ignore[attr-defined]
    good = "model: x\nlora_parameters:\n  rank: 16\n  scale: 20.0\n  dropout: 0.0\n"
    assert check_config(tmp_path, "good.yaml", good) == []
    # no lora_parameters at all: mlx-lm's own defaults (rank 8, scale 10) are complete
    assert check_config(tmp_path, "none.yaml", "model: x\nfine_tune_type: lora\n") == []


@pytest.mark.parametrize(("field", "value", "severity", "says"), [
    ("use_rslora", '"no"', Severity.WARNING, "α/√r"),
    ("fan_in_fan_out", '"false"', Severity.WARNING, "transposes"),
    ("target_modules", "5", Severity.ERROR, "TypeError"),
    ("rank_pattern", '{"q_proj": 4.5}', Severity.ERROR, "not an int"),
    ("bias", "5", Severity.ERROR, "'none'"),
])
def test_lc114_wrong_type_says_what_peft_does(tmp_path: Path, field: str, value: str,
                                              severity: Severity, says: str) -> None:
    text = f'{{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "{field}": {value}}}'
    diag = only(check_config(tmp_path, "adapter_config.json", text), "LC114", severity)
    assert says in diag.message  # type: ignore[attr-defined]


def test_kohya_conv_scale(tmp_path: Path) -> None:
    head = '{"LoRA_type": "Kohya LoCon", "network_dim": 32, "network_alpha": 16, '
    bad = head + '"conv_dim": 1, "conv_alpha": 64}'
    diag = only(check_config(tmp_path, "bad.json", bad), "LC102", Severity.WARNING)
    assert "conv_alpha/conv_dim" in diag.message  # type: ignore[attr-defined]
    good = head + '"conv_dim": 8, "conv_alpha": 1}'
    assert check_config(tmp_path, "good.json", good) == []


def test_placeholders_are_unknown_not_invalid(tmp_path: Path) -> None:
    text = ("base_model: ${BASE_MODEL}\nadapter: lora\nlora_r: ${LORA_R}\n"
            "lora_alpha: '{{ lora_alpha }}'\nlora_dropout: ${LORA_DROPOUT}\n"
            "lora_target_modules:\n  - ${TARGETS}\n")
    assert check_config(tmp_path, "runpod.yaml", text) == []


def test_inspect_says_the_method_and_where_values_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from loracheck.cli import main

    lf = tmp_path / "lf.yaml"
    lf.write_text("model_name_or_path: x\nstage: sft\nfinetuning_type: lora\nlora_rank: 16\n")
    ia3 = tmp_path / "adapter_config.json"
    ia3.write_text('{"peft_type": "IA3", "target_modules": ["k_proj"]}')
    assert main(["inspect", str(lf), str(ia3)]) == 0
    out = capsys.readouterr().out
    assert "alpha    32 (LLaMA-Factory default)" in out  # 2 · lora_rank
    assert "method   IA3 (not LoRA" in out
    assert "rank     -" not in out.split("IA3")[1]  # no LoRA fields for another method


@pytest.mark.parametrize(("text", "fires"), [
    ('{"peft_type": "OFT", "r": 8}', True),                          # block size 32 by default
    ('{"peft_type": "OFT", "r": 0, "oft_block_size": 0}', True),
    ('{"peft_type": "OFT", "r": 8, "oft_block_size": 0}', False),
    ('{"peft_type": "OFT", "r": 0, "oft_block_size": 32}', False),
    ('{"peft_type": "BOFT", "boft_block_size": 4, "boft_block_num": 2}', True),
    ('{"peft_type": "BOFT", "boft_block_size": 4, "boft_block_num": 0}', False),
])
def test_lc115_oft_blocks(tmp_path: Path, text: str, fires: bool) -> None:
    found = codes(check_config(tmp_path, "adapter_config.json", text)) - {"LC110"}
    assert found == ({"LC115"} if fires else set())


@pytest.mark.parametrize(("name", "text", "code"), [
    # PEFT refuses a peft_type it does not know; the LoRA rules still judge the rest
    ("adapter_config.json", '{"peft_type": "LORRA", "r": 0, "lora_alpha": 16}', "LC101"),
    ("adapter_config.json", '{"peft_type": "${TYPE}", "r": 8, "lora_alpha": -1}', "LC102"),
    # a fragment of LoRA keys (no adapter, no base_model) is judged as LoRA, not as a full FT
    ("fragment.yaml", "lora_r: 0\nlora_alpha: 16\n", "LC101"),
    # a user's own trainer: its lora: block is judged
    ("train.yaml", "model: m\nlora:\n  r: 0\n  alpha: 16\n", "LC101"),
])
def test_bad_lora_settings_keep_their_finding(tmp_path: Path, name: str, text: str,
                                              code: str) -> None:
    assert code in codes(check_config(tmp_path, name, text))


def test_placeholders_never_fire(tmp_path: Path) -> None:
    tune = ("model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
            "  lora_attn_modules: [q_proj, '${EXTRA}']\n  lora_rank: 8\n")
    assert check_config(tmp_path, "tune.yaml", tune) == []
    lf = "model_name_or_path: x\nstage: sft\nlora_rank: ${R}\n"
    assert check_config(tmp_path, "lf.yaml", lf) == []  # alpha = 2 × ${R}: unknown too


def test_a_broken_unrelated_file_met_while_walking_is_skipped(tmp_path: Path) -> None:
    from loracheck.load import load_paths

    (tmp_path / "ansible.yml").write_text("- hosts: all\n  adapter: eth0\n  bad: [\n")
    (tmp_path / "lora.yaml").write_text("adapter: lora\nlora_r: 8\nlora_alpha: [\n")
    adapters = load_paths([str(tmp_path)])
    assert [Path(a.path).name for a in adapters] == ["lora.yaml"]  # broken LoRA: reported
    assert adapters[0].faults[0].code == "LC001"


def test_lc114_in_an_mlx_config_names_mlx_lm(tmp_path: Path) -> None:
    """mlx-lm, not PEFT, reads lora_parameters.keys: its `k in keys` fails on a number."""
    text = ("model: x\nfine_tune_type: lora\nlora_parameters:\n  rank: 8\n  scale: 20.0\n"
            "  dropout: 0.0\n  keys: 5\n")
    diag = only(check_config(tmp_path, "lora_config.yaml", text), "LC114", Severity.ERROR)
    assert "mlx-lm fails" in diag.message and "PEFT" not in diag.message  # type: ignore[attr-defined]


def test_mlx_lm_really_fails_on_keys_that_are_a_number() -> None:
    """The claim above, against mlx-lm itself (0.32 tuner/utils.py linear_to_lora_layers)."""
    mlx_nn = pytest.importorskip("mlx.nn")
    from mlx_lm.tuner.utils import linear_to_lora_layers

    class Block(mlx_nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = mlx_nn.Linear(8, 8)

    class Model(mlx_nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layers = [Block(), Block()]

    params = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(Model(), 2, {**params, "keys": ["q_proj"]})  # the control
    with pytest.raises(TypeError, match="not iterable"):
        linear_to_lora_layers(Model(), 2, {**params, "keys": 5})
