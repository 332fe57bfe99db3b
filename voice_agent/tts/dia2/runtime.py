"""`Dia2Runtime`: load a Dia2 checkpoint, then `generate` (batch) or `stream` speech.

    runtime = Dia2Runtime.from_pretrained("nari-labs/Dia2-2B", device="cuda", dtype="bfloat16")
    result = runtime.generate("[S1] Hello there.")
    for chunk in runtime.stream("[S1] Hello there."):  # float32, 24 kHz
        play(chunk)

The checkpoint is the official format: `config.json` + `model.safetensors`
(official parameter names), the tokenizer of the same repo, and Mimi
(`kyutai/mimi`) through transformers' `MimiModel`. All three are resolved by
`voice_agent.core.hub.ensure_model_exists`, so offline mode and LOCAL_MODELS_DIR
apply.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from voice_agent.core.cancel import is_cancelled
from voice_agent.tts.dia2.checkpoint import load_model
from voice_agent.tts.dia2.config import (
    FRAME_RATE,
    MAX_PADDING,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Dia2Config,
    load_config,
)
from voice_agent.tts.dia2.errors import ContextOverflowError, NotADia2CheckpointError, PrefixError
from voice_agent.tts.dia2.fast_path import FAST_PATHS, FastPath
from voice_agent.tts.dia2.generation_config import Dia2GenerationConfig
from voice_agent.tts.dia2.generator import Generation, PrefixPlan, StepTrace
from voice_agent.tts.dia2.mimi_stream import MimiStreamDecoder
from voice_agent.tts.dia2.model import Dia2Model
from voice_agent.tts.dia2.prefix import Dia2Prefix, WordTimer, build_prefix, load_audio
from voice_agent.tts.dia2.result import Dia2Result
from voice_agent.tts.dia2.sampling import StepSettings
from voice_agent.tts.dia2.script import Entry, ScriptParser, parse_script
from voice_agent.tts.dia2.streaming import Dia2Stream, TextFeed

log = logging.getLogger(__name__)

DEFAULT_MIMI = "kyutai/mimi"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dir(ref: str | Path, required: tuple[str, ...] = ("config.json",)) -> Path:
    """A local directory for a hub id or directory, through the project's model resolution."""
    from voice_agent.core.hub import ensure_model_exists

    return ensure_model_exists(str(ref), required_files=required).path


class Dia2Runtime:
    """A loaded Dia2 model with its tokenizer and Mimi codec."""

    sample_rate = SAMPLE_RATE
    samples_per_frame = SAMPLES_PER_FRAME

    def __init__(
        self,
        config: Dia2Config,
        model: Dia2Model,
        tokenizer,
        mimi,
        *,
        device: torch.device,
        fast_path: str = "eager",
        compile_backend: str = "inductor",
    ):
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.mimi = mimi
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self._fast = FastPath(model, config, "eager")
        if fast_path != "eager":
            self.enable_fast_path(fast_path, compile_backend=compile_backend)
        vocab = tokenizer.get_vocab()
        new_word = config.data.text_new_word_token_id
        self.spk1 = tokenizer.convert_tokens_to_ids("[S1]") if "[S1]" in vocab else new_word
        self.spk2 = tokenizer.convert_tokens_to_ids("[S2]") if "[S2]" in vocab else new_word
        # The official runtime feeds `bos_token_id or 1`: an id of 0 becomes 1.
        self.bos_id = getattr(tokenizer, "bos_token_id", None) or 1
        self._prefix_cache: dict[tuple, Dia2Prefix] = {}

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model_ref: str,
        *,
        tokenizer_ref: str | None = None,
        mimi_ref: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        fast_path: str = "eager",
        compile_backend: str = "inductor",
    ) -> Dia2Runtime:
        """Load config, weights, tokenizer and Mimi.

        Args:
            model_ref: hub id or directory with `config.json` + `model.safetensors`.
            tokenizer_ref: default: the config's `assets.tokenizer`, else a `tokenizer/`
                folder in or next to the checkpoint, else the checkpoint itself.
            mimi_ref: default: the config's `assets.mimi`, else a `mimi/` folder in or
                next to the checkpoint, else `kyutai/mimi`.
            device: "cpu" or "cuda[:n]".
            dtype: "float32" or "bfloat16" for the Dia2 networks (Mimi stays float32).
            fast_path: "eager" (default), "auto" (CUDA graphs on CUDA, eager on CPU),
                "cuda_graph" or "compile"; see `enable_fast_path`.
            compile_backend: the torch.compile backend for `fast_path="compile"`.

        Raises:
            ModelNotFoundError: a reference resolves nowhere (offline, missing).
            NotADia2CheckpointError: the directory is not a Dia2 checkpoint.
            CheckpointMismatchError: config.json and the weights disagree (names the tensor).
        """
        from transformers import AutoTokenizer, MimiModel

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if fast_path not in FAST_PATHS:
            raise ValueError(f"fast_path must be one of {', '.join(FAST_PATHS)}, got {fast_path!r}")
        torch_device = torch.device(device)
        model_dir = resolve_dir(model_ref, required=())
        if (
            not (model_dir / "config.json").is_file()
            and (model_dir / "dia2" / "config.json").is_file()
        ):
            model_dir = (
                model_dir / "dia2"
            )  # a bundle laid out like `make-tiny-models`: dia2/ tokenizer/ mimi/
        if not (model_dir / "config.json").is_file():
            raise NotADia2CheckpointError(
                f"{model_dir} is not a Dia2 checkpoint: it has no config.json (expected config.json + "
                "model.safetensors from nari-labs/Dia2-1B or Dia2-2B)."
            )
        config = load_config(model_dir / "config.json")
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise NotADia2CheckpointError(
                f"{model_dir} has a Dia2 config.json but no model.safetensors."
            )
        model = load_model(config, weights, device=torch_device, dtype=DTYPES[dtype])

        tokenizer_dir = resolve_dir(
            tokenizer_ref
            or config.assets.tokenizer
            or _asset_dir(model_dir, "tokenizer")
            or model_ref,
            required=(),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        mimi_dir = resolve_dir(
            mimi_ref or config.assets.mimi or _asset_dir(model_dir, "mimi") or DEFAULT_MIMI
        )
        mimi = MimiModel.from_pretrained(str(mimi_dir), dtype=torch.float32).to(torch_device).eval()
        log.info(
            "Dia2 loaded from %s (tokenizer %s, Mimi %s) on %s/%s",
            model_dir,
            tokenizer_dir,
            mimi_dir,
            device,
            dtype,
        )
        return cls(
            config,
            model,
            tokenizer,
            mimi,
            device=torch_device,
            fast_path=fast_path,
            compile_backend=compile_backend,
        )

    # -- fast path --------------------------------------------------------------------------

    @property
    def fast_path(self) -> str:
        """The step path that actually runs: "eager", "cuda_graph" or "compile"."""
        return self._fast.used

    @property
    def fast_path_note(self) -> str | None:
        """Why the path differs from the one asked for (a fallback reason), else None."""
        return self._fast.note

    def enable_fast_path(self, mode: str = "auto", *, compile_backend: str = "inductor") -> str:
        """Switch the per-step computation to CUDA graphs or torch.compile, with fallback.

        "auto" means CUDA graphs on CUDA and eager steps on CPU. The static
        programs for the default settings are built now (graph capture or
        compilation); settings that differ (sampling, CFG on/off, a longer
        prefix) build theirs at their first generation. Any failure falls back to
        eager steps, logs a WARNING and leaves the reason in `fast_path_note`.
        Static steps attend over the whole preallocated cache with a mask, so on
        CPU their tokens can differ from eager ones in the last float bits.

        Returns:
            The path actually used.
        """
        self._fast = FastPath(self.model, self.config, mode, compile_backend=compile_backend)
        if self._fast.static:
            settings = self._step_settings(Dia2GenerationConfig())
            self._fast.prepare(settings, 2, self.max_delay + self.max_context_steps + 1)
        log.info(
            "Dia2 step path: %s%s",
            self.fast_path,
            f" ({self.fast_path_note})" if self.fast_path_note else "",
        )
        return self.fast_path

    def disable_fast_path(self) -> None:
        """Back to eager steps (frees static buffers and graphs)."""
        self._fast = FastPath(self.model, self.config, "eager")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _step_settings(config: Dia2GenerationConfig) -> StepSettings:
        return StepSettings(
            config.text, config.audio, config.cfg_scale, config.cfg_filter_k, config.initial_padding
        )

    @property
    def max_context_steps(self) -> int:
        return self.config.runtime.max_context_steps

    @property
    def max_delay(self) -> int:
        return self.config.data.max_delay

    @cached_property
    def frame_rate(self) -> float:
        return float(getattr(self.mimi.config, "frame_rate", FRAME_RATE))

    def stream_decoder(self) -> MimiStreamDecoder:
        return MimiStreamDecoder(self.mimi)

    # -- voice prefix -----------------------------------------------------------------------

    def prefix(
        self, speaker_1: str | Path, speaker_2: str | Path | None = None, *, word_timer: WordTimer
    ) -> Dia2Prefix:
        """Encode a voice prefix from wav files; cached by path, size and mtime."""
        paths = [Path(p) for p in (speaker_1, speaker_2) if p is not None]
        try:
            key = tuple(
                (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths
            ) + (id(word_timer),)
        except OSError as exc:
            raise PrefixError(f"Cannot read voice prefix: {exc}") from exc
        if key not in self._prefix_cache:
            audio = [load_audio(p, self.sample_rate) for p in paths]
            self._prefix_cache[key] = self.prefix_from_audio(audio, word_timer=word_timer)
        return self._prefix_cache[key]

    def prefix_from_audio(self, speakers: list[np.ndarray], *, word_timer: WordTimer) -> Dia2Prefix:
        """Encode a voice prefix from mono float32 24 kHz recordings (speaker 1 first)."""
        return build_prefix(speakers, word_timer, tokenizer=self.tokenizer, encode=self._encode)

    @torch.inference_mode()
    def _encode(self, audio: np.ndarray) -> np.ndarray:
        wav = torch.from_numpy(audio).to(self.device, torch.float32)[None, None]
        codes = self.mimi.encode(wav, num_quantizers=self.config.data.num_codebooks).audio_codes
        return codes[0].cpu().numpy()

    # -- generation -------------------------------------------------------------------------

    def parse(self, script: str) -> list[Entry]:
        """Script -> entries (raises EmptyScriptError, NoSpeechError, UnknownTagError)."""
        return parse_script(script, self.tokenizer, self.spk1, self.frame_rate)

    def new_generation(
        self,
        entries: list[Entry],
        config: Dia2GenerationConfig,
        *,
        closed: bool = True,
        trace: StepTrace | None = None,
    ) -> Generation:
        """Set up one utterance (prefix warm-up included)."""
        config.validate()
        prefix = None
        if config.prefix is not None:
            p = config.prefix
            prefix = PrefixPlan(list(p.entries), list(p.new_word_steps), torch.from_numpy(p.codes))
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(config.seed)
        settings = self._step_settings(config)
        return Generation(
            self.model,
            self.config,
            settings,
            entries,
            bos_id=self.bos_id,
            closed=closed,
            prefix=prefix,
            generator=generator,
            trace=trace,
            fast_path=self._fast,
            seed=config.seed,
        )

    def generate(
        self,
        script: str,
        config: Dia2GenerationConfig | None = None,
        *,
        cancel: object | None = None,
        trace: StepTrace | None = None,
    ) -> Dia2Result:
        """Speak a whole script and return the audio after the last step.

        Raises:
            EmptyScriptError, NoSpeechError, UnknownTagError: bad script.
            ContextOverflowError: the script does not fit (`on_context_overflow="error"`).
        """
        config = config or Dia2GenerationConfig()
        entries = self.parse(script)
        self._check_fits(entries, config)
        gen = self.new_generation(entries, config, trace=trace)
        while not is_cancelled(cancel) and gen.step():
            pass
        if is_cancelled(cancel):
            gen.cancel()
        codes = gen.aligned(gen.crop, gen.final_frames())
        with torch.inference_mode():
            audio = (
                self.mimi.decode(codes[None]).audio_values.clamp(-1.0, 1.0)[0, 0]
                if codes.shape[-1]
                else None
            )
        audio_np = audio.float().cpu().numpy() if audio is not None else np.zeros(0, np.float32)
        words = sum(1 for e in entries if e.tokens)
        return self.finish(gen, config, audio_np, words)

    def stream(
        self,
        source: str | TextFeed,
        config: Dia2GenerationConfig | None = None,
        cancel: object | None = None,
    ) -> Dia2Stream:
        """Speak while generating: yields 1920-sample float32 chunks as frames become final.

        Args:
            source: the whole script, or a `TextFeed` that text is appended to while
                the audio plays (see `streaming.py` for what happens if text is slow).
            cancel: anything with a boolean `.cancelled` or an `is_set()` method
                (CancelToken, threading.Event); checked once per step.

        The first chunk comes after `max_delay` steps. With the whole text known up
        front, the tokens equal `generate`'s.
        """
        config = config or Dia2GenerationConfig()
        if isinstance(source, str):
            entries = self.parse(source)
            self._check_fits(entries, config)
            gen = self.new_generation(entries, config)
            return Dia2Stream(
                self, gen, config, cancel=cancel, words_total=sum(1 for e in entries if e.tokens)
            )
        parser = ScriptParser(self.tokenizer, self.spk1, self.frame_rate)
        gen = self.new_generation([], config, closed=False)
        return Dia2Stream(self, gen, config, parser=parser, feed=source, cancel=cancel)

    # -- results ----------------------------------------------------------------------------

    def timestamps(self, gen: Generation, config: Dia2GenerationConfig) -> list[tuple[str, float]]:
        transcript = gen.text.transcript
        if config.prefix is not None and not config.include_prefix_audio:
            transcript = transcript[gen.prefix_words :]
        crop = self._crop(gen, config)
        return [
            (word, (step - crop) / self.frame_rate) for word, step in transcript if step >= crop
        ]

    def _crop(self, gen: Generation, config: Dia2GenerationConfig) -> int:
        return 0 if (config.prefix is not None and config.include_prefix_audio) else gen.crop

    def finish(
        self,
        gen: Generation,
        config: Dia2GenerationConfig,
        audio: np.ndarray,
        words_total: int | None,
    ) -> Dia2Result:
        """Package a finished generation; raise ContextOverflowError if asked to."""
        crop = self._crop(gen, config)
        codes = gen.aligned(crop, gen.final_frames()).cpu().numpy()
        spoken = gen.text.words_consumed - gen.prefix_words
        total = words_total if words_total is not None else spoken
        result = Dia2Result(
            audio=audio,
            sample_rate=self.sample_rate,
            audio_tokens=codes,
            timestamps=self.timestamps(gen, config),
            steps_run=gen.steps_run,
            end_step=gen.text.end_step,
            stopped_by=gen.stopped_by or "eos",
            words_spoken=spoken,
            words_total=total,
            crop_frames=crop,
        )
        if (
            result.stopped_by == "max_context"
            and gen.text.end_step is None
            and config.on_context_overflow == "error"
        ):
            raise self._overflow(result, gen)
        return result

    def _overflow(self, result: Dia2Result, gen: Generation) -> ContextOverflowError:
        # The last word taken may be cut off by the cap; count it as unspoken.
        spoken = max(result.words_spoken - 1, 0)
        remaining = [e.text for e in gen.text.entries if e.tokens]
        taken = [w for w, _ in gen.text.transcript[gen.prefix_words :]]
        unspoken = taken[spoken:] + remaining
        seconds = self.max_context_steps / self.frame_rate
        return ContextOverflowError(
            f"The script is longer than Dia2's context ({self.max_context_steps} steps, {seconds:.1f} s of audio): "
            f"{spoken} of {result.words_total} words were spoken. Send the rest as a new request.",
            words_spoken=spoken,
            words_total=result.words_total,
            unspoken_text=" ".join(unspoken),
            result=replace(result, words_spoken=spoken),
        )

    def _check_fits(self, entries: list[Entry], config: Dia2GenerationConfig) -> None:
        """Refuse, before any compute, a script that cannot fit even at the fastest pace."""
        if config.on_context_overflow != "error":
            return
        step = config.initial_padding
        fitted = 0
        budget = self.max_context_steps - (self.max_delay + MAX_PADDING)
        for entry in entries:
            # A word takes its step plus `padding` pads; a break's own step counts as a pad.
            step += entry.padding + (1 if entry.tokens else 0)
            if step > budget:
                break
            fitted += bool(entry.tokens)
        else:
            return
        words = [e.text for e in entries if e.tokens]
        seconds = self.max_context_steps / self.frame_rate
        raise ContextOverflowError(
            f"The script is too long for Dia2's context ({self.max_context_steps} steps, {seconds:.1f} s of audio): "
            f"at most {fitted} of {len(words)} words fit. Split it and send the rest separately.",
            words_spoken=fitted,
            words_total=len(words),
            unspoken_text=" ".join(words[fitted:]),
        )


def _asset_dir(model_dir: Path, name: str) -> str | None:
    """A `name/` folder inside or beside the checkpoint (the layout of the test fixture)."""
    for candidate in (model_dir / name, model_dir.parent / name):
        if candidate.is_dir():
            return str(candidate)
    return None
