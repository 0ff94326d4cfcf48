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


def test_a_slice_folded_in_parts_gives_the_minute_rows_of_a_whole_fold_and_none_sees_it_half(
    sessions: sessionmaker[Session],
) -> None:
    """The scheduler folds a slice in parts (by a hash of the execution) with pauses between
    them, in one transaction: every execution's minute row is what folding the slice at once
    gives, and until the transaction ends a reader sees the samples pending and no minute
    row, never part of a minute twice or not at all."""
    with transaction(sessions) as session:
        before = set(slices.attached(session))
    clock.set_offset(timedelta(minutes=22))
    jobs.fold_samples(sessions)  # slices made ahead, past every minute made before
    clock.set_offset(timedelta(minutes=30))
    minute = slices.minute_floor(utc_now() - timedelta(seconds=30))
    name = slices.slice_name(minute)
    with transaction(sessions) as session:
        assert minute in set(slices.attached(session)) - before
    executions = [f"exe_part_{i}" for i in range(16)]
    batch = []
    for i, execution in enumerate(executions):
        batch.append(event("created", execution=execution, sandbox=f"sbx_{i}",
                           time=iso(minute), vcpu=1, memory_mib=512))
        batch += [event("host_stats", execution=execution, sandbox=f"sbx_{i}",
                        time=iso(minute + timedelta(seconds=s)), cpu_pct=i + s / 10,
                        memory_used_mib=100 + s, id=f"{execution}-s{s}")
                  for s in range(0, 60, 7)]
    assert send(sessions, batch) == (len(batch), 0)
    parts_hit = one(sessions, f'SELECT count(DISTINCT hashtext(execution_id) & 3) FROM "{name}"')
    assert parts_hit == 4  # the executions fall in every part

    per_execution = (
        "SELECT execution_id, count(*), sum(cpu_centipct), max(cpu_centipct), "
        "sum(memory_used_mib), max(memory_used_mib), max(time), "
        "ARRAY(SELECT unnest(array_agg(tag)) ORDER BY 1) FROM {} GROUP BY 1 ORDER BY 1")
    with transaction(sessions) as session:
        pending = [tuple(r) for r in session.execute(text(per_execution.format(f'"{name}"')))]
    assert len(pending) == len(executions)

    seen_between: list[tuple[object, object]] = []

    def between_parts() -> None:  # another connection, while the fold's transaction is open
        seen_between.append((
            one(sessions, "SELECT count(*) FROM sample_minutes WHERE minute = :m", m=minute),
            one(sessions, f'SELECT count(*) FROM "{name}"')))

    # The newest slice due is the one spread (older ones are folded whole): this minute's.
    clock.set_offset(minute + timedelta(minutes=4, seconds=30) - datetime.now(UTC))
    moved = jobs.fold_samples(sessions, parts=4, pause=between_parts)
    assert moved == sum(row[1] for row in pending)
    assert seen_between == [(0, moved)] * 3
    assert one(sessions, "SELECT to_regclass(:n) IS NULL", n=name) is True
    with transaction(sessions) as session:
        folded = [tuple(r) for r in session.execute(text(
            "SELECT execution_id, samples, cpu_sum, cpu_max, mem_sum, mem_max, last_at, "
            "ARRAY(SELECT unnest(tags) ORDER BY 1) FROM sample_minutes WHERE minute = :m "
            "ORDER BY 1"), {"m": minute})]
    assert folded == pending
    clock.set_offset(timedelta(0))
