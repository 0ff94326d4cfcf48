"""Every query of the credit ledger."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import TextClause, select, text
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


# Where a team's uninvoiced usage begins, and what live invoices billed from there on.
#
# A month is settled for a team when a live (finalized onwards, not void) period invoice
# covers it, or when a close of it completed and left the team without an invoice (nothing to
# bill then; a draft held back by verification does not settle it). The first unsettled month
# from the team's first execution on is where uninvoiced usage begins, whatever months after
# it were invoiced: their usage is read too, and what live invoices billed for them is
# subtracted. Late usage of settled months before it counts once the next close bills it.
# `min(start_at)` walks the (team_id, start_at) index; the rest are a few rows per month.
UNBILLED = text("""
WITH first AS (
    SELECT date_trunc('month', min(start_at) AT TIME ZONE 'UTC') AS m
    FROM executions WHERE team_id = :t AND start_at IS NOT NULL
), months AS (
    SELECT g.m AT TIME ZONE 'UTC' AS lo, to_char(g.m, 'YYYY-MM') AS p
    FROM first, generate_series(
        first.m, date_trunc('month', CAST(:now AS timestamptz) AT TIME ZONE 'UTC'),
        interval '1 month') AS g(m)
    WHERE first.m IS NOT NULL
), open_from AS (
    SELECT min(lo) AS lo, min(p) AS p FROM months
    WHERE NOT EXISTS (
        SELECT 1 FROM invoices i WHERE i.team_id = :t AND i.kind = 'period'
          AND i.period = months.p AND i.status NOT IN ('draft', 'void'))
      AND NOT (
        EXISTS (SELECT 1 FROM invoice_close_runs r
                WHERE r.period = months.p AND r.status = 'completed')
        AND NOT EXISTS (SELECT 1 FROM invoices i
                        WHERE i.team_id = :t AND i.period = months.p AND i.status = 'draft'))
)
SELECT o.lo,
       (SELECT json_agg(json_build_array(CAST(b.vp AS text), CAST(b.gp AS text),
                                         CAST(b.v AS text), CAST(b.m AS text))) FROM (
            SELECT u.vcpu_second_price AS vp, u.gib_second_price AS gp,
                   sum(u.vcpu_ms) AS v, sum(u.mib_ms) AS m
            FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
            WHERE u.team_id = :t AND i.status NOT IN ('draft', 'void')
              AND u.usage_period >= o.p
            GROUP BY 1, 2) b)
FROM open_from o
""")


@dataclass(frozen=True, slots=True)
class Unbilled:
    """Where uninvoiced usage begins (None: nothing to read) and what live invoices billed of
    usage from then on, as (vCPU price, GiB price, vCPU-ms, MiB-ms) per price pair."""

    since: datetime | None
    billed: tuple[tuple[Decimal, Decimal, int, int], ...]


def unbilled_from_rows(rows: Any) -> Unbilled:
    row = next(iter(rows), None)
    if row is None or row[0] is None:
        return Unbilled(None, ())
    # Sent as text: JSON numbers would come back as floats.
    billed = tuple((Decimal(b[0] or 0), Decimal(b[1] or 0), int(b[2]), int(b[3]))
                   for b in (row[1] or []))
    return Unbilled(row[0], billed)


def unbilled(session: Session, team_id: str, now: datetime) -> Unbilled:
    return unbilled_from_rows(session.execute(UNBILLED, {"t": team_id, "now": now}))


# The same two reads for many teams in one statement each (the enforcement sweep's looks):
# the per-team statement run for each team of `:teams`, its rows headed by the team's id.
def _for_each_team(statement: TextClause) -> TextClause:
    per_team = re.sub(r"(?<![:\w]):t\b", "q.team_id", statement.text)
    return text("SELECT q.team_id, x.* FROM unnest(CAST(:teams AS text[])) AS q(team_id) "
                f"CROSS JOIN LATERAL ({per_team}) x")


BALANCES_MANY = _for_each_team(BALANCES)
UNBILLED_MANY = _for_each_team(UNBILLED)
