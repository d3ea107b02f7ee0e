"""ws-relay: live transcoding progress over WebSocket and Server-Sent Events, the progress page
and the small JSON API behind it. An ASGI app on the python3-asgi template; all the logic is in
vtp_relay (see its docstring and the ws-relay contract)."""

from __future__ import annotations

from pathlib import Path

from vtp_relay import create_app

app = create_app(static_dir=Path(__file__).resolve().parent / "static")


def on_sigterm() -> None:
    """The template calls this when the function is stopped: end every open stream at once
    (WebSockets close with 1012, SSE streams end) so clients reconnect to another replica."""
    app.state.relay.shutdown_streams()
