"""Audio intake: every input form converts correctly, every bad input gets its error."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voice_agent.audio.gate import is_speech
from voice_agent.audio.io import (
    SAMPLE_RATE,
    AudioTooLongError,
    AudioTooShortError,
    EmptyAudioError,
    InvalidAudioError,
    UnsupportedAudioError,
    decode_audio,
    encode_audio,
    encode_wav,
    load_audio,
    resample,
    sniff_format,
    to_pcm16_bytes,
)
from voice_agent.audio.numpy_vad import FRAME, MAX_FLATNESS, MAX_ZCR, NumpyVAD, frame_shape
from voice_agent.core.errors import InputError, InputTooLargeError

RNG = np.random.default_rng(1234)


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency in `samples`."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.fft.rfftfreq(samples.shape[0], 1 / rate)[np.argmax(spectrum)])


def band_db(samples: np.ndarray, rate: int, low: float, high: float) -> float:
    """Energy in [low, high] Hz relative to the total, in dB."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0]))) ** 2
    freqs = np.fft.rfftfreq(samples.shape[0], 1 / rate)
    band = spectrum[(freqs >= low) & (freqs <= high)].sum()
    return float(10 * np.log10(band / spectrum.sum() + 1e-30))


@pytest.fixture(scope="module")
def hello(assets_dir: Path) -> np.ndarray:
    samples, rate = sf.read(assets_dir / "hello.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


# --- arrays ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "full_scale"),
    [
        (np.int16, 32768),
        (np.int32, 2**31),
        (np.int8, 128),
        (np.float32, 1.0),
        (np.float64, 1.0),
    ],
)
def test_signed_dtypes_scale_to_unit_range(dtype, full_scale):
    wave = sine(440, SAMPLE_RATE, 0.5, amp=0.5)
    raw = (wave * full_scale).astype(dtype)
    out = load_audio(raw)
    assert out.dtype == np.float32 and out.shape == wave.shape
    assert np.max(np.abs(out - wave)) < 2 / full_scale + 1e-6
    assert 0.49 < np.abs(out).max() <= 0.5 + 1e-6


def test_uint8_is_centred():
    wave = sine(440, SAMPLE_RATE, 0.5, amp=0.5)
    raw = np.round(wave * 128 + 128).astype(np.uint8)
    out = load_audio(raw)
    assert abs(float(out.mean())) < 0.01
    assert np.max(np.abs(out - wave)) < 1 / 64


def test_int64_with_16_bit_values_reads_as_16_bit():
    wave = sine(440, SAMPLE_RATE, 0.5, amp=0.25)
    out = load_audio((wave * 32768).astype(np.int64))
    assert 0.24 < np.abs(out).max() < 0.26


def test_float_over_full_scale_is_scaled_not_clipped():
    wave = sine(440, SAMPLE_RATE, 0.5, amp=0.5)
    out = load_audio(wave * 20000.0)  # int16 values stored as floats
    assert np.abs(out).max() == pytest.approx(1.0, abs=1e-3)
    # A sine stays a sine: clipping would flatten the tops and add harmonics.
    assert np.corrcoef(out, wave)[0, 1] > 0.999


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_stereo_is_averaged_in_either_layout(layout):
    left = sine(440, 44_100, 1.0, amp=0.4)
    right = sine(440, 44_100, 1.0, amp=0.2)
    stereo = np.stack([left, right], axis=1 if layout == "channels_last" else 0)
    rate, decoded = decode_audio((44_100, stereo))
    assert rate == 44_100 and decoded.shape == (44_100, 2)
    out = load_audio((44_100, stereo))
    assert out.shape == (16_000,)
    assert 0.29 < np.abs(out).max() < 0.31  # mean of 0.4 and 0.2


def test_singleton_axes_are_squeezed():
    wave = sine(440, SAMPLE_RATE, 0.5)
    assert load_audio(wave[None, :, None]).shape == wave.shape
    assert load_audio(wave[:, None]).shape == wave.shape


@pytest.mark.parametrize("rate", [8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000])
def test_any_rate_becomes_16k_with_the_right_length_and_pitch(rate):
    wave = sine(440, rate, 1.5)
    out = load_audio((rate, wave))
    assert abs(out.shape[0] - 24_000) <= 1
    assert np.abs(out).max() <= 1.0
    assert abs(peak_hz(out, SAMPLE_RATE) - 440) < 2


def test_gradio_pair_in_either_order():
    wave = (sine(300, 24_000, 1.0) * 32767).astype(np.int16)
    a = load_audio((24_000, wave))
    b = load_audio((wave, 24_000))
    assert a.shape == (16_000,) and np.array_equal(a, b)


def test_bare_array_is_taken_as_16k():
    wave = sine(440, SAMPLE_RATE, 1.0)
    assert decode_audio(wave)[0] == SAMPLE_RATE
    assert load_audio(wave).shape == (16_000,)


def test_target_rate_is_honoured():
    out = load_audio((SAMPLE_RATE, sine(440, SAMPLE_RATE, 1.0)), target_rate=24_000)
    assert out.shape == (24_000,)
    assert abs(peak_hz(out, 24_000) - 440) < 2


# --- files and bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "opus", "mp3", "webm"])
@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_encoded_formats_decode_with_rate_length_and_pitch(fmt, rate):
    wave = sine(440, rate, 1.0)
    data = encode_audio(rate, wave, fmt)
    expected_kind = {"opus": "OGG", "ogg": "OGG"}.get(fmt, fmt.upper().replace("WEBM", "WebM"))
    assert sniff_format(data) == expected_kind
    out = load_audio(data)
    # Lossy codecs add encoder delay/padding; 60 ms is more than any of them uses.
    assert abs(out.shape[0] - 16_000) < 0.06 * 16_000
    assert abs(peak_hz(out, SAMPLE_RATE) - 440) < 3
    assert 0.3 < np.abs(out).max() <= 1.0


def test_stereo_flac_44k_from_path_str_path_and_file_object(tmp_path):
    stereo = np.stack([sine(440, 44_100, 1.0), sine(440, 44_100, 1.0, amp=0.1)], axis=1)
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, 44_100)
    rate, decoded = decode_audio(path)
    assert rate == 44_100 and decoded.shape == (44_100, 2)
    for source in (path, str(path), open(path, "rb")):
        out = load_audio(source)
        assert out.shape == (16_000,)
        assert 0.29 < np.abs(out).max() < 0.31


def test_24_bit_and_float_wav(tmp_path):
    wave = sine(440, 48_000, 0.5, amp=0.7)
    for subtype in ("PCM_24", "FLOAT", "PCM_U8"):
        buffer = io.BytesIO()
        sf.write(buffer, wave, 48_000, format="WAV", subtype=subtype)
        out = load_audio(buffer.getvalue())
        assert out.shape == (8_000,)
        assert 0.68 < np.abs(out).max() < 0.72, subtype


def test_real_speech_clip_round_trips(hello, assets_dir):
    out = load_audio(assets_dir / "hello.wav")
    assert out.shape == hello.shape
    assert np.array_equal(out, hello)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [b"", np.zeros(0, dtype=np.float32), np.zeros((2, 0)), (16_000, np.zeros(0, np.int16))],
    ids=["bytes", "array", "2d", "pair"],
)
def test_empty_audio(source):
    with pytest.raises(EmptyAudioError):
        load_audio(source)


def test_wav_with_no_frames():
    with pytest.raises(EmptyAudioError):
        load_audio(encode_wav(16_000, np.zeros(0, dtype=np.int16)))


def test_too_short():
    with pytest.raises(AudioTooShortError, match="0.1 s"):
        load_audio(sine(440, SAMPLE_RATE, 0.05))
    assert load_audio(sine(440, SAMPLE_RATE, 0.05), min_seconds=0.01).shape == (800,)


def test_too_long_names_the_limit():
    with pytest.raises(AudioTooLongError, match="limit is 2 s") as info:
        load_audio(sine(440, 48_000, 3.0), max_seconds=2)
    assert isinstance(info.value, InputTooLargeError)
    assert info.value.status_code == 413
    assert "MAX_AUDIO_SECONDS" in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(bad):
    wave = sine(440, SAMPLE_RATE, 0.5)
    wave[100] = bad
    with pytest.raises(InvalidAudioError, match="NaN or infinite"):
        load_audio(wave)


def test_non_audio_bytes():
    with pytest.raises(InvalidAudioError, match="not a recognised audio file"):
        load_audio(b"<html><body>this is not audio</body></html>" * 20)


def test_truncated_wav():
    data = encode_wav(16_000, sine(440, 16_000, 1.0))
    with pytest.raises(InvalidAudioError, match="truncated"):
        load_audio(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["flac", "ogg", "mp3", "webm"])
def test_truncated_compressed_files(fmt):
    data = encode_audio(16_000, sine(440, 16_000, 2.0), fmt)
    with pytest.raises(InvalidAudioError, match="truncated|corrupt"):
        load_audio(data[: len(data) // 2])


def test_ogg_missing_its_last_bytes_is_corrupt_not_empty():
    """libsndfile reads an OGG cut by a few bytes as zero frames; that was reported as empty."""
    data = encode_audio(16_000, sine(440, 16_000, 2.0), "ogg")
    with pytest.raises(InvalidAudioError, match="truncated or corrupt"):
        load_audio(data[:-7])


def test_text_mode_file_object_and_plain_list(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(encode_wav(16_000, sine(440, 16_000, 0.5)))
    with (
        open(path, encoding="latin-1") as text_mode,
        pytest.raises(InvalidAudioError, match="binary"),
    ):
        load_audio(text_mode)
    assert load_audio(sine(440, 16_000, 0.5).tolist()).shape == (8_000,)


def test_streamed_wav_with_unknown_length_is_accepted():
    """A WAV written to a pipe declares 0xFFFFFFFF bytes of data; that is not truncation."""
    data = bytearray(encode_wav(16_000, sine(440, 16_000, 1.0)))
    index = data.index(b"data")
    data[index + 4 : index + 8] = struct.pack("<I", 0xFFFFFFFF)
    assert load_audio(bytes(data)).shape == (16_000,)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InvalidAudioError, match="No such audio file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(InvalidAudioError, match="directory"):
        load_audio(tmp_path)


@pytest.mark.parametrize("rate", [0, -16_000, 500, 10_000_000, 16_000.5, "fast"])
def test_bad_sample_rate(rate):
    with pytest.raises(InvalidAudioError, match="Sample rate"):
        load_audio((rate, sine(440, 16_000, 0.5)))


@pytest.mark.parametrize(
    "source",
    [np.array(["a", "b"]), np.ones((4, 4, 4000)), np.array(3.0), {"audio": 1}, np.ones(8000) > 0],
    ids=["strings", "3d", "scalar", "dict", "bool"],
)
def test_not_audio_arrays(source):
    with pytest.raises(InvalidAudioError):
        load_audio(source)


def test_missing_pyav_names_the_package(monkeypatch):
    data = encode_audio(16_000, sine(440, 16_000, 0.5), "webm")
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(UnsupportedAudioError, match="pip install av") as info:
        load_audio(data)
    assert info.value.status_code == 415


def test_every_audio_error_is_an_input_error():
    for error in (
        EmptyAudioError,
        AudioTooShortError,
        AudioTooLongError,
        InvalidAudioError,
        UnsupportedAudioError,
    ):
        assert issubclass(error, InputError)
        assert 400 <= error.status_code < 500


# --- resampling -----------------------------------------------------------------------------------


def test_resampling_keeps_frequency_and_length():
    for from_rate, to_rate in ((48_000, 16_000), (8_000, 16_000), (44_100, 22_050)):
        out = resample(sine(1_000, from_rate, 1.0), from_rate, to_rate)
        assert abs(out.shape[0] - to_rate) <= 1
        assert abs(peak_hz(out, to_rate) - 1_000) < 2


def test_downsampling_removes_tones_above_nyquist_instead_of_aliasing():
    """A 12 kHz tone at 48 kHz has no place at 16 kHz; naive decimation folds it to 4 kHz."""
    mix = sine(1_000, 48_000, 1.0, amp=0.4) + sine(12_000, 48_000, 1.0, amp=0.4)
    out = resample(mix, 48_000, 16_000)
    assert band_db(out, 16_000, 3_800, 4_200) < -60
    assert abs(peak_hz(out, 16_000) - 1_000) < 2
    # The check itself can fail: linear interpolation aliases the 12 kHz tone to 4 kHz.
    naive = np.interp(np.arange(16_000) * 3, np.arange(48_000), mix)
    assert band_db(naive, 16_000, 3_800, 4_200) > -10


# --- encoding -------------------------------------------------------------------------------------


def test_encode_wav_round_trip_mono_and_stereo():
    wave = sine(440, 22_050, 0.5)
    rate, back = decode_audio(encode_wav(22_050, wave))
    assert rate == 22_050 and back.shape == wave.shape
    assert np.max(np.abs(back - wave)) < 1 / 16_000
    stereo = np.stack([wave, -wave])  # channels first
    rate, back = decode_audio(encode_wav(22_050, stereo))
    assert back.shape == (wave.shape[0], 2)
    assert np.allclose(back[:, 1], -back[:, 0], atol=1e-4)


def test_pcm16_bytes_clip_and_pass_int16_through():
    data = to_pcm16_bytes(np.array([0.0, 0.5, 1.5, -2.0], dtype=np.float32))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, 32767, -32767]
    raw = np.array([1, -2, 3], dtype=np.int16)
    assert to_pcm16_bytes(raw) == raw.astype("<i2").tobytes()


# --- speech gate ----------------------------------------------------------------------------------


def coloured_noise(seconds: float, exponent: float, amp: float = 0.3) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    n = int(SAMPLE_RATE * seconds)
    spectrum = np.fft.rfft(RNG.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return (amp * noise / np.abs(noise).max()).astype(np.float32)


def test_real_speech_passes_the_gate(hello, assets_dir):
    assert is_speech(hello, SAMPLE_RATE)
    pause = load_audio(assets_dir / "speech_pause_speech.wav")
    assert is_speech(pause, SAMPLE_RATE)
    assert is_speech(hello * 0.03, SAMPLE_RATE)  # quiet speaker
    assert is_speech(hello[6_400:19_200], SAMPLE_RATE)  # 0.8 s cut from the middle


def test_speech_in_moderate_noise_passes(hello):
    noise = RNG.standard_normal(hello.shape[0]).astype(np.float32)
    noise *= np.sqrt(np.mean(hello**2) / np.mean(noise**2)) / 10 ** (10 / 20)  # 10 dB SNR
    assert is_speech(hello + noise, SAMPLE_RATE)


def test_silence_and_noise_fail_the_gate(assets_dir):
    assert not is_speech(load_audio(assets_dir / "silence.wav"), SAMPLE_RATE)
    assert not is_speech(np.zeros(32_000, np.float32), SAMPLE_RATE)
    for exponent in (0, 1, 2):
        for amp in (0.01, 0.3, 0.9):
            noise = coloured_noise(3.0, exponent, amp)
            assert not is_speech(noise, SAMPLE_RATE), (exponent, amp)
    assert not is_speech(sine(50, SAMPLE_RATE, 3.0), SAMPLE_RATE)  # mains hum
    clicks = np.where(np.arange(48_000) % 8_000 < 40, 0.8, 0.0).astype(np.float32)
    assert not is_speech(clicks, SAMPLE_RATE)


def bursts(make, on_s: float = 0.3, off_s: float = 0.3, count: int = 5) -> np.ndarray:
    """`count` bursts of `make(samples)` with silence between, like syllables: each burst
    is loud, far above the clip's floor and long enough, so only the spectral checks are
    left to tell it from speech."""
    on, off = int(SAMPLE_RATE * on_s), int(SAMPLE_RATE * off_s)
    silence = np.zeros(off, np.float32)
    return np.concatenate([part for _ in range(count) for part in (make(on), silence)])


def band_noise(n: int, low: float, high: float, rms: float, seed: int = 7) -> np.ndarray:
    """Gaussian noise with a flat spectrum between `low` and `high` Hz, at level `rms`
    (its own seed: the same noise whichever tests ran before)."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, n)
    return (noise * rms / np.sqrt(np.mean(noise**2))).astype(np.float32)


def shapes(clip: np.ndarray) -> np.ndarray:
    """(band level dBFS, flatness, zero-crossing rate) of each 32 ms frame."""
    count = len(clip) // FRAME
    return np.array([frame_shape(clip[i * FRAME : (i + 1) * FRAME]) for i in range(count)])


def assert_only_spectrum_rejects(clip: np.ndarray) -> np.ndarray:
    """The bursts pass the level, floor and duration checks, so a rejection is spectral."""
    features = shapes(clip)
    bursting = features[:, 0] > -40.0
    assert bursting.sum() >= 40, bursting.sum()  # 5 bursts of 9 frames of 32 ms
    return features[bursting]


def test_noise_bursts_at_speech_level_fail_on_flatness(hello, assets_dir):
    """Guards the numpy fallback's spectral-flatness check: without it, noise that comes
    and goes at speech level (a rustle, a fan switching, breath on the mic) passes as
    speech. The noise is kept to the speech band, so its zero-crossing rate looks like
    speech too."""
    rms = float(np.sqrt(np.mean(hello**2)))  # the level of the real recording
    clip = bursts(lambda n: band_noise(n, 100, 4_000, rms))
    loud = assert_only_spectrum_rejects(clip)
    # Frames inside the bursts (the edges mix in silence).
    assert np.mean(loud[:, 2] < MAX_ZCR) > 0.9  # zero crossings cannot reject it
    assert np.mean(loud[:, 1] > MAX_FLATNESS) > 0.9
    fallback = NumpyVAD()
    assert not is_speech(clip, SAMPLE_RATE, model=fallback)
    assert is_speech(hello, SAMPLE_RATE, model=fallback)
    assert is_speech(
        load_audio(assets_dir / "speech_pause_speech.wav"), SAMPLE_RATE, model=fallback
    )
    assert not is_speech(clip, SAMPLE_RATE)  # and Silero


def test_hum_under_a_hiss_fails_on_zero_crossings(hello, assets_dir):
    """Guards the numpy fallback's zero-crossing check: without it, a tonal hum under a
    loud high-frequency hiss (5-8 kHz, above the band the flatness is measured in) passes
    as speech, in bursts as from a hissing tap or a shaver switched on and off."""

    def hum_under_hiss(n: int) -> np.ndarray:
        t = np.arange(n) / SAMPLE_RATE
        hum = 0.05 * np.sin(2 * np.pi * 200 * t)
        return (hum + band_noise(n, 5_000, 8_000, 0.1)).astype(np.float32)

    clip = bursts(hum_under_hiss)
    loud = assert_only_spectrum_rejects(clip)
    assert np.mean(loud[:, 1] < MAX_FLATNESS) > 0.9  # flatness cannot reject it
    assert np.mean(loud[:, 2] > MAX_ZCR) > 0.9
    fallback = NumpyVAD()
    assert not is_speech(clip, SAMPLE_RATE, model=fallback)
    assert is_speech(hello, SAMPLE_RATE, model=fallback)
    assert not is_speech(clip, SAMPLE_RATE)  # and Silero


def test_frame_shape_values(hello):
    features = shapes(hello)
    assert features.shape == (len(hello) // FRAME, 3)
    assert features[:, 0].max() > -30
    assert np.all((features[:, 1] >= 0) & (features[:, 1] <= 1.0001))
    assert np.all((features[:, 2] >= 0) & (features[:, 2] <= 1))
    white = shapes(coloured_noise(1.0, 0))
    assert np.median(white[:, 1]) > 0.4 and np.median(white[:, 2]) > 0.4
