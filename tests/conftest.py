"""Shared test fixtures: where the shared corpus lies beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus" / "configs"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``../shared/corpus/configs``: published configs, read in place (never copied here)."""
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not beside the project")
    return CORPUS
