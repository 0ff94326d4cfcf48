"""Every query of invoice verification: the invoices and lines to check, the ledger as it
stood when an invoice was made, and the results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.core.rating import CreditGrant
from billing.core.wording import credit_label
from billing.invoices.assemble import BilledUsage


@dataclass(frozen=True, slots=True)
class StoredLine:
    position: int
    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    period: str | None


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    """An invoice as stored, with what is needed to re-derive it as of its close."""

    id: str
    number: str | None
    team_id: str
    period: str
    kind: str
    status: str
    currency: str
    total: Decimal
    made_at: datetime  # the close's clock: finalized_at, or created_at for a draft
    usage_read_at: datetime
    lines: tuple[StoredLine, ...]


_INVOICES = """
SELECT i.id, i.number, i.team_id, i.period, i.kind, i.status, i.currency, i.total,
       coalesce(i.finalized_at, i.created_at) AS made_at,
       coalesce(i.usage_read_at, i.created_at) AS usage_read_at
FROM invoices i
WHERE i.period = :period AND i.status <> 'void' {filter}
ORDER BY i.team_id, i.number NULLS LAST, i.id
"""


def invoices_of(session: Session, period: str, team_id: str | None = None,
                invoice_ids: Sequence[str] | None = None) -> list[StoredInvoice]:
    """The period's invoices that are not void (drafts included), with their lines."""
    where, params = "", {"period": period}
    if team_id is not None:
        where += " AND i.team_id = :team"
        params["team"] = team_id
    if invoice_ids is not None:
        where += " AND i.id = ANY(CAST(:ids AS text[]))"
        params["ids"] = list(invoice_ids)  # type: ignore[assignment]
    rows = list(session.execute(text(_INVOICES.format(filter=where)), params))
    lines: dict[str, list[StoredLine]] = defaultdict(list)
    for r in session.execute(text("""
            SELECT invoice_id, position, kind, description, quantity, unit_price, amount, period
            FROM invoice_lines WHERE invoice_id = ANY(CAST(:ids AS text[]))
            ORDER BY invoice_id, position"""), {"ids": [r.id for r in rows]}):
        lines[r.invoice_id].append(StoredLine(r.position, r.kind, r.description, r.quantity,
                                              r.unit_price, r.amount, r.period))
    return [StoredInvoice(r.id, r.number, r.team_id, r.period, r.kind, r.status, r.currency,
                          r.total, r.made_at, r.usage_read_at, tuple(lines.get(r.id, ())))
            for r in rows]


def invoice_period(session: Session, invoice_id: str) -> tuple[str, str, str] | None:
    """(team, period, status) of an invoice, by id or number."""
    column = "number" if invoice_id.startswith("INV-") else "id"
    row = session.execute(text(f"SELECT id, team_id, period, status FROM invoices "
                               f"WHERE {column} = :id"), {"id": invoice_id}).first()
    return None if row is None else (row.team_id, row.period, row.status)


# For each invoice checked: the invoices of its team that were live when it was made (numbered
# before it, or every numbered one for a draft, which has no number; not void by then).
_ME = """
WITH me AS (
    SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:teams AS text[]),
                         CAST(:numbers AS text[]), CAST(:made_at AS timestamptz[]))
        AS m(id, team_id, number, made_at)
), earlier AS (
    SELECT m.id AS me, e.id
    FROM me m JOIN invoices e ON e.team_id = m.team_id AND e.id <> m.id
    WHERE e.number IS NOT NULL AND (m.number IS NULL OR e.number < m.number)
      AND (e.status <> 'void' OR e.voided_at > m.made_at)
)
"""


def _me(invoices: Sequence[StoredInvoice]) -> dict[str, Any]:
    return {"ids": [i.id for i in invoices], "teams": [i.team_id for i in invoices],
            "numbers": [i.number for i in invoices], "made_at": [i.made_at for i in invoices]}


def billed_before(session: Session, invoices: Sequence[StoredInvoice], months: Sequence[str]
                  ) -> dict[str, dict[tuple[str, str], BilledUsage]]:
    """Per invoice: (usage month, price version) -> what invoices live before it billed."""
    out: dict[str, dict[tuple[str, str], BilledUsage]] = defaultdict(dict)
    if not invoices or not months:
        return out
    rows = session.execute(text(_ME + """
        SELECT r.me, u.usage_period, u.price_version_id, CAST(sum(u.vcpu_ms) AS bigint),
               CAST(sum(u.mib_ms) AS bigint), max(u.vcpu_second_price),
               max(u.gib_second_price)
        FROM earlier r JOIN invoice_usage u ON u.invoice_id = r.id
        WHERE u.usage_period = ANY(CAST(:months AS text[]))
        GROUP BY 1, 2, 3"""), _me(invoices) | {"months": sorted(set(months))})
    for r in rows:
        out[r[0]][(r[1], r[2])] = BilledUsage(int(r[3]), int(r[4]), r[5], r[6])
    return out


def credits_before(session: Session, invoices: Sequence[StoredInvoice], period_start: datetime
                   ) -> dict[str, list[tuple[str, CreditGrant]]]:
    """Per invoice: (currency, grant as it stood) for the grants it could draw on: granted by
    its close, not expired at the month's start, less what earlier live invoices applied."""
    out: dict[str, list[tuple[str, CreditGrant]]] = defaultdict(list)
    if not invoices:
        return out
    rows = session.execute(text(_ME + """
        , used AS (
            SELECT r.me, ca.grant_id, sum(ca.amount) AS used
            FROM earlier r JOIN credit_applications ca ON ca.invoice_id = r.id
            GROUP BY 1, 2
        )
        SELECT m.id AS me, g.id, g.currency, g.amount - coalesce(u.used, 0) AS remaining,
               g.priority, g.expires_at, g.granted_at, g.kind, g.reason
        FROM me m JOIN credit_grants g ON g.team_id = m.team_id
        LEFT JOIN used u ON u.me = m.id AND u.grant_id = g.id
        WHERE g.granted_at <= m.made_at
          AND (g.expires_at IS NULL OR g.expires_at > :start)
          AND g.amount - coalesce(u.used, 0) > 0
          AND g.idempotency_key IS DISTINCT FROM 'carry_forward:' || m.id
          AND NOT (g.kind = 'carry_forward' AND EXISTS (
              SELECT 1 FROM invoices v WHERE v.status = 'void' AND v.voided_at <= m.made_at
                AND g.idempotency_key = 'carry_forward:' || v.id))
        ORDER BY m.id, g.id"""), _me(invoices) | {"start": period_start})
    for r in rows:
        out[r.me].append((r.currency, CreditGrant(r.id, r.remaining, r.priority, r.expires_at,
                                                  r.granted_at, credit_label(r.kind, r.reason))))
    return out


_STORE = text("""
INSERT INTO invoice_verifications (invoice_id, team_id, period, verified_at, source, ok,
                                   differences)
SELECT * FROM unnest(CAST(:invoice_id AS text[]), CAST(:team_id AS text[]),
                     CAST(:period AS text[]), CAST(:at AS timestamptz[]),
                     CAST(:source AS text[]), CAST(:ok AS boolean[]),
                     CAST(:differences AS jsonb[]))
""")


@dataclass(frozen=True, slots=True)
class ResultRow:
    invoice_id: str
    team_id: str
    period: str
    verified_at: datetime
    source: str
    ok: bool
    differences: list[dict[str, Any]]


def store_results(session: Session, rows: Sequence[ResultRow]) -> None:
    if rows:
        session.execute(_STORE, {
            "invoice_id": [r.invoice_id for r in rows], "team_id": [r.team_id for r in rows],
            "period": [r.period for r in rows], "at": [r.verified_at for r in rows],
            "source": [r.source for r in rows], "ok": [r.ok for r in rows],
            "differences": [orjson.dumps(r.differences).decode() for r in rows]})


def last_result(session: Session, invoice_id: str) -> ResultRow | None:
    row = session.execute(text("""
        SELECT invoice_id, team_id, period, verified_at, source, ok, differences
        FROM invoice_verifications WHERE invoice_id = :id
        ORDER BY verified_at DESC, id DESC LIMIT 1"""), {"id": invoice_id}).first()
    return None if row is None else ResultRow(*row)
