"""The local voices in `assets/speech/`: short sentences spoken by espeak-ng, made once.

The clip set (`voice_agent.testing.clips`) needs more speakers than the two recordings
in `assets/`; these give it synthetic voices of both genders, two accents and three
speaking rates, with commas and a filled pause ("um") mid-sentence. They are committed
as 16 kHz FLAC (about 40 KB each), so tests and the benchmark need no espeak-ng; this
module only remakes them:

    apt-get install espeak-ng && python -m voice_agent.testing.voices assets/speech
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# (file stem, espeak-ng voice, words per minute, text)
SENTENCES: tuple[tuple[str, str, int, str], ...] = (
    ("weather", "en-us", 165, "What is the weather going to be like tomorrow morning?"),
    ("timer", "en-gb+f3", 150, "Set a timer for ten minutes, please."),
    ("recipe", "en-us+m3", 175, "Can you read me the next step of the recipe?"),
    ("um", "en-gb-scotland+f2", 150, "I was thinking, um, maybe we could go tomorrow."),
    ("music", "en-us+f4", 160, "Play something quiet, like a piano, while I work."),
    ("capital", "en-gb", 170, "Tell me the capital of Australia and its population."),
)


def make(out_dir: Path) -> list[Path]:
    """Speak every sentence with espeak-ng into `out_dir/<stem>.flac` (16 kHz mono)."""
    import soundfile as sf
    import soxr

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, voice, wpm, text in SENTENCES:
            wav = Path(tmp) / f"{stem}.wav"
            subprocess.run([exe, "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
            samples, rate = sf.read(str(wav), dtype="float32")
            samples = soxr.resample(samples, rate, 16_000)
            path = out_dir / f"{stem}.flac"
            sf.write(str(path), samples, 16_000, subtype="PCM_16")
            written.append(path)
    return written


if __name__ == "__main__":
    for path in make(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/speech")):
        print(path)
