"""Key management for admins: create (the key is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

from metering.api.deps import PrincipalDep, SessionDep
from metering.auth import service
from metering.auth.schemas import KeyCreated, KeyIn, KeyOut, KeyPage

router = APIRouter(tags=["keys"])


@router.post("/v1/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyIn, session: SessionDep, principal: PrincipalDep) -> KeyCreated:
    """Create a key. Its clear text is in this answer only; only a digest is stored."""
    principal.require("admin")
    return KeyCreated.of(service.create_key(session, body.role, body.team_id, body.name))


@router.get("/v1/keys", response_model=KeyPage)
def list_keys(session: SessionDep, principal: PrincipalDep) -> KeyPage:
    principal.require("admin")
    return KeyPage(data=[KeyOut.of(k) for k in service.list_keys(session)], next_cursor=None)


@router.delete("/v1/keys/{key_id}", status_code=204)
def revoke_key(key_id: str, session: SessionDep, principal: PrincipalDep) -> None:
    """Revoke a key at once: the next request with it is refused."""
    principal.require("admin")
    service.revoke_key(session, key_id)
