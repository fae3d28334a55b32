"""`loracheck merged` on real merges: tiny transformers models, real PEFT adapters,
`merge_and_unload()` and `save_pretrained(max_shard_size=...)` (sharded), base saved likewise.

Every LC40x code fires on its planted fault, and nothing fires on a healthy merge of any tested
architecture (Llama, GPT-2's Conv1D, tied embeddings, embedding LoRA, DoRA) in fp32 and bf16.
The fitted scale and the residual are compared with a float64 computation on the materialised
ΔW (torch, the whole matrix at once) at a relative tolerance of 1e-9 (1e-6 for the residual of
a 16-bit merge, which the fast path gets from ‖D‖² − 2⟨D, U⟩ + ‖U‖²).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loracheck.cli import main
from loracheck.merge_measure import measure_merge
from loracheck.merge_record import MergeRecord, ModuleMerge, ModuleStatus

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             tie_word_embeddings=False)
SHARD = "20KB"  # several shards for every tiny model
# Relative agreement of loracheck's blockwise float64 sums with the materialised reference.
REF_RTOL = 1e-9
# The same for the residual of a 16-bit merge, which the fast path gets from the expanded form.
FAST_RTOL = 1e-6


# --- building real artifacts -------------------------------------------------------------


def llama(dtype: Any, seed: int = 0, **overrides: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides})).to(dtype).eval()


def gpt2(dtype: Any, seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


def lora(model: Any, seed: int = 1, **config: Any) -> Any:
    """A PEFT model with random A and B (``init_lora_weights=False``): ΔW ≠ 0 as after
    training."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    autocast = config.pop("autocast_adapter_dtype", True)
    cfg = LoraConfig(init_lora_weights=False, **{"r": 4, "lora_alpha": 8, **config})
    return get_peft_model(model, cfg, autocast_adapter_dtype=autocast)


def lora_layers(peft_model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer)]


def save(model: Any, folder: Path) -> Path:
    model.save_pretrained(str(folder), max_shard_size=SHARD)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merged")


def make_case(folder: Path, make_model: Callable[[], Any], *, plant: Callable[[Any], Any]
              | None = None, after: Callable[[Any], None] | None = None, **config: Any
              ) -> tuple[Path, Path, Path]:
    """(merged, base, adapter) folders: the base, a PEFT adapter on it, the real merge.
    ``plant(peft_model)`` runs before the merge and may return the model to save instead of
    ``merge_and_unload()``'s; ``after(merged_model)`` edits the merged model before saving."""
    folder.mkdir()
    base = make_model()
    save(base, folder / "base")
    peft_model = lora(base, **config)
    peft_model.save_pretrained(str(folder / "adapter"))
    planted = plant(peft_model) if plant is not None else None
    merged = planted if planted is not None else peft_model.merge_and_unload()
    if after is not None:
        with torch.no_grad():
            after(merged)
    if hasattr(merged, "save_pretrained"):
        save(merged, folder / "merged")
    return folder / "merged", folder / "base", folder / "adapter"


def judge(case: tuple[Path, Path, Path]) -> tuple[MergeRecord, list[Any]]:
    from loracheck.engine import check_merged
    from loracheck.model import Adapter
    from loracheck.settings import load_settings

    merged, base, adapter = case
    _, record = measure_merge(str(merged), str(base), str(adapter))
    subject = Adapter(path=record.merged, format="merged", files=[], spec=None)
    settings = load_settings([merged], isolated=True)
    return record, check_merged(record, subject, settings)


def codes(diagnostics: list[Any]) -> set[str]:
    return {d.code for d in diagnostics}


ATTN_MLP = ["q_proj", "v_proj", "down_proj"]
HEALTHY: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "llama": (llama, {"target_modules": ATTN_MLP}),
    "llama-embedding": (llama, {"target_modules": ["q_proj", "embed_tokens"]}),
    "llama-bf16-adapter": (llama, {"target_modules": ATTN_MLP,
                                   "autocast_adapter_dtype": False}),
    "gpt2-conv1d": (gpt2, {"target_modules": ["c_attn", "c_proj", "c_fc"],
                           "fan_in_fan_out": True}),
    "tied": (lambda dt: llama(dt, tie_word_embeddings=True),
             {"target_modules": ["q_proj", "lm_head"]}),
    "dora": (llama, {"target_modules": ATTN_MLP, "use_dora": True}),
    "dora-conv1d": (gpt2, {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True,
                           "use_dora": True}),
    "rslora": (llama, {"target_modules": ATTN_MLP, "use_rslora": True, "r": 16}),
    "modules-to-save": (llama, {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
}


def _randomise_saved_copies(peft_model: Any) -> None:
    """A trained ``modules_to_save`` copy: the copy differs from the base's module."""
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)


def _healthy_case(work: Path, name: str, dtype_name: str) -> tuple[Path, Path, Path]:
    folder = work / f"healthy-{name}-{dtype_name}"
    if (folder / "merged").exists():
        return folder / "merged", folder / "base", folder / "adapter"
    make, config = HEALTHY[name]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    plant = None
    if name == "modules-to-save":
        def plant(p: Any) -> None:
            _randomise_saved_copies(p)
            p.save_pretrained(str(folder / "adapter"))
    return make_case(folder, lambda: make(dtype), plant=plant, **dict(config))


# --- healthy merges ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(HEALTHY))
def test_a_healthy_merge_passes(work: Path, name: str, dtype_name: str) -> None:
    record, diagnostics = judge(_healthy_case(work, name, dtype_name))
    assert not diagnostics, [d.message for d in diagnostics]
    measured = record.measured
    assert measured and len(measured) == len(record.modules)
    for m in measured:
        assert m.ratio is not None and abs(m.ratio - 1) <= max(m.floor or 0, 1e-12)
        assert m.residual_norm <= m.floor_norm
        # 16-bit merges take the fast path, which counts no per-element violations
        assert m.violations == (None if m.dtype == "BF16" and not m.dora else 0)
        assert m.changed > 0
    if name.startswith("dora"):
        assert all(m.dora for m in measured)
    if "conv1d" in name:
        assert {m.layout for m in measured} == {"in×out"}
    if name == "tied":
        head = next(m for m in measured if m.module == "lm_head")
        assert head.tied and head.key == "model.embed_tokens.weight"
    if name == "llama-embedding":
        assert any(m.layout == "embedding" for m in measured)
    if name == "modules-to-save":
        assert record.saved_copies and all(c.matches for c in record.saved_copies)


def _reference(merged: Path, base: Path, adapter: Path, module: ModuleMerge,
               rank_scale: float) -> tuple[float, float]:
    """(c, ‖D − s·B·A‖ / ‖s·B·A‖) in float64 on the materialised matrices, with torch."""
    from safetensors.torch import load_file

    def tensor(folder: Path, key: str) -> Any:
        for shard in folder.glob("*.safetensors"):
            loaded = load_file(str(shard))
            if key in loaded:
                return loaded[key].double()
        raise KeyError(key)

    assert module.key is not None
    d = tensor(merged, module.key) - tensor(base, module.key)
    factors = load_file(str(adapter / "adapter_model.safetensors"))
    stem = f"base_model.model.{module.module}"
    if module.kind == "embedding":
        a, b = factors[f"{stem}.lora_embedding_A"].double(), factors[
            f"{stem}.lora_embedding_B"].double()
        ba = (b @ a).T
    else:
        a, b = factors[f"{stem}.lora_A.weight"].double(), factors[
            f"{stem}.lora_B.weight"].double()
        ba = b @ a if module.layout == "out×in" else (b @ a).T
    c = float((d * ba).sum() / (ba * ba).sum())
    u = rank_scale * ba
    return c, float(torch.linalg.norm(d - u) / torch.linalg.norm(u))


@pytest.mark.parametrize("case", [("llama", "bf16"), ("gpt2-conv1d", "fp32"),
                                  ("llama-embedding", "bf16")])
def test_fitted_scale_and_residual_match_a_float64_reference(work: Path,
                                                             case: tuple[str, str]) -> None:
    paths = _healthy_case(work, *case)
    record, _ = judge(paths)
    for m in record.measured:
        assert m.scale is not None
        c, residual = _reference(*paths, m, m.scale)
        assert m.fitted_scale == pytest.approx(c, rel=REF_RTOL)
        # the 16-bit fast path expands ‖D − U‖² = ‖D‖² − 2⟨D, U⟩ + ‖U‖²: float64
        # cancellation leaves ~1e-8 of a residual that is ~1e-3 of ‖U‖
        tol = REF_RTOL if m.violations is not None else FAST_RTOL
        assert m.residual == pytest.approx(residual, rel=tol)


def test_kohya_flattened_names_are_matched(work: Path) -> None:
    """The same factors under kohya's grammar (``lora_te_<flattened path>.lora_down``,
    ``.alpha``; no installable writer for LLM kohya files, so written by its published key
    layout) verify the PEFT merge they came from."""
    from safetensors.numpy import load_file

    from builders import write_safetensors

    merged, base, adapter = _healthy_case(work, "llama", "fp32")
    peft_factors = load_file(str(adapter / "adapter_model.safetensors"))
    kohya: dict[str, Any] = {}
    for key, value in peft_factors.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        stem = "lora_te_" + module.replace(".", "_")
        leaf = "lora_down" if ".lora_A." in key else "lora_up"
        kohya[f"{stem}.{leaf}.weight"] = value
        kohya[f"{stem}.alpha"] = np.array(8.0, dtype=np.float32)
    path = write_safetensors(work / "kohya.safetensors", kohya)
    record, diagnostics = judge((merged, base, path))
    assert not diagnostics, [d.message for d in diagnostics]
    assert len(record.measured) == 6 and {m.scale for m in record.measured} == {2.0}
    assert all(m.key and m.key.startswith("model.layers.") for m in record.measured)


# --- planted faults: every code fires ----------------------------------------------------


def _restore_one(base_dir: Path) -> Callable[[Any], None]:
    def after(merged: Any) -> None:
        from safetensors.torch import load_file

        weights: dict[str, Any] = {}
        for shard in base_dir.glob("*.safetensors"):
            weights.update(load_file(str(shard)))
        key = "model.layers.1.self_attn.v_proj.weight"
        merged.get_parameter(key).copy_(weights[key])

    return after


def _merge_twice(p: Any) -> Any:
    for layer in lora_layers(p):
        layer.merge()
        layer.merged_adapters.clear()
        layer.merge()
    return p.unload()


def _rslora_merged_with_alpha_over_r(p: Any) -> Any:
    for layer in lora_layers(p):
        layer.scaling["default"] = layer.lora_alpha["default"] / layer.r["default"]
    return p.merge_and_unload()


def test_not_merged_base_saved_as_merged(work: Path) -> None:
    case = make_case(work / "not-merged", lambda: llama(torch.bfloat16),
                     plant=lambda p: p.unload(), target_modules=ATTN_MLP)
    record, diagnostics = judge(case)
    assert codes(diagnostics) == {"LC401"}
    (d,) = diagnostics
    assert "all 6 adapter modules" in d.message
    assert all(m.changed == 0 and (m.must_change or 0) > 0 for m in record.measured)


def test_one_module_not_merged(work: Path) -> None:
    folder = work / "one-not-merged"
    case = make_case(folder, lambda: llama(torch.float32), target_modules=ATTN_MLP,
                     after=_restore_one(folder / "base"))
    _, diagnostics = judge(case)
    assert [(d.code, d.location) for d in diagnostics] == [
        ("LC401", "model.layers.1.self_attn.v_proj")]


@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
def test_merged_twice(work: Path, dtype_name: str) -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    case = make_case(work / f"twice-{dtype_name}", lambda: llama(dtype), plant=_merge_twice,
                     target_modules=ATTN_MLP)
    record, diagnostics = judge(case)
    assert codes(diagnostics) == {"LC402"} and len(diagnostics) == 6
    assert all("merged twice" in d.message for d in diagnostics)
    assert all(m.ratio == pytest.approx(2.0, abs=3 * (m.floor or 0)) for m in record.measured)


def test_rslora_adapter_merged_with_alpha_over_r(work: Path) -> None:
    case = make_case(work / "rslora", lambda: llama(torch.float32),
                     plant=_rslora_merged_with_alpha_over_r, target_modules=ATTN_MLP,
                     use_rslora=True, r=16)
    record, diagnostics = judge(case)
    assert codes(diagnostics) == {"LC402"}
    assert all("rsLoRA convention mismatch" in d.message and "use_rslora" in d.message
               for d in diagnostics)
    assert all(m.ratio == pytest.approx(0.25, rel=1e-6) for m in record.measured)


def _another_case(work: Path) -> tuple[Path, Path, Path]:
    """A real merge of one adapter, and another adapter (another seed) to check it against."""
    folder = work / "another"
    if not (folder / "other").exists():
        make_case(folder, lambda: llama(torch.bfloat16), target_modules=ATTN_MLP)
        other = lora(llama(torch.bfloat16), seed=7, target_modules=ATTN_MLP)
        other.save_pretrained(str(folder / "other"))
    return folder / "merged", folder / "base", folder / "other"


def test_another_adapter_merged(work: Path) -> None:
    record, diagnostics = judge(_another_case(work))
    assert codes(diagnostics) == {"LC403"} and len(diagnostics) == 6
    assert all((m.residual or 0) > 1 for m in record.measured)


def test_wrapped_peft_model_saved(work: Path) -> None:
    folder = work / "wrapped"

    def plant(p: Any) -> Any:
        p.get_base_model().save_pretrained(str(folder / "merged"), max_shard_size=SHARD)
        return object()  # nothing more to save

    case = make_case(folder, lambda: llama(torch.float32), plant=plant, target_modules=ATTN_MLP)
    record, diagnostics = judge(case)
    assert codes(diagnostics) == {"LC404"}
    messages = " ".join(d.message for d in diagnostics)
    assert "PEFT-wrapped model was saved" in messages and "LoRA tensor" in messages
    assert all(m.status is ModuleStatus.MISSING for m in record.modules)
    assert record.base_layer_keys and record.lora_keys


def test_nan_in_a_merged_weight(work: Path) -> None:
    def after(merged: Any) -> None:
        merged.get_parameter("model.layers.0.mlp.down_proj.weight")[3, 5] = float("nan")

    case = make_case(work / "nan", lambda: llama(torch.float32), after=after,
                     target_modules=ATTN_MLP)
    record, diagnostics = judge(case)
    assert [(d.code, d.location) for d in diagnostics] == [
        ("LC405", "model.layers.0.mlp.down_proj")]
    assert "1 non-finite value" in diagnostics[0].message
    # the other elements still match: the NaN is left out of the sums, not spread into them
    nan_module = next(m for m in record.modules if m.module == "model.layers.0.mlp.down_proj")
    assert nan_module.merged_nonfinite == 1 and nan_module.violations == 0


def test_changed_layer_norm(work: Path) -> None:
    def after(merged: Any) -> None:
        merged.get_parameter("model.layers.0.input_layernorm.weight").mul_(1.1)

    case = make_case(work / "norm", lambda: llama(torch.bfloat16), after=after,
                     target_modules=ATTN_MLP)
    record, diagnostics = judge(case)
    assert [(d.code, d.location) for d in diagnostics] == [
        ("LC406", "model.layers.0.input_layernorm.weight")]
    (changed,) = record.changed
    assert changed.relative == pytest.approx(0.1, rel=0.05)


def test_modules_to_save_copy_not_applied(work: Path) -> None:
    folder = work / "mts-lost"

    def plant(p: Any) -> Any:
        _randomise_saved_copies(p)
        p.save_pretrained(str(folder / "adapter"))
        return None

    def after(merged: Any) -> None:
        _restore_lm_head(merged, folder / "base")

    case = make_case(folder, lambda: llama(torch.float32), plant=plant, after=after,
                     target_modules=["q_proj"], modules_to_save=["lm_head"])
    record, diagnostics = judge(case)
    assert [(d.code, d.location) for d in diagnostics] == [("LC406", "lm_head.weight")]
    assert "still holds BASE's weight" in diagnostics[0].message
    (copy,) = record.saved_copies
    assert copy.equals_base and not copy.matches


def _restore_lm_head(merged: Any, base_dir: Path) -> None:
    from safetensors.torch import load_file

    for shard in base_dir.glob("*.safetensors"):
        weights = load_file(str(shard))
        if "lm_head.weight" in weights:
            merged.get_parameter("lm_head.weight").copy_(weights["lm_head.weight"])


def test_vocabulary_mismatch(work: Path) -> None:
    folder = work / "vocab"
    _, _, adapter = make_case(folder, lambda: llama(torch.float32),
                              target_modules=["q_proj", "embed_tokens"])
    save(llama(torch.float32, vocab_size=136), folder / "base136")
    save(llama(torch.float32, vocab_size=136), folder / "merged136")
    _, diagnostics = judge((folder / "merged136", folder / "base136", adapter))
    vocab = [d for d in diagnostics if d.location == "model.embed_tokens"]
    assert [d.code for d in vocab] == ["LC404"] and "vocabulary" in vocab[0].message


# --- the command ---------------------------------------------------------------------------


def test_cli_text_json_and_exit_codes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merged, base, adapter = _healthy_case(work, "llama", "bf16")
    assert main(["merged", str(merged), "--base", str(base), "--adapter", str(adapter)]) == 0
    out = capsys.readouterr().out
    assert "q_proj (2 modules)" in out and "merged check passed" in out
    assert "6 of 6 modules match BASE + s·B·A within rounding" in out
    assert main(["merged", str(merged), "--base", str(base), "--adapter", str(adapter),
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    body = doc["merged"]
    assert body["passed"] is True and len(body["modules"]) == 6
    first = body["modules"][0]
    assert first["status"] == "measured" and math.isclose(first["ratio"], 1, abs_tol=0.01)
    assert {"residual", "floor", "fitted_residual", "violations"} <= set(first)
    # the wrong adapter: exit 1, and --ignore drops the code
    wrong_merged, wrong_base, other = _another_case(work)
    args = ["merged", str(wrong_merged), "--base", str(wrong_base), "--adapter", str(other)]
    assert main(args) == 1
    assert "LC403" in capsys.readouterr().out
    assert main([*args, "--ignore", "LC403"]) == 0
    assert "merged check passed" in capsys.readouterr().out
    assert main([*args, "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"LC403"}


def test_every_merged_json_key_is_documented(work: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import re

    merged, base, adapter = _healthy_case(work, "modules-to-save", "fp32")
    assert main(["merged", str(merged), "--base", str(base), "--adapter", str(adapter),
                 "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)["merged"]
    assert body["saved_copies"] and body["modules"]
    keys = set(body) | {k for m in body["modules"] for k in m} | {
        k for c in body["saved_copies"] for k in c} | set(body["timing"])
    doc = (Path(__file__).resolve().parents[1] / "docs" / "json-schema.md").read_text()
    documented = set(re.findall(r"`([a-z_$][a-z0-9_.]*)`", doc.split("## Merged", 1)[1]))
    assert sorted(keys - documented) == []


def test_bad_inputs_are_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, base, adapter = _healthy_case(work, "llama", "fp32")
    assert main(["merged", str(work / "nope"), "--base", str(base), "--adapter",
                 str(adapter)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MERGED" in err and "nope" in err
    bad = work / "bad-index"
    bad.mkdir()
    (bad / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"x.weight": "../outside.safetensors"}}))
    assert main(["merged", str(bad), "--base", str(base), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert "outside the folder" in err and err.count("\n") == 1


TORCH_BLOCKER = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed")
        return None
sys.meta_path.insert(0, _NoTorch())
from loracheck.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(code)
"""


def test_verified_without_torch(work: Path) -> None:
    merged, base, adapter = _healthy_case(work, "gpt2-conv1d", "bf16")
    assert len(list(merged.glob("*.safetensors"))) > 1  # sharded
    proc = subprocess.run([sys.executable, "-c", TORCH_BLOCKER, "merged", str(merged),
                           "--base", str(base), "--adapter", str(adapter)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "merged check passed" in proc.stdout


def test_peak_memory_stays_near_one_matrix(tmp_path: Path) -> None:
    """8 layers of 512×2048 fp32 (4 MiB each; 2 × 121 MB of checkpoints): the traced peak
    while checking stays under 4× the largest tensor."""
    import tracemalloc

    case = make_case(tmp_path / "big", lambda: llama(torch.float32, hidden_size=512,
                                                      intermediate_size=2048,
                                                      num_hidden_layers=8),
                     target_modules=["q_proj", "down_proj"], r=8)
    from loracheck.model_folder import ModelFolder

    with ModelFolder.open(case[0]) as folder:
        largest = max(t.nbytes for t in folder.tensors.values())
        total = sum(t.nbytes for t in folder.tensors.values())
    tracemalloc.start()
    try:
        record, diagnostics = judge(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not diagnostics and len(record.measured) == 16
    assert peak <= 4 * largest, (peak, largest, total)
    assert total >= 25 * largest


def test_index_tensor_in_the_wrong_shard_is_lc001(work: Path) -> None:
    from loracheck.errors import ArtifactError
    from loracheck.model_folder import ModelFolder

    merged, _, _ = _healthy_case(work, "llama", "fp32")
    copy = work / "wrong-shard"
    copy.mkdir()
    for path in merged.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][key] = shards[1]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match="does not hold it"):
        ModelFolder.open(copy)


# --- regressions: saved heads, LoHa, lora_bias, mixed dtypes, prefixes, broken files ------


def bert_cls(dtype: Any, seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, vocab_size=100, max_position_embeddings=64,
                     num_labels=3)
    return BertForSequenceClassification(cfg).to(dtype).eval()


def test_seq_cls_head_bias_is_compared_with_its_saved_copy(work: Path) -> None:
    """task_type=SEQ_CLS: PEFT saves the classifier whole (weight and bias) through
    modules_to_save; both are the adapter's trained copies in MERGED, not LC406 changes. With
    the bias left as BASE's, LC406 names the bias."""
    folder = work / "seq-cls"

    def plant(p: Any) -> None:
        _randomise_saved_copies(p)
        p.save_pretrained(str(folder / "adapter"))

    case = make_case(folder, lambda: bert_cls(torch.float32), plant=plant,
                     target_modules=["query", "value"], task_type="SEQ_CLS")
    record, diagnostics = judge(case)
    assert not diagnostics, [d.message for d in diagnostics]
    assert {c.key for c in record.saved_copies} == {"classifier.weight", "classifier.bias"}
    assert all(c.matches and not c.equals_base for c in record.saved_copies)
    assert not record.changed

    lost = work / "seq-cls-lost"

    def plant_lost(p: Any) -> None:
        _randomise_saved_copies(p)
        p.save_pretrained(str(lost / "adapter"))

    def restore_bias(merged: Any) -> None:
        from safetensors.torch import load_file

        weights = {k: v for shard in (lost / "base").glob("*.safetensors")
                   for k, v in load_file(str(shard)).items()}
        merged.get_parameter("classifier.bias").copy_(weights["classifier.bias"])

    case = make_case(lost, lambda: bert_cls(torch.float32), plant=plant_lost,
                     after=restore_bias, target_modules=["query", "value"], task_type="SEQ_CLS")
    record, diagnostics = judge(case)
    assert [(d.code, d.location) for d in diagnostics] == [("LC406", "classifier.bias")]
    assert "still holds BASE's weight" in diagnostics[0].message


def _loha_case(folder: Path, *, merge: bool) -> tuple[Path, Path, Path]:
    from peft import LoHaConfig, get_peft_model

    folder.mkdir()
    base = llama(torch.float32)
    save(base, folder / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoHaConfig(r=4, alpha=8, target_modules=["q_proj"],
                                                 init_weights=False))
    peft_model.save_pretrained(str(folder / "adapter"))
    if merge:
        save(peft_model.merge_and_unload(), folder / "merged")
    else:  # the base model saved as "merged"
        save(peft_model.unload(), folder / "merged")
    return folder / "merged", folder / "base", folder / "adapter"


def test_loha_modules_are_claimed_and_reported_unverified(work: Path) -> None:
    """LoHa is not measured: its weights are not LC406 changes, and the run says (an LC404
    warning) how many modules it did not verify and how many still hold BASE's weight."""
    record, diagnostics = judge(_loha_case(work / "loha", merge=True))
    assert [(d.code, d.severity.value) for d in diagnostics] == [("LC404", "warning")]
    assert "2 adapter modules not verified" in diagnostics[0].message
    assert "unchanged" not in diagnostics[0].message
    assert not record.changed
    assert all(m.status is ModuleStatus.UNSUPPORTED and m.key and m.changed == m.numel > 0
               for m in record.modules)
    record, diagnostics = judge(_loha_case(work / "loha-not-merged", merge=False))
    assert [(d.code, d.severity.value) for d in diagnostics] == [("LC404", "warning")]
    assert "2 of them hold BASE's weight unchanged" in diagnostics[0].message
    assert all(m.changed == 0 for m in record.modules)


def test_saved_copy_is_streamed(tmp_path: Path) -> None:
    """A modules_to_save lm_head (16384 × 256 fp32, the largest tensor) is compared a block at
    a time: the traced peak stays under 2× the largest tensor (reading the copy, M and BASE
    whole in float64 took over 5× it; a fixed ~10 MB goes to reading adapter_config.json)."""
    import tracemalloc

    folder = tmp_path / "mts-big"

    def plant(p: Any) -> None:
        _randomise_saved_copies(p)
        p.save_pretrained(str(folder / "adapter"))

    case = make_case(folder, lambda: llama(torch.float32, vocab_size=16384, hidden_size=256,
                                           intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2),
                     plant=plant, target_modules=["q_proj"], modules_to_save=["lm_head"])
    from loracheck.model_folder import ModelFolder

    with ModelFolder.open(case[0]) as opened:
        largest = max(t.nbytes for t in opened.tensors.values())
    assert largest == 16384 * 256 * 4
    tracemalloc.start()
    try:
        record, diagnostics = judge(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not diagnostics, [d.message for d in diagnostics]
    (copy,) = record.saved_copies
    assert copy.matches and not copy.equals_base
    assert peak <= 2 * largest, (peak, largest)


def _bias_case(work: Path) -> tuple[Path, Path, Path]:
    folder = work / "lora-bias"
    if (folder / "merged").exists():
        return folder / "merged", folder / "base", folder / "adapter"

    def plant(p: Any) -> None:  # a trained lora_B bias
        with torch.no_grad():
            for name, param in p.named_parameters():
                if "lora_B" in name and name.endswith(".bias"):
                    param.copy_(torch.randn_like(param) * 0.1)
        p.save_pretrained(str(folder / "adapter"))

    return make_case(folder, lambda: llama(torch.float32, attention_bias=True), plant=plant,
                     target_modules=["q_proj", "v_proj"], lora_bias=True)


def test_lora_bias_is_checked(work: Path) -> None:
    """lora_bias=True: MERGED's bias is BASE's + s·lora_B.bias (compared with a float64
    reference at 1e-9 of the bias); a bias that was not merged is LC403."""
    from safetensors.torch import load_file, save_file

    merged, base, adapter = _bias_case(work)
    record, diagnostics = judge((merged, base, adapter))
    assert not diagnostics, [d.message for d in diagnostics]
    assert len(record.measured) == 4
    factors = load_file(str(adapter / "adapter_model.safetensors"))

    def tensors(folder: Path) -> dict[str, Any]:
        return {k: v for shard in folder.glob("*.safetensors")
                for k, v in load_file(str(shard)).items()}

    m_all, w_all = tensors(merged), tensors(base)
    for m in record.measured:
        assert m.bias is not None and m.bias.violations == 0 and m.bias.changed > 0
        b = factors[f"base_model.model.{m.module}.lora_B.bias"].double()
        error = (m_all[m.bias.key].double() - w_all[m.bias.key].double() - m.scale * b).abs()
        assert m.bias.max_error == pytest.approx(float(error.max()), rel=1e-9, abs=1e-12)
    # the bias of one module left as BASE's
    planted = work / "lora-bias-planted"
    planted.mkdir()
    key = "model.layers.0.self_attn.q_proj.bias"
    for shard in merged.iterdir():
        if shard.suffix != ".safetensors":
            (planted / shard.name).write_bytes(shard.read_bytes())
            continue
        weights = load_file(str(shard))
        if key in weights:
            weights[key] = w_all[key]
        save_file(weights, str(planted / shard.name), metadata={"format": "pt"})
    _, diagnostics = judge((planted, base, adapter))
    assert [(d.code, d.location) for d in diagnostics] == [
        ("LC403", "model.layers.0.self_attn.q_proj")]
    assert key in diagnostics[0].message and "still holds BASE's bias" in diagnostics[0].message


def test_bf16_merge_saved_as_fp32_passes_and_faults_still_fire(work: Path) -> None:
    """A bf16 base merged in bf16 and saved as fp32: M holds bf16 values, so the rounding bound
    is bf16's (the coarser dtype), not fp32's. Another adapter is still LC403."""
    folder = work / "bf16-saved-fp32"
    case = make_case(folder, lambda: llama(torch.bfloat16), target_modules=ATTN_MLP,
                     after=lambda m: m.float())
    record, diagnostics = judge(case)
    assert not diagnostics, [d.message for d in diagnostics]
    assert {(m.base_dtype, m.dtype) for m in record.measured} == {("BF16", "F32")}
    assert all(m.violations == 0 and m.residual_norm <= m.floor_norm for m in record.measured)
    other = lora(llama(torch.bfloat16), seed=7, target_modules=ATTN_MLP)
    other.save_pretrained(str(folder / "other"))
    _, diagnostics = judge((case[0], case[1], folder / "other"))
    assert codes(diagnostics) == {"LC403"} and len(diagnostics) == 6


def _rekeyed(src: Path, dst: Path, rename: Callable[[str], str]) -> Path:
    """A copy of a real checkpoint with every key renamed (another wrapper's layout)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    weights = {rename(k): v for shard in src.glob("*.safetensors")
               for k, v in load_file(str(shard)).items()}
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())
    return dst


@pytest.mark.parametrize("layout", ["model.language_model.", "transformer."])
def test_checkpoint_with_another_prefix(work: Path, layout: str) -> None:
    """MERGED and BASE keyed ``model.language_model.layers.*`` (transformers ≥ 4.52 VLM
    layout) or ``transformer.model.layers.*``, the adapter ``model.layers.*``: resolved."""
    merged, base, adapter = _healthy_case(work, "llama", "fp32")

    def rename(key: str) -> str:
        if layout == "transformer.":
            return layout + key
        return key.replace("model.", layout, 1) if key.startswith("model.") else key

    tag = layout.strip(".").replace(".", "-")
    m2 = _rekeyed(merged, work / f"prefix-{tag}-merged", rename)
    b2 = _rekeyed(base, work / f"prefix-{tag}-base", rename)
    record, diagnostics = judge((m2, b2, adapter))
    assert not diagnostics, [d.message for d in diagnostics]
    assert len(record.measured) == 6
    assert all(m.key and m.key.startswith(layout) for m in record.measured)


def test_module_lookup_by_unique_suffix_only() -> None:
    from loracheck.basemodel import BaseModelInfo, BaseTensor

    t = BaseTensor("F32", (4, 4))
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    vlm = BaseModelInfo("x", {}, {"model.language_model.layers.0.self_attn.q_proj.weight": t})
    assert vlm.find(name) == ("model.language_model.layers.0.self_attn.q_proj", t)
    wrapped = BaseModelInfo("x", {}, {"transformer.model.layers.0.self_attn.q_proj.weight": t})
    assert wrapped.find(name) == ("transformer.model.layers.0.self_attn.q_proj", t)
    two = BaseModelInfo("x", {}, {"a.model.layers.0.self_attn.q_proj.weight": t,
                                  "b.model.layers.0.self_attn.q_proj.weight": t})
    assert two.find(name) is None  # ambiguous: not found
    towers = BaseModelInfo("x", {}, {"text.layers.0.self_attn.q_proj.weight": t,
                                     "vision.layers.0.self_attn.q_proj.weight": t})
    assert towers.find(name) is None


def _copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_broken_files_are_lc001_in_every_format(work: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated MERGED shard and a truncated adapter file: an LC001 naming the file,
    exit 1, in text, JSON and SARIF (usage errors stay exit 2)."""
    merged, base, adapter = _healthy_case(work, "llama", "fp32")
    broken = _copy_folder(merged, work / "truncated-shard")
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    bad_adapter = _copy_folder(adapter, work / "truncated-adapter")
    weights = bad_adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    for args, name in (([str(broken), "--base", str(base), "--adapter", str(adapter)],
                        shard.name),
                       ([str(merged), "--base", str(base), "--adapter", str(bad_adapter)],
                        weights.name)):
        assert main(["merged", *args]) == 1
        out = capsys.readouterr().out
        assert "LC001" in out and name in out and "merged check stopped" in out
        assert main(["merged", *args, "--format", "json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert [(d["code"], Path(d["path"]).name) for d in doc["diagnostics"]] == [
            ("LC001", name)]
        assert main(["merged", *args, "--format", "sarif"]) == 1
        sarif = json.loads(capsys.readouterr().out)
        assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["LC001"]


def test_tensor_missing_from_the_index_is_a_warning(work: Path) -> None:
    merged, base, adapter = _healthy_case(work, "llama", "fp32")
    copy = _copy_folder(merged, work / "unindexed")
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    shards = list(index["weight_map"].values())
    # a layer norm that shares its shard with other tensors (the shard is still opened)
    key = next(k for k, v in index["weight_map"].items()
               if "layernorm" in k and shards.count(v) > 1)
    del index["weight_map"][key]
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    record, diagnostics = judge((copy, base, adapter))
    assert record.unindexed == (key,)
    assert [(d.code, d.severity.value, d.location) for d in diagnostics] == [
        ("LC404", "warning", key)]
    assert "not listed in model.safetensors.index.json" in diagnostics[0].message
