"""Benchmark: the nurse's save (steps 1-2, two children, niet-pluis) into a real FHIR server.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/bench/fhir_writes.py              # SQLite, the embedded default
    .venv/bin/python tests/bench/fhir_writes.py --postgres   # a throw-away PostgreSQL database

Each save is the real use case (``Triage.record_triage``): protocol check, the local
transaction (outbox entry, audit row, worklist row) and the immediate delivery of one FHIR
transaction to a sekmet server process on loopback. Prints p50/p99 save latency, saves/s
(one nurse after another), how many saves were delivered at once, and the FHIR requests
per save counted by the FHIR server itself (its traffic log; target 1).
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.fhir_server import FhirServer  # noqa: E402
from sandbox.seed import seed  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.base import Database  # noqa: E402
from tests.support.postgres import throwaway_postgres_database  # noqa: E402
from tests.support.triage import child_aged, niet_pluis, world_at  # noqa: E402


@dataclass(frozen=True)
class SaveFigures:
    """One nurse after another, each saving steps 1-2 with two children (niet-pluis)."""

    latencies: list[float]  # seconds, sorted
    elapsed: float
    delivered: int  # delivered by the save itself, not later by the worker
    fhir_requests: int  # as the FHIR server logged them

    @property
    def per_save(self) -> float:
        return self.fhir_requests / len(self.latencies)


def measure(database_url: str, saves: int) -> SaveFigures:
    """``saves`` real saves into a fresh sekmet server; ``database_url`` is migrated here."""
    migrate.upgrade(database_url)
    database = Database(database_url)
    with FhirServer(log_traffic=True) as server:
        seeded = seed(server.base_url)
        world = world_at(database, server.base_url)
        patient = seeded.patient("jan-janssens")
        latencies: list[float] = []
        delivered = 0
        before = server.inbound_requests()
        started = time.perf_counter()
        for n in range(saves):
            ctx = world.launch(patient.id, patient.arrived_encounter_id, f"Practitioner/n{n}")
            children = (child_aged("Lotte Janssens", 7), child_aged("Wout Janssens", 3))
            findings = niet_pluis(ctx, children)
            t0 = time.perf_counter()
            result = world.triage.record_triage(ctx, findings)
            latencies.append(time.perf_counter() - t0)
            delivered += result.status == "delivered"
        elapsed = time.perf_counter() - started
        requests = server.inbound_requests() - before
    database.dispose()
    return SaveFigures(sorted(latencies), elapsed, delivered, requests)


def run(database_url: str, saves: int) -> None:
    figures = measure(database_url, saves)
    latencies = figures.latencies
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"backend: {database_url.split(':')[0]}   saves: {saves}")
    print(f"save latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"saves/s (sequential): {saves / figures.elapsed:.1f}")
    print(f"delivered at once: {figures.delivered}/{saves}")
    print(f"FHIR requests per save: {figures.per_save:.2f} (target 1)")


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
