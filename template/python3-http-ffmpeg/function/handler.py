"""Default handler of the python3-http-ffmpeg template: replace it with your own."""

from __future__ import annotations

from typing import Any


def handle(event: Any, context: Any) -> dict[str, Any]:
    """Answer with what arrived, as JSON, so a fresh deployment shows the contract at work."""
    return {
        "statusCode": 200,
        "body": {
            "message": "Hello from python3-http-ffmpeg",
            "method": event.method,
            "path": event.path,
            "bytes_received": len(event.body),
            "hostname": context.hostname,
        },
    }
