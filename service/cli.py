"""The ``kindreflex`` console command."""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Literal
from urllib.parse import urlsplit

import uvicorn
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from service import retention
from service.admin import commands as admin_commands
from service.audit import TrailQuery
from service.db import migrate
from service.db.base import Database, make_engine
from service.fhir import terminology
from service.keys import (
    NEW_KEY_PUBLISHED_AHEAD,
    RETIRED_KEY_PUBLISHED_FOR,
    KeyStore,
    Rotation,
    UnreadableKeysError,
)
from service.local_time import LOCAL_ZONE
from service.observability import configure_logging
from service.settings import (
    SLUG_RULE,
    TENANT_SLUG,
    Settings,
    embedded_settings,
    is_loopback,
    load_settings,
    settings_given,
    shown_database_url,
    unknown_settings,
)

Command = Callable[[argparse.Namespace, Settings], int]
log = logging.getLogger(__name__)

#: How long `serve` keeps an idle keep-alive connection open (uvicorn's default is 5 s). A
#: reverse proxy reuses its idle connections to us for longer (ingress-nginx 60 s, many load
#: balancers 60 s): a request it sends just as uvicorn closes one gets a 502, and a CDS
#: hook call, a POST, is not retried. Outlasting the proxy, we let it close first.
KEEP_ALIVE_SECONDS = 75
#: How long a stopping `serve` waits for the requests in flight before it cancels them and
#: stops the instance's own work (the outbox worker's batch, the CDS path's rows not yet
#: written). Without a bound it waited for every request however long, and a request that
#: outlasted the platform's grace period (Kubernetes' terminationGracePeriodSeconds) had
#: the process killed with that work undone. The ingress waits 120 s for an answer
#: (deploy/kubernetes/ingress.yaml): past that nobody waits for the request's answer.
GRACEFUL_SHUTDOWN_SECONDS = 120


SchemaState = Literal["current", "outdated", "newer"]


def _schema_state(settings: Settings) -> SchemaState:
    """Whether the database's schema is this version's, an older one (``db upgrade``), or
    one a newer version of Kindreflex migrated it to (a revision unknown here)."""
    script = ScriptDirectory.from_config(migrate.alembic_config(settings.database_url))
    engine = make_engine(settings.database_url)  # its connect timeout: a silent host fails
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    if current - {revision.revision for revision in script.walk_revisions()}:
        return "newer"
    return "current" if current == set(script.get_heads()) else "outdated"


#: What to do about a schema that is not this version's.
_SCHEMA_ADVICE: dict[SchemaState, str] = {
    "outdated": "The database schema is not current: run `kindreflex db upgrade` first.",
    "newer": (
        "The database schema is newer than this version of Kindreflex (a newer version "
        "migrated it): run that version, or restore the backup taken before its "
        "`kindreflex db upgrade`. Nothing was changed."
    ),
}


def _on_current_schema(command: Command) -> Command:
    """For a command that works on the service's tables: a database without them, or with
    an older or newer schema, gets a sentence saying what to do instead of SQL errors."""

    @functools.wraps(command)
    def checked(args: argparse.Namespace, settings: Settings) -> int:
        state = _schema_state(settings)
        if state != "current":
            print(_SCHEMA_ADVICE[state], file=sys.stderr)
            return 2
        return command(args, settings)

    return checked


def _not_ready_to_serve(settings: Settings, host: str) -> str | None:
    """What stops ``serve`` from answering EHRs with these settings, if anything. A trial on
    this machine alone (the public URL on loopback) is not held to production's rules;
    behind a reverse proxy on this machine (bound to loopback, a public https URL) it is."""
    public = urlsplit(settings.public_url)
    if is_loopback(public.hostname):
        if is_loopback(host):
            return None
        # Other machines reach us, yet we would tell EHRs we live on theirs: every CDS
        # call would fail its `aud` check and every launch link would point nowhere.
        return (
            f"KINDREFLEX_PUBLIC_URL is {settings.public_url}, but `serve` listens on {host} "
            "for other machines. Set KINDREFLEX_PUBLIC_URL to the https address EHRs and "
            "browsers reach the service at."
        )
    if settings.environment != "production":
        return None
    wrong = public.query or public.fragment or public.path not in ("", "/")
    if public.scheme != "https" or not public.hostname or wrong:
        # no scheme: no valid `aud` nor redirect URI; http: the admin cookie without
        # Secure, and the app's (always Secure) cookie never sent back; a path: the pages
        # link from the host's root (/app/static/…, /admin/login), where a proxy that
        # serves us under /kr sends them nowhere (found by review)
        return (
            f"KINDREFLEX_PUBLIC_URL is {settings.public_url!r}: in production it is the "
            "https address EHRs and browsers reach the service at, https://host[:port], the "
            "root of its own host name, without a path, query or fragment."
        )
    return _unsealed(settings)


def _unsealed(settings: Settings) -> str | None:
    """Why a hospital's service may not store its secrets with these settings: in
    production, for EHRs elsewhere (the public URL not on this machine), without a key."""
    trial = is_loopback(urlsplit(settings.public_url).hostname)
    if settings.environment != "production" or trial or settings.secret_key is not None:
        return None
    return (
        "KINDREFLEX_SECRET_KEY is not set: in production the EHR tokens of the sessions, "
        "the EHR client secrets and our private signing keys would be stored unencrypted. "
        "Set it to a random value (`openssl rand -base64 32`) and keep it: it opens them."
    )


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.host
    problem = _not_ready_to_serve(settings, host)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    state = _schema_state(settings)
    if state == "newer" or (state == "outdated" and not settings.is_sqlite):
        # on PostgreSQL migrations are a separate step, so that instances never race
        print(_SCHEMA_ADVICE[state], file=sys.stderr)
        return 2
    if state == "outdated":
        migrate.upgrade(settings.database_url)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host,
        port=settings.port if args.port is None else args.port,
        workers=args.workers,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_keep_alive=args.timeout_keep_alive,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        log_config=None,
    )
    return 0


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    if _schema_state(settings) == "newer":  # alembic would stop on the unknown revision
        print(_SCHEMA_ADVICE["newer"], file=sys.stderr)
        return 2
    try:
        migrate.upgrade(settings.database_url)
    except migrate.MigrationLockedError as error:
        print(f"The database was not migrated: {error}", file=sys.stderr)
        return EX_TEMPFAIL
    print("database schema is current")
    return 0


EX_TEMPFAIL = 75  # sysexits.h: a temporary failure, the same command may succeed later
#: How often ``db wait`` asks the database again: a new pod starts this soon after the Job.
SCHEMA_POLL_SECONDS = 2


def cmd_db_wait(args: argparse.Namespace, settings: Settings) -> int:
    """Wait until the database answers with this version's schema: a new pod's init
    container, so that the service starts once the migration Job is done instead of
    refusing the outdated schema and crash-looping into Kubernetes' restart back-off."""
    deadline = monotonic() + args.timeout
    said = None
    if not log.isEnabledFor(logging.DEBUG):  # alembic's two lines a question, every 2 s
        logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    while True:
        state, reason = _schema_state_and_advice(settings)
        if state == "current":
            print("database schema is current")
            return 0
        if state == "newer":  # no waiting makes an older image fit a newer schema
            print(reason, file=sys.stderr)
            return 2
        if monotonic() >= deadline:
            print(f"Gave up after {args.timeout} s: {reason}", file=sys.stderr)
            return EX_TEMPFAIL
        if reason != said:  # one line per change of reason: the pod's log says why it waits
            print(f"Waiting up to {args.timeout} s: {reason}", file=sys.stderr, flush=True)
            said = reason
        sleep(min(SCHEMA_POLL_SECONDS, max(deadline - monotonic(), 0)))


def _schema_state_and_advice(settings: Settings) -> tuple[SchemaState, str]:
    """The schema's state and what to do about it; a database not up yet, or not
    reachable, is one not migrated yet: asked again, and named if it stays so."""
    try:
        state = _schema_state(settings)
    except OperationalError as error:
        return "outdated", _unusable(settings, error)
    return state, _SCHEMA_ADVICE.get(state, "")


def cmd_db_purge(args: argparse.Namespace, settings: Settings) -> int:
    database = Database.of(settings)
    try:
        purged = retention.purge(database, timedelta(days=args.days))
    finally:
        database.dispose()
    print(
        f"emptied {purged.payloads} delivered outbox payloads older than {args.days} days "
        f"and the patient's name and children's birth dates of {purged.closed_cases} cases "
        f"closed more than {args.days} days ago; "
        f"deleted {purged.admin_sessions} admin sessions and {purged.bootstrap_tokens} "
        "bootstrap tokens that expired, ended or were used, "
        f"{purged.app_sessions} expired app sessions (with their EHR tokens) and "
        f"{purged.launch_states} abandoned launch states"
    )
    return 0


def _retention_days(value: str) -> int:
    return _number_in(value, 0, 3650, " of days")


def _tenant_slug(value: str) -> str:
    if not re.fullmatch(TENANT_SLUG, value):
        raise argparse.ArgumentTypeError(f"{SLUG_RULE}: {value[:40]}")
    return value


def cmd_demo(args: argparse.Namespace, _settings: Settings) -> int:
    from service.demo import run_demo  # the sandbox is a development tool: load it only here

    return run_demo(port=args.port)


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    problem = _unsealed(settings)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    database = Database.of(settings)
    try:
        rotation = KeyStore(database, settings).rotate(discard_unreadable=args.discard_unreadable)
    except UnreadableKeysError as error:
        print(
            f"kindreflex: {error.unreadable} of the {error.stored} stored signing keys do not "
            "open with this KINDREFLEX_SECRET_KEY; nothing was changed. Run this command "
            "where the service's own KINDREFLEX_SECRET_KEY is set (a new pod, not an old "
            "one). If the key was changed on purpose and every instance runs with the new "
            "one, `kindreflex keys rotate --discard-unreadable` removes the keys it cannot "
            "open and makes new ones",
            file=sys.stderr,
        )
        return 2
    finally:
        database.dispose()
    print(rotation_report(rotation))
    return 0


def rotation_report(rotation: Rotation) -> str:
    """What ``keys rotate`` did, as it happened: the operator rotating after a changed
    secret key must learn that the old keys are gone, and that the new ones sign at once."""
    kept, unreadable = rotation.kept, rotation.unreadable
    lines = [
        f"new signing keys {', '.join(rotation.new)}: published at /.well-known/jwks.json now, "
        + (f"signing in {NEW_KEY_PUBLISHED_AHEAD}" if kept else "signing at once")
    ]
    if kept:
        lines.append(
            f"{_previous_keys(kept)} {'stays' if kept == 1 else 'stay'} published for "
            f"{RETIRED_KEY_PUBLISHED_FOR}"
        )
    if unreadable:
        lines.append(
            f"{_previous_keys(unreadable)} removed: sealed under another "
            "KINDREFLEX_SECRET_KEY, they could not be read (nor sign, nor be published)"
        )
    return "\n".join(lines)


def _previous_keys(count: int) -> str:
    return f"{count} previous key{'' if count == 1 else 's'}"


def cmd_config_export(args: argparse.Namespace, settings: Settings) -> int:
    return admin_commands.export_config(settings, args.tenant)


def cmd_config_import(args: argparse.Namespace, settings: Settings) -> int:
    actor = f"{admin_commands.CLI_ACTOR} ({getpass.getuser()})"
    return admin_commands.import_config(
        settings, args.tenant, Path(args.file), actor, force=args.force
    )


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    query = TrailQuery(
        tenant_id=0,
        patient_ref=args.patient,
        fhir_base_url=args.fhir_server,
        actor=args.actor,
        since=args.since,
        until=args.until,
    )
    actor = f"kindreflex audit ({getpass.getuser()})"
    return admin_commands.show_audit(settings, args.tenant, query, actor)


def cmd_outbox_waiting(args: argparse.Namespace, settings: Settings) -> int:
    actor = f"kindreflex outbox waiting ({getpass.getuser()})"
    return admin_commands.show_waiting(settings, args.tenant, actor)


def cmd_outbox_refused(args: argparse.Namespace, settings: Settings) -> int:
    actor = f"kindreflex outbox refused ({getpass.getuser()})"
    return admin_commands.show_refused(settings, args.tenant, actor)


def _moment(value: str) -> datetime:
    """A date (from its midnight, Belgian time: the day as the hospital counts it) or a
    timestamp with its offset."""
    with contextlib.suppress(ValueError):
        return datetime.combine(date.fromisoformat(value), time(), LOCAL_ZONE)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or timestamp: {value[:40]}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"a timestamp needs its offset (e.g. +01:00): {value}")
    return moment


def _fhir_server(value: str) -> str:
    """A FHIR base URL as the registrations store it (``EhrRegistration``: no trailing
    slash), so that one copied with a slash still finds the server's rows."""
    return value.rstrip("/")


def cmd_admin_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    return admin_commands.bootstrap(settings, args.tenant, args.minutes)


def _add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``config export|import``, ``admin bootstrap`` (the EHR administrator's journey),
    ``audit`` and ``outbox waiting|refused``."""
    tenant_help = "hospital (tenant) slug (default: KINDREFLEX_DEFAULT_TENANT)"
    config = commands.add_parser("config", help="configuration as code (YAML)")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="CMD")
    export = config_commands.add_parser("export", help="print the configuration as YAML")
    export.add_argument("--tenant", type=_tenant_slug, help=tenant_help)
    export.set_defaults(handler=_on_current_schema(cmd_config_export))
    load = config_commands.add_parser(
        "import",
        help="validate a YAML file completely, then apply it (or change nothing)",
        description=(
            "Validate a YAML file completely, then replace the hospital's whole configuration "
            "with it (or change nothing). The file writes every part (registrations, hooks, "
            "partners, plan); write one empty to empty it (registrations: []). A file naming "
            "the version it was exported from (version: 7, as `config export` writes it) is "
            "refused when the configuration has changed since, unless --force; a file without "
            "that line (one kept in git as the source of truth) is applied whatever version "
            "is in force. A file that removes an EHR registration, or moves it to another FHIR "
            "server, while nurses' undelivered writes through it or open cases on its server "
            "depend on it is refused, saying what, unless --force."
        ),
    )
    load.add_argument("file", help="the YAML file (as written by `config export`)")
    load.add_argument("--tenant", type=_tenant_slug, help=tenant_help)
    load.add_argument(
        "--force",
        action="store_true",
        help="apply the file as it is: even if the configuration has changed since the "
        "version it names (undoing those changes), and even if it removes or moves a "
        "registration that undelivered writes or open cases depend on (they stay undelivered "
        "and unworkable; recorded in the admin events)",
    )
    load.set_defaults(handler=_on_current_schema(cmd_config_import))

    admin = commands.add_parser("admin", help="administrator access")
    admin_commands_ = admin.add_subparsers(dest="admin_command", required=True, metavar="CMD")
    bootstrap = admin_commands_.add_parser(
        "bootstrap", help="print a one-time token to sign in to the admin screen"
    )
    bootstrap.add_argument("--tenant", type=_tenant_slug, help=tenant_help)
    bootstrap.add_argument(
        "--minutes", type=_minutes, default=30, metavar="1..1440",
        help="how long the token is valid (default 30)",
    )  # fmt: skip
    bootstrap.set_defaults(handler=_on_current_schema(cmd_admin_bootstrap))

    trail = commands.add_parser(
        "audit",
        help="print the audit trail (who read or wrote which patient's data) as JSON lines",
        description="Print the audit trail as JSON lines, each with the FHIR server "
        "(fhir_server) its patient is on. A hospital with two EHRs has two FHIR servers, on "
        "which Patient/123 may be two different people: when the rows of --patient are on "
        "more than one server, name one with --fhir-server (otherwise nothing is printed, "
        "the servers are named and the exit code is 2). Rows without a server (fhir_server "
        "null: some older rows, and readings of this command without a patient) are printed "
        "with any --fhir-server: they may be that patient's.",
    )
    trail.add_argument("--tenant", type=_tenant_slug, help=tenant_help)
    trail.add_argument("--patient", help="only this patient, e.g. Patient/123")
    trail.add_argument(
        "--fhir-server",
        type=_fhir_server,
        metavar="URL",
        help="only this FHIR server's rows (its base URL, as printed in fhir_server) and "
        "those without one; needed with --patient when its rows are on several servers",
    )
    trail.add_argument(
        "--actor",
        help="only this user, as the trail names them: an absolute URL, e.g. "
        "https://ehr.example/fhir/Practitioner/7 (rows of earlier releases: fhirUser as sent)",
    )
    moment = "a date (Belgian time) or a timestamp with offset"
    trail.add_argument("--since", type=_moment, help=f"from this moment on: {moment}")
    trail.add_argument("--until", type=_moment, help=f"before this moment: {moment}")
    trail.set_defaults(handler=_on_current_schema(cmd_audit))

    box = commands.add_parser("outbox", help="FHIR writes not yet delivered")
    box_commands = box.add_subparsers(dest="outbox_command", required=True, metavar="CMD")
    waiting = box_commands.add_parser(
        "waiting",
        help="list the writes waiting for a sign-in for their patient (audited: it names them)",
        description="List the FHIR writes waiting for authorisation, oldest first: the "
        "nurse's session could no longer write to the FHIR server, and the next launch of "
        "Kindreflex for the same patient through the same EHR sends them. Until then they "
        "also hold back that patient's later saves. One line each: entry, hospital, FHIR "
        "server, patient, kind, undelivered since (Belgian time), what to do. Listing them "
        "is recorded in the audit trail, one row per patient.",
    )
    every_hospital = "only this hospital's (default: every hospital's)"
    waiting.add_argument("--tenant", type=_tenant_slug, help=every_hospital)
    waiting.set_defaults(handler=_on_current_schema(cmd_outbox_waiting))
    refused = box_commands.add_parser(
        "refused",
        help="list the writes the FHIR server refused, with its reason (audited: it names "
        "their patients)",
        description="List the FHIR writes the FHIR server refused, oldest first: failed (a "
        "reason that does not pass, e.g. invalid content or a child the record holds twice) "
        "or conflict (the record changed while they were saved). Nothing of them was "
        "written and they are never sent again: someone removes the cause and records the "
        "finding again from the patient's chart, unless a later save by the same user in the "
        "same session, named on the line, holds it. One line each: entry, hospital, FHIR "
        "server, patient, kind, state, saved (Belgian time), what to do, the server's "
        "reason. Listing them is recorded in the audit trail, one row per patient.",
    )
    refused.add_argument("--tenant", type=_tenant_slug, help=every_hospital)
    refused.set_defaults(handler=_on_current_schema(cmd_outbox_refused))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kindreflex",
        description="Kindreflex-ED: the Flemish Kindreflex for the emergency department "
        "(CDS Hooks service and SMART on FHIR app). Configuration: KINDREFLEX_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the production server")
    serve.add_argument("--host", help="interface to bind (default: KINDREFLEX_HOST)")
    serve.add_argument("--port", type=_port, help="port (default: KINDREFLEX_PORT)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted",
    )
    serve.add_argument(
        "--timeout-keep-alive", type=int, default=KEEP_ALIVE_SECONDS, metavar="SECONDS",
        help=f"close idle connections after this long (default {KEEP_ALIVE_SECONDS}: longer "
        "than the reverse proxy keeps its idle connections to us)",
    )  # fmt: skip
    serve.add_argument(
        "--timeout-graceful-shutdown", type=_seconds, default=GRACEFUL_SHUTDOWN_SECONDS,
        metavar="SECONDS",
        help=f"when stopped, wait this long for the requests in flight, then end them and "
        f"stop (default {GRACEFUL_SHUTDOWN_SECONDS}: the longest the ingress waits for us)",
    )  # fmt: skip
    serve.set_defaults(handler=cmd_serve)

    demo = commands.add_parser(
        "demo", help="run everything on localhost: the app, a sandbox EHR and a FHIR server"
    )
    demo.add_argument("--port", type=_port, default=8000, help="port of the Kindreflex app")
    # embedded: the settings of the code, not the shell's (``embedded_settings``)
    demo.set_defaults(handler=cmd_demo, embedded=True)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    db_commands.add_parser("upgrade", help="apply all migrations").set_defaults(
        handler=cmd_db_upgrade
    )
    wait = db_commands.add_parser(
        "wait",
        help="wait until the database answers with this version's schema (a pod's init "
        "container, while the migration Job runs)",
        description="Wait until the database is reachable and its schema is the one this "
        "version expects (`kindreflex db upgrade` has run), asking every "
        f"{SCHEMA_POLL_SECONDS} s. Exit code 0 when it is; 2 at once when the schema is "
        "newer than this version (waiting does not change that); 75 when --timeout passes "
        "first (the database unreachable, or not migrated).",
    )
    wait.add_argument(
        "--timeout", type=_seconds, default=600, metavar="SECONDS",
        help="give up after this long (default 600)",
    )  # fmt: skip
    wait.set_defaults(handler=cmd_db_wait)
    purge = db_commands.add_parser(
        "purge", help="empty delivered payloads monitoring counted; drop dead admin access"
    )
    purge.add_argument(
        "--days", type=_retention_days, default=retention.DEFAULT_RETENTION.days,
        metavar="DAYS", help="keep delivered payloads this many days (0..3650, default 30)",
    )  # fmt: skip
    purge.set_defaults(handler=_on_current_schema(cmd_db_purge))

    keys = commands.add_parser("keys", help="the app's signing keys (private_key_jwt, JWKS)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    rotate = keys_commands.add_parser(
        "rotate", help="make a new signing key; keep the old one published for a day"
    )
    rotate.add_argument(
        "--discard-unreadable",
        action="store_true",
        help="remove the stored keys this KINDREFLEX_SECRET_KEY cannot open (after the "
        "secret key was changed on purpose); without it, such keys stop the rotation",
    )
    rotate.set_defaults(handler=_on_current_schema(cmd_keys_rotate))
    _add_admin_commands(commands)
    return parser


def _port(text: str) -> int:
    """A TCP port (uvicorn took 99999 modulo 65536, and logged it as 99999)."""
    return _number_in(text, 1, 65535)


def _seconds(text: str) -> int:
    """A whole number of seconds, one hour at most: past that no platform waits."""
    return _number_in(text, 1, 3600, " of seconds")


def _minutes(text: str) -> int:
    return _number_in(text, 1, 1440, " of minutes")


def _number_in(text: str, low: int, high: int, unit: str = "") -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise argparse.ArgumentTypeError(
            f"must be a whole number{unit}, {low}..{high}: {text[:20]}"
        )
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    embedded = getattr(args, "embedded", False)
    try:
        settings = embedded_settings(environment="demo") if embedded else load_settings()
    except (ValidationError, FileNotFoundError) as error:
        print(
            f"kindreflex: the settings cannot be used:\n{_settings_problems(error)}",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    _warn_of_ignored_settings(embedded)
    # the commands read a hospital's configuration, checked against the guide: the one the
    # settings name (the container image's), as the web app does (``create_app``)
    terminology.configure(settings.guide_dir)
    handler: Command = args.handler
    try:
        return handler(args, settings)
    except OperationalError as error:  # the database is down, unreachable or unreadable
        print(_unusable(settings, error), file=sys.stderr)
        return 2
    except terminology.GuideError as error:
        print(f"kindreflex: the built FHIR guide cannot be used: {error}", file=sys.stderr)
        return 2


def _unusable(settings: Settings, error: OperationalError) -> str:
    """The database's failure in one line, naming it without its password."""
    where = shown_database_url(settings.database_url)
    reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
    return f"The database at {where} cannot be used: {reason}"


def _warn_of_ignored_settings(embedded: bool) -> None:
    if embedded and (given := settings_given()):
        log.warning(
            "settings ignored: the demo runs on its embedded defaults",
            extra={"fields": {"ignored": ", ".join(given)}},
        )
    elif not embedded and (unknown := unknown_settings()):
        log.warning(
            "settings ignored: no setting has these names; check their spelling",
            extra={"fields": {"ignored": ", ".join(unknown)}},
        )


def _settings_problems(error: ValidationError | FileNotFoundError) -> str:
    """One line per setting at fault, named as the environment names it (a check of
    several settings together names none: its message names them)."""
    if isinstance(error, FileNotFoundError):
        return f"  {error}"
    return "\n".join(
        f"  KINDREFLEX_{'_'.join(str(part) for part in problem['loc']).upper()}: {problem['msg']}"
        if problem["loc"]
        else f"  {problem['msg']}"
        for problem in error.errors()
    )


if __name__ == "__main__":
    sys.exit(main())
