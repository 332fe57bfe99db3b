"""README stays true: every environment variable, command and REST route is documented."""

from __future__ import annotations

from voice_agent.__main__ import COMMANDS
from voice_agent.config import VARIABLES
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
    from voice_agent.server import create_app

    paths = create_app().openapi()["paths"]
    assert {"/health", "/generate", "/stt", "/tts", "/v1/chat/completions"} <= set(paths)
    for path, methods in paths.items():
        for method in methods:
            assert f"`{method.upper()} {path}`" in README, f"{method.upper()} {path}"


def test_no_placeholders_left() -> None:
    for marker in ("ENV_TABLE", "BENCH_TABLES", "TODO"):
        assert marker not in README
