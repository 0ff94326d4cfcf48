"""API keys as the admin endpoints take and show them (never the clear text but once)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from metering.auth.models import ApiKey
from metering.auth.service import CreatedKey
from metering.core.clock import rfc3339


class KeyIn(BaseModel):
    role: Literal["ingest", "team", "finance", "admin"]
    team_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=200)


class KeyCreated(BaseModel):
    id: str
    key: str
    role: str
    team_id: str | None

    @classmethod
    def of(cls, created: CreatedKey) -> KeyCreated:
        return cls(id=created.id, key=created.key, role=created.role, team_id=created.team_id)


class KeyOut(BaseModel):
    id: str
    prefix: str
    role: str
    team_id: str | None
    name: str | None
    created_at: str
    revoked_at: str | None

    @classmethod
    def of(cls, k: ApiKey) -> KeyOut:
        return cls(id=k.id, prefix=k.prefix, role=k.role, team_id=k.team_id, name=k.name,
                   created_at=rfc3339(k.created_at),
                   revoked_at=rfc3339(k.revoked_at) if k.revoked_at else None)


class KeyPage(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None
