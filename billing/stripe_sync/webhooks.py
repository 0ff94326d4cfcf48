"""`POST /v1/stripe/webhook`: Stripe's signed events, verified, stored first, handled once.

Authentication is the `Stripe-Signature` header (HMAC with `METERING_STRIPE_WEBHOOK_SECRET`,
timestamp within `stripe_webhook_tolerance_s`), not an API key: a bad or stale signature answers
400 `invalid_signature` and stores nothing. What storing and handling mean is
`billing.stripe_sync.events`.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from billing.stripe_sync.events import handle_event, receive_event
from billing.stripe_sync.gateway import StripeGateway, verify_event
from billing.stripe_sync.schemas import WebhookReceipt
from metering.config import Settings
from metering.errors import BadRequest, InvalidSignature, MeteringError

log = logging.getLogger(__name__)


class InvalidStripeSignature(BadRequest):
    code = "invalid_signature"


class StripeWebhookNotConfigured(MeteringError):
    status_code = 503
    code = "stripe_not_configured"


router = APIRouter(tags=["stripe"])


def gateway_for(request: Request) -> StripeGateway | None:
    """The app's gateway (`app.state.stripe_gateway`, built once from settings); None when
    no API key is configured: events are then stored and handled once one is."""
    state = request.app.state
    gateway: StripeGateway | None = getattr(state, "stripe_gateway", None)
    if gateway is None:
        settings: Settings = state.settings
        if not settings.stripe_api_key:
            return None
        gateway = StripeGateway.from_settings(settings)
        state.stripe_gateway = gateway
    return gateway


@router.post("/v1/stripe/webhook", summary="Stripe webhook (signed; no API key)",
             response_model=WebhookReceipt)
async def stripe_webhook(request: Request) -> WebhookReceipt:
    """Receive one Stripe event: verified, stored once, handled once."""
    settings: Settings = request.app.state.settings
    secret = settings.stripe_webhook_secret
    if not secret:
        raise StripeWebhookNotConfigured("METERING_STRIPE_WEBHOOK_SECRET is not set")
    payload = await request.body()
    try:
        event = verify_event(payload, request.headers.get("Stripe-Signature"), secret,
                             settings.stripe_webhook_tolerance_s)
    except InvalidSignature as exc:
        raise InvalidStripeSignature(f"Stripe signature verification failed: {exc}") from exc
    sessions: sessionmaker[Session] = request.app.state.sessions
    stored = await run_in_threadpool(receive_event, sessions, event)
    outcome = "duplicate"
    if stored:
        try:
            outcome = await run_in_threadpool(
                lambda: handle_event(sessions, gateway_for(request), event["id"],
                                     dunning_days=settings.dunning_days))
        except Exception:
            # Stored and committed: the stripe_events job retries it; Stripe need not.
            log.exception("stripe event handling failed", extra={"event_id": event["id"]})
            outcome = "pending"
    return WebhookReceipt(received=True, id=event["id"], duplicate=not stored, outcome=outcome)
