"""The first screen explains itself (issue 12, point 4): the init line says the scheme and one
number against its expectation, the per-layer table has a legend, the targets line counts
module types × layers, ``rule`` shows the severities that really fire and renders its page as
terminal text, help texts show no internal metavars, and infos are not problems."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from builders import peft_adapter, write_safetensors
from loracheck.cli import main
from loracheck.model import Report, Severity
from loracheck.render.inspect_text import COLUMNS, LEGEND, module_count_text
from loracheck.render.text import summary_line
from loracheck.rules.registry import all_rules
from test_render_factory import adapter, diag

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "adapters"
RULES_DIR = ROOT / "src" / "loracheck" / "rules"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def field(out: str, label: str) -> list[str]:
    """The values of every ``  label  value`` summary line in ``out``."""
    return [m.group(1) for m in re.finditer(rf"^  {label} +(.+)$", out, re.M)]


def _peft_folder(folder: Path, modules: dict[str, tuple[int, int]], r: int = 4) -> Path:
    """A PEFT adapter folder, hand-written: ``modules`` maps a module path (after
    ``base_model.model.``) to its (in, out) features; A kaiming-uniform, B small and trained."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    for name, (fan_in, fan_out) in modules.items():
        bound = 1.0 / np.sqrt(fan_in)
        key = f"base_model.model.{name}"
        tensors[f"{key}.lora_A.weight"] = rng.uniform(-bound, bound, (r, fan_in)).astype(
            np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.01, (fan_out, r)).astype(np.float32)
    write_safetensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    leaves = sorted({name.split(".")[-1] for name in modules})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": leaves}))
    return folder


def _llama_modules(layers: int = 2) -> dict[str, tuple[int, int]]:
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (64, 32),
              "self_attn.v_proj": (64, 32), "self_attn.o_proj": (64, 64),
              "mlp.gate_proj": (64, 96), "mlp.up_proj": (64, 96), "mlp.down_proj": (96, 64)}
    return {f"model.layers.{i}.{name}": shape for i in range(layers)
            for name, shape in shapes.items()}


def _gpt2_adapter(folder: Path, targets: list[str]) -> Path:
    """A real PEFT adapter of a tiny GPT-2 (Conv1D modules: c_attn, c_proj, c_fc)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                       n_positions=32, bos_token_id=0, eos_token_id=0))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=True)
    get_peft_model(model, cfg).save_pretrained(str(folder))
    return folder


# --- 1. the init line ------------------------------------------------------------------------


def test_init_line_is_the_scheme_and_one_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = peft_adapter(tmp_path / "a")
    code, out, _ = run(["inspect", str(folder)], capsys)
    assert code == 0
    (init,) = field(out, "init")
    match = re.fullmatch(r"kaiming-uniform \(declared; A std ([0-9.]+) vs ([0-9.]+) expected\)",
                         init)
    assert match, init
    assert len(init) < 70
    assert "kurtosis" not in out and "alignment" not in out and "row norms" not in out
    assert not field(out, "evidence")
    # the number is the one the evidence measured, against the scheme's expectation
    _, js, _ = run(["inspect", str(folder), "--format", "json"], capsys)
    (record,) = json.loads(js)["files"]
    evidence = record["init_scheme"]["evidence"]
    measured = float(re.search(r"A std (\S+) vs", evidence).group(1))  # type: ignore[union-attr]
    assert float(match.group(1)) == pytest.approx(measured, rel=5e-3)
    assert float(match.group(2)) == pytest.approx(record["init_scheme"]["expected_std"], rel=5e-3)
    assert float(match.group(2)) == pytest.approx(1 / np.sqrt(3 * 64), rel=5e-3)


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_verbose_adds_the_whole_evidence(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["inspect", flag, str(EXAMPLES / "healthy")], capsys)
    assert code == 0
    (init,) = field(out, "init")
    (evidence,) = field(out, "evidence")
    assert init.startswith("kaiming-uniform (declared; A std ")
    assert evidence.startswith("declared by init_lora_weights=True; A std ")
    assert "kurtosis" in evidence
    lines = out.splitlines()
    assert lines.index(f"  init      {init}") + 1 == lines.index(f"  evidence  {evidence}")


def test_init_line_of_an_inferred_scheme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(
        (EXAMPLES / "healthy" / "adapter_model.safetensors").read_bytes())
    _, out, _ = run(["inspect", str(folder)], capsys)
    (init,) = field(out, "init")
    assert re.fullmatch(r"kaiming-uniform \(inferred; A std [0-9.]+ vs 0\.0722 expected\)", init)


# --- 2. the legend ---------------------------------------------------------------------------


def test_legend_under_the_table_explains_every_abbreviated_header(
    capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(["inspect", str(EXAMPLES / "healthy")], capsys)
    lines = out.splitlines()
    legend = [f"  {line}" for line in LEGEND]
    start = lines.index(legend[0])
    assert lines[start:start + len(legend)] == legend
    assert lines[start - 1].startswith("  model.layers.")  # right under the last table row
    text = " ".join(LEGEND)
    assert "eff.rank: entropy effective rank, exp of the entropy of the normalised singular " \
           "values" in text
    assert "σmax: largest singular value of ΔW" in text and "ΔW = s·B·A" in text
    for header in COLUMNS:
        if header not in ("name", "rank"):
            assert header in text, header
    assert max(len(line) for line in legend) <= 100


# --- 3. the targets line ---------------------------------------------------------------------


def test_all_linear_adapter_counts_module_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = peft_adapter(tmp_path / "all-linear", target_modules="all-linear")
    # PEFT saves the 14 resolved module paths as target_modules
    assert len(json.loads((folder / "adapter_config.json").read_text())["target_modules"]) == 14
    _, out, _ = run(["inspect", str(folder)], capsys)
    assert field(out, "targets") == [
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
        "(7 module types × 2 layers = 14 modules)"
    ]


def test_gpt2_adapter_counts_every_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _gpt2_adapter(tmp_path / "gpt2", ["c_attn", "c_proj", "c_fc"])
    _, out, _ = run(["inspect", str(folder)], capsys)
    # c_proj is two modules per block (attn.c_proj and mlp.c_proj): named apart
    assert field(out, "targets") == [
        "c_attn, attn.c_proj, c_fc, mlp.c_proj (4 module types × 2 layers = 8 modules)"
    ]
    hand = _peft_folder(tmp_path / "gpt2-attn", {
        f"transformer.h.{i}.{name}": (32, 96 if name == "attn.c_attn" else 32)
        for i in range(2) for name in ("attn.c_attn", "attn.c_proj", "mlp.c_proj")})
    _, out, _ = run(["inspect", str(hand)], capsys)
    assert field(out, "targets") == [
        "c_attn, attn.c_proj, mlp.c_proj (3 module types × 2 layers = 6 modules)"
    ]


def test_targets_that_are_not_a_clean_product(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    modules = _llama_modules()
    del modules["model.layers.1.mlp.down_proj"]
    _, out, _ = run(["inspect", str(_peft_folder(tmp_path / "partial", modules))], capsys)
    assert field(out, "targets") == [
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
        "(7 module types in 2 layers, 13 modules)"
    ]
    with_head = {**_llama_modules(), "lm_head": (64, 128)}
    _, out, _ = run(["inspect", str(_peft_folder(tmp_path / "head", with_head))], capsys)
    assert field(out, "targets") == [
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head "
        "(8 module types in 2 layers, 15 modules)"
    ]


def test_module_count_text_units() -> None:
    names = [f"model.layers.{i}.self_attn.{m}" for i in range(32) for m in ("q_proj", "v_proj")]
    assert module_count_text(names) == "q_proj, v_proj (2 module types × 32 layers = 64 modules)"
    assert module_count_text(["lm_head"]) == "lm_head (1 module)"
    unet = [f"down_blocks.0.attentions.{i}.transformer_blocks.0.{a}.{m}"
            for i in range(2) for a in ("attn1", "attn2") for m in ("to_q", "to_out.0")]
    # types sharing a last segment keep their path; to_out.0's index belongs to the module
    assert module_count_text(unet) == ("attn1.to_q, attn2.to_q, attn1.to_out.0, attn2.to_out.0 "
                                       "(4 module types × 2 layers = 8 modules)")
    many = [f"model.layers.0.block.m{i}" for i in range(10)]
    assert module_count_text(many).startswith("m0, m1, m2, m3, m4, m5, m6, m7, … 2 more (")


def test_config_only_target_paths_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                  "target_modules": sorted(_llama_modules())}))
    _, out, _ = run(["inspect", str(config)], capsys)
    assert field(out, "targets") == [
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj "
        "(7 module types × 2 layers = 14 modules)"
    ]


# --- 4. rule --all: the severities that fire -------------------------------------------------


def _rule_lines(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()}


def test_rule_list_shows_the_severities_that_fire(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["rule", "--all"], capsys)
    assert code == 0
    rows = _rule_lines(out)
    assert rows["LC207"][2] == "warning/error"
    assert rows["LC103"][2] == "warning/error"
    assert rows["LC203"][2] == "error" and rows["LC104"][2] == "warning"
    assert rows["LC108"][2] == "info"
    assert "``" not in out
    _, page, _ = run(["rule", "LC207"], capsys)
    assert "Severity: warning/error — error when the adapter is known to be trained" in page


def test_listed_severities_are_what_the_rules_emit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(["check", "--stage", "trained", str(EXAMPLES / "at-init")], capsys)
    assert "LC207 [error]" in out
    for dropout, severity in ((1.5, "error"), (0.5, "warning")):
        folder = tmp_path / str(dropout)
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
             "lora_dropout": dropout}))
        _, out, _ = run(["check", "--select", "LC103", str(folder)], capsys)
        assert f"LC103 [{severity}]" in out


def _emitted_severities() -> dict[str, tuple[str, set[str]]]:
    """Per rule: its declared severity and every ``Severity.X`` its function (and the module's
    helpers and tables it names, transitively) mentions, read from rules/*.py."""
    out: dict[str, tuple[str, set[str]]] = {}
    for path in sorted(RULES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        defs: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defs.update({t.id: node for t in targets if isinstance(t, ast.Name)})
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not node.decorator_list:
                continue
            deco = node.decorator_list[0]
            if not (isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "rule"):
                continue
            code = deco.args[0].value  # type: ignore[attr-defined]
            default = deco.args[2].attr.lower()  # type: ignore[attr-defined]
            seen: set[str] = set()
            stack: list[ast.AST] = [ast.Module(body=node.body, type_ignores=[])]
            found: set[str] = set()
            while stack:
                for sub in ast.walk(stack.pop()):
                    if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and sub.value.id == "Severity"):
                        found.add(sub.attr.lower())
                    if isinstance(sub, ast.Name) and sub.id in defs and sub.id not in seen:
                        seen.add(sub.id)
                        stack.append(defs[sub.id])
            out[code] = (default, found)
    return out


def test_severity_table_matches_the_rule_sources() -> None:
    emitted = _emitted_severities()
    assert set(emitted) == {m.code for m in all_rules() if m.status == "stable"}
    by_case = {code: sorted({default} | found, key=lambda s: Severity(s).rank)
               for code, (default, found) in emitted.items() if found - {default}}
    declared = {m.code: [level.value for level in m.severities] for m in all_rules()
                if m.also is not None}
    assert declared == by_case
    assert all(m.when for m in all_rules() if m.also is not None)


# --- 5. rule pages as terminal text ----------------------------------------------------------


def test_rule_page_is_terminal_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["rule", "LC207"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "LC207 zero-update-adapter"
    for heading in ("What it does", "Why is this bad?", "Example", "Use instead"):
        assert heading in lines
    assert "Check that model.print_trainable_parameters() shows the LoRA parameters" in out
    _, out, _ = run(["rule", "lc103"], capsys)
    lines = out.splitlines()
    assert "Checks lora_dropout: outside [0, 1) or not a number is an error; above the " \
           "profile's" in lines
    example = lines.index("Example")
    assert lines[example + 1] == "    lora_dropout: 1.0"  # the fenced block, indented
    for meta in all_rules():
        _, page, _ = run(["rule", meta.code], capsys)
        assert "``" not in page and "```" not in page, meta.code
        assert not any(line.startswith("#") for line in page.splitlines()), meta.code


def test_rule_json_keeps_the_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["rule", "LC207", "--format", "json"], capsys)
    record = json.loads(out)
    meta = next(m for m in all_rules() if m.code == "LC207")
    assert record == {"code": "LC207", "name": meta.name, "severity": "error",
                      "status": "stable", "summary": meta.summary,
                      "explanation": meta.explanation}
    assert "``enable_input_require_grads()``" in record["explanation"]


# --- 6. help without internal metavars -------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["check"], ["inspect"], ["verify"], ["rule"]])
def test_help_shows_no_internal_metavars(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and "Usage: loracheck" in out
    assert not re.search(r"<[a-z_\[\] |]+>", out), out  # <list[str]>, <bool>, <int range>
    assert not re.search(r"\{\w+\}", out), out  # {paths}
    if command == ["inspect"]:
        assert "Usage: loracheck inspect [OPTIONS] PATH..." in out
    if command == ["check"]:  # no path: the current folder, as ruff
        assert "Usage: loracheck check [OPTIONS] [PATH...]" in out
    if command == ["inspect"]:
        assert "--verbose" in out and "-v" in out


# --- 7. infos are not problems ---------------------------------------------------------------


def test_infos_are_not_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
         "use_rslora": True}))
    code, out, _ = run(["check", str(tmp_path)], capsys)
    assert "LC108 [info]" in out
    assert code == 0 and out.splitlines()[-1] == "All checks passed (1 file); 1 info."
    bad = ROOT / "examples" / "configs" / "peft_bad_adapter_config.json"
    _, out, _ = run(["check", str(bad)], capsys)
    assert out.splitlines()[-1] == "Found 3 problems (1 error, 2 warnings) and 2 infos in 1 file."
    high = tmp_path / "high"
    high.mkdir()
    (high / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
         "lora_dropout": 0.5}))
    code, out, _ = run(["check", str(high)], capsys)
    assert code == 0 and out.splitlines()[-1] == "Found 1 problem (1 warning) in 1 file."


def test_summary_line_wording() -> None:
    info = diag("LC108", Severity.INFO, message="rsLoRA")
    warning = diag("LC209", Severity.WARNING, message="outlier")
    assert summary_line(Report(adapters=[adapter()])) == "All checks passed (1 file)."
    assert summary_line(Report(adapters=[adapter()], diagnostics=[info, info])) == \
        "All checks passed (1 file); 2 infos."
    assert summary_line(Report(adapters=[adapter()], diagnostics=[warning, info])) == \
        "Found 1 problem (1 warning) and 1 info in 1 file."
    # a verdict already known to fail (an info under --fail-on info) never says passed
    failed = Report(adapters=[adapter()], diagnostics=[info], passed=False)
    assert summary_line(failed) == "Found 1 info in 1 file."
