"""Enforcement tables: kill orders (the durable feed) and the outbox of the signed channel.

A kill order is issued at most once per execution (unique `execution_id`, first reason wins).
`seq` orders the feed; every writer takes one advisory lock before inserting (see
`repository.KILL_ORDER_LOCK`), so sequence order is commit order and a reader paging by `seq`
never skips a row that commits late. The outbox carries kill orders and notifications to the
orchestrator's webhook, each message once per `key`, delivered at least once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from metering.db import Base


class KillOrder(Base):
    __tablename__ = "kill_orders"
    __table_args__ = (Index("ix_kill_orders_team_seq", "team_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # "ko_...", stable on both channels
    team_id: Mapped[str] = mapped_column(String(128))
    sandbox_id: Mapped[str] = mapped_column(String(256))
    execution_id: Mapped[str] = mapped_column(String(256), unique=True)
    action: Mapped[str] = mapped_column(String(16), server_default=text("'kill'"))
    reason: Mapped[str] = mapped_column(String(32))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_due", "next_attempt_at",
              postgresql_where=text("delivered_at IS NULL AND abandoned_at IS NULL")),
    )

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # stable, for the receiver
    # What makes it happen once: e.g. "kill:exe_1", "credit.threshold:team_1:100.00:80".
    key: Mapped[str] = mapped_column(String(300), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    team_id: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    abandoned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
