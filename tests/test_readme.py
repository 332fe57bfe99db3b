"""README stays true: every environment variable, command, REST route and licence is documented."""

from __future__ import annotations

import re
from pathlib import Path

from voice_agent.__main__ import COMMANDS
from voice_agent.core.config import VARIABLES
from voice_agent.testing.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_starts_with_a_spaces_header() -> None:
    header = README.split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "suggested_hardware:", "sdk_version:"):
        assert line in header
    version = header.split("sdk_version:")[1].split()[0]
    requirement = next(
        r
        for r in (REPO_ROOT / "requirements.txt").read_text().splitlines()
        if r.startswith("gradio")
    )
    major = int(requirement.split(">=")[1].split(".")[0])
    assert int(version.split(".")[0]) == major


def test_the_two_commands() -> None:
    assert "./launch.sh          #" in README and "./launch.sh test     #" in README
    assert "./launch.sh test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_environment_variable_with_its_default() -> None:
    for v in VARIABLES:
        row = next(
            (line for line in README.splitlines() if line.startswith(f"| `{v.name}` |")), None
        )
        assert row is not None, f"{v.name} missing from README"
        if v.default:
            assert f"`{v.default}`" in row, f"{v.name}: default {v.default} not in README"


def test_every_command() -> None:
    for name in COMMANDS:
        assert f"| `{name}" in README, name


def test_every_route() -> None:
    from voice_agent.server.app import create_app

    paths = create_app().openapi()["paths"]
    assert {"/health", "/generate", "/stt", "/tts", "/v1/chat/completions"} <= set(paths)
    for path, methods in paths.items():
        for method in methods:
            assert f"`{method.upper()} {path}`" in README, f"{method.upper()} {path}"


def test_no_placeholders_left() -> None:
    for marker in ("ENV_TABLE", "BENCH_TABLES", "TODO"):
        assert marker not in README


def _table_rows(heading: str) -> dict[str, str]:
    """First-column name (without backticks) -> row, of the table under `heading`."""
    section = README.split(f"\n{heading}\n", 1)[1]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            rows[line.split("`")[1]] = line
    return rows


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(_normalized(re.split(r"[<>=!~;\[ ]", line)[0]))
    return names


def test_every_requirement_has_its_licence_in_the_table() -> None:
    table = {_normalized(name): row for name, row in _table_rows("### Python packages").items()}
    wanted = _requirement_names(REPO_ROOT / "requirements.txt")
    assert _requirement_names(REPO_ROOT / "requirements-cpu.txt") <= wanted
    assert wanted - set(table) == set(), "packages missing from the README licence table"
    assert set(table) - wanted == set(), "README licence table lists packages no longer required"
    for name, row in table.items():
        assert row.split("|")[2].strip(), f"{name}: no licence given"


def test_every_default_model_has_its_licence_in_the_table() -> None:
    from voice_agent.core import config

    defaults = {
        value
        for key, value in vars(config).items()
        if key.startswith("DEFAULT_") and isinstance(value, str) and "/" in value
    }
    assert "openai/whisper-base.en" in defaults and "facebook/mms-tts-eng" in defaults
    table = _table_rows("### Models")
    assert defaults - set(table) == set(), "default models missing from the README licence table"
    assert "non-commercial" in table["facebook/mms-tts-eng"]


def test_the_project_licence() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert "license: apache-2.0" in README.split("---")[1]


def test_docs_name_nothing_outside_the_repository() -> None:
    """A clone stands alone: no sibling folders, and every relative link lands in the repo."""
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for outside in ("../shared", "shared/fixtures", "VOICE_AGENT_SHARED_FIXTURES"):
            assert outside not in text, f"{doc.name} mentions {outside}"
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(REPO_ROOT), f"{doc.name} links outside: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"
