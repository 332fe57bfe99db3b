"""The Conversation tab's behaviour: one `UISession` per browser tab, and the event handlers.

Kept apart from the Gradio layout (`ui.py`) so tests drive every handler
directly, with a real or a fake `Agent`. Handlers never raise into Gradio:
bad input, a missing model or Stop with nothing running each becomes a short
message in the chat or a toast, and the session keeps working.
"""

from __future__ import annotations

import html
import io
import json
import logging
import queue
import secrets
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import InputError, ModelUnavailableError, VoiceAgentError
from voice_agent.core.spaces import on_zero_gpu
from voice_agent.ui.chat_text import safe_markdown, tool_message
from voice_agent.ui.microphone import LISTENING, RECORDING
from voice_agent.ui.playback import AudioChannel, AudioChannels, default_channels, pcm16
from voice_agent.ui.waiting import Queued, watch_queue

log = logging.getLogger(__name__)

# A finished (or cancelled) turn waits this long for the previous one of the same
# session to wind down before saying "still busy" (barge-in cancels, then starts anew).
TURN_HANDOVER_S = 5.0
# Hands-free: the assistant counts as speaking this long after its last audio chunk,
# so its own voice leaking into the microphone needs the louder barge-in threshold.
PLAYBACK_TAIL_S = 1.5
# The reply's text goes to the page at most this often: each update re-sends and re-renders
# the chat, work the server and the browser would take from the LLM and the voice on a
# CPU they share, for words nobody reads faster than this.
TEXT_UPDATE_S = 0.25
# How long the LLM's reading ahead waits for the words before a pause (a guess's
# transcription takes well under a second; one still running then is stuck).
READ_AHEAD_WAIT_S = 5.0
# Marks a spoken message in the chat (a styled tag, not an emoji: not every system has
# an emoji font).
VOICE_TAG = '<span class="via-voice">voice</span>'
MAX_TABS = 10_000  # open pages whose microphone the server knows (as many as audio channels)


@dataclass
class Exchange:
    """One turn as the transcript shows it."""

    user: str
    assistant: str = ""
    latency: str = ""
    note: str = ""  # "stopped", "interrupted", or the error shown instead of a reply
    at: float = field(default_factory=time.time)
    tools: list[str] = field(default_factory=list)  # "name(arguments) -> result", in order


class UISession:
    """Everything one browser tab owns: its agent `Session`, chat view and microphone state.

    Stored in `gr.State`; handlers mutate it in place, so a Stop click sees the
    turn that the send handler started. Never shared between tabs.
    """

    def __init__(
        self, agent_session: Any, audio: AudioChannel | None = None, tab_id: str | None = None
    ) -> None:
        self.session = agent_session
        self.audio = audio  # the page's audio stream (ui.playback); None: whole replies only
        # The page's secret: its audio stream and its microphone (`ui.microphone`) use it.
        self.tab_id = tab_id or (audio.id if audio is not None else secrets.token_urlsafe(24))
        self.played_live = False  # the last reply's voice went out through `audio`
        self.chat: list[dict[str, Any]] = []
        self.exchanges: list[Exchange] = []
        self.cancel: CancelToken | None = None
        self.turn_lock = threading.Lock()
        self.detector: Any | None = None  # vad.TurnDetector while hands-free is on
        self.detector_pause: float | None = None
        self.utterances: list[np.ndarray] = []
        self.speech_ended_at: float | None = None  # perf_counter time the last utterance ended
        # Words heard ahead (`Agent.hear_early`): of the utterance being spoken, at the
        # user's last short pause; and of the queued utterance, which its turn takes.
        self.early: Any | None = None
        self.early_queued: Any | None = None
        # The turn itself, started at that pause (`pipeline.ahead.TurnAhead`); the queued
        # utterance's, confirmed and waiting for its turn to read it.
        self.ahead: Any | None = None
        self.ahead_queued: Any | None = None
        self.controls: TurnControls | None = None  # the settings panel's (`Handlers.settings`)
        self.pause: float | None = None  # the hands-free pause slider's
        self.mic_lock = threading.Lock()  # the microphone's posts, one at a time, in order
        # Hands-free turns started on the server as the user's turn ended (`TurnFeed`):
        # those the page's turn has not shown yet, oldest first; and all not yet done.
        self.feeds: list[TurnFeed] = []
        self.live_feeds: list[TurnFeed] = []
        # The microphone's thread starts and swaps the guesses (`early`, `ahead`); turns and
        # the page's handlers drop them from theirs.
        self.guess_lock = threading.RLock()
        self.utterance_seq = 0
        self.interrupt_seq = 0
        self.speaking_until = 0.0  # monotonic time the assistant's audio is expected to end
        self.hands_free_status = ""

    @property
    def recording(self) -> bool:
        """The detector is Record's (push to talk: no pause ends its turn)."""
        return self.detector is not None and not self.detector.config.end_on_pause

    @property
    def busy(self) -> bool:
        return self.cancel is not None

    def __deepcopy__(self, memo: dict) -> UISession:
        # gr.State may deep-copy values; a session holds locks and a live turn, and
        # must stay one object per tab.
        return self


@dataclass
class TurnControls:
    """The settings panel's values, passed to every turn."""

    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    voice: str | None = None


@dataclass
class Utterance:
    """Hands-free speech queued for a turn (`Conversation.take_utterance`).

    Attributes:
        audio: `(16000, samples)`, the utterances spoken since the last turn, joined.
        ended_at: `time.perf_counter()` when the user stopped talking (for the latency line).
        early: its words heard ahead (`Agent.hear_early`), for `run_turn(early=...)`;
            the turn uses them only when they were heard from this very audio.
        ahead: its turn, already started at the user's last short pause and confirmed
            (`pipeline.ahead.TurnAhead`), for `run_turn(ahead=...)`.
    """

    audio: tuple[int, np.ndarray]
    ended_at: float | None = None
    early: Any | None = None
    ahead: Any | None = None


Update = tuple[list[dict[str, Any]], str | None, str]  # (chat, whole reply audio, status)


class TurnFeed:
    """A hands-free turn run on a worker from the moment the user's turn ends; the page's
    turn (`Conversation.take_feeds`) shows its updates.

    The page learns that a turn ended from the microphone stream's answer (a hidden
    trigger) and only then asks for the turn: a reply, a change event and a new request
    through Gradio's queue, all between the end of the pause and the first sound. Started
    here, the turn's voice goes to the tab's audio stream (`ui.playback`) as it is made,
    whatever the trigger's delay; the page's turn mirrors its chat and status.

    Args:
        token: the turn's cancel token (Clear, the tab closing and hands-free switched off
            cancel a turn still waiting for the one before it).
        updates: `Conversation.run_turn(..., token=token)`, run to its end on the worker.
    """

    def __init__(self, token: CancelToken, updates: Iterator[Update]) -> None:
        self.token = token
        self._updates = updates
        self._queue: queue.Queue[Update | None] = queue.Queue()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="hands-free-turn", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        try:
            for update in self._updates:
                self._queue.put(update)
                if self._stop.is_set():
                    break
        except Exception:  # run_turn reports its own failures; this is a bug
            log.exception("the hands-free turn failed")
        finally:
            try:
                close = getattr(self._updates, "close", None)
                if callable(close):
                    close()  # on this thread: run_turn's cleanup cancels a turn left early
            finally:
                self._queue.put(None)  # the page's turn must never wait for nothing

    def updates(self) -> Iterator[Update]:
        """The turn's updates as they come, the latest only when several are waiting.

        Each update re-renders the whole chat on the server and in the page, work the LLM
        and the voice need on a small CPU; the chat is one list changed in place, so the
        latest update holds every one before it (and the last carries the reply's file).
        Closing this early stops the turn ("closed").
        """
        finished = False
        try:
            while (update := self._queue.get()) is not None:
                ended = False
                while not self._queue.empty():
                    newer = self._queue.get_nowait()
                    if newer is None:
                        ended = True
                        break
                    update = newer
                yield update
                if ended:
                    break
            finished = True
        finally:
            if not finished:
                self._stop.set()

    @property
    def done(self) -> bool:
        return not self._worker.is_alive()


def discard(*guesses: Any) -> None:
    """Discard each guess given (`EarlyHearing`, `TurnAhead`); None stands for none."""
    for guess in guesses:
        if guess is not None:
            guess.discard()


def wav_bytes(sample_rate: int, samples: np.ndarray) -> bytes:
    """16-bit mono WAV bytes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm16(samples))
    return out.getvalue()


def latency_line(timings: Any, *, spoken: bool) -> str:
    """'heard in 0.4 s · first word 0.9 s · speaking at 1.3 s' from a `TurnTimings`."""
    if timings is None:
        return ""
    parts = []
    for label, name, wanted in (
        ("heard in", "transcript_ready", spoken),
        ("first word", "first_token", True),
        ("speaking at", "first_audio", True),
    ):
        value = getattr(timings, name, None)
        if wanted and isinstance(value, int | float):
            parts.append(f"{label} {value:.1f} s")
    return " · ".join(parts)


def friendly_error(exc: BaseException) -> str:
    """A message for the person at the screen; never a stack trace."""
    if isinstance(exc, VoiceAgentError):
        text = str(exc).strip() or type(exc).__name__
        return text[:1].upper() + text[1:]
    return f"Something went wrong ({type(exc).__name__}). The conversation is intact; try again."


def apply_controls(agent: Any, session: Any, controls: TurnControls) -> None:
    """Put the settings panel's values on the agent session before a turn."""
    if controls.system_prompt is not None and hasattr(session, "system_prompt"):
        session.system_prompt = controls.system_prompt.strip() or None
    if controls.voice is not None and hasattr(session, "voice"):
        session.voice = controls.voice or None
    generation = getattr(session, "generation", None)
    if generation is not None:
        changes: dict[str, Any] = {}
        if controls.temperature is not None:
            changes["temperature"] = float(controls.temperature)
        if controls.max_tokens is not None:
            changes["max_new_tokens"] = int(controls.max_tokens)
        if changes:
            session.generation = replace(generation, **changes)


class Conversation:
    """The Conversation tab's handlers over one shared agent.

    Args:
        agent_factory: returns the process-wide `Agent` (called lazily, once).
        pause_default: hands-free pause length when the slider sends nothing.
        transcript_dir: where transcript downloads (and whole-reply audio) are written.
        stream_audio: send each audio chunk to the tab's page player as it is made
            (`ui.playback`), when the page is connected; False: the whole reply plays
            once it is spoken. Either way the turn ends with the whole reply as a file.
        channels: the audio channels the page player reads (default: the process's).
    """

    def __init__(
        self,
        agent_factory: Callable[[], Any],
        *,
        pause_default: float = 0.6,
        transcript_dir: Path | None = None,
        stream_audio: bool = True,
        channels: AudioChannels | None = None,
    ) -> None:
        self._agent_factory = agent_factory
        self.channels = channels if channels is not None else default_channels()
        self._agent: Any | None = None
        self._agent_lock = threading.Lock()
        self._tabs: dict[str, UISession] = {}  # the open pages' sessions, by tab id
        self._tabs_lock = threading.Lock()
        self.pause_default = pause_default
        self.stream_audio = stream_audio
        self.transcript_dir = transcript_dir or Path(
            tempfile.mkdtemp(prefix="voice-agent-transcripts-")
        )

    @property
    def agent(self) -> Any:
        with self._agent_lock:
            if self._agent is None:
                self._agent = self._agent_factory()
            return self._agent

    # --- session life ------------------------------------------------------------------

    def new_session(self) -> UISession:
        return UISession(self._agent_session(), self.channels.open() if self.stream_audio else None)

    def open_tab(self) -> UISession:
        """A page loaded: its session, found by its tab id from now on (`tab`)."""
        ui = self.new_session()
        self._register(ui)
        return ui

    def tab(self, tab_id: str) -> UISession | None:
        """The open page with this id (its microphone posts name it), or None."""
        with self._tabs_lock:
            return self._tabs.get(tab_id)

    def _register(self, ui: UISession) -> None:
        with self._tabs_lock:
            if ui.tab_id in self._tabs or len(self._tabs) < MAX_TABS:
                self._tabs[ui.tab_id] = ui
            else:  # a flood of page loads; the page still works, without hands-free
                log.warning("%d tabs open: this one has no hands-free microphone", MAX_TABS)

    def _agent_session(self) -> Any:
        agent = self.agent
        try:
            # This tab speaks the session's timers when they ring (`ring_timers`).
            return agent.new_session(ring_timers=True)
        except TypeError:  # an agent without timers
            return agent.new_session()

    def ensure(self, ui: UISession | None) -> UISession:
        return ui if isinstance(ui, UISession) else self.new_session()

    def close(self, ui: UISession | None) -> None:
        """The tab went away: stop whatever it was running."""
        if isinstance(ui, UISession):
            if ui.cancel is not None:
                ui.cancel.cancel("tab closed")
            self._cancel_feeds(ui, "tab closed")
            self._drop_early(ui)
            self.channels.close(ui.audio)
            ui.audio = None
            with self._tabs_lock:
                if self._tabs.get(ui.tab_id) is ui:
                    del self._tabs[ui.tab_id]

    # --- turns -------------------------------------------------------------------------

    def run_turn(
        self,
        ui: UISession,
        controls: TurnControls,
        *,
        text: str | None = None,
        audio: Any | None = None,
        speech_ended_at: float | None = None,
        early: Any | None = None,
        ahead: Any | None = None,
        token: CancelToken | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], str | None, str]]:
        """Run one turn, yielding (chat, audio, status text).

        audio: None until the last step, which carries the whole reply as a WAV
        file path (None when nothing was spoken). While the turn runs, each chunk
        goes to the page's player as it is made (`ui.audio`, when the page is
        connected; `ui.played_live` then says so). The chat is the session's own
        list, updated in place as the transcript, reply text and latency arrive.
        `early`: the audio's words heard ahead (hands-free, `Utterance.early`).
        `ahead`: the audio's turn, started at the user's short pause (`Utterance.ahead`):
        its events are read instead of starting the turn again, when it was started with
        these `controls`. `token`: the turn's cancel token, made by the caller (`TurnFeed`);
        a turn cancelled while it waited for the one before it does not run.
        """
        spoken = audio is not None
        if ahead is not None and (
            ahead.token.cancelled or ahead.controls != controls or not ahead.made_from(audio)
        ):
            if token is ahead.token:
                token = None  # the guess's own token (a `TurnFeed`'s) ends with it
            ahead.discard()  # cancelled, or the settings changed since: start afresh
            ahead = None
        if ahead is None:
            self._drop_ahead(ui)  # another message came first: that guess is not the turn
        if not ui.turn_lock.acquire(timeout=TURN_HANDOVER_S):
            discard(early, ahead)
            yield ui.chat, None, "Still answering the previous message: press Stop first."
            return
        token = ahead.token if ahead is not None else (token or CancelToken())
        if token.cancelled:  # Clear or the tab closing while it waited: nothing to run
            discard(early, ahead)
            ui.turn_lock.release()
            return
        if speech_ended_at is not None:
            log.info(
                "hands-free turn starts %.2f s after the end of speech (%s)",
                time.perf_counter() - speech_ended_at,
                "started ahead at the pause" if ahead is not None else "started now",
            )
        ui.cancel = token
        exchange = Exchange(user="(audio)" if spoken else (text or ""))
        user_msg = {
            "role": "user",
            "content": f"{VOICE_TAG} …" if spoken else safe_markdown(exchange.user),
        }
        bot_msg: dict[str, Any] = {"role": "assistant", "content": "…"}
        tool_msgs: dict[str, dict[str, Any]] = {}  # call id -> its message in the chat
        ui.chat.extend([user_msg, bot_msg])
        ui.exchanges.append(exchange)
        reply = ""
        spoken_chunks: list[Any] = []
        channel = ui.audio if self.stream_audio else None
        live = channel is not None and channel.listening
        audio_turn = channel.begin_turn() if channel is not None else 0
        ui.played_live = False
        pushed_at = 0.0  # perf_counter() when the first chunk went to the page
        shown_at = 0.0  # perf_counter() when the reply's text last went to the page
        timings = None
        problem = ""
        finished = False
        events: Any = None
        try:
            yield ui.chat, None, "Listening…" if spoken else "Thinking…"
            agent = self.agent
            apply_controls(agent, ui.session, controls)
            extra: dict[str, Any] = {}
            if speech_ended_at is not None:
                extra["speech_ended_at"] = speech_ended_at
            if early is not None:
                extra["early"] = early
            if ahead is not None:
                turn = ahead.events()
                early = None  # the turn ahead took it
            else:
                turn = agent.run_turn(ui.session, audio=audio, text=text, cancel=token, **extra)
            # While the turn waits behind other conversations, say so, with its place.
            gates = getattr(getattr(agent, "models", None), "gates", None) or {}
            events = watch_queue(turn, token, gates)
            for event in events:
                if isinstance(event, Queued):
                    yield ui.chat, None, event.status()
                    continue
                kind = event.kind
                if kind == "transcript":
                    exchange.user = event.text.strip() or "(nothing heard)"
                    shown = safe_markdown(exchange.user)
                    user_msg["content"] = f"{VOICE_TAG} {shown}" if spoken else shown
                    yield ui.chat, None, "Thinking…"
                elif kind == "text":
                    reply += event.text
                    bot_msg["content"] = safe_markdown(reply)
                    now = time.perf_counter()
                    if now - shown_at >= TEXT_UPDATE_S:  # later words ride the next update
                        shown_at = now
                        yield ui.chat, None, "Answering…"
                elif kind == "tool" and event.tool is not None:
                    status = self._show_tool(ui, bot_msg, tool_msgs, event.tool, exchange)
                    yield ui.chat, None, status
                elif kind == "audio" and event.audio is not None:
                    chunk = event.audio
                    seconds = len(chunk.samples) / float(chunk.sample_rate)
                    ui.speaking_until = max(ui.speaking_until, time.monotonic()) + seconds
                    if ui.detector is not None:
                        # The echo guard learns what the speaker plays (vad.TurnDetector.play).
                        ui.detector.play(chunk.samples, chunk.sample_rate)
                    spoken_chunks.append(chunk)
                    if live and channel is not None:
                        if not ui.played_live:
                            pushed_at = time.perf_counter()
                        channel.push(audio_turn, chunk.sample_rate, chunk.samples)
                        ui.played_live = True
                        yield ui.chat, None, "Speaking…"
                elif kind == "notice" and event.code == "filler":
                    yield ui.chat, None, event.text  # said aloud while a tool runs
                elif kind == "notice":
                    exchange.note = event.text
                    yield ui.chat, None, event.text
                elif kind == "error":
                    problem = event.text or "The turn failed."
                    timings = event.timings or timings
                elif kind == "done":
                    timings = event.timings
            finished = True
        except (InputError, ModelUnavailableError, VoiceAgentError) as exc:
            problem = friendly_error(exc)
        except Exception as exc:  # a handler must not break the session; the log has details
            log.exception("turn failed")
            problem = friendly_error(exc)
        finally:
            if not finished and problem == "":
                # Gradio closed this generator (page gone, event cancelled): stop the work.
                token.cancel("closed")
                close = getattr(events, "close", None)
                if callable(close):
                    close()
            discard(early)  # a turn that ended before hearing must not leave it running
            ui.cancel = None
            ui.turn_lock.release()
        exchange.assistant = reply
        # The agent cancels the token itself when a turn ends early ("closed"); only the
        # Stop button and barge-in count as cutting the reply short.
        if token.reason in ("stopped", "barge-in") and not problem:
            exchange.note = "interrupted" if token.reason == "barge-in" else "stopped"
        if problem:
            exchange.note = problem
            if spoken and exchange.user == "(audio)":
                user_msg["content"] = f"{VOICE_TAG} (audio)"
        if ui.played_live and channel is not None and timings is not None:
            _when_heard(channel, audio_turn, timings, pushed_at)
        exchange.latency = latency_line(timings, spoken=spoken)
        bot_msg["content"] = render_reply(exchange)
        whole = self._reply_file(ui, spoken_chunks) if spoken_chunks else None
        status = "Not answered: see the message above." if problem else "Ready"
        if exchange.note in ("stopped", "interrupted"):
            status = exchange.note.capitalize()
        yield ui.chat, whole, status

    @staticmethod
    def _show_tool(
        ui: UISession,
        bot_msg: dict[str, Any],
        shown: dict[str, dict[str, Any]],
        record: Any,
        exchange: Exchange,
    ) -> str:
        """Put a tool call in the chat (before the answer) or update it; returns the status."""
        message = tool_message(record)
        existing = shown.get(record.call_id)
        if existing is not None:
            existing.update(message)
        else:
            shown[record.call_id] = message
            at = next((i for i, m in enumerate(ui.chat) if m is bot_msg), len(ui.chat))
            ui.chat.insert(at, message)
        if record.status == "running":
            return f"Using {record.name}…"
        outcome = record.result if record.status == "done" else f"({record.error})"
        exchange.tools.append(f"{record.name}({json.dumps(record.arguments)}) -> {outcome}")
        return "Answering…"

    def _reply_file(self, ui: UISession, chunks: list[Any]) -> str:
        rate = chunks[0].sample_rate
        samples = np.concatenate([np.asarray(c.samples, np.float32) for c in chunks])
        path = (
            self.transcript_dir
            / f"reply-{getattr(ui.session, 'id', id(ui))}-{len(ui.exchanges)}.wav"
        )
        path.write_bytes(wav_bytes(rate, samples))
        return str(path)

    def stop(self, ui: UISession | None) -> str:
        """Stop button: cancel this tab's turn. Returns what happened, for a toast."""
        if not isinstance(ui, UISession) or ui.cancel is None:
            return "Nothing is running."
        ui.cancel.cancel("stopped")
        if ui.audio is not None:
            ui.audio.flush()
        try:
            self.agent.cancel(ui.session)
        except Exception:  # the token alone already stops the turn
            log.debug("agent.cancel failed", exc_info=True)
        return "Stopped."

    def clear(self, ui: UISession) -> UISession:
        """Forget the conversation (a running turn is stopped first)."""
        if ui.cancel is not None:
            self.stop(ui)
        # A turn still winding down sends this list in its last updates: empty it, or the
        # old conversation comes back on screen right after Clear.
        ui.chat.clear()
        if ui.audio is not None:
            ui.audio.flush()
        self._cancel_feeds(ui, "stopped")
        self._drop_early(ui)
        # The page keeps its audio stream and its microphone (the same tab id).
        fresh = UISession(self._agent_session(), ui.audio, ui.tab_id)
        fresh.detector, fresh.detector_pause = ui.detector, ui.detector_pause
        fresh.controls, fresh.pause = ui.controls, ui.pause
        with self._tabs_lock:
            if self._tabs.get(ui.tab_id) is ui:
                self._tabs[ui.tab_id] = fresh
        # The page keeps counting where it was: a count that started again from 0 would
        # repeat numbers it has already seen (once, the first hands-free turn after Clear
        # was never answered for that reason).
        fresh.utterance_seq, fresh.interrupt_seq = ui.utterance_seq, ui.interrupt_seq
        if hasattr(fresh.session, "allow_actions"):  # consent is the tab's, not the chat's
            fresh.session.allow_actions = getattr(ui.session, "allow_actions", None)
        return fresh

    # --- timers --------------------------------------------------------------------------

    def timers_pending(self, ui: UISession) -> bool:
        """Whether this tab has timers still to ring."""
        timers = getattr(self.agent, "timers", None)
        return bool(timers is not None and timers.pending(getattr(ui.session, "id", "")))

    def ring(self, ui: UISession, voice: str | None = None) -> tuple[str, str | None]:
        """Announce this tab's timers that are due: (what was said, its audio file), or ("", None).

        Waits while a turn is running (the next poll rings them), so the reply's audio is
        not cut off; without a voice the announcement is text only. A connected page
        hears it at once (`ui.played_live`); the file is for the player.
        """
        timers = getattr(self.agent, "timers", None)
        if timers is None or ui.busy:
            return "", None
        rung = timers.take_rung(getattr(ui.session, "id", ""))
        if not rung:
            return "", None
        said = " ".join(t.announcement() for t in rung)
        ui.chat.append({"role": "assistant", "content": "Timer: " + safe_markdown(said)})
        try:
            rate, samples = self.agent.say(said, voice or getattr(ui.session, "voice", None))
        except Exception as exc:  # the chat still shows it
            log.warning("could not say the timer: %s", exc)
            return said, None
        channel = ui.audio if self.stream_audio else None
        ui.played_live = channel is not None and channel.listening
        if channel is not None and ui.played_live:
            channel.push(channel.begin_turn(), rate, samples)
        path = self.transcript_dir / f"timer-{getattr(ui.session, 'id', id(ui))}-{rung[0].id}.wav"
        path.write_bytes(wav_bytes(rate, samples))
        return said, str(path)

    def transcript(self, ui: UISession) -> Path | None:
        """Write the conversation as Markdown; None when there is nothing to write."""
        if not ui.exchanges:
            return None
        lines = [f"# Conversation ({time.strftime('%Y-%m-%d %H:%M')})", ""]
        for ex in ui.exchanges:
            lines += [f"**You:** {ex.user}", ""]
            for used in ex.tools:
                lines += [f"_Tool: {used}_", ""]
            if ex.assistant:
                lines += [f"**Assistant:** {ex.assistant}", ""]
            if ex.note:
                lines += [f"_({ex.note})_", ""]
            if ex.latency:
                lines += [f"_{ex.latency}_", ""]
        session_id = str(getattr(ui.session, "id", id(ui)))[:12]
        path = self.transcript_dir / f"conversation-{session_id}.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    # --- hands-free ----------------------------------------------------------------------

    def hear_chunk(
        self,
        ui: UISession,
        chunk: Any,
        pause_s: float | None,
        *,
        hold: bool = False,
        start: bool = False,
    ) -> tuple[bool, bool]:
        """Feed one microphone chunk to turn detection.

        `hold` (the Record button, push to talk): a pause never ends the turn (the
        microphone's end does), but the words before it are still heard and answered
        ahead as in hands-free talk. `start`: the first chunk of a recording; the user
        took the floor, so a reply still running is cut (a barge-in).

        Turns it starts take the settings panel's values (`ui.controls`). Returns (a turn
        ended: an utterance is queued, the user barged in: the running turn was cancelled).
        """
        if chunk is None:
            return False, False
        sample_rate, samples = chunk
        pause = float(pause_s or self.pause_default)
        if ui.detector is None or ui.detector_pause != pause or ui.recording != hold:
            from voice_agent.audio.vad import TurnDetector

            # Record: no pause ends the turn (Stop does, or the detector's `max_turn_s`).
            ui.detector = TurnDetector(pause_s=pause, end_on_pause=not hold)
            ui.detector_pause = pause
        detector = ui.detector
        interrupted = False
        if start and hold:
            detector.reset()  # nothing of an earlier recording (its pre-roll) joins this one
            if ui.busy or time.monotonic() < ui.speaking_until:
                self._barge_in(ui)
                interrupted = True
        detector.assistant_speaking = ui.busy or time.monotonic() < ui.speaking_until
        ended = False
        for event in detector.feed(np.asarray(samples), int(sample_rate)):
            if event.kind == "speech_start":
                ui.hands_free_status = "Hearing you…"
            elif event.kind == "barge_in":
                self._barge_in(ui)
                interrupted = True
            elif event.kind == "pause" and event.audio is not None and event.audio.size:
                self._hear_early(ui, event.audio)
                self._answer_ahead(ui, event)
            elif event.kind == "resume":
                # More words are coming: that transcript and that answer are not the turn's.
                with ui.guess_lock:
                    discard(ui.early, ui.ahead)
                    ui.ahead = None
                self._read_ahead(ui, ui.early)
            elif event.kind == "end_of_turn" and event.audio is not None and event.audio.size:
                self.queue_utterance(ui, event)
                ended = True
        if not ended and not detector.in_speech and not ui.busy:
            ui.hands_free_status = RECORDING if hold else LISTENING
        return ended, interrupted

    def _barge_in(self, ui: UISession) -> None:
        """The user speaks over the reply: silence it and stop making it."""
        ui.speaking_until = 0.0
        if ui.audio is not None:
            ui.audio.flush()
        if ui.cancel is not None:
            ui.cancel.cancel("barge-in")
            try:
                self.agent.cancel(ui.session)
            except Exception:
                log.debug("agent.cancel failed", exc_info=True)
        ui.interrupt_seq += 1

    def queue_utterance(self, ui: UISession, event: Any) -> None:
        """An `end_of_turn`: its speech waits for the turn (`take_utterance`), with the
        words heard at its last pause when they are its words."""
        with ui.guess_lock:
            early, ui.early = ui.early, None
            ahead, ui.ahead = ui.ahead, None
            # Speech already waits: the turn hears both joined, which no guess heard.
            discard(ui.early_queued, ui.ahead_queued)
            ui.early_queued = ui.ahead_queued = None
            if early is not None and not ui.utterances and early.made_from(event.audio):
                ui.early_queued = early
            else:
                discard(early)
            if ahead is not None and not ui.utterances and ahead.made_from(event.audio):
                ui.ahead_queued = ahead  # the user is done: the turn reads (confirms) it
            else:
                discard(ahead)
        ui.utterances.append(event.audio)
        ui.utterance_seq += 1
        ui.speech_ended_at = time.perf_counter() - event.silence_s
        ui.hands_free_status = "Thinking…"
        if ui.controls is not None and not on_zero_gpu():
            # The turn starts now, here (`TurnFeed`); on ZeroGPU the GPU exists only in the
            # page's own handler, which then runs the turn.
            utterance = self.take_utterance(ui)
            if utterance is not None:
                ahead = utterance.ahead
                token = ahead.token if ahead is not None else CancelToken()
                feed = TurnFeed(token, self.run_utterance(ui, ui.controls, utterance, token))
                ui.live_feeds = [f for f in ui.live_feeds if not f.done] + [feed]
                ui.feeds.append(feed)

    def run_utterance(
        self,
        ui: UISession,
        controls: TurnControls,
        utterance: Utterance,
        token: CancelToken | None = None,
    ) -> Iterator[Update]:
        """`run_turn` for hands-free speech."""
        return self.run_turn(
            ui,
            controls,
            audio=utterance.audio,
            speech_ended_at=utterance.ended_at,
            early=utterance.early,
            ahead=utterance.ahead,
            token=token,
        )

    @staticmethod
    def take_feeds(ui: UISession) -> list[TurnFeed]:
        """The hands-free turns started on the server since the page last asked, oldest first."""
        feeds, ui.feeds = ui.feeds, []
        return feeds

    @staticmethod
    def _cancel_feeds(ui: UISession, reason: str, *, waiting_only: bool = False) -> None:
        """Cancel this tab's hands-free turns started on the server (`waiting_only`: those
        still waiting for the turn before them, not the one running)."""
        for feed in ui.live_feeds:
            if not (waiting_only and feed.token is ui.cancel):
                feed.token.cancel(reason)
        ui.live_feeds = [f for f in ui.live_feeds if not f.done]

    def _hear_early(self, ui: UISession, samples: np.ndarray) -> None:
        """The user paused: start hearing the utterance so far, in place of the last guess."""
        hear_early = getattr(self.agent, "hear_early", None)
        if not callable(hear_early):  # an agent without it: every turn transcribes
            return
        try:
            ui.early = hear_early(samples, after=ui.early)
        except Exception:  # a guess; the turn transcribes as usual
            log.warning("could not start the early transcription", exc_info=True)
            self._drop_early(ui)

    def _answer_ahead(self, ui: UISession, event: Any) -> None:
        """The user paused: start their turn on the utterance so far, in place of the last
        one started (`pipeline.ahead.TurnAhead`). Only in an idle tab with nothing queued,
        when `VAD_ANSWER_AHEAD` is on and the microphone sent the settings panel's values
        (the turn must be the one the page would start)."""
        controls = ui.controls
        with ui.guess_lock:  # a turn dropping the guesses now waits, then drops this one
            self._drop_ahead(ui)
            if controls is None or not self._may_work_ahead(ui):
                return
            from voice_agent.pipeline.ahead import TurnAhead

            try:
                apply_controls(self.agent, ui.session, controls)
                ui.ahead = TurnAhead(
                    self.agent,
                    ui.session,
                    event.audio,
                    early=ui.early,
                    speech_ended_at=time.perf_counter() - event.silence_s,
                    controls=controls,
                )
            except Exception:  # a guess; the turn starts as usual when the user is done
                log.warning("could not start the turn ahead", exc_info=True)
                ui.ahead = None

    def _may_work_ahead(self, ui: UISession) -> bool:
        """Whether the tab may start work for a turn before the user is done: idle, nothing
        queued, `VAD_ANSWER_AHEAD` on, and the microphone sent the settings panel's values
        (the session holds them, so the work is the turn's own)."""
        return not (
            ui.controls is None
            or ui.busy
            or ui.utterances
            or not getattr(getattr(self.agent, "settings", None), "vad_answer_ahead", False)
            or on_zero_gpu()  # the GPU exists only inside the page's own handlers there
        )

    def _read_ahead(self, ui: UISession, early: Any) -> None:
        """The user went on after a pause: once the words before it are heard, have the
        LLM prefill them as the start of the turn's message (`Agent.read_ahead`), so the
        turn computes only what follows. Under the same conditions as answering ahead."""
        read_ahead = getattr(self.agent, "read_ahead", None)
        if early is None or not callable(read_ahead) or not self._may_work_ahead(ui):
            return

        def run() -> None:
            # The guess's engine work cannot be stopped: its words come when it ends.
            if not early.wait(READ_AHEAD_WAIT_S):
                return
            if early.words and not ui.busy and not ui.utterances:
                try:
                    read_ahead(ui.session, early.words)
                except Exception:  # a head start only; the turn prefills it all itself
                    log.warning("could not read ahead", exc_info=True)

        threading.Thread(target=run, name="read-ahead", daemon=True).start()

    @staticmethod
    def _drop_ahead(ui: UISession) -> None:
        """Discard this tab's turns started ahead (none may be shown any more)."""
        with ui.guess_lock:
            discard(ui.ahead, ui.ahead_queued)
            ui.ahead = ui.ahead_queued = None

    @classmethod
    def _drop_early(cls, ui: UISession) -> None:
        """Discard every guess of this tab (none may be used any more)."""
        discard(ui.early, ui.early_queued)
        ui.early = ui.early_queued = None
        cls._drop_ahead(ui)

    def take_utterance(self, ui: UISession) -> Utterance | None:
        """The queued hands-free speech (joined, 16 kHz) and its early words, or None."""
        from voice_agent.audio.vad import SAMPLE_RATE

        if not ui.utterances:
            return None
        audio = np.concatenate(ui.utterances)
        ui.utterances.clear()
        with ui.guess_lock:
            early, ui.early_queued = ui.early_queued, None
            ahead, ui.ahead_queued = ui.ahead_queued, None
        return Utterance((SAMPLE_RATE, audio), ui.speech_ended_at, early, ahead)

    def stop_listening(self, ui: UISession) -> None:
        """Hands-free switched off or the microphone stopped: drop the detector state."""
        if ui.detector is not None:
            ui.detector.reset()
        ui.utterances.clear()
        self._cancel_feeds(ui, "stopped", waiting_only=True)
        self._drop_early(ui)
        ui.hands_free_status = ""


def _when_heard(channel: AudioChannel, turn: int, timings: Any, pushed_at: float) -> None:
    """Once the page reports the turn's first sound, put it in the turn's timings (the
    agent keeps them for Diagnostics): when the first chunk was made, plus the time from
    handing it to the page to its sound."""
    made = getattr(timings, "first_audio", None)
    if not isinstance(made, int | float):
        return

    def heard(at: float) -> None:
        timings.first_audio_heard = round(made + max(0.0, at - pushed_at), 4)

    channel.when_heard(turn, heard)


def render_reply(exchange: Exchange) -> str:
    """The assistant bubble's final Markdown: reply, a note when cut short, and latency."""
    body = safe_markdown(exchange.assistant.strip())
    note = exchange.note
    parts: list[str] = []
    if body:
        parts.append(body + (" …" if note in ("stopped", "interrupted") else ""))
    if note:
        icon = "⚠ " if note not in ("stopped", "interrupted") else ""
        parts.append(f'<span class="turn-note">{icon}{html.escape(note, quote=False)}</span>')
    if exchange.latency:
        parts.append(f'<span class="turn-latency">{exchange.latency}</span>')
    return "\n\n".join(parts) or "*(no reply)*"
