"""Opaque cursors: `{"data": [...], "next_cursor": "..." | null}`, `after=<next_cursor>`."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from metering.errors import BadRequest


def encode_cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadRequest("after: not a cursor this service issued") from exc
    if not isinstance(value, list):
        raise BadRequest("after: not a cursor this service issued")
    return value
