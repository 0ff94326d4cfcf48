"""Where metering gets prices: a provider the app installs (billing's plan versions), or
the configured default prices. Metering never imports billing; billing plugs in here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from metering.config import get_settings
from metering.core.money import UnitPrices
from metering.core.pricing import PriceSchedule, constant

ScheduleProvider = Callable[[Session, str, datetime, datetime], PriceSchedule]
_provider: ScheduleProvider | None = None


def install(provider: ScheduleProvider | None) -> None:
    global _provider  # noqa: PLW0603 - one provider per process, set at wiring time
    _provider = provider


def default_schedule() -> PriceSchedule:
    settings = get_settings()
    return constant(UnitPrices(settings.price_vcpu_second, settings.price_gib_second,
                               settings.currency))


def schedule_for(session: Session, team_id: str, start: datetime, end: datetime) -> PriceSchedule:
    if _provider is None:
        return default_schedule()
    return _provider(session, team_id, start, end)
