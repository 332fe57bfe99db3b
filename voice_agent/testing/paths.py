"""Where the shared fixtures live (the Dia2 parity fixture is data, not code)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_fixtures_dir() -> Path:
    """`VOICE_AGENT_SHARED_FIXTURES`, else `<repo>/../shared/fixtures` (CI lays shared/ beside the clone)."""
    explicit = os.environ.get("VOICE_AGENT_SHARED_FIXTURES")
    return Path(explicit) if explicit else REPO_ROOT.parent / "shared" / "fixtures"


def dia2_fixture_dir() -> Path:
    return shared_fixtures_dir() / "dia2-tiny"
