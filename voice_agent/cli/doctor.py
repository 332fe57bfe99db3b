"""`doctor [--json]`: what this machine offers and where each configured model would come from."""

from __future__ import annotations

import argparse
import json

from voice_agent.audio import voice_activity  # noqa: F401  (adds its diagnostics section)
from voice_agent.core.config import Settings, env_table_markdown, get_settings
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
        if res.get("source") == "openai server":
            where = (
                f"served at {res.get('path')}: reachable, round trip {res.get('round_trip_ms')} ms"
                if res.get("found")
                else f"NOT USABLE at {res.get('path')}: {res.get('error')}"
            )
        elif res.get("found"):
            where = f"found ({res.get('source')}: {res.get('path')})"
        else:
            where = f"MISSING: {res.get('error')}"
        backend = f" [{entry['backend']}]" if entry.get("backend") else ""
        lines.append(f"{component}{backend}: {entry['configured']} -> {where}")
    vad = snap.get("voice_activity") or {}
    if vad:
        in_use = vad.get("in_use") or f"{vad.get('would_use')} (loads on first use)"
        reason = f": {vad['reason']}" if vad.get("reason") else ""
        lines.append(f"voice activity: {in_use}{reason}")
    lines.append("")
    missing = [e.get("resolution", {}) for e in snap["models"].values()]
    missing = [r for r in missing if not r.get("found")]
    fixes = []
    if any(r.get("source") != "openai server" for r in missing):
        fixes.append("run `python -m voice_agent prefetch` while online")
    if any(r.get("source") == "openai server" for r in missing):
        fixes.append("start the LLM server, or fix LLM_BASE_URL / LLM_MODEL / LLM_API_KEY")
    lines.append("ready: yes" if snap["ok"] else f"ready: no ({'; '.join(fixes)})")
    return "\n".join(lines)


def ask_llm_server(snap: dict, settings: Settings) -> None:
    """`LLM_BACKEND=openai`: the LLM is where the server says, not on this disk; ask it."""
    from voice_agent.llm.openai_compat import ServerError, choose_served_model, probe

    found = probe(settings)
    resolution = snap["models"]["llm"]["resolution"]
    resolution.update(
        reachable=found.reachable,
        round_trip_ms=found.as_dict()["round_trip_ms"],
        served=[m.id for m in found.models],
        found=False,
        error=found.error,
    )
    if found.error is None:
        try:
            chosen = choose_served_model(settings.llm_model, found.models, settings.llm_base_url)
            resolution.update(found=True, ref=chosen.id, error=None)
        except ServerError as exc:
            resolution["error"] = str(exc)
    snap["ok"] = all(e.get("resolution", {}).get("found") for e in snap["models"].values())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent doctor")
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument("--env-table", action="store_true", help="print README's environment table")
    args = parser.parse_args(argv)
    if args.env_table:
        print(env_table_markdown())
        return 0
    settings = get_settings()
    snap = snapshot(settings=settings)
    if settings.llm_backend == "openai":
        ask_llm_server(snap, settings)
    print(json.dumps(snap, indent=2, default=str) if args.json else render_text(snap))
    return 0
