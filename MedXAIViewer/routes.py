"""The viewer's own HTTP routes beside trame's: the folder's files, and a status record.

- ``GET /files/<path>``: a file of the result folder (the report, the ``.mrb`` scene, figures), and
  nothing else: :func:`MedXAIViewer.folder.inside` refuses absolute paths, ``..`` and links that leave
  the folder, whatever the encoding, with 404 (the same answer as for a missing file, so the reply does not
  tell what exists outside). HTML is sent with ``Content-Security-Policy: sandbox``: a page of the folder
  runs in an opaque origin and cannot script the viewer.
- ``GET /status``: JSON for health checks and the tests: connected pages, whether a scene is loaded and
  how many nodes it holds, the problems found, and each slice view's XY -> RAS matrix and size (to find a
  RAS point on the screen). It names no path.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any, Callable

from .folder import inside

__all__ = ["add_routes"]


def add_routes(app: Any, root: Callable[[], Path], status: Callable[[], dict]) -> None:
    """Add the routes to an aiohttp application (wslink's, from trame's ``on_server_bind``)."""
    from aiohttp import web

    async def serve_file(request: "web.Request") -> "web.StreamResponse":
        path = inside(root(), request.match_info.get("tail", ""))
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        if kind == "text/html":
            headers["Content-Security-Policy"] = "sandbox"
        return web.FileResponse(path, headers={**headers, "Content-Type": kind})

    async def serve_status(request: "web.Request") -> "web.Response":
        return web.json_response(status(), headers={"Cache-Control": "no-store"})

    app.router.add_get("/files/{tail:.*}", serve_file)
    app.router.add_get("/status", serve_status)
