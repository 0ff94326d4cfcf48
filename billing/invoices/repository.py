"""Every query of invoicing: facts for rating (many teams per statement), invoice writes,
numbering, close runs, and reads. Repositories never commit; callers own the transaction."""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from billing.core.plan_versions import Assignment
from billing.core.rating import CreditGrant, InvoiceLine
from billing.core.wording import credit_label
from billing.invoices.assemble import BilledUsage, PlanAssignment, PlanVersionRow, RatedTeam
from metering.core.clock import format_period

# One lock for every transaction that writes invoices, credit applications or invoice usage:
# closes (per chunk of teams), voids. Two closers of the same month then take turns chunk by
# chunk and each re-checks what exists under the lock, so nothing is made twice, and credits
# and billed usage are always read by the only writer. Closes are rare and short per chunk;
# serializing them costs nothing that matters.
INVOICING_LOCK = 0x1B111_0C  # pg_advisory_xact_lock key; arbitrary, unique in this service

LIVE = "status NOT IN ('draft', 'void')"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def db_now(session: Session) -> datetime:
    """The database's clock: `executions.updated_at` is written by it, so the instant a close
    reads usage is taken from it too (the app's clock may be skewed or, in tests, shifted)."""
    moment: datetime = session.execute(text("SELECT statement_timestamp()")).scalar_one()
    return moment


def lock_invoicing(session: Session) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": INVOICING_LOCK})


# --- facts for rating ----------------------------------------------------------------------


def plan_versions(session: Session) -> dict[str, list[PlanVersionRow]]:
    """Every plan version by plan code, oldest first (a small table)."""
    rows = session.execute(text("""
        SELECT id, plan_code, effective_at, currency, monthly_fee, minimum_commitment
        FROM plan_versions ORDER BY plan_code, effective_at"""))
    out: dict[str, list[PlanVersionRow]] = defaultdict(list)
    for r in rows:
        out[r.plan_code].append(PlanVersionRow(r.id, r.plan_code, r.effective_at, r.currency,
                                               r.monthly_fee, r.minimum_commitment))
    return dict(out)


_ASSIGNMENTS = """
SELECT team_id, plan_code, effective_at, until FROM (
    SELECT team_id, plan_code, effective_at,
           lead(effective_at) OVER (PARTITION BY team_id ORDER BY effective_at) AS until
    FROM team_plans {where}
) t
WHERE effective_at < :end AND (until IS NULL OR until > :start)
ORDER BY team_id, effective_at
"""


def plan_assignments(
    session: Session, start: datetime, end: datetime, team_ids: Sequence[str] | None = None
) -> dict[str, list[PlanAssignment]]:
    """Each team's plans overlapping [start, end)."""
    where = "" if team_ids is None else "WHERE team_id = ANY(CAST(:teams AS text[]))"
    params: dict[str, Any] = {"start": start, "end": end}
    if team_ids is not None:
        params["teams"] = list(team_ids)
    out: dict[str, list[PlanAssignment]] = defaultdict(list)
    for r in session.execute(text(_ASSIGNMENTS.format(where=where)), params):
        out[r.team_id].append(PlanAssignment(r.plan_code, r.effective_at, r.until))
    return dict(out)


def all_assignments(session: Session, team_ids: Sequence[str]) -> dict[str, list[Assignment]]:
    """Every plan assignment of the teams, oldest first (a price schedule needs them all)."""
    if not team_ids:
        return {}
    rows = session.execute(text("""
        SELECT team_id, plan_code, effective_at FROM team_plans
        WHERE team_id = ANY(CAST(:teams AS text[])) ORDER BY team_id, effective_at"""),
        {"teams": list(team_ids)})
    out: dict[str, list[Assignment]] = defaultdict(list)
    for r in rows:
        out[r.team_id].append(Assignment(r.plan_code, r.effective_at))
    return dict(out)


def anything_closed_before(session: Session, period: str) -> bool:
    """Whether any month before `period` was closed (so late usage may need adjusting)."""
    row = session.execute(text("""
        SELECT EXISTS (SELECT 1 FROM invoice_close_runs WHERE period < :p)
            OR EXISTS (SELECT 1 FROM invoices WHERE period < :p)"""), {"p": period}).scalar()
    return bool(row)


# Which (team, earlier closed month) pairs may have usage no live invoice billed yet.
#
# A month is closed for a team once a close ran for it, or the team has an invoice for it.
# After a team's latest live period invoice, everything billed for its closed months matched
# the usage read then (`usage_read_at`); so only executions changed since can differ, and only
# in the months they overlap. `updated_at` is the changing transaction's start, which may be
# before our read although it committed after: the margin covers such transactions in
# flight. A team without a live period invoice has every execution re-examined.
ADJUSTMENT_CANDIDATES = """
WITH last_read AS (
    SELECT team_id, max(usage_read_at) AS read_at FROM invoices
    WHERE kind = 'period' AND {live} AND period < :period {team_filter}
    GROUP BY team_id
), dirty AS (
    -- Per team and month of start: the latest end. Every month from that start to that end
    -- is re-examined (a superset of the months the changed executions overlap: cheap, safe).
    SELECT e.team_id, date_trunc('month', e.start_at, 'UTC') AS first_month,
           max(coalesce(e.end_at, e.inferred_end_at, CAST('infinity' AS timestamptz))) AS end_at
    FROM executions e LEFT JOIN last_read r ON r.team_id = e.team_id
    WHERE e.start_at < :period_start {team_filter_e}
      AND (r.read_at IS NULL OR e.updated_at > r.read_at - CAST(:margin AS interval))
    GROUP BY 1, 2
), closed_for_all AS (
    SELECT DISTINCT period, CAST(period || '-01T00:00:00Z' AS timestamptz) AS lo
    FROM invoice_close_runs WHERE period < :period
), closed_for_team AS (
    SELECT DISTINCT team_id, period, CAST(period || '-01T00:00:00Z' AS timestamptz) AS lo
    FROM invoices WHERE period < :period AND status <> 'draft' {team_filter}
)
-- Two joins, not one with an OR, so that the per-team one can hash on team_id.
SELECT d.team_id, c.period FROM dirty d JOIN closed_for_all c
    ON d.first_month <= c.lo AND d.end_at > c.lo
UNION
SELECT d.team_id, c.period FROM dirty d JOIN closed_for_team c
    ON c.team_id = d.team_id AND d.first_month <= c.lo AND d.end_at > c.lo
ORDER BY 1, 2
"""


def adjustment_candidates(
    session: Session, period: str, period_start: datetime, margin: timedelta,
    team_ids: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """team -> earlier closed months whose usage must be compared with what was billed."""
    if team_ids is None:
        sql = ADJUSTMENT_CANDIDATES.format(live=LIVE, team_filter="", team_filter_e="")
    else:
        sql = ADJUSTMENT_CANDIDATES.format(
            live=LIVE, team_filter="AND team_id = ANY(CAST(:teams AS text[]))",
            team_filter_e="AND e.team_id = ANY(CAST(:teams AS text[]))")
    params: dict[str, Any] = {"period": period, "period_start": period_start, "margin": margin}
    if team_ids is not None:
        params["teams"] = list(team_ids)
    out: dict[str, list[str]] = defaultdict(list)
    for team_id, month in session.execute(text(sql), params):
        out[team_id].append(month)
    return dict(out)


def billed_usage(
    session: Session, team_ids: Sequence[str], periods: Iterable[str],
    exclude_invoice: str | None = None,
) -> dict[tuple[str, str, str], BilledUsage]:
    """(team, usage month, price version) -> what live invoices billed for it."""
    months = sorted(set(periods))
    if not team_ids or not months:
        return {}
    rows = session.execute(text(f"""
        SELECT u.team_id, u.usage_period, u.price_version_id,
               CAST(sum(u.vcpu_ms) AS bigint), CAST(sum(u.mib_ms) AS bigint),
               max(u.vcpu_second_price), max(u.gib_second_price)
        FROM invoice_usage u JOIN invoices i ON i.id = u.invoice_id
        WHERE u.team_id = ANY(CAST(:teams AS text[]))
          AND u.usage_period = ANY(CAST(:months AS text[]))
          AND i.{LIVE} AND i.id IS DISTINCT FROM :exclude
        GROUP BY u.team_id, u.usage_period, u.price_version_id"""),
        {"teams": list(team_ids), "months": months, "exclude": exclude_invoice})
    return {(r[0], r[1], r[2]): BilledUsage(int(r[3]), int(r[4]), r[5], r[6]) for r in rows}


@dataclass(frozen=True, slots=True)
class GrantRow:
    team_id: str
    currency: str
    grant: CreditGrant


def available_credits(
    session: Session, team_ids: Sequence[str], period_start: datetime, now: datetime
) -> dict[str, list[GrantRow]]:
    """Grants with something left, not expired at the month's start, granted by `now`.

    What is left excludes what voided invoices had used (their applications are released),
    and a carry-forward grant made by a voided invoice is void with it.
    """
    if not team_ids:
        return {}
    rows = session.execute(text(f"""
        SELECT g.team_id, g.id, g.currency, g.amount - coalesce(a.used, 0) AS remaining,
               g.priority, g.expires_at, g.granted_at, g.kind, g.reason
        FROM credit_grants g
        LEFT JOIN (
            SELECT ca.grant_id, sum(ca.amount) AS used
            FROM credit_applications ca JOIN invoices i ON i.id = ca.invoice_id
            WHERE ca.team_id = ANY(CAST(:teams AS text[])) AND i.{LIVE}
            GROUP BY ca.grant_id
        ) a ON a.grant_id = g.id
        WHERE g.team_id = ANY(CAST(:teams AS text[]))
          AND (g.expires_at IS NULL OR g.expires_at > :start)
          AND g.granted_at <= :now
          AND g.amount - coalesce(a.used, 0) > 0
          AND NOT (g.kind = 'carry_forward' AND EXISTS (
              SELECT 1 FROM invoices v
              WHERE v.status = 'void' AND g.idempotency_key = 'carry_forward:' || v.id))
        ORDER BY g.team_id, g.id"""),
        {"teams": list(team_ids), "start": period_start, "now": now})
    out: dict[str, list[GrantRow]] = defaultdict(list)
    for r in rows:
        out[r.team_id].append(GrantRow(r.team_id, r.currency, CreditGrant(
            grant_id=r.id, remaining=r.remaining, priority=r.priority,
            expires_at=r.expires_at, granted_at=r.granted_at,
            label=credit_label(r.kind, r.reason))))
    return dict(out)


def existing_period_invoices(
    session: Session, period: str, team_ids: Sequence[str]
) -> set[str]:
    """Teams of `team_ids` that already have their period invoice for `period`."""
    if not team_ids:
        return set()
    rows = session.execute(text("""
        SELECT team_id FROM invoices
        WHERE kind = 'period' AND period = :p AND team_id = ANY(CAST(:teams AS text[]))"""),
        {"p": period, "teams": list(team_ids)})
    return {r[0] for r in rows}


def existing_teams(session: Session, team_ids: Sequence[str]) -> set[str]:
    rows = session.execute(text("SELECT id FROM teams WHERE id = ANY(CAST(:ids AS text[]))"),
                           {"ids": list(team_ids)})
    return {r[0] for r in rows}


def team_exists(session: Session, team_id: str) -> bool:
    return session.execute(text("SELECT 1 FROM teams WHERE id = :t"), {"t": team_id}).first() \
        is not None


# --- writes --------------------------------------------------------------------------------

_INSERT_INVOICES = text("""
INSERT INTO invoices (id, team_id, period, kind, corrects_invoice_id, status, currency,
                      subtotal, credits_applied, total, carry_forward, usage_read_at)
SELECT u.id, u.team_id, u.period, u.kind, u.corrects, 'draft', u.currency, u.subtotal,
       u.credits, u.total, u.carry, :read_at
FROM unnest(CAST(:id AS text[]), CAST(:team_id AS text[]), CAST(:period AS text[]),
            CAST(:kind AS text[]), CAST(:corrects AS text[]), CAST(:currency AS text[]),
            CAST(:subtotal AS numeric[]), CAST(:credits AS numeric[]),
            CAST(:total AS numeric[]), CAST(:carry AS numeric[]))
     AS u(id, team_id, period, kind, corrects, currency, subtotal, credits, total, carry)
ORDER BY u.team_id
ON CONFLICT (team_id, period) WHERE kind = 'period' DO NOTHING
RETURNING id
""")

_INSERT_LINES = text("""
INSERT INTO invoice_lines (invoice_id, position, kind, description, quantity, unit_price,
                           amount, price_version_id, plan_code, period, details,
                           service_start, service_end)
SELECT invoice_id, position, kind, description, quantity, unit_price, amount,
       price_version_id, plan_code, period, CAST(details AS jsonb), service_start, service_end
FROM unnest(CAST(:invoice_id AS text[]), CAST(:position AS int[]), CAST(:kind AS text[]),
            CAST(:description AS text[]), CAST(:quantity AS numeric[]),
            CAST(:unit_price AS numeric[]), CAST(:amount AS numeric[]),
            CAST(:price_version_id AS text[]), CAST(:plan_code AS text[]),
            CAST(:period AS text[]), CAST(:details AS text[]),
            CAST(:service_start AS timestamptz[]), CAST(:service_end AS timestamptz[]))
     AS u(invoice_id, position, kind, description, quantity, unit_price, amount,
          price_version_id, plan_code, period, details, service_start, service_end)
""")


def line_metadata(line: InvoiceLine) -> dict[str, str]:
    """What a line points back to, for finance and machines (never in its description)."""
    found = {"price_version_id": line.price_version_id,
             "plan_version_id": line.plan_version_id, "grant_id": line.grant_id}
    return {k: v for k, v in found.items() if v}

_INSERT_USAGE = text("""
INSERT INTO invoice_usage (invoice_id, team_id, usage_period, price_version_id, vcpu_ms, mib_ms,
                           vcpu_second_price, gib_second_price)
SELECT * FROM unnest(CAST(:invoice_id AS text[]), CAST(:team_id AS text[]),
                     CAST(:usage_period AS text[]), CAST(:price_version_id AS text[]),
                     CAST(:vcpu_ms AS bigint[]), CAST(:mib_ms AS bigint[]),
                     CAST(:vcpu_price AS numeric[]), CAST(:gib_price AS numeric[]))
""")

# Gap-free: the year's row stays locked until the transaction that took numbers commits; if
# it rolls back, so does the increment.
_TAKE_NUMBERS = text("""
INSERT INTO invoice_number_sequences AS s (year, last_number) VALUES (:year, :n)
ON CONFLICT (year) DO UPDATE SET last_number = s.last_number + :n
RETURNING last_number
""")

_FINALIZE = text("""
UPDATE invoices AS i SET status = 'finalized', number = u.number, finalized_at = :now
FROM unnest(CAST(:id AS text[]), CAST(:number AS text[])) AS u(id, number)
WHERE i.id = u.id AND i.status = 'draft'
""")

_INSERT_APPLICATIONS = text("""
INSERT INTO credit_applications (grant_id, team_id, invoice_id, period, amount)
SELECT * FROM unnest(CAST(:grant_id AS text[]), CAST(:team_id AS text[]),
                     CAST(:invoice_id AS text[]), CAST(:period AS text[]),
                     CAST(:amount AS numeric[]))
""")

_INSERT_CARRY_FORWARD = text("""
INSERT INTO credit_grants (id, team_id, amount, currency, priority, granted_at, reason, kind,
                           idempotency_key)
SELECT u.id, u.team_id, u.amount, u.currency, 0, :now, u.reason, 'carry_forward', u.key
FROM unnest(CAST(:id AS text[]), CAST(:team_id AS text[]), CAST(:amount AS numeric[]),
            CAST(:currency AS text[]), CAST(:reason AS text[]), CAST(:key AS text[]))
     AS u(id, team_id, amount, currency, reason, key)
ON CONFLICT (idempotency_key) DO NOTHING
""")


def format_number(year: int, number: int) -> str:
    return f"INV-{year}-{number:06d}"


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    id: str
    number: str
    team_id: str
    period: str
    kind: str
    currency: str
    total: Decimal


def store_and_finalize(
    session: Session, items: Sequence[RatedTeam], *, now: datetime, usage_read_at: datetime,
    kind: str = "period", corrects: str | None = None, hold: Collection[str] = (),
    made: dict[str, str] | None = None,
) -> list[StoredInvoice]:
    """Insert the invoices as drafts with their lines and usage, then number and finalize
    them, apply credits and turn carry-forwards into grants, in the caller's transaction.

    A period invoice that already exists is left alone (not in the answer). Teams in `hold`
    keep their invoice a draft: unnumbered, applying no credit, out of Stripe. `made`, when
    given, is filled with team -> id of every invoice inserted (drafts included)."""
    if not items:
        return []
    inserted = _insert_drafts(session, items, kind=kind, corrects=corrects,
                              usage_read_at=usage_read_at)
    if made is not None:
        made.update({item.team_id: invoice_id for invoice_id, item in inserted})
    _insert_lines_and_usage(session, inserted)
    made_final = [(i, item) for i, item in inserted if item.team_id not in hold]
    return _finalize(session, made_final, now, kind)


def _insert_drafts(session: Session, items: Sequence[RatedTeam], *, kind: str,
                   corrects: str | None, usage_read_at: datetime
                   ) -> list[tuple[str, RatedTeam]]:
    """Insert the invoices as drafts; answers those inserted (a period invoice that already
    exists is left alone)."""
    ordered = sorted(items, key=lambda item: item.team_id)
    ids = [new_id("inv") for _ in ordered]
    created = {r[0] for r in session.execute(_INSERT_INVOICES, {
        "id": ids,
        "team_id": [i.team_id for i in ordered],
        "period": [i.period for i in ordered],
        "kind": [kind] * len(ordered),
        "corrects": [corrects] * len(ordered),
        "currency": [i.rated.currency for i in ordered],
        "subtotal": [i.rated.subtotal for i in ordered],
        "credits": [i.rated.credits_applied for i in ordered],
        "total": [i.rated.total for i in ordered],
        "carry": [i.rated.carry_forward for i in ordered],
        "read_at": usage_read_at,
    })}
    inserted = [(invoice_id, item) for invoice_id, item in zip(ids, ordered, strict=True)
                if invoice_id in created]
    return inserted


def _insert_lines_and_usage(session: Session, inserted: Sequence[tuple[str, RatedTeam]]
                            ) -> None:
    """The drafts' lines and the usage each one billed, two statements in all."""
    lines: dict[str, list[Any]] = defaultdict(list)
    usage: dict[str, list[Any]] = defaultdict(list)
    for invoice_id, item in inserted:
        for position, line in enumerate(item.rated.lines, start=1):
            lines["invoice_id"].append(invoice_id)
            lines["position"].append(position)
            lines["kind"].append(line.kind)
            lines["description"].append(line.description)
            lines["quantity"].append(line.quantity)
            lines["unit_price"].append(line.unit_price)
            lines["amount"].append(line.amount)
            lines["price_version_id"].append(line.price_version_id)
            lines["plan_code"].append(line.plan_code)
            lines["period"].append(line.period)
            metadata = line_metadata(line)
            lines["details"].append(orjson.dumps(metadata).decode() if metadata else None)
            lines["service_start"].append(line.service_start)
            lines["service_end"].append(line.service_end)
        for record in item.usage_records:
            usage["invoice_id"].append(invoice_id)
            usage["team_id"].append(item.team_id)
            usage["usage_period"].append(record.usage_period)
            usage["price_version_id"].append(record.price_version_id)
            usage["vcpu_ms"].append(record.vcpu_ms)
            usage["mib_ms"].append(record.mib_ms)
            usage["vcpu_price"].append(record.vcpu_second_price)
            usage["gib_price"].append(record.gib_second_price)
    if lines:
        session.execute(_INSERT_LINES, dict(lines))
    if usage:
        session.execute(_INSERT_USAGE, dict(usage))


def _finalize(session: Session, made: list[tuple[str, RatedTeam]], now: datetime, kind: str
              ) -> list[StoredInvoice]:
    """Number the drafts, finalize them, apply their credits and carry-forwards."""
    if not made:
        return []

    year = now.year
    last = int(session.execute(_TAKE_NUMBERS, {"year": year, "n": len(made)}).scalar_one())
    numbers = [format_number(year, n) for n in range(last - len(made) + 1, last + 1)]
    session.execute(_FINALIZE, {"id": [invoice_id for invoice_id, _ in made],
                                "number": numbers, "now": now})

    applications: dict[str, list[Any]] = defaultdict(list)
    carry: dict[str, list[Any]] = defaultdict(list)
    for (invoice_id, item), number in zip(made, numbers, strict=True):
        for use in item.rated.credit_usage:
            applications["grant_id"].append(use.grant_id)
            applications["team_id"].append(item.team_id)
            applications["invoice_id"].append(invoice_id)
            applications["period"].append(item.period)
            applications["amount"].append(use.amount)
        if item.rated.carry_forward > 0:
            carry["id"].append(new_id("cg"))
            carry["team_id"].append(item.team_id)
            carry["amount"].append(item.rated.carry_forward)
            carry["currency"].append(item.rated.currency)
            carry["reason"].append(f"Credit balance carried forward from invoice {number}")
            carry["key"].append(f"carry_forward:{invoice_id}")
    if applications:
        session.execute(_INSERT_APPLICATIONS, dict(applications))
    if carry:
        session.execute(_INSERT_CARRY_FORWARD, {**carry, "now": now})
    return [StoredInvoice(invoice_id, number, item.team_id, item.period, kind,
                          item.rated.currency, item.rated.total)
            for (invoice_id, item), number in zip(made, numbers, strict=True)]


# --- close runs ----------------------------------------------------------------------------


def start_run(session: Session, period: str, now: datetime, forced: bool) -> str:
    run_id = new_id("close")
    session.execute(text("""
        INSERT INTO invoice_close_runs (id, period, status, forced, started_at, heartbeat_at,
                                        usage_read_at)
        VALUES (:id, :period, 'running', :forced, :now, :now, statement_timestamp())"""),
        {"id": run_id, "period": period, "forced": forced, "now": now})
    return run_id


def heartbeat_run(session: Session, run_id: str, now: datetime, made: int, existed: int,
                  failed: int) -> None:
    session.execute(text("""
        UPDATE invoice_close_runs SET heartbeat_at = :now, invoices_made = :made,
               already_existed = :existed, failed = :failed WHERE id = :id"""),
        {"id": run_id, "now": now, "made": made, "existed": existed, "failed": failed})


def finish_run(session: Session, run_id: str, now: datetime, status: str, considered: int,
               made: int, existed: int, failed: int, summary: dict[str, Any]) -> None:
    session.execute(text("""
        UPDATE invoice_close_runs SET status = :status, finished_at = :now, heartbeat_at = :now,
               teams_considered = :considered, invoices_made = :made,
               already_existed = :existed, failed = :failed, summary = CAST(:summary AS jsonb)
        WHERE id = :id"""),
        {"id": run_id, "now": now, "status": status, "considered": considered, "made": made,
         "existed": existed, "failed": failed, "summary": orjson.dumps(summary).decode()})


@dataclass(frozen=True, slots=True)
class RunRow:
    id: str
    period: str
    status: str
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None


def drop_drafts(session: Session, period: str, team_ids: Sequence[str]) -> int:
    """Remove the teams' period drafts of `period` (held back by a verification that found
    differences), so that a new close makes them again from what is stored now."""
    ids = [r[0] for r in session.execute(text("""
        SELECT id FROM invoices WHERE period = :p AND kind = 'period' AND status = 'draft'
          AND team_id = ANY(CAST(:teams AS text[]))"""), {"p": period, "teams": list(team_ids)})]
    if ids:
        for table in ("invoice_verifications", "invoice_lines", "invoice_usage"):
            session.execute(text(f"DELETE FROM {table} "
                                 "WHERE invoice_id = ANY(CAST(:ids AS text[]))"), {"ids": ids})
        session.execute(text("DELETE FROM invoices WHERE id = ANY(CAST(:ids AS text[]))"),
                        {"ids": ids})
    return len(ids)


def first_billable_month(session: Session) -> datetime | None:
    """The earliest instant anything could be billed for: the first execution's start or the
    first plan assignment (a fee). A scan of executions; the scheduled close asks it rarely."""
    moment: datetime | None = session.execute(text("""
        SELECT least((SELECT min(start_at) FROM executions),
                     (SELECT min(effective_at) FROM team_plans))""")).scalar()
    return moment


def latest_runs(session: Session, first: datetime, last: str) -> dict[str, RunRow]:
    """The latest close run of each month from `first`'s month to `last`."""
    rows = session.execute(text("""
        SELECT DISTINCT ON (period) id, period, status, started_at, heartbeat_at, finished_at
        FROM invoice_close_runs WHERE period >= :lo AND period <= :hi
        ORDER BY period, started_at DESC"""),
        {"lo": format_period(first), "hi": last})
    return {r.period: RunRow(*r) for r in rows}


def latest_run(session: Session, period: str) -> RunRow | None:
    row = session.execute(text("""
        SELECT id, period, status, started_at, heartbeat_at, finished_at
        FROM invoice_close_runs WHERE period = :p ORDER BY started_at DESC LIMIT 1"""),
        {"p": period}).first()
    return None if row is None else RunRow(*row)


# --- reads ---------------------------------------------------------------------------------

INVOICE_COLUMNS = """
    i.id, i.number, i.team_id, i.period, i.kind, i.corrects_invoice_id, i.status, i.currency,
    i.subtotal, i.credits_applied, i.total, i.carry_forward, i.created_at, i.finalized_at,
    i.voided_at, i.paid_at, i.stripe_invoice_id, i.stripe_status
"""


def get_invoice(session: Session, invoice_id: str, *, lock: bool = False) -> Any | None:
    """An invoice by id (or by number, e.g. INV-2026-000001)."""
    sql = f"SELECT {INVOICE_COLUMNS} FROM invoices i WHERE i.id = :id"
    if invoice_id.startswith("INV-"):
        sql = f"SELECT {INVOICE_COLUMNS} FROM invoices i WHERE i.number = :id"
    if lock:
        sql += " FOR UPDATE"
    return session.execute(text(sql), {"id": invoice_id}).first()


def list_invoices(
    session: Session, *, team_id: str | None, period: str | None, status: str | None,
    limit: int, after: tuple[datetime, str] | None,
) -> list[Any]:
    """Newest first, excluding drafts (a draft never outlives its transaction)."""
    where = ["i.status <> 'draft'"]
    params: dict[str, Any] = {"limit": limit}
    if team_id is not None:
        where.append("i.team_id = :team_id")
        params["team_id"] = team_id
    if period is not None:
        where.append("i.period = :period")
        params["period"] = period
    if status is not None:
        where.append("i.status = :status")
        params["status"] = status
    if after is not None:
        where.append("(i.created_at, i.id) < (CAST(:after_at AS timestamptz), :after_id)")
        params["after_at"], params["after_id"] = after
    sql = (f"SELECT {INVOICE_COLUMNS} FROM invoices i WHERE {' AND '.join(where)} "
           "ORDER BY i.created_at DESC, i.id DESC LIMIT :limit")
    return list(session.execute(text(sql), params))


def lines_of(session: Session, invoice_ids: Sequence[str]) -> dict[str, list[Any]]:
    if not invoice_ids:
        return {}
    rows = session.execute(text("""
        SELECT invoice_id, position, kind, description, quantity, unit_price, amount,
               price_version_id, plan_code, period, service_start, service_end, details
        FROM invoice_lines WHERE invoice_id = ANY(CAST(:ids AS text[]))
        ORDER BY invoice_id, position"""), {"ids": list(invoice_ids)})
    out: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        out[r.invoice_id].append(r)
    return dict(out)


def read_instants(session: Session, invoice_id: str) -> tuple[datetime | None, datetime]:
    """(when its close read usage, the close's clock) of an invoice: the instant its charges
    are explained as of."""
    row = session.execute(text("""
        SELECT usage_read_at, coalesce(finalized_at, created_at) FROM invoices
        WHERE id = :id"""), {"id": invoice_id}).one()
    return row[0], row[1]


def usage_periods_of(session: Session, invoice_id: str) -> set[str]:
    rows = session.execute(text(
        "SELECT DISTINCT usage_period FROM invoice_usage WHERE invoice_id = :id"),
        {"id": invoice_id})
    return {r[0] for r in rows}


def mark_void(session: Session, invoice_id: str, now: datetime) -> None:
    session.execute(text(
        "UPDATE invoices SET status = 'void', voided_at = :now WHERE id = :id"),
        {"id": invoice_id, "now": now})


def export_rows(session: Session, period: str) -> list[Any]:
    """Invoices of a month with their lines (one row per line; a line-less invoice once)."""
    return list(session.execute(text("""
        SELECT i.number, i.id, i.team_id, i.period, i.kind, i.corrects_invoice_id, i.status,
               i.currency, i.subtotal, i.credits_applied, i.total, i.finalized_at,
               i.stripe_invoice_id, l.position, l.kind AS line_kind, l.description,
               l.quantity, l.unit_price, l.amount, l.period AS line_period,
               l.price_version_id, l.plan_code, l.service_start, l.service_end,
               i.stripe_status,
               CASE WHEN l.price_version_id IS NULL THEN l.details
                    ELSE jsonb_build_object('price_version_id', l.price_version_id)
                         || coalesce(l.details, '{}') END AS details
        FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE i.period = :p AND i.status <> 'draft'
        ORDER BY i.number NULLS LAST, i.id, l.position"""), {"p": period}))


def revenue_rows(session: Session, period: str | None) -> tuple[list[Any], list[Any]]:
    """(per month and currency totals, per month, currency and plan line sums) of live
    invoices."""
    where = f"i.{LIVE}" + (" AND i.period = :p" if period else "")
    params = {"p": period} if period else {}
    totals = list(session.execute(text(f"""
        SELECT i.period, i.currency, count(*) AS invoices, sum(i.subtotal) AS subtotal,
               sum(i.credits_applied) AS credits_applied, sum(i.carry_forward) AS carry_forward,
               sum(i.total) AS total
        FROM invoices i WHERE {where}
        GROUP BY i.period, i.currency ORDER BY i.period, i.currency"""), params))
    by_plan = list(session.execute(text(f"""
        SELECT i.period, i.currency, l.plan_code, count(DISTINCT i.id) AS invoices,
               coalesce(sum(l.amount) FILTER (WHERE l.kind = 'plan_fee'), 0) AS plan_fees,
               coalesce(sum(l.amount) FILTER (
                   WHERE l.kind IN ('usage_vcpu', 'usage_memory')), 0) AS usage,
               coalesce(sum(l.amount) FILTER (
                   WHERE l.kind = 'commitment_true_up'), 0) AS commitment_true_up,
               coalesce(sum(l.amount) FILTER (
                   WHERE l.kind IN ('adjustment_vcpu', 'adjustment_memory')), 0) AS adjustments
        FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id
        WHERE {where} AND l.kind NOT IN ('credit', 'carry_forward')
        GROUP BY i.period, i.currency, l.plan_code
        ORDER BY i.period, i.currency, l.plan_code NULLS LAST"""), params))
    return totals, by_plan
