"""Every query of the credit ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from billing.credits.models import CreditGrant


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


# Burn-down order. What a voided invoice applied is given back (its correction applies credit
# anew), and a carry-forward grant made by a voided invoice is void with it.
BALANCES = text("""
SELECT g.id, g.amount, coalesce(a.s, 0), g.priority, g.granted_at, g.expires_at, g.reason,
       g.kind
FROM credit_grants g
LEFT JOIN (
    SELECT ca.grant_id, sum(ca.amount) AS s FROM credit_applications ca
    WHERE ca.team_id = :t
      AND ca.invoice_id IN (SELECT i.id FROM invoices i WHERE i.team_id = :t
                            AND i.status <> 'void')
    GROUP BY ca.grant_id) a ON a.grant_id = g.id
WHERE g.team_id = :t
  AND (g.idempotency_key IS NULL OR g.idempotency_key NOT IN (
       SELECT 'carry_forward:' || i.id FROM invoices i
       WHERE i.team_id = :t AND i.status = 'void'))
ORDER BY g.priority, g.expires_at NULLS LAST, g.granted_at, g.id
""")


def balances_from_rows(rows: Any) -> list[GrantBalance]:
    return [GrantBalance(r[0], r[1], Decimal(r[2]), r[3], r[4], r[5], r[6], r[7])
            for r in rows]


def balances(session: Session, team_id: str) -> list[GrantBalance]:
    return balances_from_rows(session.execute(BALANCES, {"t": team_id}))


LAST_INVOICED = text(
    "SELECT max(period) FROM invoices WHERE team_id = :t AND kind = 'period' "
    "AND status NOT IN ('draft', 'void')")


def last_invoiced_period(session: Session, team_id: str) -> str | None:
    """The newest month whose period invoice is final (not draft, not void)."""
    return period_from_rows(session.execute(LAST_INVOICED, {"t": team_id}))


def period_from_rows(rows: Any) -> str | None:
    row = next(iter(rows), None)
    return None if row is None or row[0] is None else str(row[0])
