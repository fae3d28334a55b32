"""``loracheck diff A B`` on real artifacts: PEFT checkpoints of one training run, a bf16
re-save made by PEFT, a kohya LoRA converted by diffusers' own converter and saved by its
writer, an mlx-lm adapter written by the real trainer against the same factors saved by PEFT.
Every number ``diff`` prints (its JSON carries them at full precision) is compared to ΔW = s·B·A
materialised in float64 (long double for the near-identical cases) from the files, read
independently of loracheck, at the tolerance each test states."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import ALL_LINEAR, kaiming_a, tiny_llama, train_steps, write_safetensors
from loracheck.adapter_diff import difference_norm, dtype_floor, match_modules
from loracheck.cli import main
from loracheck.diff_record import DiffMethod

MLX_FIXTURE = Path(__file__).parent / "fixtures" / "writers" / "mlx" / "lora"
# Stated tolerances against the materialised reference.
NORM_RTOL = 1e-12  # ‖ΔW_A‖, ‖ΔW_B‖, norm ratio (relative)
DIFF_ATOL = 1e-12  # ‖ΔW_A − ΔW_B‖ / ‖ΔW_A‖ (absolute, as a fraction of ‖ΔW_A‖)
COS_ATOL = 1e-12


# --- the independent reference -----------------------------------------------------------------


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float64 (through torch: bf16 included)."""
    from safetensors.torch import load_file

    return {k: v.double().numpy() for k, v in load_file(str(path)).items()}


def _factors(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module -> (A (r, in), B (out, r)) float64, by each format's published key suffixes."""
    tensors = _read(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    suffixes = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_down.weight": "A",
                ".lora_up.weight": "B", ".lora_a": "a_mlx", ".lora_b": "b_mlx"}
    for key, value in tensors.items():
        for suffix, role in suffixes.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)].removeprefix("base_model.model.")
                if role == "a_mlx":
                    role, value = "A", value.T  # mlx-lm stores lora_a as (in, r)
                elif role == "b_mlx":
                    role, value = "B", value.T  # and lora_b as (r, out)
                out.setdefault(module, {})[role] = value
    return {m: (f["A"], f["B"]) for m, f in out.items()}


def _reference(fa: tuple[np.ndarray, np.ndarray], sa: float, fb: tuple[np.ndarray, np.ndarray],
               sb: float, dtype: Any = np.float64) -> dict[str, float]:
    """The numbers of one module from the materialised updates."""
    wa = dtype(sa) * (fa[1].astype(dtype) @ fa[0].astype(dtype))
    wb = dtype(sb) * (fb[1].astype(dtype) @ fb[0].astype(dtype))
    na, nb = float(np.sqrt((wa * wa).sum())), float(np.sqrt((wb * wb).sum()))
    d = wa - wb
    nd = float(np.sqrt((d * d).sum()))
    return {"norm_a": na, "norm_b": nb, "rel_diff": nd / na, "norm_ratio": nb / na,
            "cosine": float((wa * wb).sum()) / (na * nb)}


def _diff_json(a: Path, b: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["diff", str(a), str(b), "--format", "json", *extra])
    return code, json.loads(out.getvalue())


def _diff_text(a: Path, b: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["diff", str(a), str(b), *extra])
    return code, out.getvalue()


def _assert_numbers(doc: dict[str, Any], fa: dict[str, tuple[np.ndarray, np.ndarray]], sa: float,
                    fb: dict[str, tuple[np.ndarray, np.ndarray]], sb: float,
                    names: dict[str, str] | None = None) -> None:
    """Every module's printed numbers against the float64 materialised reference."""
    modules = doc["diff"]["modules"]
    assert modules
    for m in modules:
        name_a = m["a"]["name"].removeprefix("base_model.model.")
        name_b = m["b"]["name"].removeprefix("base_model.model.")
        ref = _reference(fa[name_a], sa, fb[(names or {}).get(name_a, name_b)], sb)
        assert m["norm_a"] == pytest.approx(ref["norm_a"], rel=NORM_RTOL), m["name"]
        assert m["norm_b"] == pytest.approx(ref["norm_b"], rel=NORM_RTOL), m["name"]
        assert m["norm_ratio"] == pytest.approx(ref["norm_ratio"], rel=NORM_RTOL), m["name"]
        assert abs(m["rel_diff"] - ref["rel_diff"]) <= DIFF_ATOL, m["name"]
        assert abs(m["cosine"] - ref["cosine"]) <= COS_ATOL, m["name"]


def _codes(doc: dict[str, Any]) -> list[str]:
    return sorted({d["code"] for d in doc["diagnostics"]})


# --- PEFT artifacts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One PEFT training run: step 2, then step 4 with v_proj frozen (it must not move), and the
    step-4 adapter re-saved in bf16 by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=ALL_LINEAR))
    train_steps(model, 2, seed=0)
    model.save_pretrained(str(root / "step2"))
    for name, param in model.named_parameters():
        if "v_proj" in name:
            param.requires_grad_(False)
    train_steps(model, 2, seed=1)
    model.save_pretrained(str(root / "step4"))
    model.to(torch.bfloat16)
    model.save_pretrained(str(root / "step4-bf16"))
    return {p.name: p for p in root.iterdir()}


def _weights(folder: Path) -> Path:
    return folder / "adapter_model.safetensors"


def test_two_checkpoints_of_one_run_show_which_modules_moved(run: dict[str, Path]) -> None:
    code, doc = _diff_json(run["step2"], run["step4"])
    assert code == 1
    statuses = {m["name"]: m["status"] for m in doc["diff"]["modules"]}
    assert len(statuses) == 14
    moved = {n for n, s in statuses.items() if s == "differs"}
    assert moved == {n for n in statuses if "v_proj" not in n}  # v_proj was frozen
    assert {statuses[n] for n in statuses if "v_proj" in n} == {"same"}
    lc410 = {d["location"] for d in doc["diagnostics"] if d["code"] == "LC410"}
    assert lc410 == moved and _codes(doc) == ["LC410"]
    _assert_numbers(doc, _factors(_weights(run["step2"])), 2.0,
                    _factors(_weights(run["step4"])), 2.0)
    text = _diff_text(run["step2"], run["step4"])[1]
    assert "12 differ (LC410)" in text and "2 the same within tolerance" in text


def test_a_bf16_resave_passes_under_the_dtype_tolerance(run: dict[str, Path]) -> None:
    code, doc = _diff_json(run["step4"], run["step4-bf16"])
    assert code == 0, doc["diagnostics"]
    assert doc["diff"]["passed"] is True and not doc["diagnostics"]
    for m in doc["diff"]["modules"]:
        assert m["b"]["dtype"] == "BF16" and m["tolerance_source"] == "dtypes"
        # the re-save really moved the update, by less than what bf16 rounding explains
        assert 0 < m["rel_diff"] <= m["tolerance"] < 0.05
    _assert_numbers(doc, _factors(_weights(run["step4"])), 2.0,
                    _factors(_weights(run["step4-bf16"])), 2.0)
    # an explicit tolerance below the rounding fails every module; one above passes
    code, doc = _diff_json(run["step4"], run["step4-bf16"], "--tolerance", "1e-6")
    assert code == 1 and len(doc["diagnostics"]) == 14
    assert _diff_json(run["step4"], run["step4-bf16"], "--tolerance", "0.05")[0] == 0


def test_a_real_change_fails_under_the_bf16_tolerance(run: dict[str, Path]) -> None:
    # two more training steps, in bf16: every trained module exceeds the rounding of bf16
    code, doc = _diff_json(run["step2"], run["step4-bf16"])
    assert code == 1
    assert {m["name"] for m in doc["diff"]["modules"] if m["status"] == "differs"} == {
        m["name"] for m in doc["diff"]["modules"] if "v_proj" not in m["name"]}


def test_a_changed_alpha_is_lc412(run: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    changed = tmp_path / "alpha16"
    shutil.copytree(run["step4"], changed)
    config = json.loads((changed / "adapter_config.json").read_text())
    config["lora_alpha"] = 16
    (changed / "adapter_config.json").write_text(json.dumps(config))
    code, doc = _diff_json(run["step4"], changed)
    assert code == 1 and _codes(doc) == ["LC412"]
    assert len(doc["diagnostics"]) == 14
    for m in doc["diff"]["modules"]:
        assert m["status"] == "scale" and m["method"] == "equal-factors"
        assert m["facts"]["a_equal"] and m["facts"]["b_equal"]
        assert m["scale_fit"] == pytest.approx(2.0, rel=1e-12)
        assert m["rel_diff"] == pytest.approx(1.0, rel=1e-12)
    message = doc["diagnostics"][0]["message"]
    assert "ΔW_B = 2·ΔW_A" in message and "s 2 → 4" in message and "bitwise equal" in message
    _assert_numbers(doc, _factors(_weights(run["step4"])), 2.0,
                    _factors(_weights(changed)), 4.0)


def test_module_sets_differ_is_lc411(run: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, lora_alpha=8,
                                                     target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(tmp_path / "qv"))
    code, doc = _diff_json(run["step2"], tmp_path / "qv")
    assert code == 1 and "LC411" in _codes(doc)
    (lc411,) = [d for d in doc["diagnostics"] if d["code"] == "LC411"]
    assert lc411["message"].startswith("10 modules only in A")
    assert doc["diff"]["summary"]["only_a"] == 10 and doc["diff"]["summary"]["only_b"] == 0
    assert len(doc["diff"]["modules"]) == 4


# --- conversions by real writers ----------------------------------------------------------------

# kohya sd-scripts' flattened UNet names (networks/lora.py: "lora_unet_" + the diffusers module
# path with dots as underscores), (out, in).
_KOHYA_UNET = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": (32, 32),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (32, 32),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": (32, 32),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0": (32, 32),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": (32, 128),
}


def _kohya(path: Path, r: int = 4, alpha: float = 2.0) -> Path:
    rng = np.random.default_rng(3)
    tensors: dict[str, np.ndarray] = {}
    for name, (out_f, in_f) in _KOHYA_UNET.items():
        tensors[f"{name}.lora_down.weight"] = kaiming_a(rng, r, in_f)
        tensors[f"{name}.lora_up.weight"] = rng.normal(0, 0.02, (out_f, r)).astype(np.float32)
        tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    return write_safetensors(path, tensors, {"ss_network_dim": str(r),
                                             "ss_network_alpha": str(alpha)})


def _diffusers_convert(kohya: Path, out: Path, *, keep_alpha: bool) -> Path:
    """diffusers' own kohya conversion (lora_state_dict → convert_unet_state_dict_to_peft)
    saved by its own writer (save_lora_weights), with the alphas the converter returned in the
    LoRA metadata, or without them."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(str(kohya))
    unet = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
    peft_sd = convert_unet_state_dict_to_peft(unet)
    metadata = None
    if keep_alpha:
        (alpha,) = set(alphas.values())
        rank = next(v.shape[0] for k, v in peft_sd.items() if k.endswith("lora_A.weight"))
        targets = sorted({k.rsplit(".lora_", 1)[0] for k in peft_sd})
        metadata = {"r": rank, "lora_alpha": alpha, "target_modules": targets}
    StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=peft_sd,
                                              unet_lora_adapter_metadata=metadata)
    return out / "pytorch_lora_weights.safetensors"


def test_kohya_to_diffusers_conversion_is_exact_and_a_lost_alpha_is_lc412(
        tmp_path: Path) -> None:
    kohya = _kohya(tmp_path / "kohya.safetensors")
    exact = _diffusers_convert(kohya, tmp_path / "exact", keep_alpha=True)
    code, doc = _diff_json(kohya, exact)
    assert code == 0, doc["diagnostics"]
    record = doc["diff"]
    assert record["match"] == "flattened" and record["format_b"] == "diffusers"
    assert len(record["modules"]) == len(_KOHYA_UNET) and not record["only_a"]
    for m in record["modules"]:
        assert m["status"] == "same" and m["rel_diff"] == 0.0
        assert m["b"]["name"].startswith("unet.")
    fa = _factors(kohya)
    fb = {"lora_unet_" + k.removeprefix("unet.").replace(".", "_"): v
          for k, v in _factors(exact).items()}
    _assert_numbers(doc, fa, 0.5, fb, 0.5,
                    names={k: k for k in fa})

    lossy = _diffusers_convert(kohya, tmp_path / "lossy", keep_alpha=False)
    code, doc = _diff_json(kohya, lossy)
    assert code == 1 and _codes(doc) == ["LC412"]
    for d in doc["diagnostics"]:
        assert "ΔW_B = 2·ΔW_A" in d["message"] and "its alpha is lost" in d["message"]
    fb = {"lora_unet_" + k.removeprefix("unet.").replace(".", "_"): v
          for k, v in _factors(lossy).items()}
    _assert_numbers(doc, fa, 0.5, fb, 1.0, names={k: k for k in fa})


def _mlx_as_peft(out: Path, *, lora_alpha: float) -> Path:
    """The real mlx-lm trainer's adapter (tests/fixtures/writers/mlx/lora, see
    test_writer_mlx.py) put into a PEFT model of the same architecture, per mlx-lm's documented
    layout (lora_a (in, r) = lora_A.weightᵀ, lora_b (r, out) = lora_B.weightᵀ, scale = α/r),
    and saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    truth = json.loads((MLX_FIXTURE / "truth.json").read_text())
    config = {k: v for k, v in truth["base_model_config"].items()
              if k not in ("architectures", "torch_dtype")}
    model = LlamaForCausalLM(LlamaConfig(**config))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=lora_alpha,
                                                  target_modules=["q_proj", "v_proj",
                                                                  "down_proj"]))
    mlx = _read(MLX_FIXTURE / "adapters.safetensors")
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                path = name.removeprefix("base_model.model.")
                module.lora_A["default"].weight.copy_(torch.from_numpy(mlx[f"{path}.lora_a"].T))
                module.lora_B["default"].weight.copy_(torch.from_numpy(mlx[f"{path}.lora_b"].T))
    peft_model.save_pretrained(str(out))
    return out


def test_mlx_to_peft_is_exact_and_alpha_equal_to_scale_is_lc412(tmp_path: Path) -> None:
    peft = _mlx_as_peft(tmp_path / "peft", lora_alpha=40.0)  # scale 10 at r 4
    code, doc = _diff_json(MLX_FIXTURE / "adapters.safetensors", peft)
    assert code == 0, doc["diagnostics"]
    modules = doc["diff"]["modules"]
    assert len(modules) == 6 and doc["diff"]["format_a"] == "mlx"
    assert all(m["status"] == "same" and m["method"] == "equal-factors" for m in modules)
    fa = _factors(MLX_FIXTURE / "adapters.safetensors")
    _assert_numbers(doc, fa, 10.0, _factors(_weights(peft)), 10.0)

    wrong = _mlx_as_peft(tmp_path / "wrong", lora_alpha=10.0)  # alpha = scale: s = 2.5
    code, doc = _diff_json(MLX_FIXTURE / "adapters.safetensors", wrong)
    assert code == 1 and _codes(doc) == ["LC412"]
    assert all(m["scale_fit"] == pytest.approx(0.25, rel=1e-12) for m in doc["diff"]["modules"])
    _assert_numbers(doc, fa, 10.0, _factors(_weights(wrong)), 2.5)


# --- the arithmetic ------------------------------------------------------------------------------


def _pair(rng: np.random.Generator, r: int, n_in: int, n_out: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    a = rng.uniform(-0.1, 0.1, (r, n_in)).astype(np.float32).astype(np.float64)
    b = rng.normal(0, 0.02, (n_out, r)).astype(np.float32).astype(np.float64)
    return a, b


def _naive_gram(a1: np.ndarray, b1: np.ndarray, s1: float, a2: np.ndarray, b2: np.ndarray,
                s2: float) -> float:
    """‖ΔW_A − ΔW_B‖ as ‖ΔW_A‖² + ‖ΔW_B‖² − 2⟨ΔW_A, ΔW_B⟩ from Grams: what cancels."""
    def inner(x: tuple[np.ndarray, np.ndarray, float], y: tuple[np.ndarray, np.ndarray, float]
              ) -> float:
        return x[2] * y[2] * float(np.sum((x[1].T @ y[1]) * (x[0] @ y[0].T)))

    p, q = (a1, b1, s1), (a2, b2, s2)
    return math.sqrt(max(inner(p, p) + inner(q, q) - 2 * inner(p, q), 0.0))


def test_a_difference_of_1e_9_is_measured_without_cancellation() -> None:
    rng = np.random.default_rng(7)
    a1, b1 = _pair(rng, 8, 96, 80)
    noise = rng.standard_normal(a1.shape)
    a2 = a1 + 1e-9 * np.linalg.norm(a1) / np.linalg.norm(noise) * noise
    d, method, _ = difference_norm(a1, b1, 2.0, a2, b1, 2.0)
    ref = _reference((a1, b1), 2.0, (a2, b1), 2.0, dtype=np.longdouble)
    exact = ref["rel_diff"] * ref["norm_a"]
    assert 5e-10 < ref["rel_diff"] < 2e-9
    assert method is DiffMethod.FACTOR_DIFFERENCE
    assert d == pytest.approx(exact, rel=1e-9)  # the difference itself to 9 digits
    # the textbook Gram identity loses it entirely (this test can fail)
    assert abs(_naive_gram(a1, b1, 2.0, a2, b1, 2.0) - exact) > 0.1 * exact


@pytest.mark.parametrize("case", ["unrelated", "near", "split", "rank", "rank-near", "b-only"])
def test_difference_norm_against_the_materialised_update(case: str) -> None:
    rng = np.random.default_rng(11)
    a1, b1 = _pair(rng, 4, 40, 48)
    s1, s2 = 2.0, 2.0
    if case == "unrelated":
        a2, b2 = _pair(rng, 4, 40, 48)
    elif case == "near":
        a2 = a1 + 1e-3 * rng.standard_normal(a1.shape) * 0.1
        b2 = b1 + 1e-3 * rng.standard_normal(b1.shape) * 0.02
    elif case == "split":  # the scale moved between the factors: the same update
        a2, b2 = a1 * 2.0, b1 / 2.0
    elif case == "rank":  # B's rank padded with zero columns: the same update, other shapes
        a2 = np.concatenate([a1, rng.standard_normal((2, 40))])
        b2 = np.concatenate([b1, np.zeros((48, 2))], axis=1)
    elif case == "rank-near":
        a2 = np.concatenate([a1[::-1], rng.standard_normal((2, 40))])
        b2 = np.concatenate([b1[:, ::-1] * (1 + 1e-7), np.zeros((48, 2))], axis=1)
    else:
        a2, b2 = a1, b1 * (1 + 1e-6 * rng.standard_normal(b1.shape))
    d, method, _ = difference_norm(a1, b1, s1, a2, b2, s2)
    ref = _reference((a1, b1), s1, (a2, b2), s2, dtype=np.longdouble)
    # within 1e-12 of ‖ΔW_A‖ in every case, and of the difference itself where it is large
    assert abs(d / ref["norm_a"] - ref["rel_diff"]) <= 1e-14
    if ref["rel_diff"] > 1e-6:
        assert d / ref["norm_a"] == pytest.approx(ref["rel_diff"], rel=1e-9)
    if case in ("split", "rank"):
        assert method is DiffMethod.STACKED_QR


def test_the_dtype_floor_is_what_rounding_explains() -> None:
    import torch

    rng = np.random.default_rng(5)
    a, b = _pair(rng, 8, 256, 192)
    bf = {k: torch.from_numpy(v).to(torch.bfloat16).double().numpy() for k, v in
          (("a", a), ("b", b))}
    real = difference_norm(a, b, 1.5, bf["a"], bf["b"], 1.5)[0]
    floor = math.hypot(dtype_floor(a, b, 1.5, "F32", "F32"),
                       dtype_floor(bf["a"], bf["b"], 1.5, "BF16", "BF16"))
    # the real rounding of both factors to bf16 lies under the quadrature floor, not far under
    assert 0.2 * floor < real < floor


def test_modules_are_matched_across_key_grammars() -> None:
    kohya = ["lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_q_proj"]
    diffusers = ["unet.down_blocks.0.attentions.0.proj_in", "text_encoder.text_model.q_proj"]
    m = match_modules(kohya, diffusers)
    assert m.pairs == tuple(zip(kohya, diffusers, strict=True)) and not m.only_a
    # a bare UNet adapter (PEFT on the model itself) against kohya's one component
    m = match_modules(["lora_unet_mid_block_proj_in"], ["base_model.model.mid_block.proj_in"])
    assert m.pairs == (("lora_unet_mid_block_proj_in", "base_model.model.mid_block.proj_in"),)
    assert m.dropped_component == "unet"
    # two components: never dropped (SDXL's two text encoders share module paths)
    m = match_modules(["text_encoder.m.q", "text_encoder_2.m.q"], ["m.q"])
    assert not m.pairs and m.only_b == ("m.q",)
    # dotted on both sides: compared as dotted paths, PEFT's wrapper removed
    m = match_modules(["base_model.model.model.layers.0.q_proj"], ["model.layers.0.q_proj"])
    assert len(m.pairs) == 1 and m.rule.value == "path"


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(tmp_path / "missing"), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    broken = tmp_path / "adapter_model.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    good = _kohya(tmp_path / "kohya.safetensors")
    code, doc = _diff_json(good, broken)
    assert code == 1 and _codes(doc) == ["LC001"]
    assert main(["diff", str(good), str(good), "--tolerance", "-1"]) == 2


def test_sarif_and_github_formats(tmp_path: Path) -> None:
    kohya = _kohya(tmp_path / "a.safetensors")
    other = _kohya(tmp_path / "b.safetensors", alpha=4.0)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["diff", str(kohya), str(other), "--format", "github"]) == 1
    assert out.getvalue().count("::error") == len(_KOHYA_UNET)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["diff", str(kohya), str(other), "--format", "sarif",
                     "--ignore", "LC412"]) == 0
    assert json.loads(out.getvalue())["runs"][0]["results"] == []




# --- saved full tensors (modules_to_save, DoRA magnitudes, embeddings) ------------------------


def _saved_reference(path_a: Path, key_a: str, path_b: Path, key_b: str) -> dict[str, float]:
    xa, xb = _read(path_a)[key_a], _read(path_b)[key_b]
    d = xa - xb
    na, nb = float(np.sqrt((xa * xa).sum())), float(np.sqrt((xb * xb).sum()))
    return {"norm_a": na, "norm_b": nb, "rel_diff": float(np.sqrt((d * d).sum())) / na}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A DoRA adapter with lm_head in modules_to_save, saved by PEFT; then the same PeftModel
    with its saved lm_head copy moved by 1e-3 and one magnitude by 1e-4, saved again; the
    first state re-saved in bf16 and as a torch pickle; and the adapter without
    modules_to_save."""
    import torch
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("saved")
    config = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                  init_lora_weights=False)
    torch.manual_seed(2)
    model = get_peft_model(tiny_llama(0), LoraConfig(**config, modules_to_save=["lm_head"]))
    model.save_pretrained(str(root / "base"))
    model.save_pretrained(str(root / "pickle"), safe_serialization=False)
    model.to(torch.bfloat16)
    model.save_pretrained(str(root / "bf16"))
    model.to(torch.float32)
    torch.manual_seed(2)
    plain = get_peft_model(tiny_llama(0), LoraConfig(**config))
    plain.save_pretrained(str(root / "plain"))
    torch.manual_seed(2)
    model = get_peft_model(tiny_llama(0), LoraConfig(**config, modules_to_save=["lm_head"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lm_head.modules_to_save" in name:
                param.add_(1e-3)
            if "layers.1.self_attn.v_proj.lora_magnitude_vector" in name:
                param.mul_(1 + 1e-4)
    model.save_pretrained(str(root / "moved"))
    return {p.name: p for p in root.iterdir()}


def test_a_changed_modules_to_save_copy_and_magnitude_are_lc410(saved: dict[str, Path]) -> None:
    code, doc = _diff_json(saved["base"], saved["moved"])
    assert code == 1 and _codes(doc) == ["LC410"]
    record = doc["diff"]
    entries = {m["name"]: m for m in record["modules"]}
    saved_entries = {n: m for n, m in entries.items() if m["kind"] == "saved"}
    # lm_head, and one magnitude per LoRA module (4 modules)
    assert set(saved_entries) == {"lm_head.weight"} | {
        f"model.layers.{i}.self_attn.{p}.magnitude" for i in (0, 1) for p in ("q_proj", "v_proj")}
    assert record["summary"]["saved"] == 5 and record["summary"]["modules"] == 9
    differs = {n for n, m in entries.items() if m["status"] == "differs"}
    assert differs == {"lm_head.weight", "model.layers.1.self_attn.v_proj.magnitude"}
    # the LoRA factors themselves did not move
    assert all(m["status"] == "same" for m in entries.values() if m["kind"] == "lora")
    weights_a, weights_b = _weights(saved["base"]), _weights(saved["moved"])
    for name, m in saved_entries.items():
        assert m["method"] == "full-tensor" and m["module_type"] == "saved"
        ref = _saved_reference(weights_a, m["a"]["name"], weights_b, m["b"]["name"])
        assert m["norm_a"] == pytest.approx(ref["norm_a"], rel=NORM_RTOL), name
        assert m["norm_b"] == pytest.approx(ref["norm_b"], rel=NORM_RTOL), name
        assert abs(m["rel_diff"] - ref["rel_diff"]) <= DIFF_ATOL, name
    lm = saved_entries["lm_head.weight"]
    assert lm["a"]["shape"] == [128, 64] and lm["tolerance"] < 1e-5 < lm["rel_diff"]
    messages = [d["message"] for d in doc["diagnostics"]]
    assert any(msg.startswith("lm_head.weight: saved tensor differs by") for msg in messages)
    text = _diff_text(saved["base"], saved["moved"])[1]
    assert "saved (5 tensors)" in text and "5 saved tensors compared" in text
    assert "diff FAILED" in text


def test_saved_tensors_pass_a_bf16_resave_and_one_side_only_is_lc411(
        saved: dict[str, Path]) -> None:
    code, doc = _diff_json(saved["base"], saved["bf16"])
    assert code == 0, doc["diagnostics"]
    for m in doc["diff"]["modules"]:
        if m["kind"] == "saved":
            assert m["b"]["dtype"] == "BF16" and 0 < m["rel_diff"] <= m["tolerance"] < 0.02
            ref = _saved_reference(_weights(saved["base"]), m["a"]["name"],
                                   _weights(saved["bf16"]), m["b"]["name"])
            assert abs(m["rel_diff"] - ref["rel_diff"]) <= DIFF_ATOL
    assert _diff_json(saved["base"], saved["bf16"], "--tolerance", "1e-6")[0] == 1
    # the same tensors read from PEFT's torch pickle (loracheck's restricted reader): equal
    code, doc = _diff_json(saved["base"], saved["pickle"])
    assert _codes(doc) == ["LC215"] and doc["diff"]["summary"]["saved"] == 5
    assert all(m["status"] == "same" and m["rel_diff"] == 0.0 for m in doc["diff"]["modules"])
    # modules_to_save on one side only: the saved lm_head is LC411, nothing else differs
    code, doc = _diff_json(saved["base"], saved["plain"])
    assert code == 1 and _codes(doc) == ["LC411"]
    (lc411,) = doc["diagnostics"]
    assert lc411["message"] == "1 saved tensor only in A (lm_head.weight)"
    assert doc["diff"]["summary"]["saved_only_a"] == 1


def test_an_embedding_saved_with_save_embedding_layers_is_compared(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    def build(out: Path, bump: float, **save: Any) -> Path:
        torch.manual_seed(3)
        model = get_peft_model(tiny_llama(0), LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"]))
        with torch.no_grad():
            model.get_input_embeddings().base_layer.weight.add_(bump)
        model.save_pretrained(str(out), **save)
        return out

    a = build(tmp_path / "a", 0.0, save_embedding_layers=True)
    b = build(tmp_path / "b", 0.5, save_embedding_layers=True)
    code, doc = _diff_json(a, b)
    assert code == 1 and _codes(doc) == ["LC410"]
    (entry,) = [m for m in doc["diff"]["modules"] if m["kind"] == "saved"]
    assert entry["name"] == "model.embed_tokens.weight" and entry["status"] == "differs"
    key = "base_model.model.model.embed_tokens.base_layer.weight"
    assert entry["a"]["name"] == key
    ref = _saved_reference(_weights(a), key, _weights(b), key)
    assert abs(entry["rel_diff"] - ref["rel_diff"]) <= DIFF_ATOL
    code, doc = _diff_json(a, build(tmp_path / "c", 0.0, save_embedding_layers=False))
    assert code == 1 and _codes(doc) == ["LC411"]
    assert doc["diagnostics"][0]["message"] == (
        "1 saved tensor only in A (model.embed_tokens.weight)")


# --- module paths with another prefix -----------------------------------------------------------


def test_adapters_of_another_module_level_are_matched_by_suffix(tmp_path: Path) -> None:
    """The same factors saved by PEFT from the causal LM, from its inner model (no ``model.``
    level) and from a VLM-shaped wrapper (``model.language_model.``): matched by suffix."""
    import torch
    from peft import LoraConfig, get_peft_model

    def config() -> LoraConfig:
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                          init_lora_weights=False)

    torch.manual_seed(4)
    outer = get_peft_model(tiny_llama(0), config())
    outer.save_pretrained(str(tmp_path / "outer"))
    state = {k.replace("base_model.model.model.", ""): v
             for k, v in outer.state_dict().items() if "lora_" in k}
    inner = get_peft_model(tiny_llama(0).model, config())
    vlm = torch.nn.Module()
    vlm.model = torch.nn.Module()
    vlm.model.language_model = tiny_llama(0).model
    vlm_peft = get_peft_model(vlm, config())
    for peft_model, prefix, out in ((inner, "base_model.model.", "inner"),
                                    (vlm_peft, "base_model.model.model.language_model.", "vlm")):
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(state[name.removeprefix(prefix)])
        peft_model.save_pretrained(str(tmp_path / out))
    fa = _factors(_weights(tmp_path / "outer"))
    for out in ("inner", "vlm"):
        code, doc = _diff_json(tmp_path / "outer", tmp_path / out)
        assert code == 0, doc["diagnostics"]
        record = doc["diff"]
        assert len(record["modules"]) == 4 and not record["only_a"] and not record["only_b"]
        assert record["summary"]["suffix_matched"] == 4
        assert all(m["matched_by_suffix"] and m["status"] == "same" and m["rel_diff"] == 0.0
                   for m in record["modules"])
        fb = _factors(_weights(tmp_path / out))
        names = {a: a.removeprefix("model.") if out == "inner" else "model.language_model."
                 + a.removeprefix("model.") for a in fa}
        _assert_numbers(doc, fa, 2.0, fb, 2.0, names=names)
        text = _diff_text(tmp_path / "outer", tmp_path / out)[1]
        assert "4 matched by the longest common suffix of their paths" in text


def test_suffix_matching_never_pairs_ambiguous_or_short_suffixes() -> None:
    a = ["base_model.model.model.layers.0.self_attn.q_proj",
         "base_model.model.model.layers.1.self_attn.q_proj"]
    m = match_modules(a, ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"])
    assert m.pairs == tuple(zip(a, ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"],
                                strict=True))
    assert m.by_suffix == frozenset(a)
    # two candidates with the same longest suffix (a VLM's text and vision towers): neither
    m = match_modules(a[:1], ["text.layers.0.self_attn.q_proj",
                              "vision.layers.0.self_attn.q_proj"])
    assert not m.pairs and len(m.only_b) == 2
    # the suffix must reach the index's container: layers.0 is not blocks.0
    m = match_modules(["model.layers.0.attn.q_proj"], ["model.blocks.0.attn.q_proj"])
    assert not m.pairs
    # a path without an index matches only as a whole
    assert match_modules(["model.norm.weight"], ["norm.weight"]).pairs
    assert not match_modules(["model.norm.weight"], ["vision.norm.weight"]).pairs
    # an exact match is preferred, and never re-paired by suffix
    m = match_modules(["model.layers.0.q", "layers.0.q"], ["layers.0.q"])
    assert m.pairs == (("layers.0.q", "layers.0.q"),) and not m.by_suffix


def test_module_path_removes_the_wrappers_of_a_saved_module() -> None:
    from loracheck.keys import module_path

    assert module_path("base_model.model.lm_head.modules_to_save.default.weight").path == (
        "lm_head.weight")
    assert module_path("base_model.model.model.embed_tokens.base_layer.weight").path == (
        "model.embed_tokens.weight")
    assert module_path("model.layers.0.self_attn.q_proj").parts == (
        "model", "layers", "0", "self_attn", "q_proj")
