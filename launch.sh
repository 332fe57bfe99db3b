#!/usr/bin/env bash
# voice-agent launcher.
#   ./launch.sh [APP ARGS]   create .venv if missing, install requirements, run the app (python app.py)
#   ./launch.sh test         same set-up, then the test suite (ruff + mypy + pytest)
# torch: the CPU build (requirements-cpu.txt) by default; TORCH_VARIANT=cuda installs
# PyPI's default build instead (CUDA on Linux x86_64), the one a GPU Space gets.
set -euo pipefail
cd "$(dirname "$0")"

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

TORCH_CHOSEN="${TORCH_VARIANT:+yes}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"

setup() {
    case "$TORCH_VARIANT" in
        cpu | cuda) ;;
        *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;;
    esac
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV ..."
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when a requirements file or the torch variant changed since the last install.
    local stamp="$VENV/.requirements.sha256"
    local want
    want=$( (cat requirements.txt requirements-cpu.txt; echo "TORCH_VARIANT=$TORCH_VARIANT") | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing requirements.txt into $VENV (torch: $TORCH_VARIANT) ..."
        "$VENV/bin/python" -m pip install -q --upgrade pip
        if [ "$TORCH_VARIANT" = cpu ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
            # torch alone from the PyTorch CPU index (--no-deps: only torch is looked up
            # there); requirements.txt's torch==2.13.0 then keeps this 2.13.0+cpu. Elsewhere
            # PyPI's torch has no CUDA libraries and requirements.txt alone is right.
            "$VENV/bin/python" -m pip install -q --no-deps -r requirements-cpu.txt
        elif "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("torch").endswith("+cpu"))' 2>/dev/null; then
            # The CPU build satisfies torch==2.13.0 too; remove it so PyPI's build replaces it.
            "$VENV/bin/python" -m pip uninstall -q -y torch
        fi
        "$VENV/bin/python" -m pip install -q -r requirements.txt
        echo "$want" > "$stamp"
    fi
    if [ -z "$TORCH_CHOSEN" ] && command -v nvidia-smi >/dev/null 2>&1; then
        echo "note: this machine has an NVIDIA GPU but $VENV has the CPU build of torch;" \
            "TORCH_VARIANT=cuda ./launch.sh installs the CUDA build" >&2
    fi
}

browser_deps() {
    # The browser test drives Debian's chromium (browser downloads are not possible everywhere);
    # Gradio decodes non-WAV microphone chunks with ffmpeg (pydub).
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing ${missing[*]} for the browser test ..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null \
            || echo "warning: could not install ${missing[*]}; the browser test will fail" >&2
    fi
}

case "${1:-}" in
    test)
        shift
        setup
        browser_deps
        export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
        echo "== ruff"
        "$VENV/bin/ruff" check .
        "$VENV/bin/ruff" format --check .
        echo "== mypy"
        "$VENV/bin/mypy"
        echo "== pytest"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        setup
        exec "$VENV/bin/python" app.py "$@"
        ;;
esac
