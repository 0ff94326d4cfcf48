"""Every query of billing's team settings."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing.accounts.models import CHARGE_AUTOMATICALLY, TeamBillingSettings


def collection_method(session: Session, team_id: str) -> str:
    """How the team's invoices are collected; a team without settings is charged
    automatically."""
    row = session.get(TeamBillingSettings, team_id)
    return row.collection_method if row is not None else CHARGE_AUTOMATICALLY


def set_collection_method(session: Session, team_id: str, method: str) -> None:
    session.execute(insert(TeamBillingSettings)
                    .values(team_id=team_id, collection_method=method)
                    .on_conflict_do_update(index_elements=[TeamBillingSettings.team_id],
                                           set_={"collection_method": method}))
