"""Audio intake shared by the UI, the REST API and the CLI: decode, check, mono, resample.

Everything that arrives as audio goes through `load_audio`, which returns mono
float32 samples in [-1, 1] at the target rate (16 kHz for Whisper) or raises a
specific `InputError` subclass. Accepted inputs:

- numpy arrays of any integer or float dtype, mono or multi-channel (channels
  first or last), bare (assumed 16 kHz) or as Gradio's `(sample_rate, array)`;
- file paths, bytes or binary file objects in WAV, FLAC, OGG (Vorbis/Opus), MP3
  (decoded by soundfile's bundled libsndfile) and WebM/Opus, MP4/AAC and other
  containers (decoded by PyAV, whose wheels bundle FFmpeg: no system ffmpeg).

Resampling uses soxr (band-limited, anti-aliased). The speech gate that keeps
silence and noise away from Whisper lives in `voice_agent.audio.gate`
(`is_speech`), which builds on this module.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from voice_agent.core.errors import InputError, InputTooLargeError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # Hz, what Whisper expects
MIN_RATE = 1_000  # Hz; anything lower is not audio we can use
MAX_RATE = 384_000  # Hz; the highest rate common hardware records
MAX_CHANNELS = 32
MIN_SECONDS = 0.1
# Frames read per step when decoding under a duration limit.
DECODE_BLOCK_FRAMES = 65_536


SOUNDFILE_BROKEN = ("malformed", "lost sync", "unexpected end", "truncated")


class EmptyAudioError(InputError):
    """The audio holds no samples (or the upload was empty)."""

    code = "empty_audio"


class AudioTooShortError(InputError):
    """The audio is shorter than the minimum we can transcribe."""

    code = "audio_too_short"


class AudioTooLongError(InputTooLargeError):
    """The audio is longer than the configured maximum (MAX_AUDIO_SECONDS)."""

    code = "audio_too_long"


class InvalidAudioError(InputError):
    """Not usable audio: NaN/inf samples, non-audio bytes, a truncated or corrupt file."""

    code = "invalid_audio"


class UnsupportedAudioError(InputError):
    """A decoder this input needs is not installed; the message names the package."""

    status_code = 415
    code = "unsupported_audio"


AudioSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray | tuple | IO[bytes]


# --- public entry points ------------------------------------------------------------------------


def load_audio(
    source: AudioSource,
    *,
    target_rate: int = SAMPLE_RATE,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Decode, check and convert any accepted input to mono float32 at `target_rate`.

    Args:
        source: a path, encoded bytes, a binary file object, an array (assumed
            16 kHz) or a `(sample_rate, array)` pair.
        target_rate: output sample rate in Hz.
        max_seconds: longest accepted duration (None: no limit).
        min_seconds: shortest accepted duration.

    Returns:
        1-D float32 array with values in [-1, 1].

    Raises:
        EmptyAudioError, AudioTooShortError, AudioTooLongError, InvalidAudioError,
        UnsupportedAudioError (all `InputError`s).
    """
    rate, samples = decode_audio(source, max_seconds=max_seconds)
    mono = to_mono(samples)
    duration = mono.shape[0] / rate
    check_duration(duration, max_seconds=max_seconds, min_seconds=min_seconds)
    out = resample(mono, rate, target_rate)
    # Band-limited resampling can overshoot full scale by a little (Gibbs ringing).
    np.clip(out, -1.0, 1.0, out=out)
    return out


def decode_audio(
    source: AudioSource, *, max_seconds: float | None = None
) -> tuple[int, np.ndarray]:
    """Decode `source` to `(sample_rate, samples)` without resampling or mixing.

    Samples are float32 in [-1, 1], shaped `(frames,)` for mono or
    `(frames, channels)`. A bare array is taken as 16 kHz.

    With `max_seconds`, an encoded file longer than that is refused without
    decoding it whole: first from the length its container declares, then, for
    a file that declares none (or lies), by stopping the decoder once the limit
    is passed. A few kilobytes of compressed silence cannot make us decode hours.

    Raises:
        EmptyAudioError, InvalidAudioError, UnsupportedAudioError, and
        AudioTooLongError when `max_seconds` is passed.
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise InvalidAudioError(
                f"Expected a (sample_rate, samples) pair, got a tuple of {len(source)} items."
            )
        first, second = source
        # Gradio gives (rate, array); accept (array, rate) too (librosa's order).
        if isinstance(first, np.ndarray) and not isinstance(second, np.ndarray):
            first, second = second, first
        rate = _check_rate(first)
        return rate, to_float_array(second)
    if isinstance(source, np.ndarray):
        return SAMPLE_RATE, to_float_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(source), max_seconds=max_seconds)
    if isinstance(source, (str, os.PathLike)):
        # Messages name the file only: a server path is nobody else's business.
        return decode_bytes(
            _read_file(Path(source)), name=Path(source).name, max_seconds=max_seconds
        )
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise InvalidAudioError("The file object must be opened in binary mode ('rb').")
        name = getattr(source, "name", None)
        return decode_bytes(
            data, name=Path(name).name if isinstance(name, str) else None, max_seconds=max_seconds
        )
    # A list of numbers (e.g. JSON) is an array too.
    if isinstance(source, list):
        return SAMPLE_RATE, to_float_array(np.asarray(source))
    raise InvalidAudioError(
        f"Unsupported audio input type {type(source).__name__}: pass a file path, bytes, "
        "a numpy array or a (sample_rate, array) pair."
    )


def check_duration(
    seconds: float, *, max_seconds: float | None = None, min_seconds: float = MIN_SECONDS
) -> None:
    """Raise the matching error when `seconds` is zero, too short or too long."""
    if seconds <= 0:
        raise EmptyAudioError("The audio is empty (no samples).")
    if seconds < min_seconds:
        raise AudioTooShortError(
            f"The audio is {seconds:.3f} s long; at least {min_seconds:g} s is needed."
        )
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(
            f"The audio is {seconds:.1f} s long; the limit is {max_seconds:g} s "
            "(MAX_AUDIO_SECONDS). Split it or raise the limit."
        )


# --- arrays ---------------------------------------------------------------------------------------


def to_float_array(samples: Any) -> np.ndarray:
    """Any numeric array to float32 in [-1, 1], shaped `(frames,)` or `(frames, channels)`.

    Integers are scaled by their type's full scale (unsigned ones are centred
    first); int64 holds no standard PCM format, so it is read as 16-bit when
    every value fits, else as 32-bit. Floats beyond [-1, 1] (often int16 values
    stored as floats) are scaled down by their peak rather than clipped.

    Raises:
        EmptyAudioError, InvalidAudioError.
    """
    arr = np.asarray(samples)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise InvalidAudioError("The audio array holds non-numeric values.") from None
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise InvalidAudioError(f"Audio samples must be numbers, not {arr.dtype}.")
    if arr.size == 0:
        raise EmptyAudioError("The audio is empty (no samples).")
    arr = _channels_last(arr)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).sum())
            raise InvalidAudioError(f"The audio contains {bad} NaN or infinite sample(s).")
        peak = float(np.abs(out).max())
        if peak > 1.0:
            log.info("float audio peaks at %.3g (> 1): scaling it to full scale", peak)
            out /= peak
        return out
    if arr.dtype.kind == "u":
        bits = arr.dtype.itemsize * 8
        centred = arr.astype(np.float64) - 2 ** (bits - 1)
        return (centred / 2 ** (bits - 1)).astype(np.float32)
    bits = arr.dtype.itemsize * 8
    if bits == 64:
        bits = 16 if np.abs(arr).max() <= 32768 else 32
        arr = np.clip(arr, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (arr.astype(np.float64) / 2 ** (bits - 1)).astype(np.float32)


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """`(frames,)` or `(frames, channels)`: squeeze size-1 axes, put the short axis last."""
    if arr.ndim > 2:
        arr = arr.squeeze()
        if arr.ndim == 0:
            arr = arr.reshape(1)
    if arr.ndim == 0:
        raise InvalidAudioError("The audio is a single number, not an array of samples.")
    if arr.ndim > 2:
        raise InvalidAudioError(
            f"Audio arrays must be 1-D (mono) or 2-D (channels); got shape {arr.shape}."
        )
    if arr.ndim == 2:
        if 1 in arr.shape:
            return arr.reshape(-1)
        # The channel axis is the short one (stereo is (2, n) or (n, 2)).
        if arr.shape[0] < arr.shape[1]:
            arr = arr.T
        if arr.shape[1] > MAX_CHANNELS:
            raise InvalidAudioError(
                f"Audio array of shape {arr.shape} has no plausible channel axis "
                f"(at most {MAX_CHANNELS} channels)."
            )
    return arr


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of `(frames, channels)` samples; mono passes through."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr ('HQ'); works on `(frames,)` or `(frames, channels)`."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if int(from_rate) == int(to_rate):
        return samples.copy()
    try:
        import soxr
    except ImportError:
        raise UnsupportedAudioError(
            f"Resampling {from_rate} Hz audio to {to_rate} Hz needs the soxr package: "
            "pip install soxr"
        ) from None
    return soxr.resample(samples, int(from_rate), int(to_rate), quality="HQ").astype(
        np.float32, copy=False
    )


def _check_rate(rate: Any) -> int:
    try:
        value = int(rate)
    except (TypeError, ValueError):
        raise InvalidAudioError(f"Sample rate {rate!r} is not a number.") from None
    if value != rate or not MIN_RATE <= value <= MAX_RATE:
        raise InvalidAudioError(
            f"Sample rate {rate!r} Hz is not usable; expected a whole number from "
            f"{MIN_RATE} to {MAX_RATE} Hz."
        )
    return value


# --- encoded bytes --------------------------------------------------------------------------------


def _read_file(path: Path) -> bytes:
    if not path.exists():
        raise InvalidAudioError(f"No such audio file: {path.name}")
    if path.is_dir():
        raise InvalidAudioError(f"{path.name} is a directory, not an audio file.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidAudioError(
            f"Cannot read {path.name}: {exc.strerror or 'unreadable'}"
        ) from None


def sniff_format(data: bytes) -> str | None:
    """The container named by the first bytes, or None when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    if data[:4] == b"OggS":
        return "OGG"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "MP3"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM"
    if data[4:8] == b"ftyp":
        return "MP4"
    return None


def decode_bytes(
    data: bytes, name: str | None = None, *, max_seconds: float | None = None
) -> tuple[int, np.ndarray]:
    """Decode an encoded file held in memory: soundfile first, PyAV for what it cannot read.

    `max_seconds` bounds the decoding work (see `decode_audio`).
    """
    what = f"{name} " if name else ""
    if not data:
        raise EmptyAudioError(f"The audio file {what}is empty (0 bytes).")
    kind = sniff_format(data)
    # Two bytes of MP3 frame sync turn up in random data too: a guess, not a detection,
    # so it names the format only once a decoder has recognised the file.
    guessed = kind == "MP3" and data[:3] != b"ID3"
    label = kind or "audio"
    errors: list[str] = []
    soundfile_ok = True
    try:
        result = _decode_soundfile(data, kind, max_seconds)
    except ImportError:
        soundfile_ok = False
        result = None
    except InputError:  # over the duration limit, too many channels: said as it is
        raise
    except _Broken as exc:
        raise InvalidAudioError(
            f"The {label} file {what}is truncated or corrupt ({exc})."
        ) from None
    except Exception as exc:  # libsndfile's "format not recognised" and friends
        errors.append(f"soundfile: {_first_line(exc)}")
        result = None
    if result is not None and result[1].size == 0 and kind != "WAV":
        # libsndfile reads a cut OGG as zero frames; let FFmpeg have a look before calling it empty.
        errors.append("soundfile: no frames")
        result = None
    if result is None:
        try:
            result = _decode_pyav(data, label, max_seconds)
            if result[1].size == 0 and kind is not None:
                # soundfile refused it and FFmpeg found no samples: a broken file, not an empty one.
                raise _Broken("no audio samples could be decoded")
        except ImportError:
            missing = "av (PyAV)" if soundfile_ok else "soundfile and av (PyAV)"
            raise UnsupportedAudioError(
                f"Cannot decode this {label} file {what}: the {missing} package is not installed. "
                f"Fix: pip install {'av' if soundfile_ok else 'soundfile av'}"
            ) from None
        except InputError:
            raise
        except _Broken as exc:
            raise InvalidAudioError(
                f"The {label} file {what}is truncated or corrupt ({exc})."
            ) from None
        except Exception as exc:
            errors.append(f"PyAV: {_first_line(exc)}")
            if kind is None or guessed:
                raise InvalidAudioError(
                    f"The data {what}is not a recognised audio file "
                    "(accepted: WAV, FLAC, OGG, MP3, WebM/Opus, M4A)."
                ) from None
            raise InvalidAudioError(
                f"The {label} file {what}could not be decoded; it looks truncated or corrupt "
                f"({'; '.join(errors)})."
            ) from None
    rate, samples = result
    rate = _check_rate(rate)
    if samples.size == 0:
        raise EmptyAudioError(f"The {label} file {what}holds no audio samples.")
    if not np.isfinite(samples).all():
        raise InvalidAudioError(f"The {label} file {what}contains NaN or infinite samples.")
    return rate, _channels_last(samples)


class _Broken(Exception):
    """The decoder recognised the format but the data is truncated or corrupt."""


def _first_line(exc: BaseException) -> str:
    # libsndfile names the in-memory buffer ("Error opening <_io.BytesIO object at 0x..>: ").
    text = re.sub(r"^Error (opening )?<[^>]*>:\s*", "", str(exc).strip())
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _too_long(seconds: float | None, max_seconds: float) -> AudioTooLongError:
    if seconds is None:
        return AudioTooLongError(
            f"The audio is longer than {max_seconds:g} s (decoding stopped there); the limit "
            f"is {max_seconds:g} s (MAX_AUDIO_SECONDS). Split it or raise the limit."
        )
    return AudioTooLongError(
        f"The audio is {seconds:.1f} s long; the limit is {max_seconds:g} s "
        "(MAX_AUDIO_SECONDS). Split it or raise the limit."
    )


def _check_declared(
    rate: Any, channels: int, seconds: float | None, max_seconds: float | None
) -> None:
    """Before decoding a bounded file: refuse a layout or declared length over the limits.

    The declared length gets some slack (MP3 lengths are estimates); the decoded one
    is held to the limit exactly.
    """
    if max_seconds is None:
        return
    if channels > MAX_CHANNELS:
        raise InvalidAudioError(
            f"The audio has {channels} channels; at most {MAX_CHANNELS} are accepted."
        )
    if rate and rate * max(channels, 1) > MAX_RATE:
        raise InvalidAudioError(
            f"The audio has {channels} channels at {rate} Hz, more than {MAX_RATE:,} samples "
            "per second in all; send mono or stereo audio."
        )
    if seconds is not None and seconds > max_seconds * 1.05 + 1:
        raise _too_long(seconds, max_seconds)


def _read_soundfile(f: Any, max_seconds: float | None) -> np.ndarray:
    """All frames of an open SoundFile; under a limit, a block at a time, stopping past it."""
    if max_seconds is None:
        return f.read(dtype="float32", always_2d=True)
    limit = int(max_seconds * f.samplerate)
    blocks: list[np.ndarray] = []
    total = 0
    while True:
        block = f.read(frames=DECODE_BLOCK_FRAMES, dtype="float32", always_2d=True)
        if not len(block):
            break
        blocks.append(block)
        total += len(block)
        if total > limit:
            raise _too_long(None, max_seconds)
    if not blocks:
        return np.zeros((0, f.channels), dtype=np.float32)
    return np.concatenate(blocks)


def _decode_soundfile(
    data: bytes, kind: str | None, max_seconds: float | None = None
) -> tuple[int, np.ndarray]:
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            declared = f.frames
            rate = f.samplerate
            known = 0 < declared < 2**62 and rate > 0
            _check_declared(rate, f.channels, declared / rate if known else None, max_seconds)
            samples = _read_soundfile(f, max_seconds)
    except sf.LibsndfileError as exc:
        message = _first_line(exc)
        if any(word in message.lower() for word in SOUNDFILE_BROKEN):
            raise _Broken(message) from None
        raise
    if kind == "WAV":
        _check_wav_complete(data)
    # MP3 (and some others) declare their length up front; far fewer frames means a cut file.
    if 0 < declared < 2**62 and samples.shape[0] < 0.9 * declared:
        raise _Broken(f"{samples.shape[0]} of {declared} declared frames present")
    return rate, samples[:, 0] if samples.shape[1] == 1 else samples


def _check_wav_complete(data: bytes) -> None:
    """libsndfile silently reads a cut WAV; compare the data chunk's declared size."""
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = struct.unpack("<4sI", data[pos : pos + 8])
        if chunk == b"data":
            # 0 and 0xFFFFFFFF mark streamed WAVs whose length was unknown when written.
            available = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and available < size:
                raise _Broken(f"data chunk declares {size} bytes, {available} present")
            return
        pos += 8 + size + (size & 1)


def _decode_pyav(
    data: bytes, label: str, max_seconds: float | None = None
) -> tuple[int, np.ndarray]:
    import av

    container = av.open(io.BytesIO(data), mode="r")  # FFmpegError here: not a file FFmpeg knows
    with container:
        if not container.streams.audio:
            raise _Broken("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        if not rate:
            raise _Broken("the audio stream has no sample rate")
        declared = _declared_seconds(container, stream)
        _check_declared(rate, stream.codec_context.channels, declared, max_seconds)
        limit = None if max_seconds is None else int(max_seconds * rate)
        # Planar float keeps every codec's output in one layout: (channels, samples) per frame.
        resampler = av.AudioResampler(format="fltp", rate=rate)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    total += out.samples
                if limit is not None and total > limit:
                    raise _too_long(None, max_seconds or 0)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except av.FFmpegError as exc:
            if not chunks:
                raise
            raise _Broken(_first_line(exc)) from None
    if not chunks:
        return rate, np.zeros(0, dtype=np.float32)
    samples = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)
    got = samples.shape[0] / rate
    # WebM from browsers declares no duration; when one is declared, hold the file to it.
    if declared and got < 0.9 * declared - 0.05:
        raise _Broken(f"{got:.2f} s decoded of {declared:.2f} s declared")
    return rate, samples[:, 0] if samples.shape[1] == 1 else samples


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000  # AV_TIME_BASE: microseconds
    return None


# --- encoding -------------------------------------------------------------------------------------


def to_pcm16_bytes(samples: np.ndarray) -> bytes:
    """Little-endian 16-bit PCM of float samples in [-1, 1] (clipped); int16 passes through."""
    arr = np.asarray(samples)
    if arr.dtype == np.int16:
        return arr.astype("<i2", copy=False).tobytes()
    floats = to_float_array(arr) if arr.dtype.kind != "f" else arr.astype(np.float32)
    if not np.isfinite(floats).all():
        raise InvalidAudioError("Cannot encode NaN or infinite samples.")
    pcm = np.round(np.clip(floats, -1.0, 1.0) * 32767.0).astype("<i2")
    return pcm.tobytes()


def encode_wav(sample_rate: int, samples: np.ndarray) -> bytes:
    """A 16-bit PCM WAV file in memory; `samples` is `(frames,)` or `(frames, channels)`."""
    import wave

    arr = np.asarray(samples)
    if arr.ndim == 2 and arr.shape[0] < arr.shape[1]:
        arr = arr.T  # channels first -> frames first, interleaved below
    channels = 1 if arr.ndim == 1 else arr.shape[1]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(_check_rate(sample_rate))
        w.writeframes(to_pcm16_bytes(arr))
    return buffer.getvalue()


EncodeFormat = Literal["wav", "flac", "ogg", "mp3", "opus", "webm"]
# soundfile (format, subtype) per output format; WebM goes through PyAV.
SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)


def encode_audio(sample_rate: int, samples: np.ndarray, fmt: EncodeFormat = "wav") -> bytes:
    """Encode mono or `(frames, channels)` samples as a file in memory.

    WAV, FLAC, OGG/Vorbis, OGG/Opus and MP3 are written by soundfile; WebM/Opus
    (what browsers record) by PyAV. Opus only takes 8/12/16/24/48 kHz, so other
    rates are resampled to 48 kHz first.
    """
    floats = to_float_array(samples)
    rate = _check_rate(sample_rate)
    if fmt in ("opus", "webm") and rate not in OPUS_RATES:
        floats, rate = resample(floats, rate, 48_000), 48_000
    if fmt in SOUNDFILE_FORMATS:
        import soundfile as sf

        container, subtype = SOUNDFILE_FORMATS[fmt]
        buffer = io.BytesIO()
        sf.write(buffer, floats, rate, format=container, subtype=subtype)
        return buffer.getvalue()
    if fmt != "webm":
        raise ValueError(
            f"unknown audio format {fmt!r}; use one of wav, flac, ogg, opus, mp3, webm"
        )
    try:
        import av
    except ImportError:
        raise UnsupportedAudioError("Writing WebM needs PyAV: pip install av") from None
    planar = np.ascontiguousarray(floats.reshape(floats.shape[0], -1).T)
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(planar[:2], format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
