"""`python -m voice_agent COMMAND`: the project's command line.

Commands are a table of lazily imported modules so `--help` stays instant and
one command's heavy imports never slow another.
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("app", "start the Gradio app and REST API (same as `python app.py`)"),
    "serve": ("voice_agent.cli.serve", "REST API only (MODEL_SERVER_HOST:MODEL_SERVER_PORT)"),
    "doctor": (
        "voice_agent.cli.doctor",
        "settings, hardware, offline status, bitsandbytes, model resolution",
    ),
    "prefetch": (
        "voice_agent.cli.prefetch",
        "download every configured model so the app can run offline",
    ),
    "transcribe": ("voice_agent.cli.transcribe", "transcribe an audio file"),
    "speak": ("voice_agent.cli.speak", "speak text into a WAV file"),
    "chat": ("voice_agent.cli.chat", "a typed or spoken conversation in the terminal"),
    "selftest": (
        "voice_agent.cli.selftest",
        "push a short clip through every stage and report each",
    ),
    "bench": ("voice_agent.cli.bench", "benchmarks (speed and memory), README's tables"),
    "make-tiny-models": (
        "voice_agent.cli.make_tiny",
        "write tiny random-weight checkpoints to DIR",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m voice_agent COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def configure_logging(level: str | None = None) -> None:
    """Logging is configured here and in app.py only (the entry points)."""
    import os

    logging.basicConfig(
        level=(level or os.environ.get("LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # bitsandbytes warns at every 4-bit CPU load that the optional `kernels`
    # package (which downloads kernels from the hub) is missing; its own CPU
    # path works, so this is noise for our users.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from voice_agent.core.config import SettingsError, apply_process_defaults

    configure_logging()
    apply_process_defaults()
    if name == "app":
        # app.py lives at the repository root (the Spaces entry point).
        from voice_agent.testing.paths import REPO_ROOT

        sys.path.insert(0, str(REPO_ROOT))
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
