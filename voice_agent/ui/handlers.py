"""Gradio-facing handlers: unpack component values, call `Conversation`, pack updates.

Also the model-loading banner (`status_banner`). Every handler here is what an
event in `ui.build_ui` calls; tests drive them directly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from voice_agent.core.spaces import gpu
from voice_agent.ui import diagnostics as diag
from voice_agent.ui.conversation import Conversation, TurnControls, UISession
from voice_agent.ui.microphone import CHUNK_S, LISTENING, QUICK_CHUNK_S, RECORDING
from voice_agent.ui.uploads import NotUploadedError, uploaded_path

log = logging.getLogger(__name__)

NOTHING_HEARD = "Nothing was heard; press Record and speak."
COMPONENT_NAMES = {"llm": "Language model", "stt": "Speech recognition", "tts": "Voice"}
DEGRADED_HINTS = {
    "llm": "No replies can be written.",
    "stt": "Voice input is off; type instead.",
    "tts": "Replies are text only.",
}


def status_banner(models: Any | None) -> tuple[str, bool, bool]:
    """(banner HTML, degraded, still loading) from the loader's status and progress."""
    if models is None:
        return "", False, False
    status: dict[str, str] = dict(getattr(models, "status", {}) or {})
    errors: dict[str, str] = dict(getattr(models, "errors", {}) or {})
    loading = [c for c in COMPONENT_NAMES if status.get(c, "pending") in ("pending", "loading")]
    failed = [c for c in COMPONENT_NAMES if status.get(c) == "failed"]
    lazy = getattr(getattr(models, "settings", None), "model_loading", "eager") == "lazy"
    parts: list[str] = []
    if loading and not (lazy and all(status.get(c) == "pending" for c in loading)):
        items = []
        for c in COMPONENT_NAMES:
            state = status.get(c, "pending")
            if state in ("pending", "loading"):
                progress = getattr(models, "progress", {}) or {}
                fraction, message = progress.get(c) or (0.0, state)
                items.append(
                    f'<span class="load-item"><b>{COMPONENT_NAMES[c]}</b> '
                    f'<span class="bar"><span style="width:{fraction * 100:.0f}%"></span></span> '
                    f"{diag.esc(message)}</span>"
                )
            elif state == "ready":
                items.append(
                    f'<span class="load-item done"><b>{COMPONENT_NAMES[c]}</b> ready</span>'
                )
        parts.append(
            '<div class="banner loading"><span class="spinner"></span>'
            f"<span>Loading models…</span>{''.join(items)}</div>"
        )
    if failed:
        lines = "".join(
            f"<li><b>{COMPONENT_NAMES[c]} is unavailable.</b> {DEGRADED_HINTS[c]} "
            f'<span class="reason">{diag.esc(errors.get(c) or "it failed to load")}</span></li>'
            for c in failed
        )
        parts.append(
            '<div class="banner degraded"><div><b>Running in degraded mode.</b> '
            f"See the Diagnostics tab for why and how to fix it.</div><ul>{lines}</ul></div>"
        )
    return "".join(parts), bool(failed), bool(loading) and not lazy


# A lone UTF-16 surrogate (JSON's `\ud800`) can reach a handler through the Gradio API; no
# tokenizer or JSON encoder can carry it, and kept in the chat it broke every later event.
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, so it can be encoded anywhere."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


class Handlers:
    """The app's event handlers over one `Conversation` (one per app, shared by all tabs)."""

    def __init__(
        self,
        conversation: Conversation,
        models: Any | None,
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.conversation = conversation
        self.models = models
        self.snapshot = snapshot
        self._voices_loaded = False

    # --- loading banner -------------------------------------------------------------------

    def _status(self) -> tuple[str, bool, bool]:
        """(banner HTML, degraded, keep polling): the poll goes on while models load, and
        while one that failed may come back (an LLM server not up yet), which it checks."""
        from voice_agent.pipeline.models import COMPONENTS, LoadedModels

        recoverable = False
        if isinstance(self.models, LoadedModels):
            self.models.recover_failed()  # at most one check per RECOVER_EVERY_S
            recoverable = any(self.models.recoverable(c) for c in COMPONENTS)
        html, degraded, loading = status_banner(self.models)
        return html, degraded, loading or recoverable

    def on_load(self) -> tuple[Any, ...]:
        ui = self.conversation.open_tab()
        session = ui.session
        generation = getattr(session, "generation", None)
        html, degraded, loading = self._status()
        panel = (
            getattr(session, "system_prompt", None) or "",
            getattr(generation, "temperature", 0.7),
            getattr(generation, "max_new_tokens", 256),
        )
        # What the panel shows now: the values a turn the Record button starts on the server
        # takes until the user changes one (`settings`).
        ui.controls = self._controls(*panel, "")
        return (
            ui,
            *panel,
            self._voice_update(),
            gr.HTML(value=html, visible=bool(html)),
            gr.Button(visible=degraded),
            gr.Timer(active=loading),
            ui.tab_id,
        )

    def tick(self) -> tuple[Any, ...]:
        html, degraded, loading = self._status()
        return (
            gr.HTML(value=html, visible=bool(html)),
            gr.Button(visible=degraded),
            gr.Timer(active=loading),
            self._voice_update(),
        )

    def _voice_update(self) -> Any:
        tts = None
        if self.models is not None and getattr(self.models, "status", {}).get("tts") == "ready":
            tts = getattr(self.models, "tts", None)
        if tts is None:
            return gr.skip()
        try:
            voices = list(tts.voices())
        except Exception:
            log.debug("tts.voices() failed", exc_info=True)
            return gr.skip()
        choices = [("Default", "")] + [(v.name or v.id, v.id) for v in voices]
        return gr.Dropdown(choices=choices)

    # --- turns ---------------------------------------------------------------------------

    @staticmethod
    def _controls(prompt: Any, temperature: Any, max_tokens: Any, voice: Any) -> TurnControls:
        return TurnControls(
            system_prompt=valid_text(prompt) if isinstance(prompt, str) else None,
            temperature=float(temperature) if temperature is not None else None,
            max_tokens=int(max_tokens) if max_tokens is not None else None,
            voice=voice if isinstance(voice, str) else None,
        )

    def allow_actions(self, allowed: Any, ui: UISession | None) -> None:
        """The Settings checkbox: this tab's consent to tools that act (timers, MCP tools)."""
        if isinstance(ui, UISession) and hasattr(ui.session, "allow_actions"):
            ui.session.allow_actions = bool(allowed)

    @gpu
    def send_text(self, text: str, ui: UISession | None, *controls: Any):
        ui = self.conversation.ensure(ui)
        text = valid_text(text if isinstance(text, str) else "").strip()
        if not text:
            gr.Warning("Type a message first.")
            yield ui.chat, None, "", gr.skip()
            return
        first = True
        for chat, audio, status in self.conversation.run_turn(
            ui, self._controls(*controls), text=text
        ):
            yield chat, _player(ui, audio), status, ("" if first else gr.skip())
            first = False

    @gpu
    def send_audio(self, path: str | None, ui: UISession | None, *controls: Any):
        ui = self.conversation.ensure(ui)
        if not path:
            yield gr.skip(), None, gr.skip(), gr.skip()
            return
        try:
            path = uploaded_path(path)
        except NotUploadedError as exc:
            log.warning("refused a file-typed input outside the upload cache")
            gr.Warning(str(exc))
            yield ui.chat, None, str(exc), None
            return
        for chat, audio, status in self.conversation.run_turn(
            ui, self._controls(*controls), audio=path
        ):
            yield chat, _player(ui, audio), status, gr.skip()
        yield gr.skip(), gr.skip(), gr.skip(), None  # ready for the next recording

    @gpu
    def hands_free_turn(self, ui: UISession | None, *controls: Any):
        if not isinstance(ui, UISession):
            return
        # Turns the server started as the user's turn ended (the usual case): show them.
        feeds = self.conversation.take_feeds(ui)
        runs = [feed.updates() for feed in feeds]
        utterance = self.conversation.take_utterance(ui)
        if utterance is not None:
            runs.append(self.conversation.run_utterance(ui, self._controls(*controls), utterance))
        for run in runs:
            for chat, reply, status in run:
                yield chat, _player(ui, reply), status
        if ui.detector is not None:
            ui.hands_free_status = RECORDING if ui.recording else LISTENING

    def stop(self, ui: UISession | None) -> str:
        message = self.conversation.stop(ui)
        gr.Info(message)
        return message if message != "Stopped." else "Stopping…"

    def clear(self, ui: UISession | None) -> tuple[Any, ...]:
        fresh = self.conversation.clear(self.conversation.ensure(ui))
        return (
            fresh,
            [],
            None,
            "Conversation cleared.",
            gr.DownloadButton(value=None, interactive=False),
        )

    def transcript(self, ui: UISession | None) -> Any:
        if not isinstance(ui, UISession):
            return gr.skip()
        path = self.conversation.transcript(ui)
        if path is None:
            return gr.DownloadButton(value=None, interactive=False)
        return gr.DownloadButton(value=str(path), interactive=True)

    def after_turn(self, ui: UISession | None) -> tuple[Any, Any]:
        """After every turn: the transcript download, and the timer poll on while timers run."""
        if not isinstance(ui, UISession):
            return gr.skip(), gr.skip()
        return self.transcript(ui), gr.Timer(active=self.conversation.timers_pending(ui))

    def ring(self, ui: UISession | None, voice: Any):
        """Timer poll: say each timer that is due; stop polling when none is left."""
        if not isinstance(ui, UISession):
            yield gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False)
            return
        said, audio = self.conversation.ring(ui, voice if isinstance(voice, str) else None)
        active = gr.Timer(active=self.conversation.timers_pending(ui))
        if not said:
            yield gr.skip(), gr.skip(), gr.skip(), active
            return
        yield ui.chat, _player(ui, audio), said, active

    # --- hands-free -----------------------------------------------------------------------

    def settings(self, ui: UISession | None, pause: Any, *controls: Any) -> None:
        """The settings panel changed (or hands-free was switched on): the values a turn the
        microphone starts takes, and the hands-free pause."""
        if not isinstance(ui, UISession):
            return
        if len(controls) == 4:
            ui.controls = self._controls(*controls)
        ok = isinstance(pause, int | float) and not isinstance(pause, bool) and pause > 0
        ui.pause = float(pause) if ok else None

    def toggle_hands_free(
        self, on: bool, ui: UISession | None, pause: Any = None, *controls: Any
    ) -> tuple[Any, ...]:
        if isinstance(ui, UISession):
            if on:
                self.settings(ui, pause, *controls)
            else:
                self.conversation.stop_listening(ui)
        # Hands-free shows its own widget; off, the Record button and the upload box.
        return gr.HTML(visible=bool(on)), gr.HTML(visible=not on), gr.Audio(visible=not on)

    def hear(
        self,
        ui: UISession,
        chunk: Any,
        *,
        end: bool = False,
        hold: bool = False,
        start: bool = False,
    ) -> dict[str, Any]:
        """One post of the page's microphone (`ui.microphone`): `(rate, samples)`, and `end`
        when the microphone stopped after it. `hold`: the Record widget's (push to talk: only
        `end` ends the turn); `start`: the first post of a recording (the user took the floor).
        What the page shows and does next: the status line, the number of an utterance that
        ended (its turn is running), a barge-in, and how much audio to gather before its
        next post."""
        problem = None
        with ui.mic_lock:  # a tab's posts come one at a time; this keeps them in order
            try:
                ended, interrupted = self.conversation.hear_chunk(
                    ui, chunk, ui.pause, hold=hold, start=start
                )
            except Exception as exc:  # a bad chunk must not end the stream
                log.warning("microphone chunk dropped: %s", exc)
                ended = interrupted = False
                problem = f"Could not read the microphone chunk ({type(exc).__name__})."
            if end:
                ended = self._end_of_stream(ui) or ended
            # While the user's turn is open its pauses must be heard as they come.
            open_turn = ui.detector is not None and ui.detector.in_speech
        return {
            "status": problem or ui.hands_free_status,
            "utterance": ui.utterance_seq if ended else None,
            "interrupted": interrupted,
            "next_s": QUICK_CHUNK_S if open_turn else CHUNK_S,
        }

    def _end_of_stream(self, ui: UISession) -> bool:
        """The microphone stopped: speech still open ends its turn. Whether one did."""
        ended = False
        if ui.detector is not None:
            # Record: whatever speech there was is the turn, however short ("yes").
            for event in ui.detector.flush(short=ui.recording):
                if event.kind == "end_of_turn" and event.audio is not None and event.audio.size:
                    self.conversation.queue_utterance(ui, event)
                    ended = True
        nothing = ui.recording and not ended
        ui.hands_free_status = NOTHING_HEARD if nothing else "Microphone off."
        return ended

    # --- diagnostics ----------------------------------------------------------------------

    def refresh(self) -> tuple[Any, ...]:
        try:
            snap = self.snapshot()
        except Exception as exc:
            log.exception("diagnostics snapshot failed")
            error = f'<div class="diag-error">Could not take a snapshot: {diag.esc(exc)}</div>'
            return error, "", "", "", None, [], "", {}
        records = diag.turn_records(snap.get("turns"))
        points = diag.chart_points(records)
        chart = _frame(points, ["turn", "stage", "seconds"]) if points else None
        return (
            diag.render_overview(snap),
            diag.render_models(snap),
            diag.render_tools(snap.get("tools")),
            diag.latency_summary(records),
            chart,
            diag.latency_rows(records),
            diag.render_environment(snap),
            snap,
        )

    @gpu
    def self_test(self):
        yield "⏳ Running the self-test…", []
        try:
            results = list(self.conversation.agent.self_test())
        except Exception as exc:
            log.exception("self-test failed")
            yield f"❌ The self-test could not run: {diag.esc(exc)}", []
            return
        yield diag.self_test_headline(results), diag.self_test_rows(results)


def _player(ui: UISession, audio: str | None) -> Any:
    """The reply player's update: the whole reply once spoken, started only if the page
    player did not already play it as it was made (`UISession.played_live`)."""
    if audio is None:
        return gr.skip()
    return gr.Audio(value=audio, autoplay=not ui.played_live)


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    import pandas as pd  # gradio depends on pandas; only the chart needs it

    return pd.DataFrame(rows, columns=columns)
