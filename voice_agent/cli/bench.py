"""`bench [--json] [--only SECTION] [--quick]`: run benchmark sections, each in its own process."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time

from voice_agent.bench.common import machine_info

SECTIONS = ("hub", "llm", "stt", "tts", "dia2", "pipeline", "server", "turns", "voice")

CHILD = """
import json, resource, sys, logging
logging.basicConfig(level=logging.WARNING)
from voice_agent.bench import {name} as section
result = section.run(quick={quick})
result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print("__RESULT__" + json.dumps(result, default=str))
"""


def run_section(name: str, quick: bool) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(name=name, quick=quick)], capture_output=True, text=True
    )
    seconds = round(time.perf_counter() - t0, 1)
    for line in proc.stdout.splitlines():
        if line.startswith("__RESULT__"):
            result = json.loads(line[len("__RESULT__") :])
            result["section_seconds"] = seconds
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
    return {"error": "\n".join(tail) or f"exit code {proc.returncode}", "section_seconds": seconds}


def to_markdown(name: str, result: dict) -> str:
    lines = [f"### {name}", ""]
    if "error" in result:
        return "\n".join(lines + [f"failed: {result['error']}", ""])
    rows = result.get("rows") or []
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + " --- |" * len(keys))
        for row in rows:
            lines.append("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
        lines.append("")
    extras = {k: v for k, v in result.items() if k not in ("rows", "notes")}
    if extras:
        lines.append("; ".join(f"{k}: {v}" for k, v in extras.items()))
        lines.append("")
    if result.get("notes"):
        lines += [str(result["notes"]), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent bench")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="sections to run")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    args = parser.parse_args(argv)
    names = [
        n
        for n in (args.only or SECTIONS)
        if importlib.util.find_spec(f"voice_agent.bench.{n}") is not None
    ]
    doc: dict = {"machine": machine_info(), "quick": args.quick}
    for name in names:
        if not args.json:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        doc[name] = run_section(name, args.quick)
        if not args.json:
            print(to_markdown(name, doc[name]), flush=True)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    failed = [n for n in names if "error" in doc[n]]
    return 1 if failed else 0
