"""Dashboard sessions: an HMAC-signed cookie that names an API key and never holds it.

The cookie is `v1.<key id>.<expiry, unix seconds>.<mac>` with
`mac = HMAC-SHA256(server secret, "v1|<key id>|<expiry>|<key digest>")`. The key's digest lives
only in the database, so a cookie is bound to the very key that signed in: a key replaced
under the same id, a forged id or a changed expiry all fail the MAC. Every request re-reads the
key's row, so revoking a key signs its sessions out at once. The key itself is used once, at
sign-in, to find that row; it is never stored, put in a URL, or logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

COOKIE_NAME = "metering_dashboard"
COOKIE_PATH = "/dashboard"
VERSION = "v1"
SECRET_FILE = "dashboard-secret"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True, slots=True)
class SessionClaim:
    """What a well-formed cookie claims; trusted only once `verify` accepts its MAC."""

    key_id: str
    expires_at: int
    mac: str


def _mac(secret: bytes, key_id: str, expires_at: int, key_digest: str) -> str:
    message = f"{VERSION}|{key_id}|{expires_at}|{key_digest}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, key_id: str, key_digest: str, expires_at: int) -> str:
    """The cookie value for a key signed in until `expires_at` (unix seconds)."""
    return f"{VERSION}.{key_id}.{expires_at}.{_mac(secret, key_id, expires_at, key_digest)}"


def parse(value: str | None) -> SessionClaim | None:
    """The claim of a cookie value, or None when it is not one this service issues."""
    if not value or len(value) > 200:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit():
        return None
    return SessionClaim(parts[1], int(parts[2]), parts[3])


def verify(secret: bytes, claim: SessionClaim, key_digest: str, now_unix: int) -> bool:
    """The claim is unexpired and was signed here for the key whose digest is given."""
    if claim.expires_at <= now_unix:
        return False
    expected = _mac(secret, claim.key_id, claim.expires_at, key_digest)
    return hmac.compare_digest(expected, claim.mac)


def session_digest(claim: SessionClaim) -> str:
    """What a sign-out records of a session: a digest of its MAC, never the cookie."""
    return hashlib.sha256(claim.mac.encode()).hexdigest()


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The signing secret: the configured one, else one kept in the data directory (made once,
    atomically, so every process on the machine shares it), else - if that directory cannot be
    written - one for this process only."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("dashboard secret unreadable; sessions last until this process stops")
        return secrets.token_bytes(32)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Write a complete file under a temporary name, then link it into place: the link
        # fails if another process won the race, and then everybody reads the winner's file.
        fd, temp = tempfile.mkstemp(dir=data_dir, prefix=".dashboard-secret-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
        return _read_secret(path)
    except OSError:
        log.warning("cannot keep a dashboard secret in %s; set METERING_DASHBOARD_SECRET so "
                    "sessions survive restarts and work across processes", data_dir)
        return secrets.token_bytes(32)


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    if len(text) < 32:
        raise OSError(f"{path}: secret too short")
    return text.encode()
