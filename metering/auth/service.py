"""API keys: creation (shown once), revocation, and resolving a bearer token to a principal.

Keys carry 192 random bits, so a single SHA-256 digest is a sound way to store them: there is
nothing to brute-force, and lookups stay one index probe.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from metering.auth.models import ROLES, ApiKey
from metering.core.clock import utc_now
from metering.db import pipeline
from metering.errors import BadRequest, Forbidden, NotFound

KEY_PREFIX = "mk"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    team_id: str | None

    def can_read_team(self, team_id: str) -> bool:
        if self.role in ("finance", "admin"):
            return True
        return self.role == "team" and self.team_id == team_id

    def require(self, *roles: str) -> None:
        if self.role not in roles and self.role != "admin":
            raise Forbidden(
                f"this endpoint needs a key with role {' or '.join(roles)}; yours is {self.role}"
            )


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CreatedKey:
    id: str
    key: str
    role: str
    team_id: str | None


def create_key(
    session: Session, role: str, team_id: str | None = None, name: str | None = None,
    key: str | None = None,
) -> CreatedKey:
    """Make a key; the clear text is returned here and never again."""
    if role not in ROLES:
        raise BadRequest(f"role: must be one of {', '.join(ROLES)}")
    if role == "team" and not team_id:
        raise BadRequest("team_id: a team key needs the team it reads")
    if role != "team" and team_id:
        raise BadRequest("team_id: only team keys are bound to a team")
    key_id = "key_" + secrets.token_hex(8)
    clear = key or f"{KEY_PREFIX}_{role}_{secrets.token_urlsafe(24)}"
    session.add(ApiKey(id=key_id, digest=digest(clear), prefix=clear[:12], role=role,
                       team_id=team_id, name=name))
    session.flush()
    return CreatedKey(key_id, clear, role, team_id)


def ensure_key(session: Session, clear: str, role: str) -> None:
    """Make a given key exist (bootstrap admin key); idempotent."""
    found = session.execute(select(ApiKey.id).where(ApiKey.digest == digest(clear))).first()
    if found is None:
        create_key(session, role, key=clear, name="bootstrap")


def revoke_key(session: Session, key_id: str) -> None:
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utc_now())
    )
    if getattr(result, "rowcount", 0) == 0 and session.get(ApiKey, key_id) is None:
        raise NotFound(f"no key {key_id}")


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())


# Sent through the driver's pipeline (prepared after a few uses), the transaction's BEGIN
# queued ahead of it when it is the first statement (`metering.db.begin_with_first_statement`).
_RESOLVE = "SELECT id, role, team_id, revoked_at, digest FROM api_keys WHERE digest = %(digest)s"


def resolve(session: Session, clear: str) -> Principal | None:
    wanted = digest(clear)
    rows = pipeline(session, [(_RESOLVE, {"digest": wanted})])[0]
    if not rows:
        return None
    key_id, role, team_id, revoked_at, stored = rows[0]
    if revoked_at is not None:
        return None
    if not hmac.compare_digest(stored, wanted):  # pragma: no cover - belt and braces
        return None
    return Principal(key_id, role, team_id)
