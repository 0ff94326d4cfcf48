"""Enqueue a message on the signed orchestrator channel, once per key.

Called inside the transaction that decided the message, so it is sent if and only if that
decision commits. The delivery job signs and posts it later.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from metering.core.clock import rfc3339, utc_now

_ENQUEUE = text("""
INSERT INTO outbox_messages (id, key, type, team_id, payload, created_at, next_attempt_at)
VALUES (:id, :key, :type, :team_id, CAST(:payload AS jsonb), :now, :now)
ON CONFLICT (key) DO NOTHING
RETURNING id
""")


def enqueue_message(
    session: Session, *, type: str, team_id: str | None, payload: dict[str, Any], key: str,
    now: datetime | None = None,
) -> str | None:
    """Queue `{"id", "type", "created_at", "data": payload}`; answer the new id, or None if a
    message with this key was queued before (nothing happens twice)."""
    import orjson

    moment = now or utc_now()
    message_id = "msg_" + secrets.token_hex(10)
    body = {"id": message_id, "type": type, "created_at": rfc3339(moment), "data": payload}
    row = session.execute(_ENQUEUE, {
        "id": message_id, "key": key, "type": type, "team_id": team_id,
        "payload": orjson.dumps(body).decode(), "now": moment,
    }).first()
    return None if row is None else str(row[0])
