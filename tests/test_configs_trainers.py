"""Trainer config formats -> LoraSpec, on the example configs and on variations of them."""

from __future__ import annotations

from pathlib import Path

from loracheck.configs import read_spec
from loracheck.model import LoraSpec, ValueOrigin

DEFAULT = ValueOrigin.TRAINER_DEFAULT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def example(name: str) -> LoraSpec:
    return read_spec(EXAMPLES / name)


def line_of(name: str, needle: str) -> int:
    """The 1-based line of the first line in an example that contains ``needle``."""
    for number, line in enumerate((EXAMPLES / name).read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_axolotl_good() -> None:
    spec = example("axolotl.yaml")
    assert spec.source_format == "axolotl"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 32.0, 0.05)
    assert spec.target_modules == "all-linear"
    assert spec.use_rslora is False
    assert spec.modules_to_save == ["embed_tokens", "lm_head"]
    assert spec.base_model == "NousResearch/Meta-Llama-3-8B"
    assert spec.extras["adapter"] == "qlora"
    assert spec.lines["rank"] == line_of("axolotl.yaml", "lora_r:")
    assert spec.lines["alpha"] == line_of("axolotl.yaml", "lora_alpha:")
    assert spec.lines["target_modules"] == line_of("axolotl.yaml", "lora_target_linear:")
    assert spec.lines["modules_to_save"] == line_of("axolotl.yaml", "lora_modules_to_save:")
    assert spec.extras["source_keys"]["rank"] == "lora_r"


def test_axolotl_bad() -> None:
    spec = example("axolotl_bad.yaml")
    assert spec.rank is None and spec.invalid["rank"] == "'sixteen'"
    assert spec.alpha_missing
    assert spec.dropout == 1.5
    assert spec.init_lora_weights is False
    assert spec.use_dora is True
    assert spec.target_modules == ["q_proj", "v_proj"]
    assert spec.suppressions == {}


def test_axolotl_suppressed() -> None:
    spec = example("axolotl_suppressed.yaml")
    line = line_of("axolotl_suppressed.yaml", "lora_alpha")
    assert (spec.rank, spec.alpha, spec.lines["alpha"]) == (64, 1.0, line)
    assert spec.suppressions == {line: ["LC102"]}


def test_axolotl_patterns_loftq_and_lax_numbers(tmp_path: Path) -> None:
    text = (
        "adapter: lora\n"
        'lora_r: "8"\n'
        "lora_alpha: 16\n"
        "lora_dropout: '5e-2'\n"
        "lora_target_modules: ['q_proj', 'v_proj']\n"
        "lora_target_linear: true\n"
        "lora_rank_pattern: {q_proj: 4}\n"
        "lora_alpha_pattern: {q_proj: 8}\n"
        "peft:\n"
        "  loftq_config:\n"
        "    loftq_bits: 4\n"
    )
    spec = read_spec(write(tmp_path, "ax.yaml", text))
    assert (spec.rank, spec.dropout) == (8, 0.05)  # pydantic-style coercion
    assert spec.target_modules == "all-linear"
    assert spec.extras["explicit_target_modules"] == ["q_proj", "v_proj"]
    assert spec.rank_pattern == {"q_proj": 4} and spec.alpha_pattern == {"q_proj": 8.0}
    assert spec.init_lora_weights == "loftq"
    assert spec.extras["loftq_config"] == {"loftq_bits": 4}
    assert spec.lines["init_lora_weights"] == 11
    assert spec.lines["rank_pattern"] == 7


def test_llama_factory_good() -> None:
    spec = example("llama_factory.yaml")
    assert spec.source_format == "llama-factory"
    assert (spec.rank, spec.alpha, spec.dropout) == (8, 16.0, 0.0)
    assert spec.target_modules == "all-linear"
    assert spec.use_rslora is False
    assert spec.lines["rank"] == line_of("llama_factory.yaml", "lora_rank")
    assert spec.lines["target_modules"] == line_of("llama_factory.yaml", "lora_target")
    assert "alpha_default" not in spec.extras


def test_llama_factory_bad_missing_alpha_and_pissa() -> None:
    spec = example("llama_factory_bad.yaml")
    # finetuning_args.py:568 `lora_alpha or lora_rank * 2`
    assert spec.alpha == 2 * spec.rank == 128 and not spec.alpha_missing
    assert spec.origin("alpha") is DEFAULT and spec.origin("rank") is ValueOrigin.FILE
    assert spec.target_modules == ["q_proj", "v_proj"]
    assert spec.init_lora_weights == "pissa"  # pissa_iter -1: full SVD
    assert spec.use_rslora is True
    assert spec.lines["init_lora_weights"] == line_of("llama_factory_bad.yaml", "pissa_init")


def test_llama_factory_pissa_iterations_and_additional_target(tmp_path: Path) -> None:
    text = ("lora_rank: 8\nlora_target: q_proj\npissa_init: true\n"
            "additional_target: embed_tokens,lm_head\n")
    spec = read_spec(write(tmp_path, "lf.yaml", text))
    assert spec.init_lora_weights == "pissa_niter_16"
    assert spec.modules_to_save == ["embed_tokens", "lm_head"]
    assert spec.lines["modules_to_save"] == 4


def test_torchtune_good() -> None:
    spec = example("torchtune.yaml")
    assert spec.source_format == "torchtune"
    assert (spec.rank, spec.alpha, spec.dropout) == (8, 16.0, 0.0)
    assert spec.target_modules == ["q_proj", "v_proj", "output_proj", "w1", "w2", "w3"]
    assert spec.extras["hf_target_modules"] == [
        "q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj"
    ]
    assert spec.lines["rank"] == line_of("torchtune.yaml", "lora_rank")
    assert spec.lines["target_modules"] == line_of("torchtune.yaml", "lora_attn_modules")


def test_torchtune_bad() -> None:
    spec = example("torchtune_bad.yaml")
    assert spec.invalid == {"alpha": "None", "dropout": "[0.1]"}
    assert spec.lines["alpha"] == line_of("torchtune_bad.yaml", "lora_alpha")


def test_torchtune_dora_and_output(tmp_path: Path) -> None:
    text = ("model:\n  _component_: torchtune.models.llama3.lora_llama3_8b\n"
            "  lora_attn_modules: [q_proj]\n  apply_lora_to_output: true\n"
            "  lora_rank: 4\n  use_dora: true\n")
    spec = read_spec(write(tmp_path, "tt.yaml", text))
    assert spec.use_dora is True
    assert spec.target_modules == ["q_proj", "output"]
    # the lora_llama3_8b builder's default alpha (16) and dropout (0.0)
    assert (spec.rank, spec.alpha, spec.dropout) == (4, 16.0, 0.0)
    assert spec.origin("alpha") is DEFAULT and spec.origin("rank") is ValueOrigin.FILE
    assert spec.method_name == "DoRA"


def test_trl_good() -> None:
    spec = example("trl.yaml")
    assert spec.source_format == "trl"
    assert (spec.rank, spec.alpha, spec.dropout) == (32, 16.0, 0.05)
    assert spec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert spec.use_rslora is True
    assert spec.extras["use_peft"] is True
    assert spec.lines["use_rslora"] == line_of("trl.yaml", "use_rslora")


def test_trl_bad_json() -> None:
    spec = example("trl_bad.json")
    assert spec.source_format == "trl"
    assert spec.rank == 0
    assert spec.invalid["alpha"] == "'thirty-two'"
    assert spec.target_modules == "q_proj,v_proj"  # a regex string to PEFT: matches nothing
    assert spec.lines["alpha"] == line_of("trl_bad.json", "lora_alpha")


def test_trl_dora_modules_to_save_task(tmp_path: Path) -> None:
    text = ("use_peft: true\nlora_r: 8\nuse_dora: true\nlora_modules_to_save: [lm_head]\n"
            "lora_task_type: SEQ_CLS\n")
    spec = read_spec(write(tmp_path, "trl.yaml", text))
    assert spec.use_dora is True
    assert spec.modules_to_save == ["lm_head"]
    assert spec.task_type == "SEQ_CLS"


def test_llmbox_good() -> None:
    spec = example("llmbox.json")
    assert spec.source_format == "llmbox"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 16.0, 0.05)
    assert spec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert spec.extras["lora_merge"] is True
    assert spec.lines["target_modules"] == line_of("llmbox.json", "lora_target_modules")


def test_llmbox_bad() -> None:
    spec = example("llmbox_bad.json")
    assert (spec.rank, spec.alpha) == (256, 1.0)
    # null = not said, so LLMBox's own default applies
    assert spec.dropout == 0.05 and spec.origin("dropout") is DEFAULT
    assert "dropout" not in spec.invalid
    assert spec.target_modules == []


def test_kohya_toml_good() -> None:
    spec = example("kohya.toml")
    assert spec.source_format == "kohya"
    assert (spec.rank, spec.alpha, spec.dropout) == (32, 16.0, 0.1)
    assert spec.extras["network_module"] == "networks.lora"
    assert spec.extras["network_args"] == {"conv_dim": "8", "conv_alpha": "4"}
    assert spec.base_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert spec.lines["rank"] == line_of("kohya.toml", "network_dim")
    assert spec.lines["network_args"] == line_of("kohya.toml", "network_args")


def test_kohya_toml_bad() -> None:
    spec = example("kohya_bad.toml")
    assert spec.rank is None and spec.invalid["rank"] == "'4'"
    assert spec.alpha == 256.0
    assert spec.lines["rank"] == line_of("kohya_bad.toml", "network_dim")


def test_kohya_json_and_bad_network_args(tmp_path: Path) -> None:
    text = '{\n  "LoRA_type": "Standard",\n  "network_dim": 8,\n  "network_args": 5\n}'
    spec = read_spec(write(tmp_path, "kohya_ss.json", text))
    assert spec.source_format == "kohya"
    assert spec.rank == 8 and spec.lines["rank"] == 3
    assert spec.invalid["network_args"] == "5"
    # train_network.py: --network_alpha defaults to 1
    assert spec.alpha == 1.0 and spec.origin("alpha") is DEFAULT


def test_mlx_good() -> None:
    spec = example("mlx.yaml")
    assert spec.source_format == "mlx"
    assert (spec.rank, spec.scale, spec.dropout, spec.alpha) == (8, 20.0, 0.0, None)
    assert not spec.alpha_missing  # scale is the multiplier
    assert spec.target_modules == ["self_attn.q_proj", "self_attn.v_proj"]
    assert spec.use_dora is False
    assert spec.extras["num_layers"] == 16
    assert spec.lines["scale"] == line_of("mlx.yaml", "scale:")
    assert spec.lines["rank"] == line_of("mlx.yaml", "rank:")


def test_mlx_bad_dora_and_old_alpha() -> None:
    spec = example("mlx_bad.yaml")
    assert spec.use_dora is True
    assert spec.scale == 400.0
    assert spec.alpha is None and spec.extras["mlx_alpha"] == 16
    assert spec.extras["num_layers"] == -1


def test_mlx_adapter_config_json(tmp_path: Path) -> None:
    text = ('{"fine_tune_type": "lora", "num_layers": 8,\n'
            ' "lora_parameters": {"rank": "8", "scale": 10.0, "dropout": 0.0}}')
    spec = read_spec(write(tmp_path, "adapter_config.json", text))
    assert spec.source_format == "mlx"
    assert spec.invalid["rank"] == "'8'" and spec.lines["rank"] == 2
    assert spec.scale == 10.0
