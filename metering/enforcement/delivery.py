"""Delivery of the outbox to the orchestrator's webhook: signed POSTs, retried with backoff.

Each run claims a bounded batch of due messages (SKIP LOCKED, so any number of workers share
the queue), posts them concurrently with short timeouts, and records the outcome: delivered on
a 2xx answer; otherwise retried after an exponential, jittered delay until `max_age_s` after
the message was created, when it is abandoned (kept, with its last error, and logged). With no
URL or no secret configured nothing is sent: messages wait, and the feed still serves the
kill orders.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import orjson
from sqlalchemy.orm import Session, sessionmaker

from metering.core.clock import utc_now
from metering.db import transaction
from metering.enforcement import repository as repo
from metering.enforcement.repository import ClaimedMessage, DeliveryOutcome
from metering.enforcement.signing import MESSAGE_ID_HEADER, SIGNATURE_HEADER, sign

log = logging.getLogger(__name__)

_jitter = secrets.SystemRandom()


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    batch: int = 100
    concurrency: int = 8
    connect_timeout_s: float = 2.0  # float-ok: seconds
    timeout_s: float = 5.0  # float-ok: seconds
    backoff_base_s: float = 1.0  # float-ok: seconds
    backoff_cap_s: float = 3600.0  # float-ok: seconds
    # Longer than a whole batch can take (batch / concurrency * timeout), so a live worker's
    # claim never runs out under it.
    lease_s: float = 120.0  # float-ok: seconds
    max_age_s: float = 24 * 3600  # float-ok: seconds
    max_batches: int = 10  # per run: a deep queue is drained over several runs


@dataclass(slots=True)
class DeliveryResult:
    delivered: int = 0
    failed: int = 0
    abandoned: int = 0


def retry_delay(
    attempts: int, policy: DeliveryPolicy, rand: Callable[[], float] = _jitter.random
) -> float:  # float-ok: seconds
    """Seconds to wait after the `attempts`-th failure: exponential from `backoff_base_s`,
    capped at `backoff_cap_s`, then jittered down to between half and all of that so that a
    receiver coming back is not hit by every message at the same instant."""
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2.0 ** min(attempts - 1, 62))
    return ceiling * (0.5 + 0.5 * rand())


def next_attempt_at(
    created_at: datetime, attempts: int, now: datetime, policy: DeliveryPolicy,
    rand: Callable[[], float] = _jitter.random,
) -> datetime | None:
    """When to try again after a failure, or None to abandon: the last try is at the max age."""
    deadline = created_at + timedelta(seconds=policy.max_age_s)
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=retry_delay(attempts, policy, rand)), deadline)


def _post(client: httpx.Client, url: str, secret: str, message: ClaimedMessage) -> str | None:
    """POST one message; answer None when acknowledged (2xx), else what went wrong."""
    body = orjson.dumps(message.body)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(utc_now().timestamp())),
        MESSAGE_ID_HEADER: message.id,
    }
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def _outcomes(
    messages: Sequence[ClaimedMessage], errors: Sequence[str | None], now: datetime,
    policy: DeliveryPolicy,
) -> list[DeliveryOutcome]:
    outcomes = []
    for message, error in zip(messages, errors, strict=True):
        if error is None:
            outcomes.append(DeliveryOutcome(message.seq, True, None, None))
            continue
        retry_at = next_attempt_at(message.created_at, message.attempts + 1, now, policy)
        if retry_at is None:
            log.warning("outbox message abandoned", extra={
                "message_id": message.id, "type": message.type,
                "attempts": message.attempts + 1, "last_error": error})
        outcomes.append(DeliveryOutcome(message.seq, False, error, retry_at))
    return outcomes


def deliver_due(
    sessions: sessionmaker[Session], url: str | None, secret: str | None,
    policy: DeliveryPolicy | None = None, client: httpx.Client | None = None,
) -> DeliveryResult:
    """Post due outbox messages to `url`; answer how many were delivered, failed, abandoned."""
    result = DeliveryResult()
    if not url or not secret:
        return result
    policy = policy or DeliveryPolicy()
    http = client or httpx.Client(
        timeout=httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s))
    try:
        for _ in range(policy.max_batches):
            now = utc_now()
            with transaction(sessions) as session:
                claimed = repo.claim_due(session, now, now + timedelta(seconds=policy.lease_s),
                                         policy.batch)
            if not claimed:
                break
            workers = max(1, min(policy.concurrency, len(claimed)))
            with ThreadPoolExecutor(workers, thread_name_prefix="outbox") as pool:
                errors = list(pool.map(lambda m: _post(http, url, secret, m), claimed))
            done = utc_now()
            outcomes = _outcomes(claimed, errors, done, policy)
            with transaction(sessions) as session:
                repo.record_outcomes(session, outcomes, done)
            for outcome in outcomes:
                if outcome.ok:
                    result.delivered += 1
                elif outcome.next_attempt_at is None:
                    result.abandoned += 1
                else:
                    result.failed += 1
            if len(claimed) < policy.batch:
                break
    finally:
        if client is None:
            http.close()
    if result.failed or result.abandoned:
        log.warning("webhook delivery failures", extra={
            "delivered": result.delivered, "failed": result.failed,
            "abandoned": result.abandoned})
    return result
