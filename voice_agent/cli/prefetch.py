"""`prefetch`: download every configured model (with progress) so the app can later run offline."""

from __future__ import annotations

import argparse
import logging

from voice_agent.core.config import configured_models, get_settings
from voice_agent.core.hardware import probe_hardware
from voice_agent.core.hub import ModelNotFoundError, ensure_model_exists

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m voice_agent prefetch")
    parser.add_argument(
        "models", nargs="*", help="extra hub ids to fetch besides the configured ones"
    )
    parser.add_argument(
        "--cuda",
        action="store_true",
        help="fetch the CUDA defaults even on a machine without a GPU (to copy them over)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    wanted = configured_models(settings, args.cuda or probe_hardware().cuda_available)
    # An LLM behind LLM_BACKEND=openai lives on its server: nothing to download here.
    local = (
        ("stt", "tts", "mimi")
        if settings.llm_backend == "openai"
        else ("llm", "stt", "tts", "mimi")
    )
    refs = [wanted[k] for k in local if k in wanted] + list(args.models)
    if settings.offline:
        print(
            f"Offline mode is on ({settings.offline_source}=1), so nothing can be downloaded.\n"
            f"Unset it and run `python -m voice_agent prefetch` on a machine with network, then copy "
            f"{settings.hf_home} (or put models under {settings.local_models_dir})."
        )
        for ref in refs:
            try:
                found = ensure_model_exists(ref, settings)
                print(f"  present: {ref} ({found.source}: {found.path})")
            except ModelNotFoundError:
                print(f"  missing: {ref}")
        return 1
    failed = 0
    for ref in refs:
        try:
            found = ensure_model_exists(ref, settings)
        except ModelNotFoundError as exc:
            failed += 1
            print(f"FAILED {ref}: {exc}")
            continue
        print(f"ok     {ref} ({found.source}: {found.path})")
    return 1 if failed else 0
