#!/usr/bin/env bash
# voice-agent launcher.
#   ./launch.sh [APP ARGS]   create .venv if missing, install requirements, run the app (python app.py)
#   ./launch.sh test         same set-up, then the test suite (ruff + pytest)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV ..."
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when requirements.txt changed since the last install.
    local stamp="$VENV/.requirements.sha256"
    local want
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing requirements.txt into $VENV ..."
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -r requirements.txt
        echo "$want" > "$stamp"
    fi
}

browser_deps() {
    # The browser test drives Debian's chromium (browser downloads are not possible everywhere);
    # Gradio streams reply audio through ffmpeg.
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
        echo "== pytest"
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        setup
        exec "$VENV/bin/python" app.py "$@"
        ;;
esac
