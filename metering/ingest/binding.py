"""The CloudEvents HTTP binding: which of its three modes a request uses, and its events.

- batched: a JSON array (`application/cloudevents-batch+json`, or plain `application/json`);
- structured: one event object (`application/cloudevents+json`);
- binary: the attributes in `ce-*` headers, the event's `data` as the body.

A single event (structured or binary) is answered with the same body as a batch of one; only
its status differs (see `single_status`), because CloudEvents clients take any 2xx as delivered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from metering.errors import BadRequest

BATCH_TYPES = frozenset({"application/cloudevents-batch+json", "application/json", ""})
STRUCTURED_TYPE = "application/cloudevents+json"
_CE = "ce-"


@dataclass(frozen=True, slots=True)
class Envelope:
    events: list[Any]
    single: bool


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = exc
    # orjson refuses numbers beyond a double (`1e400`); the standard library reads them, so
    # that one such value is refused with its own event instead of failing the whole body.
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"body is not JSON: {error}") from None


def _binary(headers: Mapping[str, str], body: bytes, content_type: str) -> dict[str, Any]:
    """The event a binary-mode request carries: percent-decoded `ce-*` headers and its data."""
    event: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(_CE) and len(lowered) > len(_CE):
            event[lowered[len(_CE):]] = unquote(value)
    if content_type:
        event["datacontenttype"] = content_type
    if body:
        if content_type and content_type != "application/json" and not content_type.endswith(
                "+json"):
            # Kept as text: validation then says that `data` must be a JSON object.
            event["data"] = body.decode("utf-8", "replace")
        else:
            try:
                event["data"] = orjson.loads(body)
            except orjson.JSONDecodeError:
                event["data"] = body.decode("utf-8", "replace")
    return event


def parse(headers: Mapping[str, str], body: bytes) -> Envelope:
    """The events of one `POST /v1/events`, whatever the mode; 400 when the body is none."""
    content_type = media_type(headers.get("content-type"))
    if "ce-specversion" in headers:
        return Envelope([_binary(headers, body, content_type)], single=True)
    if content_type == STRUCTURED_TYPE:
        event = _json(body)
        if isinstance(event, list):
            raise BadRequest(f"a {STRUCTURED_TYPE} body is one event object; send a batch as "
                             "application/cloudevents-batch+json")
        if not isinstance(event, dict):
            raise BadRequest("body must be one CloudEvent object")
        return Envelope([event], single=True)
    if content_type not in BATCH_TYPES:
        raise BadRequest(
            f"content-type {content_type!r} is not a CloudEvents mode this endpoint takes: "
            "application/cloudevents-batch+json (or application/json) with an array, "
            f"{STRUCTURED_TYPE} with one object, or binary mode (ce-* headers)")
    batch = _json(body)
    if isinstance(batch, dict):
        raise BadRequest("body must be a JSON array of CloudEvents (a batch); send one event "
                         f"as {STRUCTURED_TYPE} or in binary mode (ce-* headers)")
    if not isinstance(batch, list):
        raise BadRequest("body must be a JSON array of CloudEvents")
    return Envelope(batch, single=False)


def single_status(answer: Mapping[str, Any]) -> int:
    """200 for a single event accepted or a duplicate; 409 for a conflict; else 400."""
    errors = answer.get("errors") or []
    if not errors:
        return 200
    return 409 if errors[0].get("code") == "conflict" else 400
