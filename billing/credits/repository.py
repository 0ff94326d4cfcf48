"""Every query of the credit ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, literal, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing.credits.models import CreditApplication, CreditGrant
from billing.invoices.models import Invoice


@dataclass(frozen=True, slots=True)
class GrantBalance:
    id: str
    amount: Decimal
    applied: Decimal
    priority: int
    granted_at: datetime
    expires_at: datetime | None
    reason: str | None
    kind: str

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.applied


def grant(
    session: Session, *, grant_id: str, team_id: str, amount: Decimal, currency: str,
    priority: int, granted_at: datetime, expires_at: datetime | None, reason: str | None,
    kind: str, idempotency_key: str | None,
) -> str:
    """Insert a grant once per idempotency key; answer the id of the grant (new or earlier)."""
    statement = insert(CreditGrant).values(
        id=grant_id, team_id=team_id, amount=amount, currency=currency, priority=priority,
        granted_at=granted_at, expires_at=expires_at, reason=reason, kind=kind,
        idempotency_key=idempotency_key,
    )
    if idempotency_key is None:
        session.execute(statement)
        return grant_id
    row = session.execute(statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
                          .returning(CreditGrant.id)).first()
    if row is not None:
        return str(row[0])
    existing = session.execute(select(CreditGrant.id).where(
        CreditGrant.idempotency_key == idempotency_key)).scalar_one()
    return str(existing)


def balances(session: Session, team_id: str) -> list[GrantBalance]:
    # What a voided invoice applied is given back: its correction applies credit anew.
    live = select(Invoice.id).where(Invoice.team_id == team_id, Invoice.status != "void")
    # ... and a carry-forward grant made by a voided invoice is void with it.
    voided_carry = select(literal("carry_forward:") + Invoice.id).where(
        Invoice.team_id == team_id, Invoice.status == "void")
    applied = (select(CreditApplication.grant_id, func.sum(CreditApplication.amount).label("s"))
               .where(CreditApplication.team_id == team_id,
                      CreditApplication.invoice_id.in_(live))
               .group_by(CreditApplication.grant_id).subquery())
    rows = session.execute(
        select(CreditGrant, func.coalesce(applied.c.s, 0))
        .outerjoin(applied, applied.c.grant_id == CreditGrant.id)
        .where(CreditGrant.team_id == team_id,
               or_(CreditGrant.idempotency_key.is_(None),
                   CreditGrant.idempotency_key.not_in(voided_carry)))
        .order_by(CreditGrant.priority, CreditGrant.expires_at.nulls_last(),
                  CreditGrant.granted_at, CreditGrant.id)
    )
    return [GrantBalance(g.id, g.amount, Decimal(a), g.priority, g.granted_at, g.expires_at,
                         g.reason, g.kind) for g, a in rows]


def last_invoiced_period(session: Session, team_id: str) -> str | None:
    """The newest month whose period invoice is final (not draft, not void)."""
    row = session.execute(text(
        "SELECT max(period) FROM invoices WHERE team_id = :t AND kind = 'period' "
        "AND status NOT IN ('draft', 'void')"), {"t": team_id}).first()
    return None if row is None or row[0] is None else str(row[0])
