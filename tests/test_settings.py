"""Settings: shipped profiles, [tool.loracheck] discovery, CLI overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from loracheck.errors import UsageError
from loracheck.model import InitScheme, Severity
from loracheck.settings import load_profile, load_settings


def test_default_profile_thresholds() -> None:
    p = load_profile("default")
    th = p.thresholds
    assert (th.scale_min, th.scale_max) == (1 / 16, 16.0)
    assert (th.max_dropout, th.max_rank, th.std_tolerance) == (0.3, 256, 0.15)
    assert (th.outlier_factor, th.rank_collapse_divisor) == (20.0, 8.0)
    assert p.init_scheme is None


def test_llmbook_profile() -> None:
    p = load_profile("llmbook")
    assert p.init_scheme is InitScheme.NORMAL and p.init_std == 0.02
    assert p.thresholds.scale_min <= 1.0 <= p.thresholds.scale_max
    assert p.thresholds.max_dropout >= 0.05 and p.thresholds.max_rank >= 16


def test_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "team.toml"
    f.write_text('[thresholds]\nmax-rank = 32\n[init]\nscheme = "gaussian"\n')
    p = load_profile(str(f))
    assert p.name == "team" and p.thresholds.max_rank == 32 and p.thresholds.max_dropout == 0.3
    assert p.init_scheme is InitScheme.GAUSSIAN
    with pytest.raises(UsageError, match="unknown profile"):
        load_profile("nope")
    f.write_text("[thresholds]\nmax-rnk = 3\n")
    with pytest.raises(UsageError, match="max-rnk"):
        load_profile(str(f))


def test_pyproject_found_upward(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.loracheck]\nprofile = "llmbook"\nignore = ["LC108"]\nfail-on = "warning"\n'
        'severity = { LC209 = "error" }\n[tool.loracheck.per-file-ignores]\n'
        '"configs/*.yaml" = ["LC103"]\n[tool.loracheck.thresholds]\noutlier-factor = 50\n'
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    s = load_settings([deep])
    assert s.profile.name == "llmbook" and s.ignore == ("LC108",)
    assert s.fail_on is Severity.WARNING and s.severity == {"LC209": Severity.ERROR}
    assert s.per_file_ignores == (("configs/*.yaml", ("LC103",)),)
    assert s.thresholds.outlier_factor == 50 and s.root == tmp_path
    cli = load_settings([deep], profile="default", select=["LC2"], ignore=["LC203"],
                        fail_on="info")
    assert cli.profile.name == "default" and cli.select == ("LC2",)
    assert cli.ignore == ("LC108", "LC203") and cli.fail_on is Severity.INFO


def test_loracheck_toml_wins_and_pyproject_without_table_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.loracheck]\nignore = ["LC1"]\n')
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert load_settings([sub]).ignore == ("LC1",)
    (sub / "loracheck.toml").write_text('select = ["LC2"]\n')
    s = load_settings([sub / "x.json"])
    assert s.select == ("LC2",) and s.ignore == ()
    assert load_settings([sub], isolated=True).config_file is None


@pytest.mark.parametrize(
    "text, fragment",
    [('selct = ["LC1"]', "selct"), ('select = ["XY1"]', "XY1"), ('select = ["LC9"]', "LC9"),
     ('fail-on = "fatal"', "fail-on"), ("[thresholds]\nmax-rank = -1", "max-rank"),
     ("[thresholds]\nmax-rank = 1.5", "max-rank"), ('severity = { LC101 = "loud" }', "LC101"),
     ('profile = "nope"', "nope"), ("select = [", "invalid TOML")],
)
def test_bad_settings_are_one_line_usage_errors(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "loracheck.toml").write_text(text + "\n")
    with pytest.raises(UsageError) as err:
        load_settings([tmp_path])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cli_values_are_validated(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        load_settings([tmp_path], select=["LCX"], isolated=True)
    with pytest.raises(UsageError):
        load_settings([tmp_path], fail_on="none", isolated=True)


def test_profiles_carry_the_recipe_verify_injects(tmp_path: Path) -> None:
    llmbook = load_profile("llmbook").recipe
    assert (llmbook.rank, llmbook.alpha, llmbook.dropout) == (16, 16.0, 0.05)
    default = load_profile("default").recipe
    assert (default.rank, default.alpha, default.dropout) == (8, 8.0, 0.0)
    custom = tmp_path / "mine.toml"
    custom.write_text('[lora]\nrank = 32\nalpha = 64.0\ntarget-modules = ["q_proj"]\n')
    recipe = load_profile(str(custom)).recipe
    assert (recipe.rank, recipe.alpha, recipe.dropout, recipe.target_modules) == (
        32, 64.0, 0.0, ("q_proj",))
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\ndropout = 1.5\n")
    with pytest.raises(UsageError, match=r"lora\.dropout"):
        load_profile(str(bad))


def test_the_readme_configuration_example_loads(tmp_path: Path) -> None:
    """The `[tool.loracheck]` block README.md shows is a valid configuration."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert block.startswith("[tool.loracheck]")
    (tmp_path / "pyproject.toml").write_text(block, encoding="utf-8")
    settings = load_settings([tmp_path])
    assert settings.fail_on is Severity.ERROR
    assert "LC108" in settings.ignore and settings.severity["LC209"] is Severity.ERROR
    assert settings.per_file_ignores == (("experiments/*", ("LC2",)),)
