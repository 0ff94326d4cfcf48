"""Key management for admins: create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from metering.api.deps import PrincipalDep, SessionDep
from metering.auth import service
from metering.core.clock import rfc3339

router = APIRouter(tags=["keys"])


class KeyIn(BaseModel):
    role: Literal["ingest", "team", "finance", "admin"]
    team_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=200)


class KeyCreated(BaseModel):
    id: str
    key: str
    role: str
    team_id: str | None


class KeyOut(BaseModel):
    id: str
    prefix: str
    role: str
    team_id: str | None
    name: str | None
    created_at: str
    revoked_at: str | None


class KeyPage(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None


@router.post("/v1/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyIn, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Create a key. Its clear text is in this answer only; only a digest is stored."""
    principal.require("admin")
    created = service.create_key(session, body.role, body.team_id, body.name)
    return {"id": created.id, "key": created.key, "role": created.role,
            "team_id": created.team_id}


@router.get("/v1/keys", response_model=KeyPage)
def list_keys(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    principal.require("admin")
    return {"data": [{
        "id": k.id, "prefix": k.prefix, "role": k.role, "team_id": k.team_id, "name": k.name,
        "created_at": rfc3339(k.created_at),
        "revoked_at": rfc3339(k.revoked_at) if k.revoked_at else None,
    } for k in service.list_keys(session)], "next_cursor": None}


@router.delete("/v1/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, session: SessionDep, principal: PrincipalDep) -> None:
    """Revoke a key at once: the next request with it is refused."""
    principal.require("admin")
    service.revoke_key(session, key_id)
