"""Monthly partitions of `sample_minutes` and the retention job, against real PostgreSQL:
partitions made on demand (also for samples months or years old, and by two processes at
once), months dropped only when closed and invoiced, metrics of kept months still read,
late samples of dropped months discarded without making their partition again, dry runs,
the lock between two runs, and the migration that partitions existing rows.

Events enter through the real ingest API; months are closed by the real month close.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from billing import worker
from billing.invoices import close as month_close
from billing.retention.service import CLOSED_AND_INVOICED, HELD_BACK, RETENTION_LOCK, run_retention
from metering import migrate
from metering.config import Settings
from metering.db import make_engine, transaction
from metering.ingest import jobs, slices
from metering.ingest import partitions as retention
from tests.billing.test_close import iso, pin, put_team, query
from tests.conftest import Keys, event

JUN = datetime(2026, 6, 1, tzinfo=UTC)
JUL = datetime(2026, 7, 1, tzinfo=UTC)
AUG = datetime(2026, 8, 1, tzinfo=UTC)
SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
NOW = JAN + timedelta(days=9, hours=12)  # with 3 months kept: October on stays
EIGHT_MONTHS = [JUN, JUL, AUG, SEP, OCT, NOV, DEC, JAN]


@pytest.fixture(autouse=True)
def no_sample_partitions(engine: Engine) -> Any:
    """Every test starts with no partition at all (others' tests leave theirs behind) and a
    process memory that knows it."""
    _drop_all_partitions(engine)
    retention.known_partitions.forget()
    yield
    retention.known_partitions.forget()


def _drop_all_partitions(engine: Engine) -> None:
    with engine.begin() as conn:
        for (name,) in conn.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'sample_minutes'::regclass")):
            conn.execute(text(f'DROP TABLE "{name}"'))
        conn.execute(text("DELETE FROM sample_retention"))


def partitions(sessions: sessionmaker[Session]) -> list[str]:
    with transaction(sessions) as session:
        return [m.strftime("%Y-%m") for m in retention.attached_months(session)]


def horizon(sessions: sessionmaker[Session]) -> str | None:
    with transaction(sessions) as session:
        kept = retention.kept_from(session)
    return None if kept is None else kept.strftime("%Y-%m")


def post(client: TestClient, keys: Keys, batch: list[dict[str, Any]]) -> dict[str, Any]:
    # Months years back are past the maximum age of events: a deliberate backfill (admin).
    response = client.post("/v1/events", json=batch, headers=Keys.auth(keys.admin))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def activity(client: TestClient, keys: Keys, team: str, start: datetime, *,
             samples: int = 3, seconds: int = 600) -> str:
    """An execution of `team` from `start`, 2 vCPU / 1 GiB, with a sample every 10 s at
    first; answers its sandbox id."""
    execution = f"{team}_{start:%Y%m}"
    sandbox = f"sbx_{execution}"
    ids = {"team": team, "execution": execution, "sandbox": sandbox}
    body = post(client, keys, [
        event("created", **ids, time=iso(start), vcpu=2, memory_mib=1024),
        *(event("host_stats", **ids, time=iso(start + timedelta(seconds=10 * i)),
                id=f"{execution}-s{i}", cpu_pct=10.0 + i, memory_used_mib=100 + i)
          for i in range(samples)),
        event("killed", **ids, time=iso(start + timedelta(seconds=seconds)), reason="request"),
    ])
    assert body["accepted"] == samples + 2, body
    return sandbox


def metrics(client: TestClient, keys: Keys, sandbox: str, month: datetime) -> list[Any]:
    response = client.get(f"/v1/sandboxes/{sandbox}/metrics", headers=Keys.auth(keys.finance),
                          params={"start": iso(month), "end": iso(month + timedelta(days=27))})
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return data


def close(sessions: sessionmaker[Session], settings: Settings, month: datetime) -> None:
    summary = month_close.close_period(sessions, month.strftime("%Y-%m"), settings)
    assert not summary.failures, summary.failures


def fleet(client: TestClient, keys: Keys, months: list[datetime]) -> dict[datetime, str]:
    """Team t_<month> (Hobby since January) runs one sandbox with samples in each month."""
    pin(NOW)
    sandboxes = {}
    for month in months:
        team = f"t_{month:%Y%m}"
        put_team(client, keys, team, "hobby", at=datetime(2026, 1, 1, tzinfo=UTC))
        sandboxes[month] = activity(client, keys, team, month + timedelta(days=3, hours=10))
    return sandboxes


def verdicts(summary: Any) -> list[tuple[str, bool, str]]:
    return [(v.period, v.drop, v.reason) for v in summary.verdicts]


# --- partitions -----------------------------------------------------------------------------


def test_the_fold_makes_the_partitions_of_old_samples_on_demand(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    pin(NOW)
    old = activity(client, api_keys, "t_old", datetime(2019, 3, 31, 23, 59, 40, tzinfo=UTC))
    recent = activity(client, api_keys, "t_recent", AUG + timedelta(days=2))
    assert partitions(sessions) == []

    assert jobs.fold_samples(sessions) == 6
    # March 2019's samples spill into April (23:59:40, :50, then 00:00:00).
    assert partitions(sessions) == ["2019-03", "2019-04", "2026-08"]
    rows = query(sessions, "SELECT tableoid::regclass::text AS part, count(*) AS n "
                           "FROM sample_minutes GROUP BY 1 ORDER BY 1")
    assert [(r.part, r.n) for r in rows] == [
        ("sample_minutes_p2019_03", 1), ("sample_minutes_p2019_04", 1),
        ("sample_minutes_p2026_08", 1)]
    assert query(sessions, "SELECT count(*) FROM host_stats_pending")[0][0] == 0
    assert [p["samples"] for p in metrics(client, api_keys, recent, AUG)] == [3]
    assert [p["samples"] for p in metrics(client, api_keys, old, datetime(
        2019, 3, 31, 23, tzinfo=UTC))] == [2, 1]


def test_a_minute_slice_makes_its_month_on_demand_and_one_before_the_horizon_is_discarded(
    sessions: sessionmaker[Session],
) -> None:
    may, june, july = (datetime(2031, m, 1, tzinfo=UTC) for m in (5, 6, 7))
    in_may, in_june = may + timedelta(days=3, hours=4), june + timedelta(days=3, hours=4)

    def sample(minute: datetime, second: int, cpu: int) -> dict[str, object]:
        return {"s": "node-1", "i": f"h-{minute:%m}-{second}", "x": "e_slice",
                "t": minute + timedelta(seconds=second), "c": cpu, "g": second}

    with transaction(sessions) as session:
        assert slices.ensure(session, [in_may, in_june]) == [in_may, in_june]
        session.execute(text(
            "INSERT INTO executions (execution_id, team_id, sandbox_id, last_event_at) "
            "VALUES ('e_slice', 't_slice', 's_slice', :t)"), {"t": in_may})
        session.execute(text(
            "INSERT INTO host_stats_pending (source, id, execution_id, time, cpu_centipct, tag) "
            "VALUES (:s, :i, :x, :t, :c, :g)"),
            [sample(in_may, 5, 900), sample(in_may, 15, 900),
             sample(in_june, 5, 100), sample(in_june, 15, 300), sample(in_june, 25, 200)])
        # May is before the horizon: its samples are discarded, its month never made.
        session.execute(text("INSERT INTO sample_retention (id, kept_from, updated_at) "
                             "VALUES (1, :k, :k)"), {"k": june})
    retention.known_partitions.forget()
    pin(july + timedelta(days=2))
    assert jobs.fold_samples(sessions) == 5  # moved: 2 discarded, 3 stored

    assert partitions(sessions) == ["2031-06"]  # June made for its slice; May not
    rows = query(sessions, "SELECT minute, samples, cpu_sum, cpu_max, "
                           "ARRAY(SELECT unnest(tags) ORDER BY 1) AS tags FROM sample_minutes")
    assert [(r.minute, r.samples, r.cpu_sum, r.cpu_max, r.tags) for r in rows] == [
        (in_june, 3, 600, 300, [5, 15, 25])]
    assert query(sessions, "SELECT count(*) FROM host_stats_pending")[0][0] == 0
    with transaction(sessions) as session:
        assert not {in_may, in_june} & set(slices.attached(session))  # both dropped


def test_a_partition_dropped_behind_the_process_back_is_made_again(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], engine: Engine,
) -> None:
    pin(NOW)
    activity(client, api_keys, "t_a", AUG + timedelta(days=2))
    jobs.fold_samples(sessions)
    assert partitions(sessions) == ["2026-08"]
    with engine.begin() as conn:  # by hand: the process still believes August exists
        conn.execute(text('DROP TABLE "sample_minutes_p2026_08"'))
    activity(client, api_keys, "t_b", AUG + timedelta(days=5))
    assert jobs.fold_samples(sessions) == 3
    assert partitions(sessions) == ["2026-08"]
    assert query(sessions, "SELECT count(*) FROM sample_minutes")[0][0] == 1


def test_two_processes_making_the_same_partitions_at_once_both_succeed(
    sessions: sessionmaker[Session],
) -> None:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def make() -> None:
        try:
            with transaction(sessions) as session:
                barrier.wait()
                retention.ensure_partitions(session, [JUN, JUL, AUG])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert partitions(sessions) == ["2026-06", "2026-07", "2026-08"]


def test_making_a_partition_does_not_wait_for_readers_of_the_table(
    sessions: sessionmaker[Session], engine: Engine,
) -> None:
    """Attached, not created as PARTITION OF: the parent is not locked ACCESS EXCLUSIVE, so a
    long metrics read (or ingest) holding the table does not block it, nor queue behind it."""
    with engine.connect() as reader:
        reader.execute(text("LOCK TABLE sample_minutes IN ACCESS SHARE MODE"))
        with transaction(sessions) as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert retention.ensure_partitions(session, [SEP]) == {SEP}
        reader.rollback()
    assert partitions(sessions) == ["2026-09"]


def test_the_partition_job_makes_the_current_and_the_next_month_ahead(
    sessions: sessionmaker[Session], settings: Settings,
) -> None:
    pin(DEC + timedelta(days=20))
    assert [m.strftime("%Y-%m") for m in jobs.maintain_sample_partitions(sessions)] == [
        "2026-12", "2027-01"]
    assert jobs.maintain_sample_partitions(sessions) == []
    assert partitions(sessions) == ["2026-12", "2027-01"]
    names = {entry.name for entry in worker.job_table(sessions, settings)}
    assert {"sample_partitions", "sample_retention"} <= names


# --- retention ------------------------------------------------------------------------------


def test_retention_drops_only_months_closed_and_invoiced(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sandboxes = fleet(client, api_keys, EIGHT_MONTHS)
    jobs.fold_samples(sessions)
    every_month = [m.strftime("%Y-%m") for m in EIGHT_MONTHS]
    assert partitions(sessions) == every_month
    close(sessions, settings, JUN)
    close(sessions, settings, JUL)
    close(sessions, settings, AUG)
    # An August invoice still a draft (what a close stopped between storing and finalizing
    # would leave); September is not closed at all.
    with transaction(sessions) as session:
        session.execute(text("UPDATE invoices SET status = 'draft', number = NULL, "
                             "finalized_at = NULL WHERE period = '2026-08'"))
    close(sessions, settings, OCT)  # closed, but within the three months kept

    dry = run_retention(sessions, settings, dry_run=True)
    assert verdicts(dry) == [
        ("2026-06", True, CLOSED_AND_INVOICED), ("2026-07", True, CLOSED_AND_INVOICED),
        ("2026-08", False, "1 draft invoice(s)"), ("2026-09", False, "no completed month close")]
    assert (dry.dropped, dry.kept_from) == (["2026-06", "2026-07"], "2026-08")
    assert dry.bytes_freed > 0
    # The dry run changed nothing.
    assert partitions(sessions) == every_month
    assert horizon(sessions) is None

    summary = run_retention(sessions, settings)
    assert verdicts(summary) == verdicts(dry)
    assert (summary.dropped, summary.kept_from_before, summary.kept_from) == (
        ["2026-06", "2026-07"], None, "2026-08")
    assert partitions(sessions) == every_month[2:]
    assert horizon(sessions) == "2026-08"

    # Metrics of kept months still read; those of dropped months are gone.
    assert [p["samples"] for p in metrics(client, api_keys, sandboxes[AUG], AUG)] == [3]
    assert [p["samples"] for p in metrics(client, api_keys, sandboxes[JAN], JAN)] == [3]
    assert metrics(client, api_keys, sandboxes[JUN], JUN) == []

    # A late sample of a dropped month: accepted (it still tells liveness), then discarded
    # by the fold without error and without making June's partition again.
    late = event("host_stats", team=f"t_{JUN:%Y%m}", execution=f"t_{JUN:%Y%m}_{JUN:%Y%m}",
                 sandbox=sandboxes[JUN], time=iso(JUN + timedelta(days=3, hours=10, seconds=5)),
                 id="late-june", cpu_pct=50.0, memory_used_mib=300)
    kept = event("host_stats", team=f"t_{AUG:%Y%m}", execution=f"t_{AUG:%Y%m}_{AUG:%Y%m}",
                 sandbox=sandboxes[AUG], time=iso(AUG + timedelta(days=3, hours=10, seconds=5)),
                 id="late-august", cpu_pct=50.0, memory_used_mib=300)
    assert post(client, api_keys, [late, kept])["accepted"] == 2
    with caplog.at_level(logging.WARNING, logger="metering.ingest.jobs"):
        assert jobs.fold_samples(sessions) == 2
    assert [r.samples for r in caplog.records
            if r.getMessage() == "discarded samples of months past sample retention"] == [1]
    assert partitions(sessions) == every_month[2:]
    assert query(sessions, "SELECT count(*) FROM host_stats_pending")[0][0] == 0
    assert [p["samples"] for p in metrics(client, api_keys, sandboxes[AUG], AUG)] == [4]

    # Running again changes nothing.
    again = run_retention(sessions, settings)
    assert (again.dropped, again.kept_from) == ([], "2026-08")

    # Once August is finalized and September closed, both go; October on stays.
    with transaction(sessions) as session:
        session.execute(text("UPDATE invoices SET status = 'finalized', "
                             "finalized_at = now() WHERE period = '2026-08'"))
    close(sessions, settings, SEP)
    last = run_retention(sessions, settings)
    assert (last.dropped, last.kept_from_before, last.kept_from) == (
        ["2026-08", "2026-09"], "2026-08", "2026-10")
    assert partitions(sessions) == ["2026-10", "2026-11", "2026-12", "2027-01"]
    assert [p["samples"] for p in metrics(client, api_keys, sandboxes[OCT], OCT)] == [3]


def test_an_unclosed_month_holds_back_newer_closed_ones(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    fleet(client, api_keys, [JUN, JUL, AUG])
    jobs.fold_samples(sessions)
    close(sessions, settings, JUL)
    close(sessions, settings, AUG)
    summary = run_retention(sessions, settings)
    assert verdicts(summary) == [
        ("2026-06", False, "no completed month close"), ("2026-07", False, HELD_BACK),
        ("2026-08", False, HELD_BACK)]
    assert (summary.dropped, summary.kept_from) == ([], "2026-06")
    assert partitions(sessions) == ["2026-06", "2026-07", "2026-08"]


def test_late_usage_keeps_its_month_until_an_invoice_bills_it(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    fleet(client, api_keys, [JUN])
    close(sessions, settings, JUN)
    # Usage of June arrives after June was closed, for a team that has no June invoice.
    put_team(client, api_keys, "t_late", "hobby", at=datetime(2026, 1, 1, tzinfo=UTC))
    activity(client, api_keys, "t_late", JUN + timedelta(days=20))
    jobs.fold_samples(sessions)
    summary = run_retention(sessions, settings)
    assert verdicts(summary) == [
        ("2026-06", False, "1 team(s) with usage not invoiced (t_late)")]
    assert partitions(sessions) == ["2026-06"]
    # July's close bills it as an adjustment of June: June may go, and so may July.
    close(sessions, settings, JUL)
    billed = query(sessions, "SELECT i.period FROM invoice_usage u JOIN invoices i "
                             "ON i.id = u.invoice_id WHERE u.team_id = 't_late'")
    assert [r.period for r in billed] == ["2026-07"]
    summary = run_retention(sessions, settings)
    assert (summary.dropped, summary.kept_from) == (["2026-06"], "2026-10")
    assert partitions(sessions) == []


def test_the_current_and_the_previous_month_are_never_dropped(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
) -> None:
    fleet(client, api_keys, [NOV, DEC, JAN])
    jobs.fold_samples(sessions)
    close(sessions, settings, NOV)
    close(sessions, settings, DEC)
    one_month = settings.model_copy(update={"sample_retention_months": 0})  # clamped to 1
    summary = run_retention(sessions, one_month)
    assert (summary.retention_months, summary.dropped, summary.kept_from) == (
        1, ["2026-11"], "2026-12")
    assert partitions(sessions) == ["2026-12", "2027-01"]


def test_a_second_run_while_one_holds_the_lock_does_nothing(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    engine: Engine,
) -> None:
    fleet(client, api_keys, [JUN])
    jobs.fold_samples(sessions)
    close(sessions, settings, JUN)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": RETENTION_LOCK})
        busy = run_retention(sessions, settings)
    assert busy.skipped and busy.dropped == []
    assert partitions(sessions) == ["2026-06"]
    assert run_retention(sessions, settings).dropped == ["2026-06"]


def test_the_command_line_runs_retention_dry_and_for_real(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session], settings: Settings,
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from billing import cli
    from metering.config import get_settings

    fleet(client, api_keys, [JUN])
    jobs.fold_samples(sessions)
    close(sessions, settings, JUN)
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        assert cli.main(["retention", "run", "--dry-run"]) == 0
        assert "2026-06  would drop" in capsys.readouterr().out
        assert partitions(sessions) == ["2026-06"]
        assert cli.main(["retention", "run"]) == 0
        assert "dropped 1 month(s)" in capsys.readouterr().out
        assert partitions(sessions) == []
    finally:
        get_settings.cache_clear()


# --- the migration ----------------------------------------------------------------------------


def test_the_migration_partitions_existing_rows_and_the_downgrade_restores_them(
    database_url: str,
) -> None:
    from tests.conftest import SERVER_URL, _database_url

    name = "metering_partition_" + database_url.rsplit("/", 1)[-1][-24:]
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_database_url(name), pool_size=1)
    rows = "SELECT execution_id, minute, samples, tags FROM sample_minutes ORDER BY 1, 2"
    try:
        migrate.upgrade(engine, "0008")
        with engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO sample_minutes VALUES
                ('e1', '2025-12-31 23:59+00', 't', 's', 2, 2, 10, 6, 2, 20, 11, '2025-12-31 23:59:30+00', '{1,2}'),
                ('e1', '2026-01-01 00:00+00', 't', 's', 1, 1, 5, 5, 1, 10, 10, '2026-01-01 00:00:10+00', '{3}'),
                ('e2', '2026-03-15 10:00+00', 't', 's', 1, 0, 0, NULL, 1, 7, 7, '2026-03-15 10:00:01+00', '{4}')
            """))
            before = [tuple(r) for r in conn.execute(text(rows))]
        migrate.upgrade(engine)
        with engine.begin() as conn:
            assert [tuple(r) for r in conn.execute(text(rows))] == before
            assert conn.execute(text(
                "SELECT relkind FROM pg_class WHERE relname = 'sample_minutes'")).scalar_one() == "p"
            parts = {r[0] for r in conn.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'sample_minutes'::regclass"))}
            now = conn.execute(text("SELECT now()")).scalar_one()
        this_month = retention.partition_name(now)
        next_month = retention.partition_name(retention.add_months(now.replace(day=1), 1))
        assert parts == {"sample_minutes_p2025_12", "sample_minutes_p2026_01",
                         "sample_minutes_p2026_03", this_month, next_month}
        migrate.downgrade(engine, "0008")
        with engine.begin() as conn:
            assert [tuple(r) for r in conn.execute(text(rows))] == before
            assert conn.execute(text(
                "SELECT relkind FROM pg_class WHERE relname = 'sample_minutes'")).scalar_one() == "r"
            assert conn.execute(text(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'sample_minutes_p%'")).scalar_one() == 0
    finally:
        engine.dispose()
        with psycopg.connect(SERVER_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
