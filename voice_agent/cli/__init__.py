"""Command modules of `python -m voice_agent`; each defines `main(argv) -> int`."""
