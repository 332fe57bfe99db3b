"""voice-agent: a local voice assistant (Whisper -> instruct LLM -> Dia2) in one process.

Importing the package is cheap: no torch, transformers or gradio import happens
here. Engines are imported lazily by the cached loader (`voice_agent.pipeline.models`).
"""

__version__ = "0.1.0"
