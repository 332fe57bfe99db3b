"""The official `openai` package, unchanged, against our /v1 routes (fake engines): chat plain
and streaming, transcription in every response format, speech, models, voices, and the
errors it raises for what we refuse."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.server_fakes import API_KEY, FakeModels, FakeTTS, settings_with
from voice_agent.server.app import create_app
from voice_agent.testing.server import LiveServer


@pytest.fixture(scope="module")
def client(keyed_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=keyed_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=30
    )


def test_chat_completion(client: openai.OpenAI, keyed_fakes: FakeModels) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        temperature=0.2,
        max_tokens=10,
        seed=1,
        stop=["END"],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "fake-llm"  # the real id, whatever was asked for
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there "
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 10
    sent = keyed_fakes.llm.last_settings
    assert (sent.temperature, sent.max_new_tokens, sent.seed, sent.stop) == (0.2, 10, 1, ("END",))
    assert keyed_fakes.llm.last_messages[0] == {"role": "system", "content": "be brief"}


def test_chat_content_parts_and_length_finish(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="anything-at-all",
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
        max_completion_tokens=2,
    )
    assert completion.choices[0].message.content == "echo: one "
    assert completion.choices[0].finish_reason == "length"


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_chat_stream_ends_with_done(keyed_server: LiveServer) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = httpx.post(
        keyed_server.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 2}, ["n"]),
        ({"messages": [{"role": "tool", "content": "x"}]}, ["tool_call_id"]),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/y"}}],
                    }
                ]
            },
            ["image_url", "only text"],
        ),
        ({"messages": []}, ["empty"]),
        ({"functions": [{"name": "f", "parameters": {}}]}, ["functions", "tools"]),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, ["tools[0]"]),
        ({"tool_choice": "required"}, ["tool_choice", "tools"]),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "g"}, ["g"]),
        ({"temperature": 3}, ["temperature"]),
        ({"max_tokens": 0}, ["max_tokens"]),
        ({"messages": [{"role": "user", "content": "x" * 60_001}]}, ["MAX_TEXT_CHARS"]),
    ],
)
def test_chat_refusals_are_openai_errors(
    client: openai.OpenAI, kwargs: dict, words: list[str]
) -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**request)
    assert info.value.status_code in (400, 413)
    message = info.value.body["message"]  # type: ignore[index]
    for word in words:
        assert word in message


def test_transcription_formats(client: openai.OpenAI, assets_dir: Path) -> None:
    path = assets_dir / "hello.wav"
    with path.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert result.text == "fake transcript"
    with path.open("rb") as f:
        text = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="text", language="en"
        )
    assert text.strip() == "fake transcript"
    with path.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", language="de"
        )
    assert verbose.text == "fake transcript" and verbose.language == "de"
    assert verbose.duration == pytest.approx(3.4, abs=0.1)
    assert verbose.segments and verbose.segments[0].end == pytest.approx(verbose.duration)


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"response_format": "srt"}, 400, ["srt", "json, text, verbose_json"]),
        ({"file": ("a.wav", b"garbage" * 50)}, 400, []),
        ({"file": ("a.wav", b"")}, 400, ["empty"]),
        ({"language": "not a language!"}, 400, ["language"]),
    ],
)
def test_transcription_refusals(
    client: openai.OpenAI, assets_dir: Path, kwargs: dict, status: int, words: list[str]
) -> None:
    request = {"model": "whisper-1", "file": (assets_dir / "hello.wav").read_bytes(), **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(**request)
    assert info.value.status_code == status
    for word in words:
        assert word in info.value.body["message"]  # type: ignore[index]


def test_speech_wav_pcm_and_streamed(client: openai.OpenAI, keyed_fakes: FakeModels) -> None:
    audio = client.audio.speech.create(
        model="tts-1", voice="alloy", input="hello", response_format="wav"
    )
    samples, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
    assert rate == 16_000 and len(samples) == 3 * 1600
    assert keyed_fakes.tts.last_voice is None

    audio = client.audio.speech.create(
        model="tts-1-hd", voice="narrator", input="hello", response_format="pcm"
    )
    pcm = np.frombuffer(audio.content, dtype="<i2")
    assert len(pcm) == 3 * 1600 and keyed_fakes.tts.last_voice == "narrator"

    # No response_format: OpenAI's default is mp3, which we cannot make; WAV is the answer.
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="nova", input="hello"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        data = b"".join(response.iter_bytes())
    assert data[:4] == b"RIFF" and len(data) == 44 + 2 * 3 * 1600


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"response_format": "mp3"}, ["mp3", "wav, pcm"]),
        ({"voice": "gandalf"}, ["gandalf", "narrator"]),
        ({"input": ""}, ["input", "empty"]),
        ({"speed": 1.5}, ["speed"]),
    ],
)
def test_speech_refusals(client: openai.OpenAI, kwargs: dict, words: list[str]) -> None:
    request = {"model": "tts-1", "voice": "alloy", "input": "hi", "response_format": "wav"}
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(**{**request, **kwargs})
    for word in words:
        assert word in info.value.body["message"]  # type: ignore[index]


def test_models_and_voices(client: openai.OpenAI, keyed_server: LiveServer) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake-llm", "fake-whisper", "fake-tts"]
    r = httpx.get(
        keyed_server.url + "/v1/audio/voices",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    body = r.json()
    assert [v["id"] for v in body["data"]] == ["default", "narrator"]
    assert body["openai_voices"]["alloy"] == "default"


def test_wrong_key_is_an_authentication_error(keyed_server: LiveServer) -> None:
    bad = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_busy_is_a_503_the_sdk_can_retry() -> None:
    tts = FakeTTS(delay_s=0.3, chunks=2)
    models = FakeModels(settings_with(MODEL_SERVER_QUEUE_SIZE="0"), tts=tts)
    with LiveServer(create_app(models)) as live:
        sdk = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=30)
        with httpx.stream(
            "POST", live.url + "/tts", json={"text": "first", "stream": True}, timeout=30
        ) as first:
            assert first.status_code == 200
            with pytest.raises(openai.InternalServerError) as info:
                sdk.audio.speech.create(model="tts-1", voice="alloy", input="second")
            assert info.value.status_code == 503
            assert int(info.value.response.headers["retry-after"]) >= 1
            first.read()


def test_voices_loading_a_lazy_tts_leaves_the_server_responsive() -> None:
    """Regression: `/v1/audio/voices` was an `async` route, so under MODEL_LOADING=lazy it
    loaded the TTS on the event loop and the whole server (even /health) froze meanwhile."""
    import threading

    from voice_agent.pipeline.models import LoadedModels

    fakes = FakeModels()
    entered, release = threading.Event(), threading.Event()

    def load_tts(settings, progress):
        entered.set()
        release.wait(10)
        return fakes.tts

    loaders = {c: (lambda s, p, c=c: getattr(fakes, c)) for c in ("llm", "stt")}
    models = LoadedModels(
        settings_with(MODEL_LOADING="lazy"), loaders={**loaders, "tts": load_tts}, warmup=False
    )
    with LiveServer(create_app(models)) as server:
        httpx.get(server.url + "/health", timeout=60)  # the first snapshot probes the hardware
        answers: list[httpx.Response] = []
        asking = threading.Thread(
            target=lambda: answers.append(httpx.get(server.url + "/v1/audio/voices", timeout=60))
        )
        asking.start()
        try:
            assert entered.wait(10)
            health = httpx.get(server.url + "/health", timeout=3)
            assert health.json()["models"]["tts"]["status"] == "loading"
        finally:
            release.set()
            asking.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["data"][0]["id"] == "default"


def test_zero_max_completion_tokens_names_the_field_sent(client: openai.OpenAI) -> None:
    """Regression: `max_completion_tokens: 0` was refused as a bad `max_tokens`, a field the
    request never had (the field was picked by truthiness, not presence)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=0,
        )
    assert "`max_completion_tokens`" in info.value.body["message"]  # type: ignore[index]


# --- tools --------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


def test_chat_returns_tool_calls_and_takes_their_results(
    client: openai.OpenAI, keyed_fakes: FakeModels
) -> None:
    """Guards OpenAI's tool protocol end to end with the official client: `tools` reach the
    engine, the model's call comes back as `tool_calls` (arguments a JSON string), and the
    client's `tool` message carries the result back for the answer."""
    question = {"role": "user", "content": "weather in Paris"}
    first = client.chat.completions.create(
        model="gpt-4o-mini", messages=[question], tools=[WEATHER_TOOL]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Calling. "  # what it said before the call, never the call
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"text": "weather in Paris"}
    assert keyed_fakes.llm.last_tools[0]["function"]["name"] == "get_weather"

    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "result: sunny, 21 C"
    sent = keyed_fakes.llm.last_messages
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"text": "weather in Paris"},
    }
    assert sent[2] == {
        "role": "tool",
        "content": "sunny, 21 C",
        "tool_call_id": call.id,
        "name": "get_weather",
    }


def test_chat_stream_returns_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Calling. " and "tool_call" not in text
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"text": "weather?"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_named_reach_the_engine(
    client: openai.OpenAI, keyed_fakes: FakeModels
) -> None:
    plain = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
    )
    assert (
        plain.choices[0].message.content == "echo: hi " and not plain.choices[0].message.tool_calls
    )
    assert keyed_fakes.llm.last_tool_choice == "none"
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert keyed_fakes.llm.last_tool_choice == "get_weather"
