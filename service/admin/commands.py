"""What ``kindreflex config export|import``, ``kindreflex admin bootstrap``,
``kindreflex audit`` and ``kindreflex outbox waiting|refused`` do.

``service/cli.py`` only parses arguments; these functions open the database, act, and
return the process exit code. Messages go to standard error, data to standard output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson

from service import audit, outbound, outbox
from service.admin import access
from service.admin.changes import ConfigChange, history
from service.admin.config import (
    ConfigurationError,
    RegistrationsInUseError,
    StaleConfigurationError,
    StaleFileError,
    TenantAdmin,
    export_yaml,
)
from service.db.base import Database, utcnow
from service.local_time import local
from service.settings import Settings
from service.tenancy import SecretBox, TenantDirectory, UnknownTenantError
from service.tenant_config import TenantConfiguration

CLI_ACTOR = "kindreflex config import"


def _directory(settings: Settings) -> tuple[Database, TenantDirectory]:
    database = Database.of(settings)
    return database, TenantDirectory(database, SecretBox(settings.secret_key))


def export_config(settings: Settings, tenant: str | None) -> int:
    """Print the tenant's configuration as YAML (client secrets left out), with the version
    it is (the file's ``version``, which an import of it checks)."""
    database, tenants = _directory(settings)
    try:
        context = tenants.get(tenant or settings.default_tenant, fresh=True)
    except UnknownTenantError as error:
        print(f"kindreflex: {error}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    sys.stdout.write(export_yaml(context.config, context.version))
    return 0


#: How many of the changes made since a stale file's version the refusal lists.
CHANGES_LISTED = 10


def import_config(
    settings: Settings, tenant: str | None, path: Path, actor: str, force: bool = False
) -> int:
    """Validate the whole file, then store it as the tenant's new version (or change nothing).

    A file naming the version it was exported from (``version``) is refused when another is
    in force, saying what was changed since, unless ``force``: it would undo those changes.
    A file removing a registration, or moving it to another FHIR server, while undelivered
    writes or open cases depend on it is refused, saying which and what, unless ``force``.

    Decision: one ``--force`` for both. Either way it means "apply this file as it is"; a
    second flag would only be added to the first once the first refusal is read. Both
    refusals say what the flag would do, and a forced import says what it left stranded
    (and the admin events record it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"kindreflex: cannot read {path}: {error}", file=sys.stderr)
        return 2
    database, tenants = _directory(settings)
    slug = tenant or settings.default_tenant
    outbound.configure(  # the file's URLs are checked against it (and the proxy's use)
        settings.outbound_allow, settings.outbound_proxy, settings.outbound_no_proxy
    )
    admin = TenantAdmin(tenants)
    try:
        context = admin.import_yaml(slug, text, actor, force=force)
    except ConfigurationError as error:
        print(f"{path}: nothing was changed:", file=sys.stderr)
        for problem in error.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    except StaleFileError as error:
        since = _changes_since(database, settings, tenants.get(slug, fresh=True).id, error)
        _say_stale_file(path, slug, error, since)
        return 1
    except StaleConfigurationError as error:  # another change came in while this one was saved
        print(f"{path}: nothing was changed: {error}", file=sys.stderr)
        return 1
    except RegistrationsInUseError as error:
        print(f"{path}: nothing was changed:", file=sys.stderr)
        for stranded in error.stranded:
            print(f"{path}: {stranded.refusal('import the file with --force')}", file=sys.stderr)
        return 1
    finally:
        database.dispose()
    for stranded in admin.forced:  # what --force left stranded, as the admin events say
        done = "removed" if stranded.moved_to is None else f"moved to {stranded.moved_to}"
        counts = stranded.depending
        print(
            f"{path}: registration '{stranded.registration.id}' "
            f"({stranded.registration.fhir_base_url}) {done} anyway: {counts.writes} "
            f"undelivered write(s) through it and {counts.cases} open case(s) depended on it",
            file=sys.stderr,
        )
    print(
        f"hospital '{slug}': configuration version {context.version} is in force", file=sys.stderr
    )
    return 0


def _changes_since(
    database: Database, settings: Settings, tenant_id: int, error: StaleFileError
) -> list[ConfigChange]:
    """The versions after the file's, oldest first (the last ``CHANGES_LISTED``)."""
    newer = error.current_version - error.exported_from
    if newer <= 0:  # a version this hospital never had (a file of another hospital?)
        return []
    box = SecretBox(settings.secret_key)
    changes = history(database, box, tenant_id, limit=min(newer, CHANGES_LISTED))
    return [c for c in reversed(changes) if c.version > error.exported_from]


def _say_stale_file(
    path: Path, slug: str, error: StaleFileError, since: list[ConfigChange]
) -> None:
    """Which versions, what changed since (the paths, as the audit names them), and what to
    do: export again, or --force."""
    print(
        f"{path}: nothing was changed: the file was exported from version "
        f"{error.exported_from}, and hospital '{slug}' is at version {error.current_version} "
        "now: importing it would undo what was changed since",
        file=sys.stderr,
    )
    unlisted = error.current_version - error.exported_from - len(since)
    if since and unlisted > 0:
        print(f"{path}:   {unlisted} earlier change(s), see the audit", file=sys.stderr)
    for change in since:
        paths = [c.path or "(the whole configuration)" for c in change.changes]
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        print(
            f"{path}:   version {change.version}, {local(change.at):%d/%m/%Y %H:%M}, "
            f"{change.actor}: {shown or 'no setting'}",
            file=sys.stderr,
        )
    print(
        f"{path}: export the configuration again and make your change on that export, or "
        "import this file with --force to replace the configuration with it as it is (every "
        "version stays in the audit)",
        file=sys.stderr,
    )


def bootstrap(settings: Settings, tenant: str | None, minutes: int) -> int:
    """Print a one-time admin token (creating the tenant with defaults if it is new)."""
    database, tenants = _directory(settings)
    slug = tenant or settings.default_tenant
    try:
        try:
            context = tenants.get(slug)
        except UnknownTenantError:
            context = tenants.save(
                slug, TenantConfiguration(name=slug), "kindreflex admin bootstrap"
            )
        token, expires_at = access.issue_bootstrap_token(
            database, context.id, timedelta(minutes=minutes)
        )
    finally:
        database.dispose()
    prefix = "" if slug == settings.default_tenant else f"/t/{slug}"
    print(token)
    print(
        f"One-time admin token for hospital '{slug}', "
        f"valid until {expires_at:%Y-%m-%d %H:%M} UTC.\n"
        f"Sign in at {settings.public_url}{prefix}/admin/login",
        file=sys.stderr,
    )
    return 0


def show_audit(settings: Settings, tenant: str | None, query: audit.TrailQuery, actor: str) -> int:
    """Print a hospital's audit trail as JSON lines (``query.tenant_id`` is set here from
    the slug). Reading the trail is itself audited: a ``search-type`` row by ``actor``,
    committed before the first line is printed (a reader that stops early, ``| head``,
    has still been recorded), and not printed itself.

    A patient whose reference the trail has on several FHIR servers is refused unless the
    query names the server: the rows of two people would be printed as one's."""
    database, tenants = _directory(settings)
    try:
        query = replace(query, tenant_id=tenants.get(tenant or settings.default_tenant).id)
        with database.session() as session:
            query = audit.one_patient(session, query)
            read = audit.AuditFact(
                actor, audit.AuditAction.SEARCH, query.patient_ref, (), "success", utcnow()
            )
            reading = audit.record_local(session, query.tenant_id, read, query.fhir_base_url)
            session.flush()
            reading_id = reading.id
        with database.session() as session, _printed():
            for row in audit.trail(session, query, leaving_out=reading_id):
                sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
            sys.stdout.flush()
    except (UnknownTenantError, audit.AmbiguousPatientError) as error:
        print(f"kindreflex: {error}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    return 0


@contextlib.contextmanager
def _printed() -> Iterator[None]:
    """Printing to a reader that may stop early (``| head``, ``less`` quit): its end is the
    end of the output, not an error (the reading was recorded before)."""
    try:
        yield
    except BrokenPipeError:
        # Python's advice: point standard output elsewhere, so that the flush at exit does
        # not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


#: What an operator has someone do about an entry, by its state. Waiting: a launch for its
#: patient through the same EHR takes it over (``Outbox.adopt_session``) and sends it.
#: Refused: nothing of it was written and it is never sent again, so the finding must be
#: recorded anew (the nurse's chart, and for a concern the worklist, says so too).
ADVICE = {
    outbox.DeliveryState.WAITING_AUTHORISATION: (
        "open Kindreflex from this patient's chart to send it"
    ),
    outbox.DeliveryState.FAILED: (
        "the FHIR server refused it: remove the cause it names, then record the finding "
        "again from this patient's chart"
    ),
    outbox.DeliveryState.CONFLICT: (
        "the record changed while it was saved: record the finding again from this patient's chart"
    ),
}

#: How much of the server's reason a line shows (``last_error`` keeps up to 2000 characters).
REASON_SHOWN = 300


def show_waiting(settings: Settings, tenant: str | None, actor: str) -> int:
    """Print the outbox entries waiting for a sign-in (``waiting-authorisation``), of every
    hospital or of ``tenant``'s, one line each, oldest first; "none waiting" (on standard
    error, like other messages) when there are none. Audited as :func:`_show_undelivered`
    says."""
    states = (outbox.DeliveryState.WAITING_AUTHORISATION,)
    return _show_undelivered(settings, tenant, actor, states, "none waiting")


def show_refused(settings: Settings, tenant: str | None, actor: str) -> int:
    """Print the outbox entries the FHIR server refused (``failed``, ``conflict``), of every
    hospital or of ``tenant``'s, oldest first, each with the server's reason: a save
    without a concern that failed is on no worklist, and ``/readyz`` only counts it."""
    return _show_undelivered(settings, tenant, actor, outbox.REFUSED_STATES, "none refused")


def _show_undelivered(
    settings: Settings,
    tenant: str | None,
    actor: str,
    states: tuple[outbox.DeliveryState, ...],
    none: str,
) -> int:
    """Print the entries in ``states``, one line each, and ``none`` on standard error when
    there are none.

    The lines name patients: the reading is audited as ``kindreflex audit`` audits its own,
    a ``search-type`` row by ``actor``, here one per patient listed
    (:func:`audit.record_listing`), committed before the first line is printed."""
    database, tenants = _directory(settings)
    try:
        tenant_id = None if tenant is None else tenants.get(tenant).id
        with database.session() as session:  # recorded before a line is printed
            entries = outbox.undelivered(session, states, tenant_id)
            listed = (
                audit.Listed(entry.tenant_id, entry.fhir_base_url, entry.patient_ref)
                for entry in entries
                if entry.patient_ref is not None
            )
            audit.record_listing(session, actor, listed, utcnow())  # once per patient
        stranded = _stranded(tenants, entries)
        with _printed():
            for entry in entries:
                print(_undelivered_line(entry, len(states) > 1, entry.entry_id in stranded))
            sys.stdout.flush()
    except UnknownTenantError as error:
        print(f"kindreflex: {error}", file=sys.stderr)
        return 2
    finally:
        database.dispose()
    if not entries:
        print(none, file=sys.stderr)
    return 0


def _stranded(tenants: TenantDirectory, entries: list[outbox.Undelivered]) -> set[int]:
    """The entries waiting for a sign-in whose EHR registration is gone, or names another
    FHIR server now: no launch takes them over (``Outbox.adopt_session``), and opening
    Kindreflex from the chart, which the line advised, could never send them. An admin
    removes a registration anything depends on only when told to go ahead anyway
    (``smart_app.admin``)."""
    configs: dict[str, TenantConfiguration | None] = {}
    stranded = set()
    for entry in entries:
        if entry.state != outbox.DeliveryState.WAITING_AUTHORISATION:
            continue
        if entry.tenant_slug not in configs:
            try:
                configs[entry.tenant_slug] = tenants.get(entry.tenant_slug).config
            except UnknownTenantError:
                configs[entry.tenant_slug] = None
        config = configs[entry.tenant_slug]
        registrations = config.registrations if config else []
        if not any(
            r.id == entry.registration_id and r.fhir_base_url == entry.fhir_base_url
            for r in registrations
        ):
            stranded.add(entry.entry_id)
    return stranded


#: What to do with an entry waiting for a sign-in whose registration is gone (``_stranded``).
STRANDED_ADVICE = (
    "its EHR registration '{registration}' was removed or names another FHIR server now: "
    "no launch can send it until a registration with that id and this FHIR server is added "
    "again, then Kindreflex opened from this patient's chart"
)


def _undelivered_line(entry: outbox.Undelivered, show_state: bool, stranded: bool) -> str:
    """One entry on one line; a refused one's reason flattened and cut to ``REASON_SHOWN``.
    ``stranded``: waiting for a sign-in through a registration no longer there."""
    state = f"{entry.state}  " if show_state else ""
    advice = (
        STRANDED_ADVICE.format(registration=entry.registration_id)
        if stranded
        else ADVICE[entry.state]
    )
    line = (
        f"entry {entry.entry_id}  hospital {entry.tenant_slug}  "
        f"FHIR server {entry.fhir_base_url}  {entry.patient_ref or 'no patient'}  "
        f"{entry.kind}  {state}undelivered since {local(entry.saved_at):%d/%m/%Y %H:%M}: "
        f"{advice}"
    )
    if entry.state in outbox.REFUSED_STATES and entry.saved_since is not None:
        # the nurse saved again at once (a conflict brings her form back): recorded twice else
        line += f", unless entry {entry.saved_since}, saved since and not refused, holds it"
    if entry.state in outbox.REFUSED_STATES:
        reason = " ".join((entry.last_error or "no reason recorded").split())
        line += f"  reason: {reason[:REASON_SHOWN]}"
    return line
