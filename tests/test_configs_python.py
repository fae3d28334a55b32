"""Python training scripts read with ast: LoraConfig, unsloth, hand-written LoRA classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from loracheck.configs import read_spec, sniff_config
from loracheck.errors import ArtifactError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"


def script(tmp_path: Path, text: str, name: str = "train.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_peft_script_example() -> None:
    spec = read_spec(EXAMPLES / "peft_train.py")
    assert spec.source_format == "python"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 32.0, 0.05)  # r=RANK resolved
    assert spec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (spec.bias, spec.task_type) == ("none", "CAUSAL_LM")
    assert spec.lines["rank"] == 10 and spec.lines["task_type"] == 15


def test_non_literal_values_stay_none(tmp_path: Path) -> None:
    spec = read_spec(EXAMPLES / "peft_bad_train.py")
    assert spec.rank is None
    assert spec.extras["non_literal"] == {"rank": "rank"}
    assert spec.lines["rank"] == 9
    assert spec.init_lora_weights is False
    assert spec.lines["init_lora_weights"] == 11


def test_every_loraconfig_feature(tmp_path: Path) -> None:
    text = '''\
import peft

cfg = peft.LoraConfig(
    r=8,
    lora_alpha=16.0,
    lora_dropout=0.1,
    target_modules={"q_proj", "v_proj"},
    init_lora_weights="gaussian",
    use_rslora=True,
    use_dora=True,
    rank_pattern={"q_proj": 4},
    alpha_pattern={"q_proj": 2},
    modules_to_save=["lm_head"],
    bias="lora_only",
    layers_to_transform=1,
    layers_pattern="layers",
    loftq_config={"loftq_bits": 4},
    weird_kwarg=3,
    **{"fan_in_fan_out": True},
)
'''
    spec = read_spec(script(tmp_path, text))
    assert (spec.rank, spec.alpha, spec.dropout) == (8, 16.0, 0.1)
    assert spec.target_modules == ["q_proj", "v_proj"]
    assert spec.init_lora_weights == "gaussian"
    assert spec.use_rslora is True and spec.use_dora is True
    assert spec.rank_pattern == {"q_proj": 4} and spec.alpha_pattern == {"q_proj": 2.0}
    assert spec.modules_to_save == ["lm_head"]
    assert spec.bias == "lora_only"
    assert spec.layers_to_transform == [1] and spec.layers_pattern == "layers"
    assert spec.fan_in_fan_out is True
    assert spec.extras["loftq_config"] == {"loftq_bits": 4}
    assert spec.unknown_keys == ["weird_kwarg"]
    assert spec.lines["rank"] == 4 and spec.lines["fan_in_fan_out"] == 19


def test_several_configs_first_wins(tmp_path: Path) -> None:
    text = ("from peft import LoraConfig, get_peft_model\n"
            "a = get_peft_model(m, LoraConfig(r=4))\n"
            "b = LoraConfig(r=8)\n"
            "c = LoraConfig(r=16)\n")
    spec = read_spec(script(tmp_path, text))
    assert spec.rank == 4
    assert spec.extras["other_lora_configs"] == [3, 4]


def test_wrong_types_and_kwargs_splat(tmp_path: Path) -> None:
    text = "LoraConfig(r='sixteen', lora_alpha=None, lora_dropout=[0.1], **kwargs)\n"
    spec = read_spec(script(tmp_path, text))
    assert spec.invalid == {"rank": "'sixteen'", "alpha": "None", "dropout": "[0.1]"}
    assert spec.extras["unresolved_kwargs"] == "kwargs"


def test_unsloth_example() -> None:
    spec = read_spec(EXAMPLES / "unsloth_train.py")
    assert spec.source_format == "unsloth"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 16.0, 0.0)
    assert spec.use_rslora is False and spec.bias == "none"
    assert len(spec.target_modules or []) == 7
    assert spec.extras["random_state"] == 3407
    assert spec.extras["use_gradient_checkpointing"] == "unsloth"
    assert spec.lines["rank"] == 10


def test_unsloth_bad_example() -> None:
    spec = read_spec(EXAMPLES / "unsloth_bad.py")
    assert (spec.rank, spec.alpha, spec.bias) == (128, 1.0, "all")


def test_llmbook_custom_class_zero_b() -> None:
    spec = read_spec(EXAMPLES / "llmbook_lora.py")
    assert spec.extras["custom_lora_class"] == "LoRALinear"
    assert spec.extras["custom_lora_b_init"] == "zeros"
    assert spec.extras["custom_lora_a_init"] == "random"
    assert spec.init_std == 0.02
    assert spec.lines["custom_lora_b_init"] == 14
    assert spec.lines["init_std"] == 13
    # __init__ defaults are not what callers pass: extras only.
    assert spec.extras["custom_lora_defaults"] == {"r": 8, "alpha": 16}
    assert spec.rank is None and spec.alpha is None


def test_llmbook_custom_class_random_b() -> None:
    spec = read_spec(EXAMPLES / "llmbook_lora_bad.py")
    assert spec.extras["custom_lora_b_init"] == "random"
    assert spec.lines["custom_lora_b_init"] == 14


@pytest.mark.parametrize(
    ("body", "b_init"),
    [
        ("self.lora_B = nn.Parameter(torch.zeros(out, r))", "zeros"),
        ("self.lora_B = nn.Parameter(torch.randn(out, r))", "random"),
        ("self.B = nn.Linear(r, out)\n        nn.init.zeros_(self.B.weight)", "zeros"),
        ("self.B = nn.Linear(r, out)", "random"),
        ("self.lora_up = nn.Linear(r, out)\n        self.lora_up.weight.data.fill_(0)", "zeros"),
    ],
)
def test_custom_b_init_spellings(tmp_path: Path, body: str, b_init: str) -> None:
    text = (
        "import torch\nfrom torch import nn\n\n\nclass MyLora(nn.Module):\n"
        "    def __init__(self, r, out):\n        super().__init__()\n"
        f"        {body}\n"
    )
    path = script(tmp_path, text)
    assert sniff_config(path) == "python"
    assert read_spec(path).extras["custom_lora_b_init"] == b_init


def test_nn_init_normal_std_positional(tmp_path: Path) -> None:
    text = ("class LoRA:\n    def __init__(self):\n"
            "        nn.init.normal_(self.lora_A.weight, 0.0, 0.01)\n"
            "        nn.init.zeros_(self.lora_B.weight)\n")
    spec = read_spec(script(tmp_path, text))
    assert spec.init_std == 0.01 and spec.extras["custom_lora_b_init"] == "zeros"


def test_script_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    text = (f"open({str(marker)!r}, 'w').write('x')\n"
            "from peft import LoraConfig\nLoraConfig(r=__import__('os').getpid())\n")
    spec = read_spec(script(tmp_path, text))
    assert not marker.exists()
    assert spec.rank is None and "rank" in spec.extras["non_literal"]


def test_syntax_error_line(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as info:
        read_spec(script(tmp_path, "LoraConfig(r=8)\n\ndef broken(:\n    pass\n"))
    assert info.value.line == 3 and info.value.code == "LC001"


def test_null_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "nul.py"
    path.write_bytes(b"LoraConfig(r=8)\x00\n")
    with pytest.raises(ArtifactError):
        read_spec(path)
