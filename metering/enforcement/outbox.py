"""Enqueue messages on the signed orchestrator channel, once per key.

Called inside the transaction that decided the message, so it is sent if and only if that
decision commits. The delivery job (`delivery.py`) signs and posts it later. Every message is
the envelope `{"id", "type", "created_at", "data"}`; `id` is what the receiver deduplicates by.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from metering.core.clock import rfc3339, utc_now

_ENQUEUE = text("""
INSERT INTO outbox_messages (id, key, type, team_id, payload, created_at, next_attempt_at)
SELECT u.id, u.key, u.type, u.team_id, u.payload, :now, :now
FROM unnest(CAST(:id AS text[]), CAST(:key AS text[]), CAST(:type AS text[]),
            CAST(:team_id AS text[]), CAST(:payload AS jsonb[]))
     WITH ORDINALITY AS u(id, key, type, team_id, payload, n)
ORDER BY u.n
ON CONFLICT (key) DO NOTHING
RETURNING key, id
""")

_EXISTING = text("SELECT key FROM outbox_messages WHERE key = ANY(CAST(:keys AS text[]))")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to queue: `key` makes it happen once (e.g. "kill:exe_1")."""

    type: str
    team_id: str | None
    payload: dict[str, Any]
    key: str


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(10)


def envelope(message_id: str, type: str, created_at: datetime,
             payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON body the receiver gets."""
    return {"id": message_id, "type": type, "created_at": rfc3339(created_at), "data": payload}


def enqueue_messages(
    session: Session, messages: Sequence[NewMessage], now: datetime | None = None
) -> dict[str, str]:
    """Queue every message whose key was never queued; answer key -> id of those queued now.

    Messages are numbered in the order given, which is the order they are first tried."""
    if not messages:
        return {}
    moment = now or utc_now()
    unique = list({m.key: m for m in messages}.values())
    ids = [new_message_id() for _ in unique]
    rows = session.execute(_ENQUEUE, {
        "id": ids,
        "key": [m.key for m in unique],
        "type": [m.type for m in unique],
        "team_id": [m.team_id for m in unique],
        "payload": [orjson.dumps(envelope(i, m.type, moment, m.payload)).decode()
                    for i, m in zip(ids, unique, strict=True)],
        "now": moment,
    })
    return {str(r[0]): str(r[1]) for r in rows}


def enqueue_message(
    session: Session, *, type: str, team_id: str | None, payload: dict[str, Any], key: str,
    now: datetime | None = None,
) -> str | None:
    """Queue `{"id", "type", "created_at", "data": payload}`; answer the new id, or None if a
    message with this key was queued before (nothing happens twice)."""
    queued = enqueue_messages(session, [NewMessage(type, team_id, payload, key)], now)
    return queued.get(key)


def existing_keys(session: Session, keys: Iterable[str]) -> set[str]:
    """The keys among `keys` already queued (delivered or not): a cheap pre-check that saves
    the insert, and the id it would burn, for messages sent long ago."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    return {str(r[0]) for r in session.execute(_EXISTING, {"keys": wanted})}
