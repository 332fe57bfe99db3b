"""`make-tiny-models DIR`: tiny random-weight checkpoints for tests, CI and benchmarks."""

from __future__ import annotations

import argparse
import time

from voice_agent.testing.tiny import PARTS, make_tiny_models


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent make-tiny-models")
    parser.add_argument("dir", help="output directory (created)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    written = make_tiny_models(args.dir, tuple(args.only))
    for part, path in written.items():
        print(f"{part:5} {path}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
