"""Where metering gets prices: the installed `Billing` (plan versions), see metering.plugins."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from metering import plugins
from metering.core.pricing import PriceSchedule


def schedule_for(session: Session, team_id: str, start: datetime, end: datetime) -> PriceSchedule:
    return plugins.billing().price_schedule(session, team_id, start, end)
