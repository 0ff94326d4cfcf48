"""PostgreSQL: the engine, sessions, the declarative base, and the embedded server.

One unit of work for requests and jobs alike, `transaction()`: the session commits when the
work succeeds and rolls back when it raises; repositories never commit. `run_transaction` is
the same with a retry of a transaction that lost a deadlock; `commit_with` lets the hot path
send its last statement and the commit in one round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import MetaData, create_engine
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.elements import TextClause

from metering.config import Settings

log = logging.getLogger(__name__)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def sqlalchemy_url(url: str) -> str:
    """Normalise any postgres URL to the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir`; return its URL. It keeps
    running after this process (the tests' shared server); see `metering.embedded.use`."""
    from metering import embedded

    return embedded.start(data_dir)


def resolve_database_url(settings: Settings) -> str:
    """`DATABASE_URL`, or the embedded server's, started if needed and used by this process
    until it exits (the last process out stops it)."""
    if settings.database_url:
        return sqlalchemy_url(settings.database_url)
    from metering import embedded

    return sqlalchemy_url(embedded.use(settings.data_dir))


_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_driver_sql: dict[int, tuple[TextClause, str]] = {}


def driver_sql(statement: TextClause | str) -> str:
    """A `text()` statement in the driver's paramstyle (`%(name)s`), compiled once."""
    if isinstance(statement, str):
        return statement
    cached = _driver_sql.get(id(statement))
    if cached is None or cached[0] is not statement:
        cached = (statement, str(statement.compile(dialect=_DIALECT)))
        _driver_sql[id(statement)] = cached
    return cached[1]


def pipeline(
    session: Session, statements: Sequence[tuple[TextClause | str, Mapping[str, Any]]], *,
    may_fail_at: int | None = None, commit: bool = False,
) -> list[list[Any]]:
    """Run statements in the session's transaction in one network round trip (psycopg
    pipeline mode) and answer each one's rows (none for a write without RETURNING). They run
    in order, each with its own snapshot (read committed), exactly as if executed one by one;
    a failure in one skips the rest and raises, as the first of them would have.

    Prepared on the server after a few uses on the connection, all but transaction control
    (`prepare_in_pipeline`) and, with `may_fail_at`, every statement after that one: the
    index of a statement whose failure the caller recovers from in the same transaction (a
    savepoint's work), so that what it skips is never recorded as prepared.

    `commit`: the unit of work's COMMIT goes in the same round trip, after the statements
    (its own commit afterwards finds nothing left to do; a failure rolls it back)."""
    if not statements:
        return []
    compiled = [(driver_sql(sql), params) for sql, params in statements]
    with driver(session, pipeline=True) as raw:
        cursors = [raw.execute(sql, params, prepare=(
            False if may_fail_at is not None and i > may_fail_at else prepare_in_pipeline(sql)))
            for i, (sql, params) in enumerate(compiled)]
        if commit:
            raw.execute(COMMIT, prepare=False)
    return [cursor.fetchall() if cursor.description is not None else [] for cursor in cursors]


# Transaction control: nothing to plan, and the statements a failure can skip in a
# transaction that goes on (a savepoint's release).
_NEVER_PREPARED = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK", "SET ")

# Sent as statements of a pipeline, not by psycopg's `commit()` (which waits for the COMMIT's
# answer, and then the pipeline's end waits once more) nor by its implicit BEGIN (a round
# trip of its own before the first statement): see `begin_with_first_statement`.
BEGIN = "BEGIN"
COMMIT = "COMMIT"


def prepare_in_pipeline(statement: TextClause | str) -> bool | None:
    """psycopg's `prepare` for a statement sent in a pipeline: None (prepared on the server
    once the connection has run it a few times, so that it is parsed and planned once instead
    of at every call, as psycopg does with every statement sent on its own), False for
    transaction control.

    The rule that keeps it safe: psycopg (3.3) counts a statement as prepared as soon as its
    PREPARE is queued, and a failure earlier in the pipeline skips it on the server, so the
    statement's next use on the connection would fail ("prepared statement does not exist").
    Wherever a failure rolls the transaction back, the rollback clears psycopg's record of
    what is prepared (and the server's), so nothing stale survives; the one pipeline whose
    transaction goes on after a failure (the samples' savepoint) has only its release after
    the statement that can fail, and transaction control is never prepared. A stale record
    that slips through anyway fails with SQLSTATE 26000, which `RETRYABLE_SQLSTATES` runs
    again after the rollback."""
    head = driver_sql(statement)[:64].lstrip()[:10].upper()
    return False if head.startswith(_NEVER_PREPARED) else None


@contextmanager
def pipelined(raw: psycopg.Connection[Any]) -> Iterator[None]:
    """`raw.pipeline()`, raising only the failure that says what went wrong.

    A statement's failure can arrive while later statements are still being sent; leaving
    the pipeline then fails as well ("pipeline aborted", for the statements skipped), and
    psycopg logs that second failure as a warning. A stored sample in a resent batch ends
    the fast path this way, an everyday event that must not read as a fault in the logs.
    Here the first failure is kept, the second dropped, and nothing is logged."""
    failed: psycopg.Error | None = None
    try:
        with raw.pipeline():
            try:
                yield
            except psycopg.Error as exc:
                failed = exc
    except psycopg.Error:
        if failed is None:
            raise
    if failed is not None:
        raise failed


def first_error(exc: psycopg.Error) -> psycopg.Error:
    """The error that says what went wrong. In pipeline mode a failed statement may raise
    while later ones are still being queued, and leaving the pipeline then raises
    `PipelineAborted` on top of it: the first is the one with the SQLSTATE."""
    while isinstance(exc, psycopg.errors.PipelineAborted) and isinstance(
            exc.__context__, psycopg.Error):
        exc = exc.__context__
    return exc


@contextmanager
def driver(session: Session, *, pipeline: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection under the session's transaction, for what SQLAlchemy cannot
    do (pipeline mode). Its errors come out as SQLAlchemy's (so a dead server is a 503 and
    the pool drops the connection), exactly as if SQLAlchemy had run the statements.

    `pipeline`: in pipeline mode (`pipelined`), the transaction's BEGIN, when it is still
    to be sent, queued as its first statement (`begin_with_first_statement`)."""
    connection = session.connection()
    raw = connection.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        if pipeline:
            with pipelined(raw):
                _send_pending_begin(connection, raw)
                yield raw
        else:
            _send_pending_begin(connection, raw)
            yield raw
    except psycopg.Error as raised:
        exc = first_error(raised)
        broken = raw.broken or raw.closed
        if broken:
            connection.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, psycopg.Error,
                                  connection_invalidated=broken) from exc


# Where a connection keeps that its transaction has begun and its BEGIN is not sent yet.
_BEGIN_PENDING = "metering.begin_pending"


def begin_with_first_statement(engine: Engine) -> None:
    """Send each transaction's BEGIN with its first statement instead of before it.

    psycopg opens a transaction with a BEGIN in a round trip of its own (in pipeline mode
    too), so that every request waited for the database once more than its statements need;
    under load each wait is a wait for a core. Here the connections are in autocommit mode
    (psycopg sends no BEGIN), a transaction SQLAlchemy begins is remembered on its
    connection, and the BEGIN goes out ahead of the first statement: queued in the same
    pipeline when that statement is pipelined (`driver(pipeline=True)`), otherwise sent
    just before it, as psycopg did. Commit and rollback are unchanged: psycopg sends them
    whenever the server says a transaction is open, autocommit or not. A connection asked
    for autocommit explicitly (`VACUUM`) gets no BEGIN."""
    sa_event.listen(engine, "begin", _transaction_begun)
    sa_event.listen(engine, "before_cursor_execute", _before_statement)


def _transaction_begun(connection: Connection) -> None:
    info = connection.connection.info
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        info[_BEGIN_PENDING] = True
    else:
        # Nor one left pending by an earlier transaction that ran no statement.
        info.pop(_BEGIN_PENDING, None)


def _before_statement(connection: Connection, cursor: Any, *_: Any) -> None:
    _send_pending_begin(connection, cursor.connection)


def _send_pending_begin(connection: Connection, raw: psycopg.Connection[Any]) -> None:
    if connection.connection.info.pop(_BEGIN_PENDING, False):
        raw.execute(BEGIN, prepare=False)


def make_engine(url: str, pool_size: int = 10, statement_timeout_ms: int | None = None,
                pool_timeout_s: float = 5, pre_ping: bool = False) -> Engine:  # float-ok
    """A pooled engine; `statement_timeout_ms` bounds every statement (the read pool's).
    Its transactions' BEGIN goes with their first statement (`begin_with_first_statement`)."""
    options = "-c timezone=UTC"
    if statement_timeout_ms is not None:
        options += f" -c statement_timeout={int(statement_timeout_ms)}"
    engine = create_engine(
        sqlalchemy_url(url),
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping on the hot path: it costs a round trip per request. A connection found
        # dead answers 503 once and the pool discards every connection of the dead server.
        pool_pre_ping=pre_ping,
        pool_timeout=pool_timeout_s,
        connect_args={"connect_timeout": 3, "options": options},
    )
    begin_with_first_statement(engine)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work for jobs and the CLI: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


T = TypeVar("T")

# Deadlock detected, serialization failure: the transaction was rolled back whole and may run
# again as it was. And a prepared statement the driver believed was on the server and is not
# (see `prepare_in_pipeline`): the rollback clears the driver's record, so it may run again.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "26000"})


class RunAgain(Exception):
    """Raised by a unit of work that found it must run again whole (nothing of it may
    commit: `run_transaction` rolls it back first), having learnt what the next run needs."""


def run_transaction(factory: sessionmaker[Session], work: Callable[[Session], T], *,
                    attempts: int = 1) -> T:
    """`work` as one unit of work (`transaction`), run again whole, up to `attempts` times in
    all, when it lost a deadlock or a serialization conflict or met a stale prepared statement
    (`RETRYABLE_SQLSTATES`; nothing of it was committed) or lost its connection (the pool
    drops it; the next attempt takes a new one). Only for work that
    may run twice: a connection lost after the commit was sent may have committed it."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction(factory) as session:
                return work(session)
        except RunAgain:
            if attempt == attempts:
                raise
            log.info("the unit of work asked to run again", extra={"attempt": attempt})
        except DBAPIError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            lost = exc.connection_invalidated
            if (sqlstate not in RETRYABLE_SQLSTATES and not lost) or attempt == attempts:
                raise
            log.info("transaction failed on a retryable error or lost its connection, run again",
                     extra={"sqlstate": sqlstate, "connection_lost": lost})
    raise AssertionError("attempts must be at least 1")


# Sent first in a commit that need not wait for the disk: for this transaction alone.
NO_FLUSH_WAIT = "SET LOCAL synchronous_commit = off"


def commit_with(session: Session, statement: TextClause | str, params: Mapping[str, Any],
                *, durable: bool = True) -> None:
    """Commit the unit of work with one last statement in the same round trip (the statement
    and the COMMIT are pipelined). The unit of work's own commit afterwards finds nothing
    left to do; a failure raises as any statement's would, and the work rolls back.

    `durable=False`: the commit returns once its work is visible to every other transaction,
    without waiting for its WAL to be flushed (a database crash can lose it; a crash of this
    process cannot)."""
    with driver(session, pipeline=True) as raw:
        if not durable:
            raw.execute(NO_FLUSH_WAIT, prepare=False)
        sql = driver_sql(statement)
        raw.execute(sql, params, prepare=prepare_in_pipeline(sql))
        raw.execute(COMMIT, prepare=False)
