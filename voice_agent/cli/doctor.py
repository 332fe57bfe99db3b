"""`doctor [--json]`: what this machine offers and where each configured model would come from."""

from __future__ import annotations

import argparse
import json

from voice_agent.audio import voice_activity  # noqa: F401  (adds its diagnostics section)
from voice_agent.core.config import env_table_markdown, get_settings
from voice_agent.core.diagnostics import snapshot


def render_text(snap: dict) -> str:
    hw, off, bnb = snap["hardware"], snap["offline"], snap["bitsandbytes"]
    lines = ["voice-agent doctor", ""]
    lines.append(
        f"torch {hw['torch_version']} | CUDA {'yes' if hw['cuda_available'] else 'no'}"
        f" | {hw['cpu_cores']} CPU cores | RAM {hw['ram_available_gib']:.1f} of "
        f"{hw['ram_total_gib']:.1f} GiB free | CPU bf16 {'yes' if hw['cpu_bf16'] else 'no'}"
    )
    for gpu in hw["gpus"]:
        lines.append(
            f"GPU {gpu['index']}: {gpu['name']} (sm {gpu['compute_capability']}), "
            f"{gpu['free_gib']:.1f} of {gpu['total_gib']:.1f} GiB free"
        )
    lines += [f"note: {n}" for n in hw.get("notes", [])]
    lines.append("")
    state = f"ON (set by {off['source']})" if off["enabled"] else "off"
    lines.append(f"offline mode: {state}")
    lines.append(f"HF cache: {off['hub_cache']} | LOCAL_MODELS_DIR: {off['local_models_dir']}")
    lines.append("")
    lines.append(f"bitsandbytes: {'usable' if bnb['usable'] else 'NOT usable'}: {bnb['diagnosis']}")
    if bnb.get("fix"):
        lines.append(f"  fix: {bnb['fix']}")
    lines.append("")
    for component, entry in snap["models"].items():
        res = entry.get("resolution", {})
        where = (
            f"found ({res.get('source')}: {res.get('path')})"
            if res.get("found")
            else f"MISSING: {res.get('error')}"
        )
        backend = f" [{entry['backend']}]" if entry.get("backend") else ""
        lines.append(f"{component}{backend}: {entry['configured']} -> {where}")
    vad = snap.get("voice_activity") or {}
    if vad:
        in_use = vad.get("in_use") or f"{vad.get('would_use')} (loads on first use)"
        reason = f": {vad['reason']}" if vad.get("reason") else ""
        lines.append(f"voice activity: {in_use}{reason}")
    lines.append("")
    lines.append(
        "ready: yes"
        if snap["ok"]
        else "ready: no (run `python -m voice_agent prefetch` while online)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent doctor")
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument("--env-table", action="store_true", help="print README's environment table")
    args = parser.parse_args(argv)
    if args.env_table:
        print(env_table_markdown())
        return 0
    snap = snapshot(settings=get_settings())
    print(json.dumps(snap, indent=2, default=str) if args.json else render_text(snap))
    return 0
