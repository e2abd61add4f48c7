"""Benchmark: the nurse's save (steps 1-2, two children, niet-pluis) into a real FHIR server.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/bench/fhir_writes.py              # SQLite, the embedded default
    .venv/bin/python tests/bench/fhir_writes.py --postgres   # a throw-away PostgreSQL database

Each save is the real use case (``Triage.record_triage``): protocol check, the local
transaction (outbox entry, audit row, worklist row) and the immediate delivery of one FHIR
transaction to a sekmet server process on loopback. Two kinds of save, each as often:
one raising a patient's concern (a first niet-pluis: the issue's target of 1 FHIR request),
and a later visit's niet-pluis on a concern open already (its Flag is laid over the one on
the server, so that a save that changes nothing of it does not say it created it: one
read more). Prints for each p50/p99 save latency, saves/s (one nurse after another), how
many saves were delivered at once, and the FHIR requests per save, counted as each
arrives by a relay in front of the FHIR server (the server's own traffic log writes a
request's row only after its answer, so a count taken just then may miss the last one).
The relay's hop is in each save's latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.fhir_server import FhirServer  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.base import Database  # noqa: E402
from tests.support.postgres import throwaway_postgres_database  # noqa: E402
from tests.support.relay import SlowRelay  # noqa: E402
from tests.support.triage import World, child_aged, niet_pluis, world_at  # noqa: E402


@dataclass(frozen=True)
class SaveFigures:
    """One nurse after another, each saving steps 1-2 with two children (niet-pluis)."""

    latencies: list[float]  # seconds, sorted
    elapsed: float
    delivered: int  # delivered by the save itself, not later by the worker
    fhir_requests: int  # as they reached the FHIR server

    @property
    def per_save(self) -> float:
        return self.fhir_requests / len(self.latencies)


@dataclass(frozen=True)
class Saves:
    """The same number of saves twice: each raising a patient's concern (the first visit
    with a niet-pluis), and each a later visit's niet-pluis on one patient whose concern is
    open (its Flag is laid over the one on the server: one read more)."""

    raising: SaveFigures
    later: SaveFigures

    @property
    def per_save(self) -> float:
        """What the issue's target (1) is about: a save raising a concern."""
        return self.raising.per_save


def measure(database_url: str, saves: int) -> Saves:
    """``saves`` real saves of each kind into a fresh sekmet server; ``database_url`` is
    migrated here."""
    migrate.upgrade(database_url)
    database = Database(database_url)
    with FhirServer() as server, SlowRelay(server.base_url) as relay:
        world = world_at(database, relay.url)
        visits = _new_patients(server.base_url, saves + 1)
        raising = _timed(relay, world, visits[:saves])
        _timed(relay, world, visits[saves:])  # raises the concern the later visits find
        later = _timed(relay, world, visits[saves:] * saves)
    database.dispose()
    return Saves(raising, later)


def _timed(relay: SlowRelay, world: World, visits: list[tuple[str, str]]) -> SaveFigures:
    latencies: list[float] = []
    delivered = 0
    before = relay.asked
    started = time.perf_counter()
    for n, (patient, encounter) in enumerate(visits):
        ctx = world.launch(patient, encounter, f"Practitioner/n{n}")
        children = (child_aged("Lotte Janssens", 7), child_aged("Wout Janssens", 3))
        t0 = time.perf_counter()
        result = world.triage.record_triage(ctx, niet_pluis(ctx, children))
        latencies.append(time.perf_counter() - t0)
        delivered += result.status == "delivered"
    elapsed = time.perf_counter() - started
    return SaveFigures(sorted(latencies), elapsed, delivered, relay.asked - before)


def _new_patients(base_url: str, count: int) -> list[tuple[str, str]]:
    """``count`` adult patients, each arrived at the emergency department: (patient id,
    encounter id), made in one transaction before anything is counted."""
    entries = []
    for n in range(count):
        patient = f"urn:uuid:{uuid.uuid4()}"
        entries += [
            {
                "fullUrl": patient,
                "resource": {
                    "resourceType": "Patient",
                    "birthDate": f"1985-03-0{n % 9 + 1}",
                    "name": [{"text": f"Bench {n}"}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Encounter",
                    "status": "arrived",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "EMER",
                    },
                    "subject": {"reference": patient},
                },
                "request": {"method": "POST", "url": "Encounter"},
            },
        ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    answer = httpx.post(base_url, json=bundle, timeout=60)
    answer.raise_for_status()
    # a location is "Patient/<id>/_history/1", relative or absolute
    locations = [e["response"]["location"] for e in answer.json()["entry"]]
    ids = [location.split("/_history")[0].rsplit("/", 1)[1] for location in locations]
    return list(zip(ids[0::2], ids[1::2], strict=True))


def run(database_url: str, saves: int) -> None:
    figures = measure(database_url, saves)
    print(f"backend: {database_url.split(':')[0]}   saves: {saves} of each kind")
    for name, kind in (
        ("raising a concern", figures.raising),
        ("later, concern open", figures.later),
    ):
        latencies = kind.latencies
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"{name}: save latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms; saves/s (sequential) {len(latencies) / kind.elapsed:.1f}; "
            f"delivered at once {kind.delivered}/{len(latencies)}; "
            f"FHIR requests per save {kind.per_save:.2f}"
        )
    print("target: 1 FHIR request per save raising a concern")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=100)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    if args.postgres:
        with throwaway_postgres_database() as url:
            run(url, args.saves)
        return
    with tempfile.TemporaryDirectory() as directory:
        run(f"sqlite:///{directory}/bench-{uuid.uuid4().hex[:8]}.db", args.saves)


if __name__ == "__main__":
    main()
