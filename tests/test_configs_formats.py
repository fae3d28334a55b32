"""The trainer formats added for real users' files (ms-swift, litgpt, ai-toolkit, Unsloth
Studio, LLaMA-Factory v1, a generic ``lora:`` block): each told apart by its keys and resolved
with its trainer's own defaults. The texts follow the layouts of the trainers' published
examples (cited in src/loracheck/configs/semantics.py); they are written here, not copied."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loracheck.configs import read_spec, sniff_config
from loracheck.model import MethodKind, ValueOrigin
from loracheck.scaling import effective_scale

DEFAULT = ValueOrigin.TRAINER_DEFAULT

SWIFT = """\
model: Qwen/Qwen2.5-7B-Instruct
torch_dtype: bfloat16
tuner_type: lora
dataset: ['AI-ModelScope/alpaca-gpt4-data-en#500']
num_train_epochs: 1
per_device_train_batch_size: 1
learning_rate: 1e-4
lora_rank: 16
gradient_accumulation_steps: 16
max_length: 2048
output_dir: output
"""
SWIFT_V3 = "model: Qwen/Qwen2.5-7B\ntrain_type: lora\ntarget_modules: all-linear\n" \
           "lora_alpha: 64\nlora_rank: 8\ndataset: ['x#100']\n"
LITGPT = """\
checkpoint_dir: checkpoints/meta-llama/Meta-Llama-3.1-8B
out_dir: out/finetune/lora-llama-3.1-8b
precision: bf16-true
quantize: bnb.nf4
devices: 1
num_nodes: 1
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_query: true
lora_key: false
lora_value: true
lora_projection: true
lora_mlp: true
lora_head: false
data:
  class_path: litgpt.data.Alpaca2k
  init_args:
    mask_prompt: false
train:
  save_interval: 200
  micro_batch_size: 2
  global_batch_size: 8
"""
AI_TOOLKIT = """\
job: extension
config:
  name: my_first_flux_lora_v1
  process:
    - type: sd_trainer
      training_folder: output
      device: cuda:0
      network:
        type: lora
        linear: 16
        linear_alpha: 8
      save:
        dtype: float16
      datasets:
        - folder_path: /path/to/images
      train:
        batch_size: 1
        steps: 2000
        lr: 1e-4
      model:
        name_or_path: {model}
{flags}
meta:
  name: "[name]"
"""
STUDIO = """\
model: unsloth/Llama-3.2-1B-Instruct
data:
  dataset: yahma/alpaca-cleaned
  format_type: auto
training:
  training_type: lora
  max_seq_length: 2048
  load_in_4bit: true
lora:
  lora_alpha: 16
  lora_dropout: 0.0
  target_modules: "q_proj,k_proj,v_proj,o_proj"
  use_rslora: false
logging:
  enable_wandb: false
"""
LF_V1 = """\
model: Qwen/Qwen3-4B
model_class: llm
peft_config:
  name: lora
  r: 32
  target_modules: all
kernel_config:
  name: auto
micro_batch_size: 1
cutoff_len: 2048
"""
OWN_TRAINER = """\
model:
  name: meta-llama/Llama-3.2-1B
lora:
  rank: 16
  alpha: 32
  dropout: 0.1
  target_modules: [q_proj, v_proj]
optimizer:
  lr: 2.0e-4
"""


def read(tmp_path: Path, name: str, text: str) -> object:
    path = tmp_path / name
    path.write_text(text)
    fmt = sniff_config(path)
    spec = read_spec(path)
    assert fmt == spec.source_format
    return spec


def scale(spec: object) -> float | None:
    return effective_scale(spec.rank, spec.alpha, use_rslora=bool(spec.use_rslora),  # type: ignore[attr-defined]
                           scale=spec.scale)  # type: ignore[attr-defined]


def test_ms_swift_defaults(tmp_path: Path) -> None:
    spec = read(tmp_path, "sft.yaml", SWIFT)
    assert spec.source_format == "ms-swift" and spec.method is MethodKind.LORA  # type: ignore[attr-defined]
    # tuner_args.py: lora_alpha 32 whatever the rank, dropout 0.05, all-linear
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 32.0, 0.05)  # type: ignore[attr-defined]
    assert spec.target_modules == "all-linear"  # type: ignore[attr-defined]
    assert spec.origin("alpha") is DEFAULT and spec.origin("rank") is ValueOrigin.FILE  # type: ignore[attr-defined]
    assert scale(spec) == 2.0
    v3 = read(tmp_path, "v3.yaml", SWIFT_V3)
    assert (v3.rank, v3.alpha, v3.target_modules) == (8, 64.0, "all-linear")  # type: ignore[attr-defined]
    full = read(tmp_path, "full.yaml", SWIFT.replace("tuner_type: lora", "tuner_type: full"))
    assert full.method is MethodKind.FULL  # type: ignore[attr-defined]
    vera = read(tmp_path, "vera.yaml", SWIFT.replace("tuner_type: lora", "tuner_type: vera"))
    assert (vera.method, vera.method_name) == (MethodKind.OTHER, "VeRA")  # type: ignore[attr-defined]


def test_litgpt_flags_and_defaults(tmp_path: Path) -> None:
    spec = read(tmp_path, "lora.yaml", LITGPT)
    assert spec.source_format == "litgpt"  # not axolotl, although both say lora_r
    assert (spec.rank, spec.alpha, spec.dropout, scale(spec)) == (32, 16.0, 0.05, 0.5)  # type: ignore[attr-defined]
    assert spec.target_modules == ["query", "value", "projection", "mlp"]  # type: ignore[attr-defined]
    bare = read(tmp_path, "hyperparameters.yaml", "checkpoint_dir: x\nlora_r: 4\n")
    assert (bare.alpha, bare.dropout, bare.target_modules) == (16.0, 0.05, ["query", "value"])  # type: ignore[attr-defined]
    off = read(tmp_path, "off.yaml", "checkpoint_dir: x\nlora_r: 0\nlora_alpha: 16\n")
    assert off.method is MethodKind.FULL  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "flags", "alpha"), [
    ("runwayml/stable-diffusion-v1-5", "", 8.0),  # a UNet: linear_alpha / linear
    ("black-forest-labs/FLUX.1-dev", "        is_flux: true", 16.0),  # peft_format: alpha = r
    ("Wan-AI/Wan2.1-T2V-14B", "        arch: wan21", 16.0),
])
def test_ai_toolkit_network(tmp_path: Path, model: str, flags: str, alpha: float) -> None:
    spec = read(tmp_path, "job.yaml", AI_TOOLKIT.format(model=model, flags=flags))
    assert spec.source_format == "ai-toolkit" and spec.rank == 16  # type: ignore[attr-defined]
    assert spec.alpha == alpha  # type: ignore[attr-defined]
    no_alpha = AI_TOOLKIT.format(model=model, flags="").replace("        linear_alpha: 8\n", "")
    unet = read(tmp_path, "unet.yaml", no_alpha)
    # config_modules.py: linear_alpha defaults to alpha (1.0), not to linear
    assert unet.alpha == 1.0 and unet.origin("alpha") is DEFAULT  # type: ignore[attr-defined]
    lokr = read(tmp_path, "lokr.yaml", AI_TOOLKIT.format(model=model, flags="").replace(
        "type: lora", "type: lokr"))
    assert lokr.method is MethodKind.OTHER  # type: ignore[attr-defined]


def test_unsloth_studio(tmp_path: Path) -> None:
    spec = read(tmp_path, "lora_text.yaml", STUDIO)
    assert spec.source_format == "unsloth-studio"
    # unsloth_cli/config.py: lora_r 64 when absent
    assert (spec.rank, spec.alpha, spec.dropout) == (64, 16.0, 0.0)  # type: ignore[attr-defined]
    assert spec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # type: ignore[attr-defined]
    full = read(tmp_path, "full.yaml", STUDIO.replace("training_type: lora",
                                                      "training_type: full"))
    assert full.method is MethodKind.FULL  # type: ignore[attr-defined]


def test_llama_factory_v1(tmp_path: Path) -> None:
    spec = read(tmp_path, "train_lora_sft.yaml", LF_V1)
    assert spec.source_format == "llama-factory-v1"
    # v1 plugins/model_plugins/peft.py: lora_alpha 16 (not 2·r as in v0), dropout 0.05
    assert (spec.rank, spec.alpha, spec.dropout) == (32, 16.0, 0.05)  # type: ignore[attr-defined]
    assert spec.target_modules == "all-linear"  # type: ignore[attr-defined]
    full = read(tmp_path, "full.yaml", LF_V1.split("peft_config")[0] + "kernel_config:\n"
                "  name: auto\n")
    assert full.method is MethodKind.FULL  # type: ignore[attr-defined]


def test_a_lora_block_of_another_trainer(tmp_path: Path) -> None:
    spec = read(tmp_path, "train.yaml", OWN_TRAINER)
    assert spec.source_format == "lora-section"
    assert (spec.rank, spec.alpha, spec.dropout) == (16, 32.0, 0.1)  # type: ignore[attr-defined]
    assert spec.target_modules == ["q_proj", "v_proj"]  # type: ignore[attr-defined]
    assert math.isclose(scale(spec) or 0.0, 2.0)


def test_unrelated_yaml_is_not_a_lora_config(tmp_path: Path) -> None:
    compose = "services:\n  web:\n    image: nginx\n    ports: ['80:80']\n"
    (tmp_path / "docker-compose.yml").write_text(compose)
    assert sniff_config(tmp_path / "docker-compose.yml") is None
    k8s = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: adapter\nspec:\n  containers: []\n"
    (tmp_path / "pod.yaml").write_text(k8s)
    assert sniff_config(tmp_path / "pod.yaml") is None


@pytest.mark.parametrize(("name", "text", "fmt"), [
    # litgpt finetune full / galore: the same layout without lora_* keys
    ("full.yaml", "checkpoint_dir: checkpoints/x\nout_dir: out/full\nprecision: bf16-true\n"
                  "devices: 4\ntrain:\n  global_batch_size: 16\n", "litgpt"),
    # ai-toolkit jobs without a network block (fine_tune, extract)
    ("ft.yaml", "job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n"
                "      train:\n        steps: 10\n", "ai-toolkit"),
    # TRL / HF argument files without use_peft
    ("sft.yaml", "model_name_or_path: Qwen/Qwen2-0.5B\ndataset_name: x\nlearning_rate: 2e-5\n"
                 "output_dir: out\n", "trl"),
])
def test_full_fine_tunes_of_known_trainers(tmp_path: Path, name: str, text: str,
                                           fmt: str) -> None:
    spec = read(tmp_path, name, text)
    assert spec.source_format == fmt and spec.method is MethodKind.FULL  # type: ignore[attr-defined]


def test_ms_swift_megatron_ray_train_group(tmp_path: Path) -> None:
    text = ("rlhf_type: grpo\nmodel: Qwen/Qwen3-1.7B\nmicro_batch_size: 2\nglobal_batch_size: 16\n"
            "train:\n  gpus: 4\n  tuner_type: lora\n  lora_rank: 8\n  lora_alpha: 32\n"
            "rollout:\n  gpus: 4\n")
    spec = read(tmp_path, "ray_grpo.yaml", text)
    assert spec.source_format == "ms-swift" and spec.method is MethodKind.LORA  # type: ignore[attr-defined]
    assert (spec.rank, spec.alpha, spec.dropout, spec.target_modules) == (  # type: ignore[attr-defined]
        8, 32.0, 0.05, "all-linear")


def test_ai_toolkit_lierla_is_lora(tmp_path: Path) -> None:
    text = AI_TOOLKIT.format(model="runwayml/stable-diffusion-v1-5", flags="").replace(
        "type: lora", "type: lierla")
    spec = read(tmp_path, "slider.yaml", text)
    assert spec.method is MethodKind.LORA and scale(spec) == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "fmt", "rank", "alpha"), [
    # LLaMA-Factory leaving finetuning_type and every lora_* key at their defaults
    ("model_name_or_path: Qwen/Qwen2.5-7B\nstage: sft\ntemplate: qwen\ndataset: alpaca_en\n",
     "llama-factory", 8, 16.0),
    # ms-swift with tuner_type left at its default: alpha 32, not LLaMA-Factory's 2·r
    ("model: Qwen/Qwen2.5-7B\nlora_rank: 8\ndataset: ['x#100']\n", "ms-swift", 8, 32.0),
    # LLaMA-Factory lora_alpha: null -> `lora_alpha or lora_rank * 2`
    ("model_name_or_path: x\nstage: sft\nlora_rank: 16\nlora_alpha: null\n",
     "llama-factory", 16, 32.0),
    # a user's own trainer with a lora: block beside LLaMA-Factory-v1-looking keys
    ("model: m\ntrain_dataset: d.json\nlora:\n  r: 4\n  alpha: 8\n", "lora-section", 4, 8.0),
])
def test_keys_decide_between_lookalike_formats(tmp_path: Path, text: str, fmt: str, rank: int,
                                               alpha: float) -> None:
    spec = read(tmp_path, "train.yaml", text)
    assert (spec.source_format, spec.rank, spec.alpha) == (fmt, rank, alpha)  # type: ignore[attr-defined]


def test_mlx_full_gets_no_lora_defaults(tmp_path: Path) -> None:
    spec = read(tmp_path, "mlx.yaml", "model: x\nfine_tune_type: full\nnum_layers: 4\n")
    assert spec.method is MethodKind.FULL and spec.rank is None  # type: ignore[attr-defined]
    assert spec.origins == {}  # type: ignore[attr-defined]


def test_every_trainer_format_has_cited_semantics() -> None:
    from loracheck.configs import FORMATS
    from loracheck.configs.semantics import SEMANTICS

    # A lora: block of a trainer loracheck does not know has no table to cite.
    assert set(FORMATS) - set(SEMANTICS) == {"lora-section"}
    for fmt, semantics in SEMANTICS.items():
        assert semantics.trainer and semantics.writes and semantics.source, fmt
