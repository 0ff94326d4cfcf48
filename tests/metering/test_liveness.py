"""Liveness from the per-batch log and settled usage from appended deltas: the work moved off
the ingest request, and the bounds on what it may lag."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from metering.core.clock import utc_now
from metering.db import transaction
from metering.executions import jobs as execution_jobs
from metering.ingest import jobs
from metering.ingest import repository as ingest_repo
from metering.ingest import service as ingest
from metering.usage.bulk import usage_totals
from tests.conftest import Keys, event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def send(sessions: sessionmaker[Session], batch: list[dict]) -> None:
    with transaction(sessions) as session:
        result = ingest.ingest(session, batch, utc_now(), 300)
    assert result.rejected == 0, result.errors


def last_event_at(sessions: sessionmaker[Session], execution: str) -> datetime:
    with transaction(sessions) as session:
        return session.execute(text("SELECT last_event_at FROM executions WHERE execution_id = :x"),
                               {"x": execution}).scalar_one()


def samples(execution: str, times: list[datetime]) -> list[dict]:
    return [event("host_stats", execution=execution, sandbox=f"sbx_{execution}",
                  time=iso(t), cpu_pct=10) for t in times]


def test_an_execution_still_sending_lags_at_most_a_step_and_is_exact_a_pass_after_it_stops(
    sessions: sessionmaker[Session],
) -> None:
    now = utc_now().replace(microsecond=0)
    t0 = now - timedelta(seconds=20)
    near = now - timedelta(seconds=50)  # within a step of going stale
    send(sessions, [
        event("created", execution="exe_a", sandbox="sbx_exe_a", time=iso(t0), vcpu=1,
              memory_mib=512),
        event("created", execution="exe_b", sandbox="sbx_exe_b", time=iso(near), vcpu=1,
              memory_mib=512),
    ])
    send(sessions, [*samples("exe_a", [t0 + timedelta(seconds=s) for s in range(1, 6)]),
                    *samples("exe_b", [near + timedelta(seconds=2)])])
    jobs.refresh_liveness(sessions, 60, jobs.LIVENESS_STEP)
    # Still sending, 5 s newer than stored: not written yet (less than a step), never more.
    assert last_event_at(sessions, "exe_a") == t0
    # Close to going stale: written exactly at once.
    assert last_event_at(sessions, "exe_b") == near + timedelta(seconds=2)
    send(sessions, samples("exe_a", [t0 + timedelta(seconds=s) for s in range(6, 12)]))
    jobs.refresh_liveness(sessions, 60, jobs.LIVENESS_STEP)
    assert last_event_at(sessions, "exe_a") == t0 + timedelta(seconds=11)  # a step on
    send(sessions, samples("exe_a", [t0 + timedelta(seconds=12)]))
    jobs.refresh_liveness(sessions, 60, jobs.LIVENESS_STEP)
    assert last_event_at(sessions, "exe_a") == t0 + timedelta(seconds=11)
    # Nothing new arrived since the last pass: the execution may have stopped, exact now.
    jobs.refresh_liveness(sessions, 60, jobs.LIVENESS_STEP)
    assert last_event_at(sessions, "exe_a") == t0 + timedelta(seconds=12)
    with transaction(sessions) as session:
        assert session.execute(text("SELECT count(*) FROM liveness_log")).scalar_one() == 0


def test_settle_ends_a_stale_execution_at_its_exact_newest_sample(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    now = utc_now().replace(microsecond=0)
    t0 = now - timedelta(seconds=100)
    send(sessions, [
        event("created", execution="exe_s", sandbox="sbx_exe_s", time=iso(t0), vcpu=1,
              memory_mib=1024),
        *samples("exe_s", [t0 + timedelta(seconds=s, milliseconds=250) for s in range(1, 4)]),
    ])
    # No liveness pass ran: the settle's own pass brings the exact newest sample first.
    assert execution_jobs.settle_stale(sessions, 60) == 1
    with transaction(sessions) as session:
        inferred = session.execute(text(
            "SELECT inferred_end_at FROM executions WHERE execution_id = 'exe_s'")).scalar_one()
    assert inferred == t0 + timedelta(seconds=3, milliseconds=250)
    sandboxes = client.get("/v1/teams/team_1/sandboxes", headers=Keys.auth(api_keys.finance))
    assert sandboxes.json()["data"][0]["vcpu_seconds"] == "3.25"


def test_settled_usage_is_the_same_before_and_after_its_deltas_are_folded(
    client: TestClient, api_keys: Keys, sessions: sessionmaker[Session],
) -> None:
    hour = utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    send(sessions, [
        event("created", execution="exe_1", time=iso(hour + timedelta(minutes=10)), vcpu=2,
              memory_mib=1024),
        event("killed", execution="exe_1", time=iso(hour + timedelta(minutes=70)),
              reason="request"),
        event("created", execution="exe_2", sandbox="sbx_2",
              time=iso(hour + timedelta(minutes=20)), vcpu=1, memory_mib=512),
        event("updated", execution="exe_2", sandbox="sbx_2",
              time=iso(hour + timedelta(minutes=30)), vcpu=3),
        event("killed", execution="exe_2", sandbox="sbx_2",
              time=iso(hour + timedelta(minutes=40)), reason="request"),
    ])

    def figures() -> tuple[object, ...]:
        usage = client.get("/v1/teams/team_1/usage", params={
            "start": iso(hour), "end": iso(hour + timedelta(hours=2)), "granularity": "hour"},
            headers=Keys.auth(api_keys.finance)).json()
        with transaction(sessions) as session:
            totals = usage_totals(session, hour, hour + timedelta(hours=2), utc_now(),
                                  timedelta(seconds=60))
        return ([p["vcpu_seconds"] for p in usage["series"]], usage["totals"]["cost"],
                totals["team_1"].vcpu_ms, totals["team_1"].mib_ms)

    before = figures()
    # 2 vCPU x 60 min + 1 vCPU x 10 min + 3 vCPU x 10 min, split at the hour
    assert before[0] == [str(2 * 50 * 60 + 10 * 60 + 3 * 10 * 60), str(2 * 10 * 60)]
    assert execution_jobs.fold_rollup_deltas(sessions) > 0
    assert figures() == before
    with transaction(sessions) as session:
        assert session.execute(text("SELECT count(*) FROM usage_rollup_deltas")).scalar_one() == 0
        rolled = session.execute(text("SELECT sum(vcpu_ms) FROM usage_rollups")).scalar_one()
    assert rolled == (2 * 60 * 60 + 10 * 60 + 3 * 10 * 60) * 1000
    assert execution_jobs.fold_rollup_deltas(sessions) == 0  # nothing twice


def test_a_pass_holds_one_bucket_of_executions_at_a_time_so_ingest_of_others_goes_on(
    sessions: sessionmaker[Session],
) -> None:
    now = utc_now().replace(microsecond=0)
    t0 = now - timedelta(seconds=30)
    names = [f"exe_{i}" for i in range(40)]
    send(sessions, [event("created", execution=x, sandbox=f"sbx_{x}", time=iso(t0), vcpu=1,
                          memory_mib=512) for x in names])
    send(sessions, [s for x in names for s in samples(x, [t0 + timedelta(seconds=5)])])
    with transaction(sessions) as session:
        bucket_of = dict(session.execute(text(
            "SELECT x, hashtext(x) & :mask FROM unnest(CAST(:xs AS text[])) AS u(x)"),
            {"xs": names, "mask": ingest_repo.LIVENESS_BUCKETS - 1}).all())
        assert set(ingest_repo.liveness_buckets(session)) == set(bucket_of.values())
    first = bucket_of["exe_0"]
    same = next(x for x in names[1:] if bucket_of[x] == first)
    other = next(x for x in names if bucket_of[x] != first)

    def kill(execution: str) -> None:
        with transaction(sessions) as session:
            session.execute(text("SET LOCAL lock_timeout = '300ms'"))
            result = ingest.ingest(session, [event(
                "killed", execution=execution, sandbox=f"sbx_{execution}",
                time=iso(t0 + timedelta(seconds=6)), reason="request")], utc_now(), 300)
            assert result.accepted == 1

    with transaction(sessions) as pass_session:
        # One bucket's pass, written and not committed yet: its rows stay locked till then.
        done = ingest_repo.refresh_liveness(pass_session, utc_now(), timedelta(seconds=60),
                                            None, bucket=first)
        assert done.written == sum(1 for b in bucket_of.values() if b == first)
        kill(other)  # another bucket's execution: stored at once
        with pytest.raises(DBAPIError, match="lock timeout"):
            kill(same)  # this bucket's: waits for the pass's commit
    kill(same)
    jobs.refresh_liveness(sessions, 60, None)
    for x in names:
        assert last_event_at(sessions, x) >= t0 + timedelta(seconds=5)
    with transaction(sessions) as session:
        assert session.execute(text("SELECT count(*) FROM liveness_log")).scalar_one() == 0
