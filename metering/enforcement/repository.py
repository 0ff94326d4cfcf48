"""Every query of enforcement: running executions to judge, kill orders, the outbox's delivery.

Kill orders are written only here, under one transaction-level advisory lock
(`KILL_ORDER_LOCK`): sequence numbers are then committed in the order they are drawn, so the
feed can page by `seq` without ever passing over a row that is still uncommitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from metering.db import driver, driver_sql
from metering.usage import RUNNING

KILL_ORDER_LOCK = 0x6B696C6C  # "kill"


@dataclass(frozen=True, slots=True)
class RunningExecution:
    """A running execution without a kill order."""

    execution_id: str
    team_id: str
    sandbox_id: str
    start_at: datetime | None  # None: only samples seen so far, its created event is late


@dataclass(frozen=True, slots=True)
class NewKillOrder:
    id: str
    team_id: str
    sandbox_id: str
    execution_id: str
    reason: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class KillOrderRow:
    seq: int
    id: str
    team_id: str
    sandbox_id: str
    execution_id: str
    action: str
    reason: str
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class RunningTeam:
    """A team's running executions without a kill order, added up: what the sweep judges a
    team on before it fetches any execution."""

    team_id: str
    executions: int
    vcpu: int  # totals; an unknown size counts as 0
    memory_mib: int
    oldest_start: datetime | None  # None: no start known yet
    unknown_starts: bool  # some created events are still on their way
    blocked: bool


# Open executions are few (at most the fleet's concurrency) and sit in a partial index, so
# judging all of them every second costs one small index scan. Executions that already have
# their kill order are left out: nothing more can happen to them.
_WITHOUT_KILL_ORDER = (
    "NOT EXISTS (SELECT 1 FROM kill_orders k WHERE k.execution_id = e.execution_id)")

# Every second, one row per team: the executions themselves are fetched only for the teams
# with a kill due (`due_executions`).
_RUNNING_TEAMS = text(f"""
SELECT a.team_id, a.n, a.vcpu, a.memory_mib, a.oldest, a.unknown, (t.blocked_at IS NOT NULL)
FROM (SELECT e.team_id, count(*) AS n, CAST(coalesce(sum(e.vcpu), 0) AS bigint) AS vcpu,
             CAST(coalesce(sum(e.memory_mib), 0) AS bigint) AS memory_mib,
             min(e.start_at) AS oldest, bool_or(e.start_at IS NULL) AS unknown
      FROM executions e
      WHERE {RUNNING} AND {_WITHOUT_KILL_ORDER}
      GROUP BY e.team_id) a
LEFT JOIN teams t ON t.id = a.team_id
ORDER BY a.team_id
""")

# The running executions without a kill order of some teams: all of them (`every`), or those
# started at or before a team's cutoff (`cut_teams`, `cutoffs`: past the max duration; unknown
# starts never are). Each team's oldest first, unknown starts last.
_DUE = text(f"""
WITH due AS (
    SELECT a.team_id, CAST(NULL AS timestamptz) AS cutoff
    FROM unnest(CAST(:every AS text[])) AS a(team_id)
    UNION ALL
    SELECT c.team_id, c.cutoff
    FROM unnest(CAST(:cut_teams AS text[]), CAST(:cutoffs AS timestamptz[])) AS c(team_id, cutoff)
)
SELECT due.team_id, e.execution_id, e.sandbox_id, e.start_at
FROM due CROSS JOIN LATERAL (
    SELECT e.execution_id, e.sandbox_id, e.start_at FROM executions e
    WHERE e.team_id = due.team_id AND {RUNNING}
      AND (due.cutoff IS NULL OR e.start_at <= due.cutoff) AND {_WITHOUT_KILL_ORDER}
    OFFSET 0) e
ORDER BY due.team_id, e.start_at, e.execution_id
""")

_INSERT_KILL_ORDERS = text("""
INSERT INTO kill_orders (id, team_id, sandbox_id, execution_id, action, reason, issued_at)
SELECT u.id, u.team_id, u.sandbox_id, u.execution_id, 'kill', u.reason, u.issued_at
FROM unnest(CAST(:id AS text[]), CAST(:team_id AS text[]), CAST(:sandbox_id AS text[]),
            CAST(:execution_id AS text[]), CAST(:reason AS text[]),
            CAST(:issued_at AS timestamptz[]))
     WITH ORDINALITY AS u(id, team_id, sandbox_id, execution_id, reason, issued_at, n)
ORDER BY u.n
ON CONFLICT (execution_id) DO NOTHING
RETURNING seq, id, team_id, sandbox_id, execution_id, action, reason, issued_at
""")

_PAGE = text("""
SELECT seq, id, team_id, sandbox_id, execution_id, action, reason, issued_at
FROM kill_orders WHERE seq > :after ORDER BY seq LIMIT :limit
""")


# The sweep's statements take milliseconds; without statistics (a server without
# autovacuum) their estimated cost can pass `jit_above_cost`, and compiling them took longer
# (500 ms seen for the bulk credit read) than running them: no JIT in a sweep's transaction.
_TRY_LOCK_SWEEP = text("SELECT pg_try_advisory_xact_lock(:k), set_config('jit', 'off', true)")


def try_lock_sweep(session: Session) -> bool:
    """Take the kill-order lock if free, for this transaction; False if another worker holds
    it (that worker is sweeping now, a second sweep would only repeat its work)."""
    return bool(session.execute(_TRY_LOCK_SWEEP, {"k": KILL_ORDER_LOCK}).scalar())


def running_teams(session: Session, now: datetime, stale_after: timedelta) -> list[RunningTeam]:
    """Every team with running executions that have no kill order, with their totals."""
    # Rows fetched by the driver as plain tuples (SQLAlchemy's row processing is not free).
    with driver(session) as raw, raw.cursor() as cursor:
        rows = cursor.execute(driver_sql(_RUNNING_TEAMS),
                              {"now": now, "stale": stale_after}).fetchall()
    return [RunningTeam(r[0], int(r[1]), int(r[2]), int(r[3]), r[4], bool(r[5]), bool(r[6]))
            for r in rows]


def due_executions(
    session: Session, now: datetime, stale_after: timedelta, every: Sequence[str],
    cutoffs: Mapping[str, datetime],
) -> list[RunningExecution]:
    """The running executions without a kill order of the teams in `every`, and of the teams
    in `cutoffs` those started at or before the team's cutoff; each team's oldest first."""
    if not every and not cutoffs:
        return []
    cut = sorted(cutoffs.items())
    rows = session.execute(_DUE, {
        "now": now, "stale": stale_after, "every": sorted(every),
        "cut_teams": [t for t, _ in cut], "cutoffs": [c for _, c in cut]})
    return [RunningExecution(r[1], r[0], r[2], r[3]) for r in rows]


def insert_kill_orders(session: Session, orders: Sequence[NewKillOrder]) -> list[KillOrderRow]:
    """Insert the orders whose execution has none yet; answer the rows inserted, in seq order.

    Waits for the kill-order lock (re-entrant within the transaction that already swept)."""
    if not orders:
        return []
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": KILL_ORDER_LOCK})
    # One order per execution in one statement (ON CONFLICT cannot hit the same row twice);
    # the first one given wins, as across statements.
    seen: set[str] = set()
    unique: list[NewKillOrder] = []
    for order in orders:
        if order.execution_id not in seen:
            seen.add(order.execution_id)
            unique.append(order)
    rows = session.execute(_INSERT_KILL_ORDERS, {
        "id": [o.id for o in unique],
        "team_id": [o.team_id for o in unique],
        "sandbox_id": [o.sandbox_id for o in unique],
        "execution_id": [o.execution_id for o in unique],
        "reason": [o.reason for o in unique],
        "issued_at": [o.issued_at for o in unique],
    })
    return sorted((KillOrderRow(*r) for r in rows), key=lambda r: r.seq)


def kill_orders_after(session: Session, after_seq: int, limit: int) -> list[KillOrderRow]:
    return [KillOrderRow(*r) for r in session.execute(_PAGE, {"after": after_seq,
                                                              "limit": limit})]


# --------------------------------------------------------------------------- outbox delivery


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    seq: int
    id: str
    type: str
    body: dict[str, Any]
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    seq: int
    ok: bool
    error: str | None
    next_attempt_at: datetime | None  # None with ok=False: abandoned


# Claiming pushes next_attempt_at out by a lease and commits at once, so no transaction stays
# open across HTTP calls; a worker that dies mid-delivery leaves its messages due again when
# the lease runs out (at least once, never lost).
_CLAIM = text("""
UPDATE outbox_messages AS o SET next_attempt_at = :lease_until
FROM (SELECT seq FROM outbox_messages
      WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= :now
      ORDER BY next_attempt_at, seq
      LIMIT :batch
      FOR UPDATE SKIP LOCKED) AS due
WHERE o.seq = due.seq
RETURNING o.seq, o.id, o.type, o.payload, o.created_at, o.attempts
""")

_DELIVERED = text("""
UPDATE outbox_messages SET delivered_at = :now, attempts = attempts + 1, last_error = NULL
WHERE seq = ANY(CAST(:seqs AS bigint[])) AND delivered_at IS NULL
""")

_FAILED = text("""
UPDATE outbox_messages AS o SET
    attempts = o.attempts + 1, last_error = u.error,
    next_attempt_at = coalesce(u.next_at, o.next_attempt_at),
    abandoned_at = CASE WHEN u.next_at IS NULL THEN CAST(:now AS timestamptz) END
FROM unnest(CAST(:seqs AS bigint[]), CAST(:errors AS text[]),
            CAST(:next_at AS timestamptz[])) AS u(seq, error, next_at)
WHERE o.seq = u.seq AND o.delivered_at IS NULL
""")


def claim_due(
    session: Session, now: datetime, lease_until: datetime, batch: int
) -> list[ClaimedMessage]:
    rows = session.execute(_CLAIM, {"now": now, "lease_until": lease_until, "batch": batch})
    claimed = [ClaimedMessage(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]
    return sorted(claimed, key=lambda m: m.seq)


def record_outcomes(session: Session, outcomes: Sequence[DeliveryOutcome], now: datetime) -> None:
    delivered = sorted(o.seq for o in outcomes if o.ok)
    failed = sorted((o for o in outcomes if not o.ok), key=lambda o: o.seq)
    if delivered:
        session.execute(_DELIVERED, {"seqs": delivered, "now": now})
    if failed:
        session.execute(_FAILED, {
            "seqs": [o.seq for o in failed], "errors": [o.error for o in failed],
            "next_at": [o.next_attempt_at for o in failed], "now": now,
        })
