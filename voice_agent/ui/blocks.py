"""The Gradio app: a Conversation tab and a Diagnostics tab over one shared `Agent`.

`build_ui(...)` returns the `gr.Blocks`; `app.py` mounts it beside the REST
routes. This module is layout and event wiring; behaviour lives in
`ui_conversation` (turns, hands-free), `ui_handlers` (the event handlers and
the loading banner), `ui_diagnostics` (rendering the snapshot) and `ui_style`
(CSS and theme). Only `app.py` and tests import these (they import gradio).

The API: the page's own events are kept out of it (`api_visibility`: "private",
or "undocumented" for the three a `gradio_client` user needs: `/on_load`,
`/send_text`, `/send_audio`, and `/stop`); the public endpoints, which are also
the MCP server's tools, are `transcribe`, `speak` and `chat` (`ui.api`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from voice_agent.ui import diagnostics as diag
from voice_agent.ui.api import PublicApi, wire
from voice_agent.ui.conversation import Conversation
from voice_agent.ui.handlers import Handlers
from voice_agent.ui.microphone import MIC_HEAD, MIC_HTML, TALK_HTML
from voice_agent.ui.playback import PLAYER_HEAD
from voice_agent.ui.style import MIC_SVG

log = logging.getLogger(__name__)

TITLE = "Voice Agent"
STATUS_POLL_S = 1.0
TURN_CONCURRENCY = 4  # turns of different tabs that may run at once (engines serialise GPU work)
RING_POLL_S = 1.0  # how often a tab with timers running asks whether one is due
# Stop, Clear and barge-in silence the page at once, before the server hears of it.
PAUSE_AUDIO_JS = (
    "() => { document.querySelectorAll('#reply-audio audio').forEach(a => a.pause());"
    " if (window.vaPlayer) window.vaPlayer.flush(); }"
)
# The tab's id arrives on load: the page's microphone (ui.microphone) posts under it, and
# the page player (ui.playback) opens this tab's audio stream with it.
CONNECT_PLAYER_JS = (
    "(id) => { window.vaTab = id; if (window.vaPlayer) window.vaPlayer.connect(id); }"
)
TAB_ID_JS = "(id) => { window.vaTab = id; }"  # without the page player (whole replies)
# Hands-free switched either way: the microphone's recording (Record's or hands-free's) ends.
STOP_MIC_JS = "(on) => { if (window.vaMic) window.vaMic.stop(); }"
PRIVATE: dict[str, Any] = {"api_visibility": "private"}  # page events: not an API
CLIENT: dict[str, Any] = {"api_visibility": "undocumented"}  # for gradio_client, not listed

# Every microphone the page opens asks the browser for echo cancellation (and noise
# suppression, automatic gain): Gradio's recorder asks for `{audio: true}`, which leaves
# them to the browser's defaults. Explicit values Gradio passes (a device id) are kept.
# Mounted as the page's <head> by app.py; the server-side guard is audio/echo.py.
ECHO_SAFE_MIC_HEAD = """<script>
(() => {
  const md = navigator.mediaDevices;
  if (!md || !md.getUserMedia || md.vaEchoSafe) return;
  const open = md.getUserMedia.bind(md);
  const wanted = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  md.getUserMedia = (constraints) => {
    if (constraints && constraints.audio) {
      const asked = constraints.audio === true ? {} : constraints.audio;
      constraints = { ...constraints, audio: { ...wanted, ...asked } };
      window.vaMicConstraints = constraints.audio;
    }
    return open(constraints);
  };
  md.vaEchoSafe = true;
})();
</script>"""
# The page's <head>: the echo-safe microphone, the reply's player, the page's microphone.
PAGE_HEAD = ECHO_SAFE_MIC_HEAD + PLAYER_HEAD + MIC_HEAD


def build_ui(
    agent_factory: Callable[[], Any] | None = None,
    models: Any | None = None,
    *,
    snapshot: Callable[[], dict[str, Any]] | None = None,
    pause_default: float | None = None,
    stream_audio: bool = True,
) -> gr.Blocks:
    """Build the app.

    Args:
        agent_factory: returns the process-wide `Agent` (default `agent.get_agent`).
        models: the cached loader's `LoadedModels`, for the loading banner and voices.
        snapshot: the diagnostics snapshot (default `diagnostics.snapshot(models, agent)`).
        pause_default: hands-free pause length (default `settings.vad_pause_seconds`).
        stream_audio: play the reply's audio in the page as it is made (`ui.playback`,
            default); False: the whole reply plays once it is spoken.
    """
    if agent_factory is None:
        from voice_agent.pipeline.agent import get_agent

        agent_factory = get_agent
    if pause_default is None:
        from voice_agent.core.config import get_settings

        settings = getattr(models, "settings", None) or get_settings()
        pause_default = settings.vad_pause_seconds
    conversation = Conversation(
        agent_factory, pause_default=pause_default, stream_audio=stream_audio
    )
    settings = getattr(models, "settings", None)
    allow_default = bool(getattr(settings, "tools_allow_actions", False))

    def take_snapshot() -> dict[str, Any]:
        if snapshot is not None:
            return snapshot()
        from voice_agent.core.diagnostics import snapshot as full_snapshot
        from voice_agent.pipeline.models import LoadedModels

        if isinstance(models, LoadedModels):
            models.recover_failed()  # an LLM server that came up late shows as ready

        return full_snapshot(models, conversation.agent)

    handlers = Handlers(conversation, models, take_snapshot)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        state = gr.State(None, delete_callback=conversation.close)
        gr.HTML(
            f'<div id="va-header">{MIC_SVG}<h1>{TITLE}</h1><span class="tag">Talk or type — '
            "speech recognition, a local language model and a voice, in one process.</span></div>",
            padding=False,
        )
        banner = gr.HTML("", elem_id="status-banner", visible=False, padding=False)
        open_diag = gr.Button(
            "Open Diagnostics →", size="sm", visible=False, elem_id="open-diagnostics"
        )
        timer = gr.Timer(STATUS_POLL_S, active=models is not None)
        with gr.Tabs() as tabs:
            with gr.Tab("Conversation", id="conversation"):
                c = _conversation_tab(stream_audio, pause_default, allow_default)
            with gr.Tab("Diagnostics", id="diagnostics") as diag_tab:
                d = _diagnostics_tab()
        # The page's microphone clicks this when an utterance ended (ui.microphone).
        trigger = gr.Button("turn", visible="hidden", elem_id="utterance-trigger")
        channel = gr.Textbox("", visible="hidden", elem_id="audio-channel")
        ring = gr.Timer(RING_POLL_S, active=False)  # on while this tab has timers running

        controls = [c["system_prompt"], c["temperature"], c["max_tokens"], c["voice"]]
        turn_out = [c["chatbot"], c["reply_audio"], c["status"]]
        turn_opts: dict[str, Any] = {
            "concurrency_limit": TURN_CONCURRENCY,
            "concurrency_id": "turn",
            "show_progress": "hidden",
        }
        after_turn: dict[str, Any] = {"show_progress": "hidden", **PRIVATE}
        demo.load(
            handlers.on_load,
            outputs=[state, *controls, banner, open_diag, timer, channel],
            show_progress="hidden",
            api_name="on_load",
            **CLIENT,
        )
        channel.change(
            None, [channel], None, js=CONNECT_PLAYER_JS if stream_audio else TAB_ID_JS, **PRIVATE
        )
        timer.tick(
            handlers.tick,
            outputs=[banner, open_diag, timer, c["voice"]],
            show_progress="hidden",
            concurrency_limit=None,
            **PRIVATE,
        )
        send_text = [c["textbox"], state, *controls]
        for n, event in enumerate((c["textbox"].submit, c["send"].click)):
            event(
                handlers.send_text,
                send_text,
                [*turn_out, c["textbox"]],
                **turn_opts,
                **(CLIENT if n == 0 else PRIVATE),
            ).then(handlers.after_turn, [state], [c["download"], ring], **after_turn)
        for n, event in enumerate((c["mic"].stop_recording, c["mic"].upload)):
            event(
                handlers.send_audio,
                [c["mic"], state, *controls],
                [*turn_out, c["mic"]],
                **turn_opts,
                **(CLIENT if n == 0 else PRIVATE),
            ).then(handlers.after_turn, [state], [c["download"], ring], **after_turn)
        c["stop"].click(
            handlers.stop,
            [state],
            [c["status"]],
            js=PAUSE_AUDIO_JS,
            concurrency_limit=None,
            **CLIENT,
        )
        c["clear"].click(
            handlers.clear,
            [state],
            [state, c["chatbot"], c["reply_audio"], c["status"], c["download"]],
            js=PAUSE_AUDIO_JS,
            concurrency_limit=None,
            **PRIVATE,
        )
        # Consent to tools that act is the tab's, not each turn's: the send APIs stay as they were.
        c["allow_actions"].change(
            handlers.allow_actions, [c["allow_actions"], state], None, **PRIVATE
        )
        # The microphone is the page's own (ui.microphone): it posts to the server, which
        # starts the turns; these keep the settings those turns take.
        panel = [c["pause"], *controls]
        c["hands_free"].change(
            handlers.toggle_hands_free,
            [c["hands_free"], state, *panel],
            [c["hf_mic"], c["talk_mic"], c["mic"]],
            show_progress="hidden",
            **PRIVATE,
        )
        c["hands_free"].change(None, [c["hands_free"]], None, js=STOP_MIC_JS, **PRIVATE)
        for control in panel:
            control.input(
                handlers.settings,
                [state, *panel],
                None,
                show_progress="hidden",
                concurrency_limit=None,
                **PRIVATE,
            )
        trigger.click(
            handlers.hands_free_turn, [state, *controls], turn_out, **turn_opts, **PRIVATE
        ).then(handlers.after_turn, [state], [c["download"], ring], **after_turn)
        ring.tick(
            handlers.ring,
            [state, c["voice"]],
            [*turn_out, ring],
            show_progress="hidden",
            concurrency_limit=None,
            **PRIVATE,
        )

        diag_out = [
            d["overview"],
            d["models"],
            d["tools"],
            d["latency_summary"],
            d["chart"],
            d["table"],
            d["environment"],
            d["raw"],
        ]
        d["refresh"].click(handlers.refresh, outputs=diag_out, concurrency_limit=None, **PRIVATE)
        diag_tab.select(handlers.refresh, outputs=diag_out, concurrency_limit=None, **PRIVATE)
        open_diag.click(lambda: gr.Tabs(selected="diagnostics"), outputs=[tabs], **PRIVATE).then(
            handlers.refresh, outputs=diag_out, **PRIVATE
        )
        d["self_test"].click(
            handlers.self_test,
            outputs=[d["self_test_headline"], d["self_test_table"]],
            concurrency_limit=1,
            concurrency_id="turn",
            **PRIVATE,
        )
        wire(PublicApi(lambda: conversation.agent, conversation.transcript_dir))
    demo.voice_agent_conversation = conversation  # type: ignore[attr-defined]  # for tests
    demo.voice_agent_handlers = handlers  # type: ignore[attr-defined]
    return demo


def _conversation_tab(
    stream_audio: bool, pause_default: float, allow_actions: bool = False
) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            c["chatbot"] = gr.Chatbot(
                label="Conversation",
                show_label=False,
                height=540,
                layout="bubble",
                placeholder=(
                    "**Say something or type below.**<br>Record with the microphone, "
                    "or switch on hands-free and just talk."
                ),
                feedback_options=None,
                buttons=["copy"],
                elem_id="chat",
                group_consecutive_messages=False,
                # Replies are untrusted: shown as text (`ui.chat_text`), sanitised again here,
                # and no LaTeX (nothing a reply writes may fetch or run).
                sanitize_html=True,
                allow_tags=False,
                latex_delimiters=[],
            )
            with gr.Row(elem_id="composer"):
                c["textbox"] = gr.Textbox(
                    placeholder="Type a message and press Enter…",
                    show_label=False,
                    container=False,
                    scale=6,
                    lines=1,
                    max_lines=6,
                    elem_id="message",
                    autofocus=True,
                )
                c["send"] = gr.Button("Send", variant="primary", scale=1, min_width=80)
                c["stop"] = gr.Button("Stop", variant="stop", scale=1, min_width=80)
            c["status"] = gr.Markdown("", elem_id="turn-status")
        with gr.Column(scale=2, min_width=320, elem_id="voice-panel"):
            # Record: the page's own microphone (ui.microphone), heard by the server while
            # the user talks; Gradio's recorder would upload it all only at Stop.
            c["talk_mic"] = gr.HTML(TALK_HTML, padding=False)
            c["mic"] = gr.Audio(
                sources=["upload"],
                type="filepath",
                label="Or upload a recording",
                buttons=[],
                elem_id="mic",
            )
            c["hands_free"] = gr.Checkbox(
                label="Hands-free: talk naturally; a pause sends, talking over the reply interrupts it",
                value=False,
                elem_id="hands-free",
            )
            # The page's own microphone (ui.microphone): a button and the detector's status.
            c["hf_mic"] = gr.HTML(MIC_HTML, visible=False, padding=False)
            # The voice plays through the page player as it is made (ui.playback); this
            # player gets the whole reply once spoken, to replay or download.
            c["reply_audio"] = gr.Audio(
                label="Assistant's voice",
                autoplay=not stream_audio,
                interactive=False,
                elem_id="reply-audio",
                buttons=["download"],
            )
            with gr.Row():
                c["clear"] = gr.Button("Clear conversation", size="sm")
                c["download"] = gr.DownloadButton(
                    "Download transcript", size="sm", value=None, interactive=False
                )
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                c["system_prompt"] = gr.Textbox(
                    label="System prompt",
                    lines=3,
                    max_lines=8,
                    placeholder="Empty: the assistant's default instructions.",
                )
                c["temperature"] = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
                c["max_tokens"] = gr.Slider(
                    16,
                    1024,
                    value=256,
                    step=16,
                    label="Max reply length (tokens)",
                    elem_id="max-tokens",
                )
                c["voice"] = gr.Dropdown(
                    choices=[("Default", "")], value="", label="Voice", allow_custom_value=False
                )
                c["pause"] = gr.Slider(
                    0.2, 2.0, value=pause_default, step=0.1, label="Hands-free pause (s)"
                )
                c["allow_actions"] = gr.Checkbox(
                    value=allow_actions,
                    label="Allow tools that act (timers, MCP servers' tools)",
                    info="Reading the clock and calculating are always allowed.",
                    elem_id="allow-actions",
                )
    return c


def _diagnostics_tab() -> dict[str, Any]:
    d: dict[str, Any] = {}
    with gr.Row(elem_id="diag-actions"):
        d["refresh"] = gr.Button("Refresh", size="sm", variant="secondary", scale=0, min_width=110)
        d["self_test"] = gr.Button(
            "Run self-test", size="sm", variant="primary", scale=0, min_width=140
        )
    d["overview"] = gr.HTML('<p class="diag-muted">Press Refresh.</p>', elem_id="diag-overview")
    gr.Markdown("### Models")
    d["models"] = gr.HTML("", elem_id="diag-models")
    gr.Markdown("### Tools")
    d["tools"] = gr.HTML("", elem_id="diag-tools")
    gr.Markdown("### Self-test")
    d["self_test_headline"] = gr.Markdown(
        "Pushes a short clip through every stage (speech recognition, reply, voice).",
        elem_id="self-test-headline",
    )
    d["self_test_table"] = gr.Dataframe(
        headers=diag.SELF_TEST_COLUMNS,
        value=[],
        interactive=False,
        show_label=False,
        wrap=True,
        elem_id="self-test-table",
    )
    gr.Markdown("### Latency of recent turns")
    d["latency_summary"] = gr.Markdown("", elem_id="latency-summary")
    with gr.Column():
        d["chart"] = gr.BarPlot(
            value=None,
            x="turn",
            y="seconds",
            color="stage",
            title="Time to first audio, by stage",
            y_title="seconds",
            x_title="turn",
            height=260,
            show_label=False,
            sort="x",
            color_map={"hearing": "#94a3b8", "thinking": "#6366f1", "voicing": "#22c55e"},
        )
        d["table"] = gr.Dataframe(
            headers=diag.TURN_COLUMNS,
            value=[],
            interactive=False,
            show_label=False,
            elem_id="latency-table",
        )
    gr.Markdown("### Environment")
    d["environment"] = gr.HTML("", elem_id="diag-environment")
    with gr.Accordion("Raw snapshot (same as GET /health)", open=False):
        d["raw"] = gr.JSON(show_label=False)
    return d
