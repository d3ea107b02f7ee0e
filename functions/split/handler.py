"""Placeholder until the pipeline lands."""

from typing import Any


def handle(event: Any, context: Any) -> dict[str, Any]:
    return {"statusCode": 501, "body": {"error": "not implemented yet"}}
