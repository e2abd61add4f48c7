"""The declarative base, the engine and sessions.

Sessions are synchronous: FastAPI runs sync path operations in its thread pool, and the
same code serves SQLite (the embedded default) and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, DateTime, MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool, QueuePool, StaticPool
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from service.settings import Settings

# Stable constraint names, so that migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the service stores UTC timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


CONNECT_TIMEOUT_SECONDS = 5
#: PostgreSQL: the connections an engine keeps open, and those it opens beyond them under
#: load (closed when returned): ``KINDREFLEX_DATABASE_POOL_SIZE`` and
#: ``KINDREFLEX_DATABASE_MAX_OVERFLOW``. SQLite keeps SQLAlchemy's own pool.
POOL_SIZE = 10
MAX_OVERFLOW = 20
#: How long a statement waits for a lock another connection holds (PostgreSQL), then fails:
#: a user's request answers "try again" (``smart_app.errors``) before a reverse proxy's
#: timeout (120 s in the Kubernetes manifests) answers 504 without saying whether her save
#: was made; it waited without end (found by review). Above every wait the service means
#: to make: a token refresh holds its session's row for at most two requests to the EHR
#: (its SMART configuration, its token endpoint), each ended by ``EHR_FETCH_SECONDS`` (10 s,
#: ``smart_app.oauth``) whatever ``fhir_timeout_seconds`` says (up to 300 s). Migrations set
#: their own.
LOCK_TIMEOUT_SECONDS = 60


def insert_new(
    target: Session | Connection, table: type[Base] | Table, rows: list[dict[str, Any]]
) -> None:
    """Insert ``rows``, skipping each one a unique constraint says is already there (a
    retry, a concurrent writer): ``ON CONFLICT DO NOTHING`` on both backends."""
    if not rows:
        return
    bind = target.get_bind() if isinstance(target, Session) else target
    dialect = postgresql if bind.dialect.name == "postgresql" else sqlite
    target.execute(dialect.insert(table).on_conflict_do_nothing(), rows)


def make_engine(
    database_url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW
) -> Engine:
    """An engine for the URL; SQLite gets foreign keys on and WAL for concurrent readers.
    ``pool_size`` and ``max_overflow`` size a PostgreSQL engine's pool; SQLite ignores them.

    A database error's text leaves out the statement's values (``hide_parameters``): the
    error of a failed save reaches the log, and its values are patients' names and
    children's birth dates (found by review)."""
    if database_url.startswith("sqlite"):
        in_memory = database_url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if in_memory else None,
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a database that does not answer fails a request within seconds instead of holding it
    engine = create_engine(
        database_url,
        pool_pre_ping=True,
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=default_connect_timeout(make_url(database_url), CONNECT_TIMEOUT_SECONDS),
    )
    on_every_connection(engine, f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
    return engine


def make_probe_engine(engine: Engine) -> Engine:
    """The engine the readiness checks ask through (``service.api.health``). On PostgreSQL
    a connection of its own for each check, opened and closed, outside ``engine``'s pool:
    checked out from it, a probe waited behind the requests holding every connection
    (30 s, the pool's timeout) and Kubernetes took a pod out of its Service because it was
    busy, not because its database failed; the other pods then took its load onto the same
    database (docs/architecture.md, *Persistence*). Not kept open between checks: behind a
    pooler in session mode it would hold a server connection for nothing. SQLite: ``engine``
    itself (an in-memory database is the one connection it holds)."""
    if engine.dialect.name != "postgresql":
        return engine
    probe = create_engine(
        engine.url,
        poolclass=NullPool,
        hide_parameters=True,
        connect_args=default_connect_timeout(engine.url, CONNECT_TIMEOUT_SECONDS),
    )
    on_every_connection(probe, f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
    return probe


def default_connect_timeout(url: URL, seconds: int) -> dict[str, Any]:
    """An engine's ``connect_args`` giving libpq's ``connect_timeout`` when ``url`` names
    none. SQLAlchemy lays ``connect_args`` over the URL's parameters: always given, it
    dropped the ``connect_timeout`` an operator wrote after the '?' of the database URL,
    which README says is the place for any libpq parameter (found by review)."""
    return {} if "connect_timeout" in url.query else {"connect_timeout": seconds}


def libpq_parameters(engine: Engine, connect_timeout: int) -> dict[str, Any]:
    """What a PostgreSQL ``engine`` connects with, for psycopg connections of one's own:
    the parameters SQLAlchemy's dialect takes from the parsed URL (percent-decoded, several
    hosts joined as libpq wants them), ``connect_timeout`` the URL's, else the one given.
    Keywords, not the URL written back as a string: that left a decoded space of the
    password bare, which libpq refused, quoting the password in its error, and wrote a space
    after the '?' as '+', which libpq takes as it is (found by review)."""
    _args, made = engine.dialect.create_connect_args(engine.url)
    parameters = dict(made) | default_connect_timeout(engine.url, connect_timeout)
    parameters.pop("context", None)  # SQLAlchemy's psycopg adapters, not a libpq parameter
    return parameters


def on_every_connection(engine: Engine, statement: str) -> None:
    """Run ``statement`` (session settings) on each new PostgreSQL connection of ``engine``:
    set once a connection is open, not as startup options (``-c …``), which a connection
    pooler in front of the database (PgBouncer, CloudNativePG's Pooler) refuses."""

    def run(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(statement)
        dbapi_connection.commit()

    event.listen(engine, "connect", run)


#: PostgreSQL's SQLSTATEs of a database that does not take a request now and will again:
#: a read-only server after a fail-over (25006), a shutdown or a start-up (57P01-57P03),
#: a lock or a conflict given up on (55P03, 40001, 40P01). Class 08 (the connection) too.
_PASSING_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03", "55P03", "40001", "40P01"})
#: SQLite's: another writer holds the database past the busy timeout.
_PASSING_SQLITE = frozenset({"database is locked", "database table is locked"})


def passing_failure(error: BaseException) -> bool:
    """Whether a database error says the database does not take requests now, and the same
    request later can succeed: down, failing over, read-only, locked. Not a schema out of
    date, a full disk, a refused value or a bug: those do not pass by waiting, and saying
    "try again in half a minute" of them hid the cause (found by review)."""
    if isinstance(error, PoolTimeoutError):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    cause = error.orig
    if isinstance(cause, sqlite3.Error):
        return str(cause) in _PASSING_SQLITE
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate is None:  # psycopg's own: no connection could be made, or it was lost
        return isinstance(error, OperationalError)
    return str(sqlstate).startswith("08") or sqlstate in _PASSING_SQLSTATES


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """An engine and its session factory: one per process, created by the app or the CLI."""

    def __init__(
        self, database_url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW
    ) -> None:
        self.engine = make_engine(database_url, pool_size=pool_size, max_overflow=max_overflow)
        self._pool_limit = pool_size + max_overflow
        #: the readiness checks', outside ``engine``'s pool on PostgreSQL (``make_probe_engine``)
        self.probe_engine = make_probe_engine(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def of(cls, settings: Settings) -> Database:
        """The database the settings name, its pool sized as they say."""
        return cls(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )

    def pool_in_use(self) -> tuple[int, int] | None:
        """PostgreSQL: the pool's connections in use and how many it may open at most."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool) or self.engine.dialect.name != "postgresql":
            return None
        return pool.checkedout(), self._pool_limit

    @contextmanager
    def probe_session(self) -> Iterator[Session]:
        """A session for a readiness check, on ``probe_engine``: it reads, nothing is
        committed."""
        with Session(self.probe_engine) as session:
            yield session

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on any error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        self.probe_engine.dispose()
