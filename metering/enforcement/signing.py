"""The signature of the orchestrator channel, both sides of it.

`Metering-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, the scheme
Stripe uses: the timestamp inside the signed text stops replays of an old message beyond the
tolerance, and several `v1=` entries may be sent while a secret is being rotated. The receiver
calls `verify_signature` on the raw body bytes, before parsing them.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from metering.errors import InvalidSignature

SIGNATURE_HEADER = "Metering-Signature"
MESSAGE_ID_HEADER = "Metering-Message-Id"
DEFAULT_TOLERANCE_S = 300


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def sign(secret: str, body: bytes | str, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, timestamp, _as_bytes(body))}"


def verify_signature(
    secret: str, header: str | None, body: bytes | str,
    tolerance_s: int = DEFAULT_TOLERANCE_S, now: float | None = None,  # float-ok: seconds
) -> int:
    """Check a `Metering-Signature` header against the raw body; answer its timestamp.

    Raises `InvalidSignature` when the header is missing or malformed, when its timestamp is
    more than `tolerance_s` away from `now` (unix seconds, default the current time), or when
    no `v1` entry matches (compared in constant time).
    """
    if not header:
        raise InvalidSignature("missing signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise InvalidSignature("malformed signature header")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise InvalidSignature("malformed signature timestamp") from exc
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature("signature header needs t= and v1=")
    moment = time.time() if now is None else now
    if abs(moment - timestamp) > tolerance_s:
        raise InvalidSignature(f"stale signature: timestamp {timestamp} is more than "
                               f"{tolerance_s} s from now")
    expected = _digest(secret, timestamp, _as_bytes(body))
    # Check every candidate so the time taken does not tell which one matched.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("signature does not match the body")
    return timestamp
