"""Benchmark: the social service's worklist with 10,000 open concerns, next to ``SELECT 1``.

Run by hand (a script that prints figures; not collected by pytest)::

    .venv/bin/python tests/bench/worklist.py                 # SQLite, then PostgreSQL
    .venv/bin/python tests/bench/worklist.py --backend sqlite --requests 100

One hospital gets 10,000 open concerns (a third assigned to the benchmark's user, a third
to a colleague, a third unassigned, flagged over the last ~400 days, each with its outbox
entry) and 2,000 closed ones; a second hospital gets the same again as noise that every
query must filter out; one open case in 20 has acute danger. Measured for five shapes —
the API's default view (open, newest first), the screen's (acute danger first), a filter
(assigned to me, flagged more than 30 days ago) and a deep page of each order (page 100,
50 per page, reached by the keyset cursor):

* the query: ``service.social.list_cases`` in one unit of work;
* the endpoint: ``GET /api/cases`` in process (Starlette's TestClient: session lookup,
  role check, the query, the JSON, and the audit rows written per listing: one per case
  listed, in one INSERT);

each as p50/p99 in milliseconds and as a ratio to a bare ``SELECT 1`` round trip through
the same ``Database`` (one unit of work), which is what the database costs at the least.

PostgreSQL: a throw-away database on the server of ``KINDREFLEX_TEST_POSTGRES_URL``
(default 127.0.0.1:5432), dropped at the end; the script refuses a non-loopback host.
Bounded in time: each measurement stops after ``--requests`` samples or ``--budget``
seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service import social  # noqa: E402
from service.app import create_app  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.base import Database, utcnow  # noqa: E402
from service.db.models import Concern, OutboxEntry  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.postgres import POSTGRES_ADMIN_URL, throwaway_postgres_database  # noqa: E402
from tests.support.sessions import signed_in  # noqa: E402
from tests.support.write_path import make_tenant  # noqa: E402

OPEN_CASES = 10_000
CLOSED_CASES = 2_000
PAGE_SIZE = 50
DEEP_PAGE = 100  # cases 4,951-5,000 of the default view
OLDER_THAN_DAYS = 30
ACUTE_EVERY = 20  # one case in 20 has acute danger
ME = "Practitioner/bench-sw"
FHIR = "http://127.0.0.1:9/fhir"  # never called: the worklist is served from our index
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Shape:
    """One way of asking for the list: the filter and, for a deep page, its cursor."""

    name: str
    wanted: social.CaseFilter
    cursor: str | None = None

    def params(self) -> dict[str, str]:
        params = {"limit": str(PAGE_SIZE), "view": self.wanted.view, "sort": self.wanted.sort}
        if self.wanted.older_than_days is not None:
            params["older_than_days"] = str(self.wanted.older_than_days)
        if self.cursor is not None:
            params["cursor"] = self.cursor
        return params


@dataclass(frozen=True)
class Timing:
    p50: float
    p99: float
    samples: int


def measure(action: Callable[[], object], requests: int, budget: float) -> Timing:
    """Milliseconds per call, after a warm-up; stops at ``requests`` calls or ``budget`` s."""
    for _ in range(min(20, requests)):
        action()  # caches, prepared plans, the connection pool
    timings: list[float] = []
    deadline = time.perf_counter() + budget
    while len(timings) < requests and time.perf_counter() < deadline:
        start = time.perf_counter()
        action()
        timings.append((time.perf_counter() - start) * 1000)
    cuts = statistics.quantiles(timings, n=100, method="inclusive")
    return Timing(statistics.median(timings), cuts[98], len(timings))


def fill(database: Database, tenant_id: int, label: str) -> None:
    """10,000 open and 2,000 closed concerns, each with the outbox entry of its save."""
    now = utcnow()
    owners = (ME, "Practitioner/colleague", None)
    total = OPEN_CASES + CLOSED_CASES
    with database.session() as session:
        session.execute(
            insert(OutboxEntry),
            [
                {
                    "tenant_id": tenant_id,
                    "kind": "triage",
                    "registration_id": "ehr",
                    "fhir_base_url": FHIR,
                    "session_id": f"{label}-{n}",
                    "author": "Practitioner/nurse",
                    "patient_ref": f"Patient/{label}-{n}",
                    "bundle": {"resourceType": "Bundle", "type": "transaction", "entry": []},
                    "state": "delivered",
                    "attempts": 1,
                    "next_attempt_at": now,
                    "created_at": now - timedelta(minutes=n * 57),
                    "delivered_at": now,
                }
                for n in range(total)
            ],
        )
        entries = session.scalars(
            select(OutboxEntry.id)
            .where(OutboxEntry.tenant_id == tenant_id)
            .order_by(OutboxEntry.id)
        ).all()
        session.execute(
            insert(Concern),
            [
                {
                    "tenant_id": tenant_id,
                    "fhir_base_url": FHIR,
                    "patient_ref": f"Patient/{label}-{n}",
                    "patient_display": f"Patiënt {n}",
                    "flag_identifier": f"{label}-flag-{n}",
                    "flagged_at": now - timedelta(minutes=n * 57),  # spread over ~400 days
                    "flagged_by": "Practitioner/nurse",
                    "triggers": ["domestic-violence"],
                    "children_birth_dates": ["2016-04-01", "2021-09-15"],
                    "last_step": "step-2",
                    "assigned_to": owners[n % 3],
                    "status": "open" if n < OPEN_CASES else "closed",
                    "acute_danger": n % ACUTE_EVERY == 0,
                    "outbox_id": entries[n],
                    "updated_at": now,
                    "row_version": 1,
                }
                for n in range(total)
            ],
        )


def deep_cursor(database: Database, tenant_id: int, wanted: social.CaseFilter) -> str:
    """The cursor of page ``DEEP_PAGE`` of a view, by walking the pages once."""
    cursor: str | None = None
    with database.session() as session:
        for _ in range(DEEP_PAGE - 1):
            page = social.list_cases(
                session,
                tenant_id,
                ME,
                wanted,
                limit=PAGE_SIZE,
                cursor=cursor,
                today=utcnow().date(),
            )
            cursor = page.next_cursor
    assert cursor is not None
    return cursor


def query_action(database: Database, tenant_id: int, shape: Shape) -> Callable[[], object]:
    def run() -> object:
        with database.session() as session:
            page = social.list_cases(
                session,
                tenant_id,
                ME,
                shape.wanted,
                limit=PAGE_SIZE,
                cursor=shape.cursor,
                today=utcnow().date(),
            )
        assert len(page.items) == PAGE_SIZE
        return page

    return run


def endpoint_action(
    client: TestClient, headers: dict[str, str], shape: Shape
) -> Callable[[], object]:
    def run() -> object:
        answer = client.get("/api/cases", headers=headers, params=shape.params())
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == PAGE_SIZE
        return answer

    return run


def select_one(database: Database) -> Callable[[], object]:
    def run() -> object:
        with database.session() as session:
            return session.execute(text("SELECT 1")).scalar_one()

    return run


def run(database_url: str, label: str, requests: int, budget: float) -> None:
    migrate.upgrade(database_url)
    database = Database(database_url)
    try:
        hospital = make_tenant(database, "default", FHIR)
        noise = make_tenant(database, "noise", FHIR)
        started = time.perf_counter()
        fill(database, hospital.id, "a")
        fill(database, noise.id, "b")
        filled = time.perf_counter() - started
        app = create_app(Settings(environment="test", database_url=database_url), database)
        client = TestClient(app)
        headers = signed_in(app, hospital, ME, "social-worker").headers
        newest, acute_first = social.CaseFilter(), social.CaseFilter(sort="acute-first")
        shapes = [
            Shape("default view", newest),
            Shape("screen: acute first", acute_first),
            Shape(
                f"mine, older than {OLDER_THAN_DAYS} d",
                social.CaseFilter(view="mine", older_than_days=OLDER_THAN_DAYS),
            ),
            *(
                Shape(f"page {DEEP_PAGE}, {w.sort}", w, deep_cursor(database, hospital.id, w))
                for w in (newest, acute_first)
            ),
        ]
        baseline = measure(select_one(database), requests, budget)
        print(
            f"\n{label}: {OPEN_CASES:,} open + {CLOSED_CASES:,} closed concerns per hospital, "
            f"2 hospitals (filled in {filled:.1f} s), {PAGE_SIZE} per page"
        )
        print(
            f"  {'SELECT 1 (baseline)':<34} p50 {baseline.p50:7.2f} ms  p99 {baseline.p99:7.2f} ms"
        )
        print(f"  {'':<34} {'p50 ms':>8} {'p99 ms':>8} {'×SELECT1 p50':>13} {'p99':>6}  n")
        for shape in shapes:
            for kind, action in (
                ("query", query_action(database, hospital.id, shape)),
                ("endpoint", endpoint_action(client, headers, shape)),
            ):
                t = measure(action, requests, budget)
                print(
                    f"  {shape.name + ' · ' + kind:<34} {t.p50:8.2f} {t.p99:8.2f} "
                    f"{t.p50 / baseline.p50:13.1f} {t.p99 / baseline.p99:6.1f}  {t.samples}"
                )
    finally:
        database.dispose()


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    host = make_url(POSTGRES_ADMIN_URL).host or ""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing a PostgreSQL that is not on loopback: {host}")
    with throwaway_postgres_database() as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--requests", type=int, default=300, help="samples per measurement")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per measurement")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as directory:
            run(f"sqlite:///{directory}/bench.db", "SQLite", args.requests, args.budget)
    if args.backend in ("postgresql", "both"):
        with throwaway_postgres() as url:
            run(url, "PostgreSQL", args.requests, args.budget)


if __name__ == "__main__":
    main()
