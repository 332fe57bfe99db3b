"""`selftest [--json]`: push a short clip through every stage; one pass/fail line per stage.

Each model loads on its own (a failure is recorded, not raised), so a broken
TTS does not hide whether the LLM and Whisper work. Exit code 1 when any
stage fails.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent selftest")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    from voice_agent.pipeline.agent import Agent
    from voice_agent.pipeline.models import get_models

    models = get_models(eager=True)
    models.wait()
    results = Agent(models).self_test()
    ok = all(r.ok for r in results)
    if args.json:
        doc = {
            "ok": ok,
            "stages": [r.as_dict() for r in results],
            "models": {
                c: {"status": s, "error": models.errors.get(c)} for c, s in models.status.items()
            },
        }
        print(json.dumps(doc, indent=2))
    else:
        width = max(len(r.stage) for r in results)
        for r in results:
            detail = r.summary if r.ok else f"{r.error}"
            print(f"{'PASS' if r.ok else 'FAIL'}  {r.stage:<{width}}  {r.seconds:6.2f} s  {detail}")
        print("all stages passed" if ok else "some stages failed", file=sys.stderr)
    return 0 if ok else 1
