"""Where the test data lives: everything is inside the repository."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# The Dia2 parity fixture (data, not code): a tiny checkpoint, tokenizer, Mimi and the
# reference runtime's outputs for six scripts; its README says how it was made.
DIA2_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "dia2-tiny"


def dia2_fixture_dir() -> Path:
    return DIA2_FIXTURE
