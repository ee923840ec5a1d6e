"""Private events stay private by name.

Gradio hides an event with api_visibility="private" (the UI's own side handlers: previews, picks, sends) from the
API docs and from gradio_client, but its named routes (/gradio_api/call/<name>, /call/v2/<name>, /run/<name>) find
any event by name (gradio/route_utils.py get_fn), so a script could call them. The browser never uses those routes
(it calls every event by its index through /gradio_api/queue/join), so they are closed to private events here.
What stays open is the queue's index route, which the browser needs and which no server can tell from a script's:
the private events behind it are bounded side handlers (studio.limits' side_concurrency) and none holds the model.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# the routes that take an event's name (gradio/routes.py: /call, /call/v2, /run and its older /api spelling)
NAMED_ROUTE = re.compile(r"/gradio_api/(?:call/v2|call|run|api)/([^/]+)/?$")


class PrivateEventsGuard:
    """ASGI middleware: a call of a private event by name is answered 404, as a name no event has."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and (match := NAMED_ROUTE.search(scope["path"])):
            if match.group(1) in private_names(scope["app"].get_blocks()):
                response = JSONResponse({"detail": f"No endpoint named /{match.group(1)}."}, status_code=404)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def private_names(blocks: Any) -> set[str]:
    """The names of a Blocks app's private events."""
    return {fn.api_name for fn in blocks.fns.values() if fn.api_visibility == "private" and fn.api_name}


def app_kwargs() -> dict[str, Any]:
    """launch(app_kwargs=...): the FastAPI app Gradio builds, with the guard in its middleware."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(PrivateEventsGuard)]}
