"""Benchmark: the CDS hook under 50 concurrent clients, next to a bare FastAPI endpoint.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/bench/cds_hook.py              # SQLite, the embedded default
    .venv/bin/python tests/bench/cds_hook.py --postgres   # a throw-away PostgreSQL database

Both servers are real uvicorn processes on loopback (one worker each, access log off).
The hook call carries full prefetch (a domestic-violence presentation: a warning card)
and a JWT signed by the "EHR" (``--alg`` ES384 or RS384; JWKS over HTTP; a fresh jti per
request, all JWTs signed before timing). The bare endpoint only parses the same JSON body.
Prints p50/p99 latency, requests/s, the ratios against the targets (≥ 70 % of the bare
requests/s, p99 ≤ 1.5 × bare), and the FHIR requests per hook call (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.keys import SigningKey  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.base import Database  # noqa: E402
from service.protocol import HagueTrigger  # noqa: E402
from service.tenancy import SecretBox, TenantDirectory  # noqa: E402
from service.tenant_config import CdsIssuer, EhrRegistration, TenantConfiguration  # noqa: E402
from tests.conftest import _create_postgres_database, _drop_postgres_database  # noqa: E402
from tests.support.processes import free_port, running  # noqa: E402
from tests.support.sandbox import JwksServer  # noqa: E402
from tests.unit.test_cds_rules import ENCOUNTER_ID, a_code_of, prefetch  # noqa: E402

CONCURRENCY = 50
ROUNDS = 5
SERVICE = "/cds-services/kindreflex-encounter-start"
ISSUER = "https://ehr.bench.example/cds"

BARE_APP = textwrap.dedent(
    '''
    """The baseline: a FastAPI endpoint that only parses the hook's JSON body."""
    import json
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/cds-services/{service_id}")
    async def hook(service_id: str, request: Request) -> dict[str, list[object]]:
        json.loads(await request.body())
        return {"cards": []}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}
    '''
)


@dataclass(frozen=True)
class Figures:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def hook_body() -> bytes:
    data = prefetch(reasons=(a_code_of(HagueTrigger.DOMESTIC_VIOLENCE),), children=2)
    body = {
        "hook": "encounter-start",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/nurse-1",
            "patientId": "p1",
            "encounterId": ENCOUNTER_ID,
        },
        "prefetch": data,
    }
    return json.dumps(body).encode()


def uvicorn(app: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


async def load(port: int, path: str, body: bytes, headers: list[dict[str, str]]) -> Figures:
    """Send one request per header set over CONCURRENCY keep-alive connections.

    A minimal HTTP/1.1 client on asyncio streams: on a 2-core machine a full HTTP client
    library would itself be the bottleneck and hide the difference between the servers.
    """
    latencies: list[float] = []
    queue = iter(headers)
    failures: list[str] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for h in queue:
                lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
                lines += [f"{name}: {value}" for name, value in h.items()]
                started = time.perf_counter()
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                status, answer = await _response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures.append(f"{status} {answer[:200]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[0]}")
    return Figures(len(latencies), seconds, latencies)


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def interleaved(
    servers: list[tuple[int, list[dict[str, str]]]], body: bytes, warmup: int
) -> list[Figures]:
    """Alternate rounds on the servers, so that a busy machine affects them alike."""
    for port, headers in servers:
        await load(port, SERVICE, body, headers[:warmup])
    rounds: list[list[Figures]] = [[] for _ in servers]
    timed = len(servers[0][1]) - warmup
    size = max(1, timed // ROUNDS)
    for start in range(warmup, warmup + timed, size):
        for results, (port, headers) in zip(rounds, servers, strict=True):
            results.append(await load(port, SERVICE, body, headers[start : start + size]))
    return [_merged(results) for results in rounds]


def _merged(rounds: list[Figures]) -> Figures:
    return Figures(
        sum(r.requests for r in rounds),
        sum(r.seconds for r in rounds),
        [latency for r in rounds for latency in r.latencies],
    )


def signed_headers(key: SigningKey, jwks_url: str, aud: str, count: int) -> list[dict[str, str]]:
    now = int(time.time())
    return [
        {
            "Authorization": "Bearer "
            + key.sign(
                {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 290, "jti": uuid.uuid4().hex},
                headers={"jku": jwks_url},
            ),
            "Content-Type": "application/json",
        }
        for _ in range(count)
    ]


@contextmanager
def database_url(postgres: bool, directory: Path) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{directory / 'bench.db'}"
        return
    url = _create_postgres_database()
    try:
        yield url
    finally:
        _drop_postgres_database(url)


def configure(url: str, jwks_url: str) -> None:
    migrate.upgrade(url)
    database = Database(url)
    registration = EhrRegistration(
        id="bench-ehr",
        name="Bench EHR",
        fhir_base_url="https://ehr.bench.example/fhir",
        client_id="kindreflex",
        cds_issuers=[CdsIssuer(iss=ISSUER, jku=[jwks_url])],
    )
    config = TenantConfiguration(name="Bench hospital", registrations=[registration])
    TenantDirectory(database, SecretBox(None)).save("default", config, actor="bench")
    database.dispose()


def fhir_requests(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("kindreflex_cds_fhir_requests_total "):
            return float(line.split()[1])
    raise RuntimeError("the service publishes no kindreflex_cds_fhir_requests_total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per server")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument(
        "--alg", choices=["ES384", "RS384"], default="ES384", help="the EHR's JWT algorithm"
    )
    args = parser.parse_args()
    if not 0 < args.requests <= 20000:
        parser.error("--requests must be between 1 and 20000")

    body = hook_body()
    key = SigningKey.generate("bench-key", args.alg)
    with (
        tempfile.TemporaryDirectory() as tmp,
        JwksServer(key) as jwks,
        database_url(args.postgres, Path(tmp)) as url,
    ):
        configure(url, jwks.url)
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        bare_port, open_port, cds_port = free_port(), free_port(), free_port()
        public_url = f"http://127.0.0.1:{cds_port}"
        env = dict(os.environ) | {
            "KINDREFLEX_DATABASE_URL": url,
            "KINDREFLEX_PUBLIC_URL": public_url,
            "KINDREFLEX_ENVIRONMENT": "test",
            "KINDREFLEX_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        total = args.warmup + args.requests
        headers = signed_headers(key, jwks.url, public_url + SERVICE, total)
        plain = [{"Content-Type": "application/json"}] * total
        app = uvicorn("service.app:create_app", cds_port, "--factory")
        with (
            running(
                uvicorn("bare_app:app", bare_port, "--app-dir", tmp),
                f"http://127.0.0.1:{bare_port}/healthz",
                env,
            ),
            # the same service with the JWT check off: shows what the check itself costs
            running(
                uvicorn("service.app:create_app", open_port, "--factory"),
                f"http://127.0.0.1:{open_port}/healthz",
                env | {"KINDREFLEX_CDS_JWT_REQUIRED": "false"},
            ),
            running(app, f"{public_url}/healthz", env),
        ):
            servers = [(bare_port, plain), (open_port, plain), (cds_port, headers)]
            figures = asyncio.run(interleaved(servers, body, args.warmup))
            fhir_calls = fhir_requests(httpx.get(f"{public_url}/metrics").text)
            check = httpx.post(
                public_url + SERVICE,
                content=body,
                headers=signed_headers(key, jwks.url, public_url + SERVICE, 1)[0],
            ).json()
    report(args, figures, fhir_calls / total, len(body), check)


def report(
    args: argparse.Namespace,
    figures: list[Figures],
    fhir_per_call: float,
    body_size: int,
    check: dict[str, Any],
) -> None:
    bare, open_hook, cds = figures
    backend = "PostgreSQL" if args.postgres else "SQLite"
    indicator = check["cards"][0]["indicator"] if check.get("cards") else "none"
    throughput = cds.per_second / bare.per_second
    p99 = cds.percentile(99) / bare.percentile(99)
    mean_ms = statistics.mean(cds.latencies) * 1000
    lines = [
        f"CDS hook benchmark: {CONCURRENCY} concurrent clients, {args.requests} timed requests",
        f"body {body_size} bytes (full prefetch); JWT {args.alg} via jku; jti ledger on {backend}",
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end of the run",
        f"{'':32}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}",
        *(
            f"{name:32}{f.per_second:>10.0f}{f.percentile(50):>10.1f}{f.percentile(99):>10.1f}"
            for name, f in (
                ("bare FastAPI (parse JSON only)", bare),
                ("CDS hook, JWT check off", open_hook),
                ("CDS hook, JWT check on", cds),
            )
        ),
        f"throughput ratio  {throughput:6.0%}   (target >= 70%)  {_verdict(throughput >= 0.7)}",
        f"p99 ratio         {p99:6.2f}x  (target <= 1.5x)  {_verdict(p99 <= 1.5)}",
        f"FHIR requests per hook call: {fhir_per_call:.2f} (target 0 with prefetch)",
        f"card returned: {indicator}; mean hook latency {mean_ms:.1f} ms",
    ]
    print("\n".join(lines))


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
