"""The Diagnostics tab: `diagnostics.snapshot()` and the self-test rendered for people.

Pure functions from the snapshot dict to HTML and tables, so the tab shows
exactly what `GET /health` and `doctor` report. Every value that comes from
outside (paths, error messages, model names) is HTML-escaped.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GIB = 1024**3
COMPONENT_TITLES = {
    "llm": "Language model",
    "stt": "Speech recognition",
    "tts": "Voice",
    "vad": "Voice activity",
}
# The stacked chart splits each turn's time to first audio into these stages.
CHART_STAGES = ("hearing", "thinking", "voicing")
TURN_COLUMNS = [
    "turn",
    "input",
    "heard (s)",
    "first word (s)",
    "speaking at (s)",
    "heard in page (s)",
    "last audio (s)",
    "STT (s)",
    "LLM (s)",
    "TTS (s)",
]
SELF_TEST_COLUMNS = ["stage", "result", "seconds", "summary"]


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def gib(n: Any) -> str:
    return f"{n / GIB:.1f} GiB" if isinstance(n, int | float) else "?"


def seconds(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else "—"


def _card(title: str, value: str, sub: str = "", tone: str = "") -> str:
    sub_html = f'<div class="diag-sub">{sub}</div>' if sub else ""
    return (
        f'<div class="diag-card {tone}"><div class="diag-k">{esc(title)}</div>'
        f'<div class="diag-v">{value}</div>{sub_html}</div>'
    )


def render_overview(snap: Mapping[str, Any]) -> str:
    """Device, VRAM, RAM and offline status as a row of cards."""
    hw = snap.get("hardware") or {}
    gpus = hw.get("gpus") or []
    cards = []
    if gpus:
        gpu = gpus[0]
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        cards.append(
            _card(
                "Device",
                f"{esc(gpu.get('name'))}{esc(more)}",
                f"CUDA {esc(hw.get('cuda_version'))} · compute {esc(gpu.get('compute_capability'))}",
            )
        )
        used = gpu.get("used_bytes")
        cards.append(
            _card(
                "VRAM",
                f"{gib(used)} used · {gib(gpu.get('free_bytes'))} free",
                f"of {gib(gpu.get('total_bytes'))}",
            )
        )
    else:
        notes = "; ".join(str(n) for n in hw.get("notes") or []) or "no CUDA device"
        cards.append(_card("Device", f"CPU · {esc(hw.get('cpu_cores'))} cores", esc(notes), "warn"))
        cards.append(_card("VRAM", "—", "no GPU in use"))
    cards.append(
        _card(
            "RAM",
            f"{gib(hw.get('ram_available_bytes'))} free",
            f"of {gib(hw.get('ram_total_bytes'))}"
            + (" · bf16 capable" if hw.get("cpu_bf16") else ""),
        )
    )
    offline = snap.get("offline") or {}
    if offline.get("enabled"):
        cards.append(_card("Offline", "on", f"set by <code>{esc(offline.get('source'))}</code>"))
    else:
        cards.append(_card("Offline", "off", "models may be downloaded from the Hub"))
    status = "ready" if snap.get("ok") else "degraded"
    vad = snap.get("voice_activity") or {}
    if vad:
        in_use = vad.get("in_use") or vad.get("would_use")
        cards.append(
            _card(
                "Voice activity",
                esc(in_use),
                esc(vad.get("reason") or ("in use" if vad.get("in_use") else "loads on first use")),
                "" if in_use == "silero-onnx" else "warn",
            )
        )
    cards.append(
        _card(
            "Status",
            status,
            f"up {esc(snap.get('uptime_s'))} s",
            "good" if snap.get("ok") else "bad",
        )
    )
    return f'<div class="diag-grid">{"".join(cards)}</div>'


WIDE_KEYS = ("path", "library", "diagnosis", "fix", "hub cache", "HF_HOME", "LOCAL_MODELS_DIR")


def _kv_table(rows: Iterable[tuple[str, str]]) -> str:
    """Key/value pairs as a compact grid; long values (paths) take a whole row."""
    cells = "".join(
        f'<div class="kv{" wide" if k in WIDE_KEYS else ""}"><span class="k">{esc(k)}</span>'
        f'<span class="v">{v}</span></div>'
        for k, v in rows
        if v
    )
    return f'<div class="diag-kv">{cells}</div>'


def render_attempts(attempts: Sequence[Mapping[str, Any]]) -> str:
    if not attempts:
        return '<p class="diag-muted">No loading strategy was tried.</p>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("#", "strategy", "device", "dtype", "quantization", "outcome", "time", "reason")
    )
    rows = []
    for i, a in enumerate(attempts, 1):
        reason = a.get("reason") or ""
        if a.get("error"):
            reason = f"{reason} — {a.get('error_type') or 'error'}: {a['error']}".strip(" —")
        if a.get("outcome") == "skipped" and a.get("needed_bytes") and not reason:
            reason = f"needs {gib(a['needed_bytes'])}, {gib(a.get('free_bytes'))} free"
        outcome = esc(a.get("outcome"))
        rows.append(
            f'<tr class="attempt-{outcome}"><td>{i}</td><td><code>{esc(a.get("strategy"))}</code></td>'
            f"<td>{esc(a.get('device'))}</td><td>{esc(a.get('dtype'))}</td>"
            f"<td>{esc(a.get('quantization') or '—')}</td>"
            f'<td><span class="pill pill-{outcome}">{outcome}</span></td>'
            f"<td>{seconds(a.get('seconds')) if a.get('outcome') != 'skipped' else '—'}</td>"
            f"<td>{esc(reason)}</td></tr>"
        )
    return f'<table class="diag-table"><tr>{head}</tr>{"".join(rows)}</table>'


def render_model(component: str, entry: Mapping[str, Any]) -> str:
    """One model's card: status, chosen strategy, every attempt with its reason."""
    status = entry.get("status") or ("found" if _found(entry) else "not loaded")
    report = entry.get("report") or {}
    chosen = report.get("chosen") or {}
    title = COMPONENT_TITLES.get(component, component)
    backend = f" · {esc(entry['backend'])}" if entry.get("backend") else ""
    rows = [
        ("model", f"<code>{esc(report.get('model_ref') or entry.get('configured'))}</code>"),
        ("strategy", f"<code>{esc(chosen.get('strategy'))}</code>" if chosen else ""),
        ("quantization", esc(chosen.get("quantization") or "none") if chosen else ""),
        ("dtype", esc(chosen.get("dtype")) if chosen else ""),
        ("device", esc(chosen.get("device")) if chosen else ""),
        ("loaded in", seconds(report.get("total_seconds")) if chosen else ""),
        (
            "memory after",
            gib(chosen.get("memory_after_bytes")) if chosen.get("memory_after_bytes") else "",
        ),
        ("found in", esc(report.get("source")) if report.get("source") else ""),
        (
            "path",
            f"<code>{esc(report.get('resolved_path'))}</code>"
            if report.get("resolved_path")
            else "",
        ),
    ]
    resolution = entry.get("resolution") or {}
    if resolution and not report:
        rows.append(("found", "yes" if resolution.get("found") else "no"))
        if resolution.get("path"):
            rows.append(("path", f"<code>{esc(resolution.get('path'))}</code>"))
    parts = [
        f'<div class="model-card status-{esc(status).replace(" ", "-")}">',
        f'<div class="model-head"><span class="pill pill-{esc(status).replace(" ", "-")}">'
        f"{esc(status)}</span> <b>{esc(title)}</b>{backend}</div>",
        _kv_table(rows),
    ]
    problem = entry.get("error") or resolution.get("error")
    if problem:
        parts.append(f'<div class="diag-error">{esc(problem)}</div>')
    notes = report.get("notes") or []
    if notes:
        parts.append(
            "<ul class='diag-notes'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
        )
    if report:
        parts.append(render_attempts(report.get("attempts") or []))
    parts.append("</div>")
    return "".join(parts)


def _found(entry: Mapping[str, Any]) -> bool:
    return bool((entry.get("resolution") or {}).get("found"))


def render_models(snap: Mapping[str, Any]) -> str:
    models = dict(snap.get("models") or {})
    vad = snap.get("voice_activity") or {}
    if vad.get("report"):
        # The voice-activity model: the speech gate, hands-free turns and barge-in.
        models["vad"] = {"status": vad.get("status"), "report": vad["report"]}
    return (
        '<div class="model-grid">'
        + "".join(render_model(name, entry) for name, entry in models.items())
        + "</div>"
    )


def render_tools(tools: Mapping[str, Any] | None) -> str:
    """Every tool the model may call, where it came from, and each MCP server's state.

    Tool descriptions may come from MCP servers, so everything is escaped.
    """
    if not tools:
        return '<p class="diag-muted">No tools (the agent has not started).</p>'
    rows = []
    for t in tools.get("tools") or []:
        acts = "acts (needs consent)" if t.get("acts") else "reads / computes"
        params = ", ".join(t.get("parameters") or []) or "none"
        rows.append(
            f"<tr><td><code>{esc(t.get('name'))}</code></td><td>{esc(t.get('source'))}</td>"
            f"<td>{esc(acts)}</td><td>{esc(params)}</td><td>{esc(t.get('description'))}</td></tr>"
        )
    table = (
        '<table class="diag-table"><tr><th>tool</th><th>from</th><th>kind</th>'
        "<th>arguments</th><th>description</th></tr>" + "".join(rows) + "</table>"
        if rows
        else '<p class="diag-muted">No tools are on offer (TOOLS=none and nothing else).</p>'
    )
    parts = [table]
    servers = tools.get("mcp_servers") or []
    if servers:
        items = []
        for server in servers:
            status = str(server.get("status") or "?")
            problem = (
                f' <span class="reason">{esc(server.get("error"))}</span>'
                if server.get("error")
                else ""
            )
            items.append(
                f'<li><span class="pill pill-{esc(status)}">{esc(status)}</span> '
                f"<b>{esc(server.get('name'))}</b> ({esc(server.get('transport'))}): "
                f"{len(server.get('tools') or [])} tools{problem}</li>"
            )
        parts.append(
            "<h4>MCP servers (MCP_SERVERS)</h4><ul class='diag-notes'>" + "".join(items) + "</ul>"
        )
    consent = "allowed" if tools.get("allow_actions_default") else "off unless allowed in Settings"
    parts.append(
        f'<p class="diag-muted">Tools that act: {esc(consent)} (TOOLS_ALLOW_ACTIONS). '
        f"Time limit per call: {esc(tools.get('timeout_s'))} s (TOOL_TIMEOUT_S).</p>"
    )
    for note in tools.get("notes") or []:
        parts.append(f'<div class="diag-error">{esc(note)}</div>')
    return "".join(parts)


def render_environment(snap: Mapping[str, Any]) -> str:
    """Offline switches, cache locations, the bitsandbytes probe and library versions."""
    offline = snap.get("offline") or {}
    switches = ", ".join(
        f"<code>{esc(k)}={esc(v)}</code>" for k, v in (offline.get("variables") or {}).items() if v
    )
    where = _kv_table(
        [
            (
                "offline",
                ("on" if offline.get("enabled") else "off")
                + (
                    f" (set by <code>{esc(offline.get('source'))}</code>)"
                    if offline.get("source")
                    else ""
                ),
            ),
            ("offline variables", switches or "none set"),
            ("HF_HOME", f"<code>{esc(offline.get('hf_home'))}</code>"),
            ("hub cache", f"<code>{esc(offline.get('hub_cache'))}</code>"),
            ("LOCAL_MODELS_DIR", f"<code>{esc(offline.get('local_models_dir'))}</code>"),
            ("offload folder", f"<code>{esc(offline.get('offload_folder'))}</code>"),
        ]
    )
    bnb = snap.get("bitsandbytes") or {}
    usable = bnb.get("usable")
    bnb_html = _kv_table(
        [
            (
                "bitsandbytes",
                f'<span class="pill pill-{"ready" if usable else "failed"}">'
                f"{'usable' if usable else 'not usable'}</span> {esc(bnb.get('version'))}",
            ),
            ("backend", esc(bnb.get("backend"))),
            ("diagnosis", esc(bnb.get("diagnosis"))),
            ("fix", esc(bnb.get("fix")) if bnb.get("fix") else ""),
            ("library", f"<code>{esc(bnb.get('library'))}</code>" if bnb.get("library") else ""),
        ]
    )
    versions = snap.get("versions") or {}
    version_html = (
        '<div class="diag-versions">'
        + "".join(
            f"<span><b>{esc(k)}</b> {esc(v or 'not installed')}</span>" for k, v in versions.items()
        )
        + "</div>"
    )
    return (
        '<div class="env-grid">'
        f'<div class="diag-section"><h4>Offline and caches</h4>{where}</div>'
        f'<div class="diag-section" id="bnb-probe"><h4>bitsandbytes probe</h4>{bnb_html}</div>'
        "</div>"
        f'<div class="diag-section"><h4>Library versions</h4>{version_html}</div>'
    )


# --- latency of recent turns -------------------------------------------------------------


def turn_records(turns: Any) -> list[dict[str, Any]]:
    """The per-turn timing dicts from `agent.recent_timings()` (oldest first)."""
    if not turns:
        return []
    if isinstance(turns, Mapping):
        for key in ("turns", "recent", "last"):
            if isinstance(turns.get(key), list):
                turns = turns[key]
                break
        else:
            return []
    out = []
    for item in turns:
        if isinstance(item, Mapping):
            out.append(dict(item))
        elif hasattr(item, "__dict__"):
            out.append(dict(vars(item)))
    return out


def _num(record: Mapping[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, int | float) else None


def latency_rows(records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One table row per turn, then median and p90 rows."""
    keys = (
        "transcript_ready",
        "first_token",
        "first_audio",
        "first_audio_heard",
        "last_audio",
        "stt_s",
        "llm_s",
        "tts_s",
    )
    rows: list[list[Any]] = []
    for i, rec in enumerate(records, 1):
        kind = rec.get("input") or ("audio" if rec.get("stt_s") is not None else "text")
        values = [_round(_num(rec, k)) for k in keys]
        if kind == "text":
            values[0] = None  # nothing to hear: a typed message is "heard" at once
        rows.append([str(i), str(kind)] + values)
    if len(records) >= 2:
        for label, fn in (("median", statistics.median), ("p90", _p90)):
            stats = []
            for k in keys:
                values = [v for r in records if (v := _num(r, k)) is not None]
                stats.append(_round(fn(values)) if values else None)
            rows.append([label, ""] + stats)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def chart_points(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stacked bars: per turn, time to hear, to think (first word), to voice (first audio)."""
    points = []
    for i, rec in enumerate(records, 1):
        heard = _num(rec, "transcript_ready") or 0.0
        first_word = _num(rec, "first_token")
        first_audio = _num(rec, "first_audio")
        label = f"#{i:02d}"
        points.append({"turn": label, "stage": "hearing", "seconds": round(heard, 3)})
        if first_word is not None:
            points.append(
                {
                    "turn": label,
                    "stage": "thinking",
                    "seconds": round(max(0.0, first_word - heard), 3),
                }
            )
            if first_audio is not None:
                points.append(
                    {
                        "turn": label,
                        "stage": "voicing",
                        "seconds": round(max(0.0, first_audio - first_word), 3),
                    }
                )
    return points


def latency_summary(records: Sequence[Mapping[str, Any]]) -> str:
    if not records:
        return "No turns yet: talk or type in the Conversation tab, then Refresh."
    firsts = [v for r in records if (v := _num(r, "first_audio")) is not None]
    words = [v for r in records if (v := _num(r, "first_token")) is not None]
    parts = [f"{len(records)} recent turn{'s' if len(records) != 1 else ''}"]
    if words:
        parts.append(f"first word median {statistics.median(words):.2f} s, p90 {_p90(words):.2f} s")
    if firsts:
        parts.append(
            f"speaking at median {statistics.median(firsts):.2f} s, p90 {_p90(firsts):.2f} s"
        )
    return " · ".join(parts)


# --- self-test -----------------------------------------------------------------------------


def self_test_rows(results: Sequence[Any]) -> list[list[Any]]:
    rows = []
    for r in results:
        ok = bool(getattr(r, "ok", False))
        summary = getattr(r, "summary", "") or ""
        error = getattr(r, "error", None)
        if error and not ok:
            summary = f"{summary} — {error}".strip(" —")
        secs = getattr(r, "seconds", None)
        rows.append(
            [
                str(getattr(r, "stage", "?")),
                "✓ ok" if ok else "✗ failed",
                None if secs is None else round(float(secs), 2),
                summary,
            ]
        )
    return rows


def self_test_headline(results: Sequence[Any]) -> str:
    if not results:
        return "The self-test returned no stages."
    failed = [str(getattr(r, "stage", "?")) for r in results if not getattr(r, "ok", False)]
    total = sum(float(getattr(r, "seconds", 0) or 0) for r in results)
    if failed:
        return f"✗ **{len(failed)} of {len(results)} stages failed** ({', '.join(failed)}) · {total:.1f} s"
    return f"✓ **All {len(results)} stages passed** · {total:.1f} s"
