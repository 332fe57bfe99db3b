"""File-typed inputs: accepted only from Gradio's upload cache of this process.

Gradio copies an uploaded file into its cache and hands the handler a path. A
client can instead send any path (`{"path": "/etc/passwd", "meta": {"_type":
"gradio.FileData"}}` through the HTTP API); Gradio refuses it only when its own
check is on (see `app.build_app`). This is the handlers' own check: a path that
reaches them outside the cache (a Gradio change that passes paths through, a
handler called another way) is refused. It cannot tell a file Gradio copied into
the cache from an upload, so Gradio's check must stay on; a test guards both.
"""

from __future__ import annotations

import os
from pathlib import Path

from voice_agent.core.errors import InputError


class NotUploadedError(InputError):
    """A file-typed input names a file this page did not upload."""

    code = "not_uploaded"


def upload_root() -> Path:
    """Gradio's upload cache for this process (GRADIO_TEMP_DIR, else the temp dir's gradio/)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def uploaded_path(path: str | os.PathLike[str]) -> str:
    """`path` resolved, when it is a file inside the upload cache; else `NotUploadedError`.

    Symbolic links and `..` are resolved first, so neither leads out of the cache.
    """
    real = Path(path).resolve()
    if not real.is_relative_to(upload_root()) or not real.is_file():
        raise NotUploadedError(
            "That file was not uploaded through this page; record or upload it again."
        )
    return str(real)
