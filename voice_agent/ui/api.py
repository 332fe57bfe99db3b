"""The app's public API and MCP tools: transcribe, speak and chat.

These three are the only endpoints `/gradio_api/info` lists, and so the only
tools Gradio's MCP server (`/gradio_api/mcp/`) offers; the page's own events are
kept out of the API (`blocks.build_ui`). Their docstrings are what an MCP client
reads. Each is stateless: `chat` answers one message in a fresh conversation
(with the tools: clock, calculator, unit conversion; timers do not ring here),
`speak` returns a WAV file, `transcribe` takes a file (an upload, or for MCP a URL
or base64 data, which Gradio fetches into its upload cache first).

They run outside Gradio's queue (`queue=False`), so MCP calls take Gradio's
direct path instead of a loop back over HTTP; the engines' admission gates still
queue them behind the conversation's turns. Bad input is a `gr.Error` with the
same words the REST API would use.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from voice_agent.core.errors import VoiceAgentError
from voice_agent.ui.uploads import uploaded_path

log = logging.getLogger(__name__)


def _fail(exc: BaseException) -> gr.Error:
    if isinstance(exc, VoiceAgentError):
        return gr.Error(str(exc).strip() or type(exc).__name__)
    log.exception("API call failed")
    return gr.Error(f"The call failed ({type(exc).__name__}); the server log has details.")


class PublicApi:
    """The endpoints, over the process-wide agent.

    Args:
        agent: returns the `Agent` (called on each request, so a lazy load works).
        out_dir: where `speak` writes its WAV files (Gradio then serves them from its cache).
    """

    def __init__(self, agent: Callable[[], Any], out_dir: Path | None = None) -> None:
        self._agent = agent
        self.out_dir = out_dir or Path(tempfile.mkdtemp(prefix="voice-agent-speech-"))

    def transcribe(self, audio: str) -> str:
        """Transcribe the speech in an audio recording to text.

        Args:
            audio: the recording: a WAV, MP3, FLAC or OGG file, up to MAX_AUDIO_SECONDS long.

        Returns:
            The words heard, or an empty text when the recording holds no speech.
        """
        try:
            if not audio:
                raise gr.Error("Send an audio file to transcribe.")
            return str(self._agent().transcribe(uploaded_path(audio)))
        except gr.Error:
            raise
        except Exception as exc:
            raise _fail(exc) from exc

    def speak(self, text: str, voice: str = "") -> str:
        """Say a text aloud with the assistant's voice.

        Args:
            text: what to say (plain sentences read best).
            voice: a voice name from the app's voice list; empty for the default voice.

        Returns:
            A WAV file of the speech.
        """
        from voice_agent.audio.io import encode_wav

        try:
            rate, samples = self._agent().say(text, voice or None)
            path = self.out_dir / f"speech-{uuid.uuid4().hex[:12]}.wav"
            path.write_bytes(encode_wav(rate, samples))
            return str(path)
        except Exception as exc:
            raise _fail(exc) from exc

    def chat(self, message: str) -> str:
        """Ask the voice assistant something and get its answer as text.

        It answers in a fresh conversation, in a few spoken-style sentences, and can use
        its tools: the current date and time, a calculator and unit conversion.

        Args:
            message: the question or request, e.g. "What is 24 times 37?".

        Returns:
            The assistant's answer.
        """
        try:
            agent = self._agent()
            session = agent.new_session()
            answer = ""
            for event in agent.run_turn(session, text=message, speak=False):
                if event.kind == "error":
                    raise gr.Error(event.text or "The reply failed.")
                if event.kind == "done":
                    answer = event.text
            return answer.strip()
        except gr.Error:
            raise
        except Exception as exc:
            raise _fail(exc) from exc


def wire(api: PublicApi) -> None:
    """Add the three endpoints to the Blocks being built (hidden components carry their types)."""
    with gr.Column(visible=False):
        audio_in = gr.Audio(type="filepath", label="audio")
        text_in = gr.Textbox(label="text")
        voice_in = gr.Textbox(label="voice", value="")
        message_in = gr.Textbox(label="message")
        text_out = gr.Textbox(label="text")
        speech_out = gr.Audio(type="filepath", label="speech")
        answer_out = gr.Textbox(label="answer")
        trigger = gr.Button("api", visible=False)
    common: dict[str, Any] = {"queue": False, "api_visibility": "public", "show_progress": "hidden"}
    trigger.click(api.transcribe, [audio_in], [text_out], api_name="transcribe", **common)
    trigger.click(api.speak, [text_in, voice_in], [speech_out], api_name="speak", **common)
    trigger.click(api.chat, [message_in], [answer_out], api_name="chat", **common)
