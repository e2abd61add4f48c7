"""Benchmark: the CDS hook under 50 concurrent clients, next to a bare FastAPI endpoint.

Run by hand (not collected by pytest)::

    .venv/bin/python tests/bench/cds_hook.py              # SQLite, the embedded default
    .venv/bin/python tests/bench/cds_hook.py --postgres   # a throw-away PostgreSQL database

Both servers are real uvicorn processes on loopback (one worker each, access log off).
The hook call carries full prefetch (a domestic-violence presentation: a warning card)
and a JWT signed by the "EHR" — both algorithms CDS Hooks names, RS384 and ES384, against
the same service (JWKS over HTTP; a fresh jti per request, all JWTs signed before timing).
The bare endpoint only parses the same JSON body. Rounds alternate between the servers so
that a busy machine affects them alike.

The target is set against that bare endpoint. So that planning can weigh the reading of
it that counts the JWT check as part of the baseline, the bare app also answers at
``/checked``, checking the same RS384 JWTs first the way PyJWT's documentation shows
(``PyJWKClient`` and ``jwt.decode``: signature, iss, aud, exp; no replay ledger), and the
hook is compared with that too (printed for information, not as the target).

Prints p50/p99 latency, requests/s, the ratios against the targets (≥ 70 % of the bare
requests/s, p99 ≤ 1.5 × bare), the server's CPU time per call (user + system of the
server process, all its threads: the figure that depends least on what else the machine
is doing) and how much of it the JWT check takes, the FHIR requests per hook call
(target 0) and, from real nurse saves into a sekmet server (``fhir_writes.py``), the
FHIR requests per save (target 1).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
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
import jwt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sandbox.keys import Alg, SigningKey  # noqa: E402
from service.db import migrate  # noqa: E402
from service.db.base import Database  # noqa: E402
from service.protocol import HagueTrigger  # noqa: E402
from service.tenancy import SecretBox, TenantDirectory  # noqa: E402
from service.tenant_config import CdsIssuer, EhrRegistration, TenantConfiguration  # noqa: E402
from tests.bench.fhir_writes import measure as measure_saves  # noqa: E402
from tests.support.postgres import throwaway_postgres_database  # noqa: E402
from tests.support.prefetch import ENCOUNTER_ID, a_code_of, prefetch  # noqa: E402
from tests.support.processes import free_port, running  # noqa: E402
from tests.support.sandbox import JwksServer  # noqa: E402

CONCURRENCY = 50
NURSE_SAVES = 20
ROUNDS = 5
SERVICE = "/cds-services/kindreflex-encounter-start"
ISSUER = "https://ehr.bench.example/cds"
ALGORITHMS: tuple[Alg, ...] = ("RS384", "ES384")  # the two CDS Hooks 2.0 names

BARE_APP = textwrap.dedent(
    '''
    """The baseline: a FastAPI endpoint that only parses the hook's JSON body. Under
    /checked, the same endpoint checking the hook's JWT first the usual way (PyJWT, the
    issuer's keys read once: signature, iss, aud, exp), without a replay ledger."""
    import json
    import os

    import jwt
    from fastapi import FastAPI, Request

    app = FastAPI()
    keys = jwt.PyJWKClient(os.environ["BENCH_JWKS_URL"])
    audience, issuer = os.environ["BENCH_AUDIENCE"], os.environ["BENCH_ISSUER"]

    @app.post("/cds-services/{service_id}")
    async def hook(service_id: str, request: Request) -> dict[str, list[object]]:
        json.loads(await request.body())
        return {"cards": []}

    @app.post("/checked/cds-services/{service_id}")
    async def checked(service_id: str, request: Request) -> dict[str, list[object]]:
        token = request.headers["authorization"].removeprefix("Bearer ")
        key = keys.get_signing_key_from_jwt(token).key
        jwt.decode(token, key, algorithms=["RS384"], audience=audience, issuer=issuer)
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
    cpu_seconds: float = 0.0  # of the server process, while it served these requests

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_call_us(self) -> float:
        return self.cpu_seconds / self.requests * 1e6

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


@dataclass(frozen=True)
class Target:
    """One line of the report: a server process and the headers its requests carry."""

    name: str
    port: int
    pid: int
    headers: list[dict[str, str]]
    path: str = SERVICE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def interleaved(targets: list[Target], body: bytes, warmup: int) -> list[Figures]:
    """Alternate rounds on the targets, so that a busy machine affects them alike."""
    for target in targets:
        await load(target.port, target.path, body, target.headers[:warmup])
    rounds: list[list[Figures]] = [[] for _ in targets]
    timed = len(targets[0].headers) - warmup
    size = max(1, timed // ROUNDS)
    for start in range(warmup, warmup + timed, size):
        for results, target in zip(rounds, targets, strict=True):
            cpu = cpu_seconds(target.pid)
            figures = await load(
                target.port, target.path, body, target.headers[start : start + size]
            )
            used = cpu_seconds(target.pid) - cpu
            results.append(Figures(figures.requests, figures.seconds, figures.latencies, used))
    return [_merged(results) for results in rounds]


def _merged(rounds: list[Figures]) -> Figures:
    return Figures(
        sum(r.requests for r in rounds),
        sum(r.seconds for r in rounds),
        [latency for r in rounds for latency in r.latencies],
        sum(r.cpu_seconds for r in rounds),
    )


def signature_cost_us(key: SigningKey, rounds: int = 1000) -> float:
    """CPU time of the signature check alone (the primitive, in this process), per call."""
    token = key.sign({"iss": ISSUER, "jti": "x"})
    header_and_claims, _, signature = token.rpartition(".")
    verify = jwt.get_algorithm_by_name(key.alg).verify
    public = jwt.PyJWK(key.public_jwk()).key
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    started = time.process_time()
    for _ in range(rounds):
        if not verify(header_and_claims.encode(), public, raw):
            raise RuntimeError(f"the {key.alg} signature does not verify")
    return (time.process_time() - started) / rounds * 1e6


def signed_headers(key: SigningKey, jwks_url: str, aud: str, count: int) -> list[dict[str, str]]:
    now = int(time.time())  # exp = now + 290: the whole run must finish within the JWTs' life
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
    with throwaway_postgres_database() as url:
        yield url


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
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per line")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    if not 0 < args.requests <= 20000:
        parser.error("--requests must be between 1 and 20000")

    body = hook_body()
    keys = {alg: SigningKey.generate(f"bench-{alg}", alg) for alg in ALGORITHMS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        JwksServer(*keys.values()) as jwks,
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
            "BENCH_JWKS_URL": jwks.url,
            "BENCH_AUDIENCE": public_url + SERVICE,
            "BENCH_ISSUER": ISSUER,
        }
        total = args.warmup + args.requests
        plain = [{"Content-Type": "application/json"}] * total
        with (
            running(
                uvicorn("bare_app:app", bare_port, "--app-dir", tmp),
                f"http://127.0.0.1:{bare_port}/healthz",
                env,
            ) as bare,
            # the same service with the JWT check off: shows what the check itself costs
            running(
                uvicorn("service.app:create_app", open_port, "--factory"),
                f"http://127.0.0.1:{open_port}/healthz",
                env | {"KINDREFLEX_CDS_JWT_REQUIRED": "false"},
            ) as open_hook,
            running(
                uvicorn("service.app:create_app", cds_port, "--factory"),
                f"{public_url}/healthz",
                env,
            ) as hook,
        ):
            signed = {
                alg: signed_headers(key, jwks.url, public_url + SERVICE, total)
                for alg, key in keys.items()
            }
            targets = [
                Target("bare FastAPI (parse JSON only)", bare_port, bare.pid, plain),
                Target("CDS hook, JWT check off", open_port, open_hook.pid, plain),
                *(
                    Target(f"CDS hook, JWT {alg}", cds_port, hook.pid, signed[alg])
                    for alg in ALGORITHMS
                ),
                Target(
                    "bare FastAPI + PyJWT RS384",
                    bare_port,
                    bare.pid,
                    signed_headers(keys["RS384"], jwks.url, public_url + SERVICE, total),
                    "/checked" + SERVICE,
                ),
            ]
            # the prepared JWTs are many objects: a full collection in this client would
            # pause every request in flight and show up as the servers' p99
            gc.collect()
            gc.freeze()
            figures = asyncio.run(interleaved(targets, body, args.warmup))
            fhir_calls = fhir_requests(httpx.get(f"{public_url}/metrics").text)
            check = httpx.post(
                public_url + SERVICE,
                content=body,
                headers=signed_headers(keys["RS384"], jwks.url, public_url + SERVICE, 1)[0],
            ).json()
        saves_dir = Path(tmp) / "saves"
        saves_dir.mkdir()
        with database_url(args.postgres, saves_dir) as saves_url:
            per_save = measure_saves(saves_url, NURSE_SAVES).per_save
    signatures = {alg: signature_cost_us(key) for alg, key in keys.items()}
    per_call = fhir_calls / (total * len(ALGORITHMS))
    print(report(args, targets, figures, (per_call, per_save), len(body), check, signatures))


def report(
    args: argparse.Namespace,
    targets: list[Target],
    figures: list[Figures],
    fhir_requests: tuple[float, float],  # per hook call, per nurse save
    body_size: int,
    check: dict[str, Any],
    signatures: dict[Alg, float],
) -> str:
    bare, checked = figures[0], figures[-1]
    hooks = slice(2, 2 + len(ALGORITHMS))  # the lines of the hook with the JWT check
    backend = "PostgreSQL" if args.postgres else "SQLite"
    indicator = check["cards"][0]["indicator"] if check.get("cards") else "none"
    lines = [
        f"CDS hook benchmark: {CONCURRENCY} concurrent clients, {args.requests} timed requests",
        f"body {body_size} bytes (full prefetch); JWT via jku; jti ledger on {backend}",
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end of the run",
        f"{'':32}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'CPU us':>8}"
        f"{'req/s':>8}{'p99':>7}{'CPU':>7}",
        f"{'':32}{'':32}{'(ratios to bare)':>22}",
    ]
    for target, f in zip(targets, figures, strict=True):
        lines.append(
            f"{target.name:32}{f.per_second:>8.0f}{f.percentile(50):>8.1f}"
            f"{f.percentile(99):>8.1f}{f.cpu_per_call_us:>8.0f}"
            f"{f.per_second / bare.per_second:>8.0%}"
            f"{f.percentile(99) / bare.percentile(99):>6.2f}x"
            f"{_cpu_ratio(f, bare):>7}"
        )
    for target, f in zip(targets[hooks], figures[hooks], strict=True):
        throughput = f.per_second / bare.per_second
        p99 = f.percentile(99) / bare.percentile(99)
        lines.append(
            f"{target.name}: throughput {throughput:.0%} (target >= 70%) "
            f"{_verdict(throughput >= 0.7)}; p99 {p99:.2f}x (target <= 1.5x) "
            f"{_verdict(p99 <= 1.5)}"
        )
    budget = bare.cpu_per_call_us / 0.7
    lines.append(
        f"CPU budget per call for 70% of the bare requests/s: {budget:.0f} us "
        f"({budget - bare.cpu_per_call_us:.0f} us beyond the bare endpoint); "
        "the signature check alone: "
        + ", ".join(f"{alg} {us:.0f} us" for alg, us in signatures.items())
    )
    unchecked = figures[1]
    lines.append(
        "the JWT check in the service (the hook's CPU with it, less without it): "
        + ", ".join(
            f"{alg} {f.cpu_per_call_us - unchecked.cpu_per_call_us:.0f} us"
            for alg, f in zip(ALGORITHMS, figures[hooks], strict=True)
        )
        + f"; the rest of the hook: {unchecked.cpu_per_call_us - bare.cpu_per_call_us:.0f} us"
        " beyond the bare endpoint"
    )
    rs384 = figures[hooks][ALGORITHMS.index("RS384")]
    throughput = rs384.per_second / checked.per_second
    p99 = rs384.percentile(99) / checked.percentile(99)
    lines.append(
        "for planning, against the bare endpoint checking the same JWT with PyJWT (no replay"
        f" ledger): CDS hook, JWT RS384 throughput {throughput:.0%}, p99 {p99:.2f}x,"
        f" CPU {_cpu_ratio(rs384, checked)}"
    )
    per_call, per_save = fhir_requests
    lines += [
        f"FHIR requests per hook call: {per_call:.2f} (target 0 with prefetch)",
        f"FHIR requests per nurse save: {per_save:.2f} (target 1; {NURSE_SAVES} saves of steps"
        " 1-2, two children, niet-pluis raising a concern, counted as they reach the FHIR server)",
        f"card returned: {indicator}",
    ]
    return "\n".join(lines)


def _cpu_ratio(figures: Figures, bare: Figures) -> str:
    """The CPU ratio; /proc counts in clock ticks (10 ms), so a very short run may show the
    bare server using none at all."""
    if bare.cpu_seconds == 0:
        return "n/a"
    return f"{figures.cpu_per_call_us / bare.cpu_per_call_us:.2f}x"


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
