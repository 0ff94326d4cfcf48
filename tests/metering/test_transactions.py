"""A unit of work is all or nothing, however its statements reach the database: its
connections are in autocommit mode and send each transaction's BEGIN with its first
statement (`metering.db.begin_with_first_statement`), so a BEGIN that went missing would
commit each statement on its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from metering import scheduling
from metering.db import commit_with, make_engine, make_sessionmaker, pipeline, transaction


class Failed(Exception):
    pass


@pytest.fixture
def probe(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE tx_probe (v int PRIMARY KEY)")
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE tx_probe")


def stored(sessions: sessionmaker[Session]) -> list[int]:
    with transaction(sessions) as session:
        return list(session.execute(text("SELECT v FROM tx_probe ORDER BY v")).scalars())


INSERT = text("INSERT INTO tx_probe VALUES (:v)")


@pytest.mark.usefixtures("probe")
def test_a_failed_unit_of_work_leaves_nothing_whether_its_first_statement_was_pipelined(
    sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(Failed), transaction(sessions) as session:
        session.execute(INSERT, {"v": 1})
        session.execute(INSERT, {"v": 2})
        raise Failed
    with pytest.raises(Failed), transaction(sessions) as session:
        pipeline(session, [(INSERT, {"v": 3}), (INSERT, {"v": 4})])
        session.execute(INSERT, {"v": 5})
        raise Failed
    assert stored(sessions) == []

    with transaction(sessions) as session:
        pipeline(session, [(INSERT, {"v": 6})])
        commit_with(session, INSERT, {"v": 7})
    assert stored(sessions) == [6, 7]


@pytest.mark.usefixtures("probe")
def test_a_statement_that_fails_takes_the_unit_of_work_s_earlier_statements_with_it(
    sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(Exception, match="duplicate key"), transaction(sessions) as session:
        pipeline(session, [(INSERT, {"v": 1})])
        session.execute(INSERT, {"v": 1})
    with pytest.raises(Exception, match="duplicate key"), transaction(sessions) as session:
        pipeline(session, [(INSERT, {"v": 2}), (INSERT, {"v": 2})], commit=True)
    assert stored(sessions) == []


@pytest.mark.usefixtures("probe")
def test_a_savepoint_first_and_vacuum_outside_any_transaction(
    sessions: sessionmaker[Session],
) -> None:
    with transaction(sessions) as session:
        with session.begin_nested():
            session.execute(INSERT, {"v": 1})
        with pytest.raises(Failed), session.begin_nested():
            session.execute(INSERT, {"v": 2})
            raise Failed
    assert stored(sessions) == [1]
    # VACUUM refuses to run in a transaction block: the connection asked for autocommit
    # explicitly gets no BEGIN.
    scheduling.vacuum(sessions, "tx_probe")


@pytest.mark.usefixtures("probe")
def test_a_transaction_that_ran_no_statement_leaves_no_begin_behind(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)  # one connection: the same one again
    try:
        with engine.connect() as conn:
            conn.begin()
            conn.rollback()
        with engine.connect() as conn:
            conn.begin()
            conn.commit()
        scheduling.vacuum(make_sessionmaker(engine), "tx_probe")
    finally:
        engine.dispose()
