"""The console command: its sub-commands, and `serve` answering the operations endpoints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, select, text, update

from service import audit
from service.audit import AuditAction, AuditFact
from service.db import migrate
from service.db.base import Database
from service.db.migrate import alembic_config
from service.db.models import AuditRecord, OutboxEntry
from service.outbox import DeliveryState, NewEntry, enqueue
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import TenantConfiguration
from tests.support.processes import free_port, running
from tests.support.write_path import make_tenant

KINDREFLEX = [sys.executable, "-m", "service.cli"]


def test_help_lists_serve_demo_and_db() -> None:
    result = subprocess.run([*KINDREFLEX, "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "demo", "db"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("arguments", "wanted"),
    [
        (["serve", "--port", "99999"], "--port: must be a whole number, 1..65535: 99999"),
        (["serve", "--port", "0"], "--port: must be a whole number, 1..65535: 0"),
        (["demo", "--port", "-1"], "--port: must be a whole number, 1..65535: -1"),
        (["admin", "bootstrap", "--minutes", "-1"], "whole number of minutes, 1..1440: -1"),
    ],
)
def test_a_port_or_a_lifetime_out_of_range_is_refused_before_anything_starts(
    arguments: list[str], wanted: str
) -> None:
    """serve --port 99999 listened on 34463 (99999 modulo 65536) and logged :99999, where
    the EHR and the probes then looked; --port 0 served on KINDREFLEX_PORT instead; a
    bootstrap token of -1 minutes printed the 1440 valid choices (found by review)."""
    result = subprocess.run([*KINDREFLEX, *arguments], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert wanted in result.stderr
    assert len(result.stderr) < 500


def test_db_upgrade_then_serve_answers_health_ready_and_metrics(tmp_path: Path) -> None:
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}"}
    upgraded = subprocess.run(
        [*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True, check=True
    )
    assert "current" in upgraded.stdout

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([*KINDREFLEX, "serve", "--port", str(port)], f"{base}/healthz", env):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["ok"] is True
        metrics = httpx.get(f"{base}/metrics").text
        counted = 'kindreflex_http_requests_total{method="GET",route="/healthz",status="200"}'
        assert counted in metrics


def test_a_stopped_serve_ends_a_request_that_outlasts_its_grace_and_shuts_down_cleanly(
    tmp_path: Path,
) -> None:
    """SIGTERM (a rollout, a node drain) with a request in flight: serve waited for it
    without end, so a request longer than Kubernetes' grace period had the process killed
    before the instance's shutdown (the outbox worker's batch released, the CDS path's rows
    written; found by an operations review). Now it waits --timeout-graceful-shutdown for
    the requests, then ends them and shuts down. The request here is held by its client
    (a body announced and never sent) as a slow FHIR server holds a screen."""
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}"}
    for command in (["db", "upgrade"], ["admin", "bootstrap"]):  # a hospital to ask
        subprocess.run([*KINDREFLEX, *command], env=env, capture_output=True, check=True)
    port = free_port()
    serve = [*KINDREFLEX, "serve", "--port", str(port), "--timeout-graceful-shutdown", "2"]
    with (
        running(serve, f"http://127.0.0.1:{port}/healthz", env) as server,
        socket.create_connection(("127.0.0.1", port), timeout=30) as client,
    ):
        client.sendall(
            b"POST /admin/api/session HTTP/1.1\r\nHost: kindreflex\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        # uvicorn answers 100 when the app asks for the body: the request is in flight
        assert client.recv(100).startswith(b"HTTP/1.1 100 ")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)  # not killed by `running`: it ended by itself
        log = server.output()
    assert "timeout graceful shutdown exceeded" in log
    assert "Application shutdown complete." in log


def test_serve_refuses_an_outdated_postgres_schema_instead_of_migrating_it(
    database_url: str,
) -> None:
    if not database_url.startswith("postgresql"):
        return  # SQLite (the embedded default) is migrated by `serve` itself: see the test above
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url}
    result = subprocess.run(
        [*KINDREFLEX, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "kindreflex db upgrade" in result.stderr


@pytest.mark.postgres
def test_db_upgrade_held_up_by_a_lock_gives_up_with_a_temporary_failure(postgres_url: str) -> None:
    # The migration Job must not stall the running service behind its lock request: it
    # gives up (after migrate.LOCK_TIMEOUT_MS) with an exit code that says "try again".
    migrate.upgrade(postgres_url, "0010_concern_follow_up")
    engine = create_engine(postgres_url)
    with engine.connect() as report:
        report.execute(text("SET idle_in_transaction_session_timeout = '60s'"))  # no hang
        report.execute(text("SELECT count(*) FROM concerns"))  # a long report's read lock
        env = {**os.environ, "KINDREFLEX_DATABASE_URL": postgres_url}
        result = subprocess.run(
            [*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=90
        )
        report.rollback()
    engine.dispose()
    assert result.returncode == 75, result.stderr
    assert "The database was not migrated" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.postgres
def test_two_db_upgrades_at_once_leave_the_schema_current_without_a_traceback(
    postgres_url: str,
) -> None:
    """Found by an operations review: the second of two upgrades of a new database failed
    half-way with a traceback (a unique violation creating a type). The second now waits
    for the first and finds the schema current."""
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": postgres_url}
    upgrades = [
        subprocess.Popen([*KINDREFLEX, "db", "upgrade"], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(upgrade.wait(timeout=120), upgrade.communicate()[1]) for upgrade in upgrades]

    assert [code for code, _ in results] == [0, 0], results
    assert all("Traceback" not in told for _, told in results)
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        assert set(versions) == set(
            ScriptDirectory.from_config(alembic_config(postgres_url)).get_heads()
        )
    engine.dispose()


def test_db_wait_lets_a_new_pod_start_at_once_on_a_current_schema(database_url: str) -> None:
    """A new pod's init container (deploy/kubernetes/deployment.yaml): the service starts
    when the schema is this version's, instead of crash-looping into the restart back-off
    while the migration Job runs (found by an operations review)."""
    migrate.upgrade(database_url)
    result = _db_wait(database_url, "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert "database schema is current" in result.stdout


def test_db_wait_waits_for_the_migration_and_ends_when_it_is_done(database_url: str) -> None:
    """The schema an older release left: the pod waits, saying why, and starts as soon as
    the Job has migrated, not minutes later at the end of a back-off."""
    migrate.upgrade(database_url, "0010_concern_follow_up")
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url}
    wait = [*KINDREFLEX, "db", "wait", "--timeout", "300"]
    with subprocess.Popen(wait, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as pod:
        assert pod.stderr is not None
        told = pod.stderr.readline().decode()  # it has asked, and waits, saying why alone
        assert told.startswith("Waiting up to 300 s: The database schema is not current")
        migrate.upgrade(database_url)  # the Job
        out, _ = pod.communicate(timeout=60)
    assert pod.returncode == 0
    assert b"database schema is current" in out


def test_db_wait_gives_up_on_an_outdated_schema_when_its_timeout_passes(
    database_url: str,
) -> None:
    migrate.upgrade(database_url, "0010_concern_follow_up")
    started = datetime.now(UTC)
    result = _db_wait(database_url, "--timeout", "3")
    assert datetime.now(UTC) - started >= timedelta(seconds=3)  # it waited, then gave up
    assert result.returncode == 75  # "try again later", as a migration held up by a lock
    told = result.stderr.strip().splitlines()
    assert told[-1] == (
        "Gave up after 3 s: The database schema is not current: run `kindreflex db upgrade` first."
    )
    assert "Traceback" not in result.stderr


def test_db_wait_refuses_a_newer_schema_at_once(database_url: str) -> None:
    """An older image on a database a newer release migrated: no wait would make it fit."""
    migrate.upgrade(database_url)
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO alembic_version VALUES ('9999_from_newer')"))
    engine.dispose()
    started = datetime.now(UTC)
    result = _db_wait(database_url, "--timeout", "300")
    assert datetime.now(UTC) - started < timedelta(seconds=60)
    assert result.returncode == 2
    told = result.stderr.strip().splitlines()
    assert len(told) == 1
    assert told[0].startswith("The database schema is newer than this version of Kindreflex")


def test_db_wait_gives_up_on_an_unreachable_database_naming_it_without_its_password() -> None:
    url = f"postgresql+psycopg://kindreflex:s3cret-pw@127.0.0.1:{free_port()}/kindreflex"
    result = _db_wait(url, "--timeout", "1")
    assert result.returncode == 75
    assert "Gave up after 1 s: The database at postgresql+psycopg://kindreflex:***@127.0.0.1" in (
        result.stderr
    )
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def _db_wait(database_url: str, *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url}
    return subprocess.run(
        [*KINDREFLEX, "db", "wait", *options], env=env, capture_output=True, text=True, timeout=120
    )


def test_serve_for_other_machines_refuses_a_public_url_on_localhost(tmp_path: Path) -> None:
    # The default KINDREFLEX_PUBLIC_URL (http://localhost:8000) on a server EHRs reach over
    # the network: every CDS call would fail its aud check. Named before anything starts.
    env = {
        **os.environ,
        "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
        "KINDREFLEX_PUBLIC_URL": "http://localhost:8000",
    }
    env.pop("KINDREFLEX_HOST", None)
    command = [*KINDREFLEX, "serve", "--host", "0.0.0.0", "--port", str(free_port())]  # noqa: S104
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "KINDREFLEX_PUBLIC_URL is http://localhost:8000" in result.stderr
    assert not (tmp_path / "k.db").exists()  # refused before the database was touched


@pytest.mark.parametrize(
    ("changes", "told"),
    [
        pytest.param(
            {"KINDREFLEX_PUBLIC_URL": "kindreflex.hospital.example"},
            "https://host[:port]",
            id="no-scheme",
        ),
        pytest.param(
            {"KINDREFLEX_PUBLIC_URL": "http://kindreflex.hospital.example"},
            "https://host[:port]",
            id="http",
        ),
        pytest.param(
            {"KINDREFLEX_PUBLIC_URL": "https://kindreflex.hospital.example/?x=1"},
            "without a path, query or fragment",
            id="query",
        ),
        pytest.param(
            {"KINDREFLEX_PUBLIC_URL": "https://intranet.hospital.example/kindreflex"},
            "the root of its own host name",
            id="path",
        ),
        pytest.param({"KINDREFLEX_SECRET_KEY": None}, "stored unencrypted", id="no-secret-key"),
    ],
)
def test_serve_in_production_refuses_settings_that_would_fail_or_expose_the_ehrs(
    tmp_path: Path, changes: dict[str, str | None], told: str
) -> None:
    """Found by an operations review: a public URL without https (no valid `aud`, no
    Secure cookie) and a missing secret key (EHR tokens and our private keys stored in
    the clear) started without a word. Behind a reverse proxy on this machine too."""
    env = {
        **os.environ,
        "KINDREFLEX_ENVIRONMENT": "production",
        "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
        "KINDREFLEX_PUBLIC_URL": "https://kindreflex.hospital.example",
        "KINDREFLEX_SECRET_KEY": "a random value of at least 32 characters",
    }
    env.update({name: value for name, value in changes.items() if value is not None})
    for name in [name for name, value in changes.items() if value is None]:
        env.pop(name)
    command = [*KINDREFLEX, "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert told in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "k.db").exists()  # refused before the database was touched


def test_keys_rotate_in_production_refuses_to_store_private_keys_unencrypted(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    migrate.upgrade(url)
    env = {
        **os.environ,
        "KINDREFLEX_ENVIRONMENT": "production",
        "KINDREFLEX_DATABASE_URL": url,
        "KINDREFLEX_PUBLIC_URL": "https://kindreflex.hospital.example",
    }
    env.pop("KINDREFLEX_SECRET_KEY", None)
    result = subprocess.run(
        [*KINDREFLEX, "keys", "rotate"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "KINDREFLEX_SECRET_KEY is not set" in result.stderr
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM signing_keys")).scalar() == 0
    engine.dispose()


@pytest.mark.parametrize(
    "command",
    [
        ["config", "export"],
        ["admin", "bootstrap"],
        ["db", "purge"],
        ["keys", "rotate"],
        ["outbox", "waiting"],
    ],
)
def test_a_command_on_a_database_without_the_schema_says_to_upgrade_it(
    command: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    result = subprocess.run([*KINDREFLEX, *command], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "run `kindreflex db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["db", "upgrade"], ["serve", "--port", "8080"], ["config", "export"]]
)
def test_a_schema_a_newer_version_migrated_is_named_as_such_and_left_alone(
    command: list[str], database_url: str
) -> None:
    """An older image rolled back onto a database a newer release migrated (the README's
    *Upgrades*). Before, every command said "run `kindreflex db upgrade` first", and
    `db upgrade` then stopped with alembic's traceback (a revision it cannot locate).
    Now each says the schema is newer and what to do, and changes nothing."""
    migrate.upgrade(database_url)
    newer = "9999_from_a_newer_release"
    engine = create_engine(database_url)
    with engine.begin() as connection:  # a head of a migration this version does not have
        connection.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": newer})
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url}
    result = subprocess.run([*KINDREFLEX, *command], env=env, capture_output=True, text=True)
    with engine.connect() as connection:
        versions = set(
            connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        )
    engine.dispose()
    assert result.returncode == 2
    assert "The database schema is newer than this version of Kindreflex" in result.stderr
    assert "Traceback" not in result.stderr
    assert newer in versions  # left as it was


@pytest.mark.parametrize("command", [["db", "upgrade"], ["config", "export"]])
@pytest.mark.parametrize(
    ("password_in", "shown"),
    [
        ("kindreflex:{pw}@127.0.0.1:{port}/kindreflex", "kindreflex:***@127.0.0.1"),
        # libpq's parameter: printed in clear before (found by review)
        ("kindreflex@127.0.0.1:{port}/kindreflex?password={pw}", "?password=%2A%2A%2A"),
        ("kindreflex@127.0.0.1:{port}/kindreflex?sslpassword={pw}", "?sslpassword=%2A%2A%2A"),
    ],
)
def test_an_unreachable_database_is_named_without_its_password(
    command: list[str], password_in: str, shown: str
) -> None:
    written = password_in.format(pw="s3cret-pw", port=free_port())
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"postgresql+psycopg://{written}"}
    result = subprocess.run([*KINDREFLEX, *command], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "The database at postgresql+psycopg://kindreflex" in result.stderr
    assert shown in result.stderr
    assert "cannot be used" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_database_host_that_never_answers_is_named_within_seconds() -> None:
    """A host that takes the connection and says nothing (a firewall, a wrong port): the
    schema check before every command had no connect timeout and hung, printing nothing;
    on Kubernetes the pod restarted every minute without a line saying why (review)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; no one answers
        url = f"postgresql+psycopg://kindreflex@127.0.0.1:{silent.getsockname()[1]}/kindreflex"
        env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}
        result = subprocess.run(
            [*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2
    assert "The database at postgresql+psycopg://kindreflex@127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("KINDREFLEX_PORT", "abc", "KINDREFLEX_PORT: Input should be a valid integer"),
        ("KINDREFLEX_SETTINGS_FILE", "/nowhere/kindreflex.env", "names a missing file"),
        ("KINDREFLEX_DATABASE_URL", "notaurl", "KINDREFLEX_DATABASE_URL: Value error, not a"),
        ("KINDREFLEX_DATABASE_URL", "mysql://db/kr", "mysql is not supported"),
        (
            "KINDREFLEX_DATABASE_URL",
            "postgresql+psycopg2://kr@db/kr",
            "the driver psycopg2 is not supported: postgresql+psycopg://",
        ),
        (
            "KINDREFLEX_DATABASE_URL",
            "postgresql+psycopg://kr@db/kr?sslmod=require",  # a traceback before (review)
            "'sslmod' after the '?' is not a libpq connection parameter",
        ),
        (
            "KINDREFLEX_DATABASE_URL",
            "postgresql+psycopg://kr@db/kr?connect_timeout=abc",
            "connect_timeout after the '?' is a whole number of seconds",
        ),
        ("KINDREFLEX_LOG_LEVEL", "LOUD", "KINDREFLEX_LOG_LEVEL: Value error, one of DEBUG"),
        ("KINDREFLEX_OUTBOX_INTERVAL_SECONDS", "inf", "should be a finite number"),
        ("KINDREFLEX_FHIR_TIMEOUT_SECONDS", "nan", "should be a finite number"),
        ("KINDREFLEX_FHIR_TIMEOUT_SECONDS", "3600", "less than or equal to 300"),
        (
            "KINDREFLEX_DATABASE_POOL_SIZE",
            "0",  # SQLAlchemy's "no limit"
            "KINDREFLEX_DATABASE_POOL_SIZE: Input should be greater than or equal to 1",
        ),
        (
            "KINDREFLEX_DATABASE_MAX_OVERFLOW",
            "twenty",
            "KINDREFLEX_DATABASE_MAX_OVERFLOW: Input should be a valid integer",
        ),
        (
            "KINDREFLEX_DEFAULT_TENANT",
            "Gent/Spoed",
            "KINDREFLEX_DEFAULT_TENANT: Value error, a hospital's slug is lowercase letters",
        ),
    ],
)
def test_a_setting_that_cannot_be_used_is_named_with_its_reason(
    setting: str, value: str, reason: str
) -> None:
    """Before, each of these printed a traceback (or, for inf, stopped the outbox silently)."""
    env = {**os.environ, setting: value}
    result = subprocess.run([*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "the settings cannot be used" in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


def test_a_check_of_several_settings_is_printed_as_it_names_them(tmp_path: Path) -> None:
    """It printed "KINDREFLEX_: Value error, …": a setting of no name (found by review)."""
    env = {
        **os.environ,
        "KINDREFLEX_ENVIRONMENT": "production",
        "KINDREFLEX_CDS_JWT_REQUIRED": "false",
        "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}",
    }
    result = subprocess.run([*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "\n  Value error, KINDREFLEX_CDS_JWT_REQUIRED=false is only allowed" in result.stderr
    assert "KINDREFLEX_:" not in result.stderr


def test_a_misspelt_setting_is_named_not_ignored_in_silence(tmp_path: Path) -> None:
    """KINDREFLEX_OUTBOUND_ALLOWLIST (for _ALLOW) left the allow-list unset without a word,
    and every configured EHR was reached wherever it was (review of the admin's journey)."""
    settings_file = tmp_path / "kindreflex.env"
    settings_file.write_text("KINDREFLEX_LOG_LEVL=DEBUG\n")
    env = {
        **os.environ,
        "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}",
        "KINDREFLEX_SETTINGS_FILE": str(settings_file),
        "KINDREFLEX_OUTBOUND_ALLOWLIST": "*.az-sint-jan.be",
        "KINDREFLEX_WHATEVER": "1",
    }
    result = subprocess.run([*KINDREFLEX, "db", "upgrade"], env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    (warning,) = [json.loads(line) for line in result.stderr.splitlines() if "ignored" in line]
    assert warning["level"] == "WARNING"
    assert warning["ignored"] == (
        "KINDREFLEX_LOG_LEVL (did you mean KINDREFLEX_LOG_LEVEL?), "
        "KINDREFLEX_OUTBOUND_ALLOWLIST (did you mean KINDREFLEX_OUTBOUND_ALLOW?), "
        "KINDREFLEX_WHATEVER"
    )


def test_a_tenant_slug_that_no_url_can_reach_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": f"sqlite:///{tmp_path / 'kr.db'}"}
    result = subprocess.run(
        [*KINDREFLEX, "admin", "bootstrap", "--tenant", "Bad Slug/../x"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "a hospital's slug is lowercase letters, digits and '-'" in result.stderr


def test_the_audit_trail_is_printed_for_one_patient_and_its_reading_is_audited(
    tmp_path: Path,
) -> None:
    """A data-protection officer asks who saw a patient's data (GDPR access request)."""
    url, database, hospital, other = _two_hospitals(tmp_path)
    at = _AT

    with database.session() as session:
        audit.record_local(session, hospital.id, _seen("Patient/1", at), _SERVER)
        audit.record_local(session, hospital.id, _seen("Patient/1", at - _DAY), _SERVER)
        audit.record_local(session, hospital.id, _seen("Patient/2", at), _SERVER)
        audit.record_local(session, other.id, _seen("Patient/1", at), _SERVER)
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}
    wanted = ["audit", "--patient", "Patient/1", "--since", "2026-12-01"]
    result = subprocess.run([*KINDREFLEX, *wanted], env=env, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [
        {
            "recorded_at": at.isoformat(),
            "actor": "Practitioner/nurse-1",
            "action": "read",
            "fhir_server": _SERVER,
            "patient": "Patient/1",
            "entities": ["RelatedPerson/7"],
            "outcome": "success",
            "delivery": None,
        }
    ]
    with database.session() as session:
        reading = session.scalars(select(AuditRecord).order_by(AuditRecord.id.desc())).first()
    database.dispose()
    assert reading is not None
    assert reading.tenant_id == hospital.id
    assert reading.actor.startswith("kindreflex audit (")
    assert (reading.action, reading.patient_ref) == ("search-type", "Patient/1")
    assert reading.fhir_base_url == _SERVER  # the hospital's only server that has the patient

    naive = subprocess.run(
        [*KINDREFLEX, "audit", "--since", "2026-12-01T08:00"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert naive.returncode == 2
    assert "a timestamp needs its offset" in naive.stderr


def test_an_audit_trail_read_only_in_part_is_audited_all_the_same(tmp_path: Path) -> None:
    """`kindreflex audit … | head -1`: the reader stops after a line. Before, the command
    died on the broken pipe and its own audit row, written after the printing, was rolled
    back: patients' rows were read and the reading was nowhere. It is recorded before the
    first line now, and the early end is no error."""
    url, database, hospital, _other = _two_hospitals(tmp_path)
    with database.session() as session:  # far more than a pipe holds (64 KiB)
        for minute in range(2000):
            fact = _seen("Patient/1", _AT - minute * _MINUTE)
            audit.record_local(session, hospital.id, fact, _SERVER)
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}
    command = [*KINDREFLEX, "audit", "--patient", "Patient/1"]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as run:
        assert run.stdout is not None
        assert run.stderr is not None
        first = json.loads(run.stdout.readline())
        run.stdout.close()  # as `head -1` does
        errors = run.stderr.read().decode()
    with database.session() as session:
        readings = session.scalars(select(AuditRecord).filter_by(action="search-type")).all()
    database.dispose()
    assert first["patient"] == "Patient/1"
    assert run.returncode == 0, errors
    assert "Traceback" not in errors
    assert [(r.patient_ref, r.actor.split(" (")[0]) for r in readings] == [
        ("Patient/1", "kindreflex audit")
    ]


def test_the_audit_trail_of_a_patient_reference_on_two_fhir_servers_needs_the_server(
    tmp_path: Path,
) -> None:
    """A hospital with two EHRs: Patient/1 of one is another child than Patient/1 of the
    other, and an access request must not answer with both."""
    url = f"sqlite:///{tmp_path / 'kr.db'}"
    migrate.upgrade(url)
    database = Database(url)
    hospital = make_tenant(database, "default", _SERVER)
    first, second = "http://ehr-a.test/fhir", "http://ehr-b.test/fhir"
    at = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    with database.session() as session:
        audit.record_local(session, hospital.id, _seen("Patient/1", at), first)
        audit.record_local(session, hospital.id, _seen("Patient/1", at + _MINUTE), second)
        # a row written before the server was kept (no outbox entry to take it from)
        audit.record_local(session, hospital.id, _seen("Patient/1", at + 2 * _MINUTE), None)
    database.dispose()
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}

    def kindreflex_audit(*wanted: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KINDREFLEX, "audit", *wanted], env=env, capture_output=True, text=True
        )

    refused = kindreflex_audit("--patient", "Patient/1")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert (
        f"Patient/1 has audit rows on 2 FHIR servers, on which it may be different people: "
        f"{first}, {second}. Nothing was printed: name the patient's server with --fhir-server."
    ) in refused.stderr

    # as copied from a browser, with a slash: the registrations store it without one
    chosen = kindreflex_audit("--patient", "Patient/1", "--fhir-server", f"{second}/")
    assert chosen.returncode == 0, chosen.stderr
    printed = [json.loads(line) for line in chosen.stdout.splitlines()]
    # the row without a server may be this patient's: printed, and marked as unknown
    assert [(row["fhir_server"], row["recorded_at"]) for row in printed] == [
        (second, (at + _MINUTE).isoformat()),
        (None, (at + 2 * _MINUTE).isoformat()),
    ]

    by_user = kindreflex_audit("--actor", "Practitioner/nurse-1")  # each line names its server
    assert by_user.returncode == 0, by_user.stderr
    servers = [json.loads(line)["fhir_server"] for line in by_user.stdout.splitlines()]
    assert servers == [first, second, None]


def test_outbox_waiting_lists_the_writes_waiting_for_a_sign_in_and_audits_the_reading(
    tmp_path: Path,
) -> None:
    """The full /readyz fails for a write waiting a day for a sign-in, without naming its
    patient: the operator finds the patient here, and someone opens that chart."""
    url, database, hospital, other = _two_hospitals(tmp_path)
    at = _AT
    second = "http://ehr-b.test/fhir"
    triage = _waiting(database, hospital.id, _SERVER, "Patient/1", "triage", at)
    read = _waiting(database, hospital.id, _SERVER, "Patient/1", "audit", at + _MINUTE)
    elsewhere = _waiting(database, other.id, second, "Patient/1", "casework", at + _DAY)
    make_tenant(database, "other", second)  # the other hospital's EHR: on a server of its own
    _waiting(database, hospital.id, _SERVER, "Patient/9", "triage", at, DeliveryState.PENDING)
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}

    def outbox_waiting(*wanted: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KINDREFLEX, "outbox", "waiting", *wanted], env=env, capture_output=True, text=True
        )

    def readings() -> list[tuple[int, str | None, str | None, str]]:
        with database.session() as session:
            rows = session.scalars(
                select(AuditRecord)
                .where(AuditRecord.actor.startswith("kindreflex outbox waiting ("))
                .order_by(AuditRecord.id)
            )
            return [(r.tenant_id, r.fhir_base_url, r.patient_ref, r.action) for r in rows]

    advice = "open Kindreflex from this patient's chart to send it"
    listed = outbox_waiting()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"entry {triage}  hospital default  FHIR server {_SERVER}  Patient/1  triage  "
        f"undelivered since 01/12/2026 00:30: {advice}",
        f"entry {read}  hospital default  FHIR server {_SERVER}  Patient/1  audit  "
        f"undelivered since 01/12/2026 00:31: {advice}",
        f"entry {elsewhere}  hospital other  FHIR server {second}  Patient/1  casework  "
        f"undelivered since 02/12/2026 00:30: {advice}",
    ]
    # one reading per patient listed, on its hospital and server (Patient/1 twice: two people)
    assert readings() == [
        (hospital.id, _SERVER, "Patient/1", "search-type"),
        (other.id, second, "Patient/1", "search-type"),
    ]

    one = outbox_waiting("--tenant", "other")
    assert one.returncode == 0, one.stderr
    assert [line.split("  ")[:2] for line in one.stdout.splitlines()] == [
        [f"entry {elsewhere}", "hospital other"]
    ]
    assert readings()[2:] == [(other.id, second, "Patient/1", "search-type")]

    with database.session() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.state == DeliveryState.WAITING_AUTHORISATION)
            .values(state=DeliveryState.DELIVERED)
        )
    none = outbox_waiting()
    assert none.returncode == 0, none.stderr
    assert none.stdout == ""
    assert "none waiting" in none.stderr
    assert len(readings()) == 3  # nothing listed, nobody's data read

    unknown = outbox_waiting("--tenant", "nowhere")
    database.dispose()
    assert unknown.returncode == 2
    assert "nowhere" in unknown.stderr


def test_outbox_waiting_says_when_the_registration_a_write_waits_for_is_gone(
    tmp_path: Path,
) -> None:
    """A write waiting for a sign-in is sent only by a launch through its registration: one
    whose registration an admin removed anyway (or pointed at another FHIR server) was
    still listed with "open Kindreflex from this patient's chart", which could never send
    it (found by review). Its line says what is needed now."""
    url, database, hospital, other = _two_hospitals(tmp_path)
    kept = _waiting(database, hospital.id, _SERVER, "Patient/1", "triage", _AT)
    removed = _waiting(database, other.id, _SERVER, "Patient/2", "triage", _AT + _MINUTE)
    # saved while the registration named the EHR's old server: a launch now has another
    old = "http://ehr-old.test/fhir"
    moved = _waiting(database, hospital.id, old, "Patient/3", "triage", _AT + 2 * _MINUTE)
    TenantDirectory(database, SecretBox(None)).save(
        "other", TenantConfiguration(name="Ziekenhuis OTHER"), actor="an admin, anyway"
    )
    database.dispose()
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}

    listed = subprocess.run(
        [*KINDREFLEX, "outbox", "waiting"], env=env, capture_output=True, text=True
    )

    assert listed.returncode == 0, listed.stderr
    advice = [line.split(": ", 1)[1] for line in listed.stdout.splitlines()]
    gone = (
        "its EHR registration '{}' was removed or names another FHIR server now: no launch "
        "can send it until a registration with that id and this FHIR server is added again, "
        "then Kindreflex opened from this patient's chart"
    )
    assert [line.split("  ")[0] for line in listed.stdout.splitlines()] == [
        f"entry {kept}",
        f"entry {removed}",
        f"entry {moved}",
    ]
    assert advice == [
        "open Kindreflex from this patient's chart to send it",
        gone.format("ehr"),
        gone.format("ehr"),
    ]


#: 1 December 00:30 in Brussels: the commands print Belgian dates.
_AT = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)


def _two_hospitals(tmp_path: Path) -> tuple[str, Database, TenantContext, TenantContext]:
    """A migrated SQLite database (its URL, opened) with the hospitals ``default`` and
    ``other`` on one FHIR server."""
    url = f"sqlite:///{tmp_path / 'kr.db'}"
    migrate.upgrade(url)
    database = Database(url)
    return (
        url,
        database,
        make_tenant(database, "default", _SERVER),
        make_tenant(database, "other", _SERVER),
    )


def _waiting(
    database: Database,
    tenant_id: int,
    server: str,
    patient: str,
    kind: str,
    saved_at: datetime,
    state: DeliveryState = DeliveryState.WAITING_AUTHORISATION,
    last_error: str | None = None,
    session_id: str = "expired",
    author: str = "Practitioner/nurse-1",
) -> int:
    """An outbox entry in ``state`` (by default a session whose token could not be
    refreshed), with the ``last_error`` its delivery recorded, saved in ``session_id``."""
    entry = NewEntry(kind, "ehr", server, session_id, author, patient, {})
    with database.session() as session:
        row = enqueue(session, tenant_id, entry)
        row.state, row.created_at, row.last_error = state, saved_at, last_error
        session.flush()
        return row.id


def test_outbox_refused_lists_the_refused_writes_with_the_servers_reason_and_audits_it(
    tmp_path: Path,
) -> None:
    """A save without a concern that the FHIR server refused is on no worklist and /readyz
    only counts it: the operator finds it here, with what to do and the server's reason.
    One the nurse saved again at once (a conflict brings her form back) was to be
    recorded again, a second time: the line names the later save of the patient."""
    url, database, hospital, other = _two_hospitals(tmp_path)
    at = _AT
    reason = "HTTP 412: multiple-matches\n  RelatedPerson?identifier=… matched 2 " + "x" * 400
    failed = _waiting(
        database, hospital.id, _SERVER, "Patient/1", "triage", at, DeliveryState.FAILED, reason
    )
    raced = _waiting(
        database, other.id, _SERVER, "Patient/2", "social", at + _DAY,
        DeliveryState.CONFLICT, "HTTP 412: RelatedPerson/7 is at version 3, not 2",
    )  # fmt: skip
    _waiting(database, hospital.id, _SERVER, "Patient/3", "triage", at)  # waiting: not refused
    _waiting(database, hospital.id, _SERVER, "Patient/4", "triage", at, DeliveryState.DELIVERED)
    delivered = DeliveryState.DELIVERED
    # the first saved again since, in its session (the nurse, at once)
    again = _waiting(database, hospital.id, _SERVER, "Patient/1", "triage", at, delivered)
    # not the second's: its patient in another hospital; the same hospital's on another
    # FHIR server; another session's; another kind's; an AuditEvent; another nurse's,
    # waiting for a sign-in in this session (Outbox.adopt_session moved it there)
    for tenant, server, session_id, kind, state in (
        (hospital.id, _SERVER, "expired", "social", delivered),
        (other.id, "http://127.0.0.1:10/fhir", "expired", "social", delivered),
        (other.id, _SERVER, "another", "social", delivered),
        (other.id, _SERVER, "expired", "triage", delivered),
        (other.id, _SERVER, "expired", "audit", delivered),
    ):
        _waiting(database, tenant, server, "Patient/2", kind, at, state, "", session_id)
    _waiting(
        database, other.id, _SERVER, "Patient/2", "social", at,
        DeliveryState.WAITING_AUTHORISATION, None, "expired", "Practitioner/nurse-2",
    )  # fmt: skip
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}

    def outbox_refused(*wanted: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KINDREFLEX, "outbox", "refused", *wanted], env=env, capture_output=True, text=True
        )

    listed = outbox_refused()
    assert listed.returncode == 0, listed.stderr
    shown = (
        "HTTP 412: multiple-matches RelatedPerson?identifier=… matched 2 " + "x" * 236
    )  # 300 characters
    assert listed.stdout.splitlines() == [
        f"entry {failed}  hospital default  FHIR server {_SERVER}  Patient/1  triage  failed  "
        "undelivered since 01/12/2026 00:30: the FHIR server refused it: remove the cause it "
        f"names, then record the finding again from this patient's chart, unless entry {again}, "
        f"saved since and not refused, holds it  reason: {shown}",
        f"entry {raced}  hospital other  FHIR server {_SERVER}  Patient/2  social  conflict  "
        "undelivered since 02/12/2026 00:30: the record changed while it was saved: record "
        "the finding again from this patient's chart  reason: HTTP 412: RelatedPerson/7 is at "
        "version 3, not 2",
    ]
    with database.session() as session:
        readings = session.execute(
            select(AuditRecord.tenant_id, AuditRecord.patient_ref, AuditRecord.action)
            .where(AuditRecord.actor.startswith("kindreflex outbox refused ("))
            .order_by(AuditRecord.id)
        ).all()
    assert [tuple(row) for row in readings] == [
        (hospital.id, "Patient/1", "search-type"),
        (other.id, "Patient/2", "search-type"),
    ]

    one = outbox_refused("--tenant", "default")
    assert [line.split("  ")[:3] for line in one.stdout.splitlines()] == [
        [f"entry {failed}", "hospital default", f"FHIR server {_SERVER}"]
    ]
    with database.session() as session:
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id.in_((failed, raced)))
            .values(state=DeliveryState.DELIVERED)
        )
    database.dispose()
    none = outbox_refused()
    assert (none.returncode, none.stdout) == (0, "")
    assert "none refused" in none.stderr


def test_outbox_refused_names_no_later_audit_event_nor_a_refused_save(tmp_path: Path) -> None:
    """An AuditEvent holds no earlier one, and a save refused too holds nothing: neither
    is named as the save that may hold a refused one."""
    url, database, hospital, _ = _two_hospitals(tmp_path)
    failed = DeliveryState.FAILED
    for kind, later in (("audit", DeliveryState.DELIVERED), ("triage", failed)):
        _waiting(database, hospital.id, _SERVER, f"Patient/{kind}", kind, _AT, failed, "x")
        _waiting(database, hospital.id, _SERVER, f"Patient/{kind}", kind, _AT, later, "y")
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": url}

    listed = subprocess.run(
        [*KINDREFLEX, "outbox", "refused"], env=env, capture_output=True, text=True
    )

    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 3  # the audit entry; both triage saves
    assert "unless entry" not in listed.stdout


def _seen(patient: str, when: datetime) -> AuditFact:
    return AuditFact(
        "Practitioner/nurse-1", AuditAction.READ, patient, ("RelatedPerson/7",), "success", when
    )


_SERVER = "http://127.0.0.1:9/fhir"
_DAY = timedelta(days=1)
_MINUTE = timedelta(minutes=1)
