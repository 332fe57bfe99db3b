"""Speak: the reply's text -> phrases -> audio chunks, while the reply is still being written.

The think stage writes the reply's pieces into a `TextFeed`; `speak` (a worker)
hands them, as they come, to the TTS engine's `stream` under the TTS gate. Where
the text is cut into what is spoken is one `Phrasing` for the one splitter
(`voice_agent.tts.text.chunking`), chosen from what the engine declares:

- an engine that takes text while speaking (`capabilities.streaming_text_in`,
  Dia2) phrases it itself, a few words at a time;
- the others speak the first phrase early (after `first_phrase_words` words, or
  at its first clause of three words or more), then a sentence at a time; a
  piece may run at most `PIECE_GROWTH` times the words of the one before it
  (and never `max_words`) before it is cut, at a clause where it has one, so a
  voice slower than the text never leaves a gap because a piece grew; and when
  the audio made so far is about to run out (`HURRY_S`), the words waiting go at
  once, cut at their last clause or phrase-opening word: the LLM writing slower
  than speech for a moment gives a shorter piece, not silence.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

from voice_agent.core.cancel import CancelToken
from voice_agent.core.errors import BusyError
from voice_agent.core.threads import CPU_CORES
from voice_agent.pipeline.admission import POLL_S, EngineGate
from voice_agent.pipeline.relay import AudioOut, Relay, SpeechFailed, StageDone
from voice_agent.pipeline.turn import TurnClock, TurnTimings
from voice_agent.tts.base import AudioChunk, TTSCapabilities, TTSEngine
from voice_agent.tts.text.chunking import Phrasing

log = logging.getLogger(__name__)

# A reply that runs this many words without a sentence end is cut there:
# sentence-at-a-time engines would otherwise wait for the whole run.
MAX_UNSPOKEN_WORDS = 25
# The first phrase is spoken once it has this many words (or a clause mark after 3):
# time to first audio is what a listener notices most.
FIRST_PHRASE_WORDS = 8
# A piece is cut at this many times the previous piece's words: a voice with a
# real-time factor under 1 / PIECE_GROWTH (VITS next to the LLM on 2 cores: 0.6-0.75)
# has each piece ready before the one before it has played.
PIECE_GROWTH = 1.5
# When the audio made so far will have played out within this many seconds, the words
# waiting go to the voice at once: a short phrase takes about 0.1 s to make on 2 cores,
# the check runs at least every 50 ms (`TextFeed.pieces`), and the page starts each chunk
# about 0.2 s after the engine hands it out. On the voice bench (2-core EPYC) the 0.85 s
# first phrase was followed by 0.3-0.8 s of silence in every turn without it; 0.5 gave
# no stall but ran on in 2-word pieces ("There is | a small | chance of"); 0.2 gives no
# stall and pieces of 4 words (median), a sixth of them 2 words or fewer.
HURRY_S = 0.2


class SpeechStop:
    """The speak stage's cancel flag: the caller's token, or an abort after an LLM failure."""

    def __init__(self, token: CancelToken) -> None:
        self._token = token
        self._abort = threading.Event()

    @property
    def token(self) -> CancelToken:
        """The turn's token (the admission gate finds this waiter's place by it)."""
        return self._token

    def abort(self) -> None:
        self._abort.set()

    @property
    def cancelled(self) -> bool:
        return self._token.cancelled or self._abort.is_set()

    def is_set(self) -> bool:
        return self.cancelled


class _AnswerMark:
    """Feed marker: what follows is the answer written after the tools (not the filler)."""


class TextFeed:
    """The reply's text pieces, from the think stage (`put`, `close`) to the speak stage."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | _AnswerMark | None] = queue.Queue()
        self.waited_s = 0.0  # time the reader spent waiting for text (not compute)
        # The TTS has taken text of the answer written after the tools: audio made from now
        # on is the answer's, not the filler's (for `TurnTimings.answer_audio`).
        self.answer_reached = False
        self._tools = False

    def put(self, piece: str) -> None:
        self._queue.put(piece)

    def mark_answer(self) -> None:
        """The tools have run; the pieces from here on are the answer."""
        self._tools = True
        self._queue.put(_AnswerMark())

    @property
    def after_tools(self) -> bool:
        return self._tools

    def close(self) -> None:
        """No more text: the reader's iterator ends after what is queued."""
        self._queue.put(None)

    def pieces(self, stop: SpeechStop, stage: str = "tts") -> Iterator[str]:
        """The pieces as they arrive, until the feed closes or `stop` is set; "" after each
        `POLL_S` without text, so the splitter can still send the words that wait when the
        voice is about to run dry (`Phrasing.hurry_s`) while the LLM is slow to write.

        The reader counts as computing (`CPU_CORES`, as `stage`) except while it waits
        here for text, so the LLM has the cores to itself meanwhile.
        """
        while not stop.cancelled:
            w0 = time.perf_counter()
            CPU_CORES.working(stage, False)
            try:
                piece = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                piece = ""
            finally:
                self.waited_s += time.perf_counter() - w0
                CPU_CORES.working(stage)
            if piece is None:
                return
            if isinstance(piece, _AnswerMark):
                self.answer_reached = True
                continue
            yield piece


def phrasing_for(
    capabilities: TTSCapabilities,
    *,
    first_phrase_words: int,
    max_words: int,
    growth: float = PIECE_GROWTH,
    hurry_s: float = HURRY_S,
) -> Phrasing | None:
    """How the reply is cut for this engine; None leaves it to the engine (it phrases itself)."""
    if capabilities.streaming_text_in:
        return None
    return Phrasing(
        "sentence",
        max_words=max_words,
        first_phrase_words=first_phrase_words,
        growth=growth,
        hurry_s=hurry_s,
    )


def speak(
    tts: TTSEngine,
    gate: EngineGate,
    feed: TextFeed,
    relay: Relay,
    *,
    voice: str | None,
    phrasing: Phrasing | None,
    stop: SpeechStop,
    timings: TurnTimings,
    clock: TurnClock,
    timeout_s: float,
) -> None:
    """Worker: speak the feed's text under the TTS gate and relay each audio chunk.

    A failure (or a full queue) is relayed as `SpeechFailed`; the reply goes on
    as text. Ends with `StageDone("speak")`. Records `first_audio`,
    `last_audio`, `audio_s` and `tts_s` (the engine's time, not the waits).
    """
    try:
        try:
            held = gate.enter(timeout_s=timeout_s, cancel=stop)
        except BusyError as exc:
            relay.put(SpeechFailed(exc))
            return
        if held is None:
            return
        a0 = time.perf_counter()
        chunks: Iterator[AudioChunk] | None = None
        # "tts", which the LLM gives way to, for a voice that makes a phrase at a time on
        # this CPU; "tts-beside" for one that takes text while it speaks (Dia2: it computes
        # all along and must not hold the LLM back) or computes elsewhere (a GPU, a server).
        on_cpu = phrasing is not None and getattr(tts, "device", None) == "cpu"
        stage = "tts" if on_cpu else "tts-beside"
        try:
            text = feed.pieces(stop, stage)
            chunks = tts.stream(text, voice=voice, cancel=stop, phrasing=phrasing)
            for chunk in chunks:
                CPU_CORES.fit()  # the LLM may have finished: the next piece gets its cores
                if stop.cancelled:
                    break
                now = clock.elapsed()
                if timings.first_audio is None:
                    timings.first_audio = now
                if feed.answer_reached and timings.answer_audio is None:
                    timings.answer_audio = now
                timings.last_audio = now
                timings.audio_s += len(chunk.samples) / float(chunk.sample_rate)
                relay.put(AudioOut(chunk))
        except Exception as exc:  # the text goes on; the caller gets a notice
            relay.put(SpeechFailed(exc))
        finally:
            CPU_CORES.working(stage, False)
            timings.tts_s = max(0.0, time.perf_counter() - a0 - feed.waited_s)
            close = getattr(chunks, "close", None)
            if callable(close):
                # Now, on this thread: the engine's own cleanup runs before the gate opens.
                try:
                    close()
                except Exception:  # speech is over either way
                    log.debug("closing the speech stream failed", exc_info=True)
            held.release()
    finally:
        relay.put(StageDone("speak"))
