"""Every query of the dashboard beyond the API's own read functions: session keys, sandbox
search, and invoices read straight from the invoice tables (finance and team views).

Read-only; the caller's request session owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

# Drafts never outlive the close's transaction; voids are shown (a person asks about them).
VISIBLE = "i.status <> 'draft'"
LIVE = "i.status NOT IN ('draft', 'void')"


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    role: str
    team_id: str | None
    digest: str
    revoked: bool


def key_row(session: Session, key_id: str) -> KeyRow | None:
    row = session.execute(text(
        "SELECT id, role, team_id, digest, revoked_at FROM api_keys WHERE id = :id"),
        {"id": key_id}).first()
    if row is None:
        return None
    return KeyRow(row.id, row.role, row.team_id, row.digest, row.revoked_at is not None)


def signed_out(session: Session, session_digest: str) -> bool:
    return session.execute(text(
        "SELECT 1 FROM dashboard_sign_outs WHERE session_digest = :d"),
        {"d": session_digest}).first() is not None


def record_sign_out(session: Session, session_digest: str, expires_at: datetime) -> None:
    """Refuse this session from now on; sessions past their expiry need no record."""
    session.execute(text("DELETE FROM dashboard_sign_outs WHERE expires_at < now()"))
    session.execute(text(
        "INSERT INTO dashboard_sign_outs (session_digest, expires_at) VALUES (:d, :e) "
        "ON CONFLICT DO NOTHING"), {"d": session_digest, "e": expires_at})


# --- executions -----------------------------------------------------------------------------

_EXECUTION_COLUMNS = """
    e.execution_id, e.sandbox_id, e.team_id, e.template_id, e.start_at, e.start_kind,
    e.vcpu, e.memory_mib, e.disk_mib, e.end_at, e.end_kind, e.end_reason, e.last_event_at,
    e.inferred_end_at
"""


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_executions(
    session: Session, team_id: str, sandbox_prefix: str, limit: int,
    after: tuple[datetime, str] | None,
) -> list[Any]:
    """The team's executions whose sandbox id starts with the prefix, newest first.

    An exact id is answered through the sandbox index; a prefix walks the team's executions
    newest first and stops at `limit` matches."""
    params: dict[str, Any] = {"team_id": team_id, "sandbox": sandbox_prefix,
                              "pattern": _like_prefix(sandbox_prefix), "limit": limit}
    cursor = ""
    if after is not None:
        cursor = ("AND (e.start_at, e.execution_id) < "
                  "(CAST(:after_start AS timestamptz), :after_id)")
        params["after_start"], params["after_id"] = after
    exact = list(session.execute(text(f"""
        SELECT {_EXECUTION_COLUMNS} FROM executions e
        WHERE e.sandbox_id = :sandbox AND e.team_id = :team_id AND e.start_at IS NOT NULL
        {cursor}
        ORDER BY e.start_at DESC, e.execution_id DESC LIMIT :limit"""), params))
    if exact:
        return exact
    return list(session.execute(text(f"""
        SELECT {_EXECUTION_COLUMNS} FROM executions e
        WHERE e.team_id = :team_id AND e.start_at IS NOT NULL
          AND e.sandbox_id LIKE :pattern ESCAPE '\\'
        {cursor}
        ORDER BY e.start_at DESC, e.execution_id DESC LIMIT :limit"""), params))


def sandbox_executions(session: Session, team_id: str, sandbox_id: str, limit: int) -> list[Any]:
    """A sandbox's executions (one per run between pauses), newest first."""
    return list(session.execute(text(f"""
        SELECT {_EXECUTION_COLUMNS} FROM executions e
        WHERE e.sandbox_id = :sandbox AND e.team_id = :team_id AND e.start_at IS NOT NULL
        ORDER BY e.start_at DESC, e.execution_id DESC LIMIT :limit"""),
        {"sandbox": sandbox_id, "team_id": team_id, "limit": limit}))


# --- invoices -------------------------------------------------------------------------------

_INVOICE_COLUMNS = """
    i.id, i.number, i.team_id, i.period, i.kind, i.corrects_invoice_id, i.status, i.currency,
    i.subtotal, i.credits_applied, i.total, i.created_at, i.finalized_at, i.voided_at,
    i.paid_at, i.payment_failed_at, i.stripe_invoice_id, i.stripe_status, i.sync_attempts,
    i.sync_error, i.next_sync_at, i.synced_at
"""


def team_invoices(session: Session, team_id: str, limit: int) -> list[Any]:
    return list(session.execute(text(f"""
        SELECT {_INVOICE_COLUMNS} FROM invoices i
        WHERE i.team_id = :team_id AND {VISIBLE}
        ORDER BY i.period DESC, i.created_at DESC, i.id DESC LIMIT :limit"""),
        {"team_id": team_id, "limit": limit}))


def invoice(session: Session, invoice_id: str) -> Any | None:
    return session.execute(text(f"""
        SELECT {_INVOICE_COLUMNS} FROM invoices i WHERE i.id = :id AND {VISIBLE}"""),
        {"id": invoice_id}).first()


def period_invoices(session: Session, period: str, limit: int) -> list[Any]:
    """A month's invoices for finance, problems first (failed syncs and payments)."""
    return list(session.execute(text(f"""
        SELECT {_INVOICE_COLUMNS}, t.name AS team_name FROM invoices i
        JOIN teams t ON t.id = i.team_id
        WHERE i.period = :period AND {VISIBLE}
        ORDER BY CASE i.status WHEN 'sync_failed' THEN 0 WHEN 'payment_failed' THEN 1
                               WHEN 'finalized' THEN 2 ELSE 3 END,
                 i.number NULLS LAST, i.id
        LIMIT :limit"""), {"period": period, "limit": limit}))


def status_counts(session: Session, period: str) -> dict[str, int]:
    rows = session.execute(text(f"""
        SELECT i.status, count(*) FROM invoices i WHERE i.period = :period AND {VISIBLE}
        GROUP BY i.status"""), {"period": period})
    return {str(r[0]): int(r[1]) for r in rows}


@dataclass(frozen=True, slots=True)
class PlanRevenue:
    plan_code: str | None
    currency: str
    invoices: int
    charges: Decimal


def revenue_by_plan(session: Session, period: str) -> list[PlanRevenue]:
    """Charges (fees, usage, true-ups, adjustments) of the month's live invoices per plan;
    credits are reported apart, as they pay invoices rather than belong to a plan."""
    rows = session.execute(text(f"""
        SELECT l.plan_code, i.currency, count(DISTINCT i.id) AS invoices,
               sum(l.amount) AS charges
        FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.period = :period AND {LIVE} AND l.kind NOT IN ('credit', 'carry_forward')
        GROUP BY l.plan_code, i.currency
        ORDER BY sum(l.amount) DESC"""), {"period": period})
    return [PlanRevenue(r.plan_code, r.currency, int(r.invoices), Decimal(r.charges))
            for r in rows]


@dataclass(frozen=True, slots=True)
class PeriodTotals:
    currency: str
    invoices: int
    subtotal: Decimal
    credits_applied: Decimal
    total: Decimal


def period_totals(session: Session, period: str) -> list[PeriodTotals]:
    rows = session.execute(text(f"""
        SELECT i.currency, count(*) AS invoices, sum(i.subtotal) AS subtotal,
               sum(i.credits_applied) AS credits_applied, sum(i.total) AS total
        FROM invoices i WHERE i.period = :period AND {LIVE}
        GROUP BY i.currency ORDER BY i.currency"""), {"period": period})
    return [PeriodTotals(r.currency, int(r.invoices), Decimal(r.subtotal),
                         Decimal(r.credits_applied), Decimal(r.total)) for r in rows]


def invoiced_periods(session: Session, limit: int) -> list[str]:
    rows = session.execute(text(f"""
        SELECT DISTINCT i.period FROM invoices i WHERE {VISIBLE}
        ORDER BY i.period DESC LIMIT :limit"""), {"limit": limit})
    return [str(r[0]) for r in rows]


def teams_with_credit(session: Session, now: datetime, limit: int) -> list[Any]:
    """Teams holding an unexpired grant, with their name: the candidates for running out."""
    return list(session.execute(text("""
        SELECT t.id, t.name FROM teams t
        WHERE EXISTS (SELECT 1 FROM credit_grants g WHERE g.team_id = t.id
                      AND (g.expires_at IS NULL OR g.expires_at > :now))
        ORDER BY t.id LIMIT :limit"""), {"now": now, "limit": limit}))


def team_count(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM teams")).scalar_one())


def team_rows(session: Session, query: str, limit: int) -> list[Any]:
    """Teams whose id or name contains `query` (all when empty), by id."""
    pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return list(session.execute(text("""
        SELECT t.id, t.name, t.auto_created FROM teams t
        WHERE :q = '' OR t.id ILIKE :pattern OR coalesce(t.name, '') ILIKE :pattern
        ORDER BY t.id LIMIT :limit"""), {"q": query, "pattern": pattern, "limit": limit}))
