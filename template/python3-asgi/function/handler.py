"""Default handler of the python3-asgi template: replace it with your own ASGI `app`."""

from __future__ import annotations

import socket

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket


async def hello(request: Request) -> JSONResponse:
    """Answer with what arrived, so a fresh deployment shows the contract at work."""
    body = await request.body()
    return JSONResponse(
        {
            "message": "Hello from python3-asgi",
            "method": request.method,
            "path": request.url.path,
            "bytes_received": len(body),
            "hostname": socket.gethostname(),
        }
    )


async def echo(websocket: WebSocket) -> None:
    """Echo text messages back (reach the function directly: the CE gateway drops upgrades)."""
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app = Starlette(
    routes=[
        WebSocketRoute("/ws", echo),
        Route("/", hello, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/{path:path}", hello, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
)
