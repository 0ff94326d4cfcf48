"""Pending samples in minute slices: a folded minute leaves whole, late samples still count
once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from metering.core import clock
from metering.core.clock import utc_now
from metering.db import transaction
from metering.ingest import jobs, slices
from metering.ingest import service as ingest
from tests.conftest import event


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def send(sessions: sessionmaker[Session], batch: list[dict]) -> tuple[int, int]:
    with transaction(sessions) as session:
        result = ingest.ingest(session, batch, utc_now(), 300)
    assert result.rejected == 0, result.errors
    return result.accepted, result.duplicates


def one(sessions: sessionmaker[Session], sql: str, **params: object) -> object:
    with transaction(sessions) as session:
        return session.execute(text(sql), params).scalar_one()


def test_a_minute_is_folded_whole_its_slice_dropped_and_late_samples_count_once(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        before = set(slices.attached(session))  # made by earlier folds, at earlier times
    clock.set_offset(timedelta(minutes=2))  # past every minute those folds made ahead
    now = utc_now()
    jobs.fold_samples(sessions)  # makes slices past the farthest future an event may carry
    with transaction(sessions) as session:
        made = slices.attached(session)
    new = [m for m in made if m not in before]
    assert new and min(new) > now + timedelta(seconds=300)
    clock.set_offset(timedelta(minutes=10))  # into the minutes made ahead
    minute = slices.minute_floor(utc_now() - timedelta(seconds=30))
    name = slices.slice_name(minute)
    assert minute in made
    samples = [event("host_stats", time=iso(minute + timedelta(seconds=s)), cpu_pct=s,
                     id=f"s{s}") for s in range(0, 60, 10)]
    assert send(sessions, [event("created", time=iso(minute), vcpu=1, memory_mib=512),
                           *samples]) == (7, 0)
    assert one(sessions, f'SELECT count(*) FROM "{name}"') == 6
    assert send(sessions, samples[:2]) == (0, 2)  # a retry, while pending

    summary = ("SELECT count(*), sum(cpu_centipct), max(cpu_centipct), coalesce(sum(memory_used_mib), 0), "
               "max(time), array_agg(tag ORDER BY tag) FROM {}")
    with transaction(sessions) as session:
        pending = tuple(session.execute(text(summary.format(f'"{name}"'))).one())

    clock.set_offset(timedelta(minutes=15))
    jobs.fold_samples(sessions)
    assert one(sessions, "SELECT to_regclass(:n) IS NULL", n=name) is True
    assert one(sessions, "SELECT count(*) FROM host_stats_pending") == 0
    with transaction(sessions) as session:
        folded = tuple(session.execute(text(
            "SELECT samples, cpu_sum, cpu_max, mem_sum, last_at, "
            "ARRAY(SELECT unnest(tags) ORDER BY 1) FROM sample_minutes WHERE minute = :m"),
            {"m": minute}).one())
    assert folded == pending  # every sample's figures and tag, once
    assert folded[0] == 6 and folded[1] == sum(s * 100 for s in range(0, 60, 10))

    # Its slice gone, a retry is still a duplicate (against the folded minute) and a new
    # sample of that minute is taken once, through the default partition.
    late = event("host_stats", time=iso(minute + timedelta(seconds=55)), cpu_pct=1, id="late")
    assert send(sessions, [samples[0], late]) == (1, 1)
    assert one(sessions, f"SELECT count(*) FROM {slices.DEFAULT}") == 1
    jobs.fold_samples(sessions)
    assert one(sessions, "SELECT samples FROM sample_minutes WHERE minute = :m", m=minute) == 7
    assert one(sessions, "SELECT count(*) FROM host_stats_pending") == 0
    assert send(sessions, [late]) == (0, 1)
    clock.set_offset(timedelta(0))
