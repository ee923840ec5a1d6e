"""A cap on the disk that uploads may fill.

Gradio bounds each file (launch's max_file_size) and deletes old ones (Blocks' delete_cache), but not how many a
client sends: at loopback speed a script filled the disk in about 4 minutes. Gradio has no per-session upload count
and a count alone would not hold (many sessions, or big files), so the bound is on what holds the disk: while
Gradio's cache folder (uploads and outputs) with the upload would hold more than the cap, the upload is answered 507
with a message, and delete_cache's sweep makes room again.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

UPLOAD_ROUTE = "/gradio_api/upload"


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files under `folder` (0 when it does not exist yet)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # deleted by the cache sweep meanwhile
                continue
    return total


class UploadSpaceGuard:
    """ASGI middleware: an upload is refused while the cache folder holds more than `max_mb` MB."""

    def __init__(self, app: ASGIApp, max_mb: int) -> None:
        self.app = app
        self.max_bytes = max_mb * 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith(UPLOAD_ROUTE)
                and await self._over(scope)):
            response = JSONResponse({"detail": f"The studio's upload space ({self.max_bytes // 2**20} MB) is full: "
                                               "try again in a few minutes, once old uploads are deleted."},
                                    status_code=507)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _over(self, scope: Scope) -> bool:
        """Whether the cache plus this request would hold more than the cap: one request may carry many files
        (Gradio takes up to 1000), so its declared length counts, and one without a length is refused. The folder
        is walked in a worker thread, off the event loop that serves every other request."""
        length = dict(scope["headers"]).get(b"content-length", b"").decode()
        if not length.isdigit():
            return True
        held = await anyio.to_thread.run_sync(folder_bytes, scope["app"].get_blocks().GRADIO_CACHE)
        return held + int(length) > self.max_bytes
