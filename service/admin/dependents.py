"""What depends on an EHR registration: what its removal would leave stranded.

A nurse's save is delivered to the FHIR server with her session's token. One that waits
for a sign-in (``waiting-authorisation``) is sent only by a later launch for its patient
*through the same registration* (``service.outbox.Outbox.adopt_session`` matches its id);
a pending one whose token must be refreshed needs the registration's client too
(``smart_app.session.SessionTokens``), and waits for such a launch as well once it is
gone. A case on the worklist is worked only from a launch on its patient's FHIR server
(``service.casework``: ``CaseOnAnotherServerError``), which only a registration of that
server brings. None of them can ever be sent or worked once the registration is removed,
unless a registration with the same id and FHIR server is added again. The admin screen
and API count them before removing it (``smart_app.admin``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from service.db.base import Database
from service.db.models import Concern, OutboxEntry
from service.outbox import DeliveryState
from service.tenant_config import EhrRegistration, TenantConfiguration, base_url_key


@dataclass(frozen=True)
class Dependents:
    """What a registration's removal strands: undelivered writes through it, by state,
    and the open cases on the worklist whose FHIR server no other registration names."""

    pending: int = 0
    waiting: int = 0
    cases: int = 0

    @property
    def writes(self) -> int:
        """The undelivered writes: pending, or waiting for a sign-in."""
        return self.pending + self.waiting

    def __bool__(self) -> bool:
        return bool(self.writes or self.cases)

    def more_than(self, shown: Dependents) -> bool:
        """Whether more depends on it now than ``shown`` (what an admin was told)."""
        return self.writes > shown.writes or self.cases > shown.cases

    def __add__(self, other: Dependents) -> Dependents:
        return Dependents(
            self.pending + other.pending, self.waiting + other.waiting, self.cases + other.cases
        )

    def as_json(self) -> dict[str, int]:
        return {
            "undelivered_writes": self.writes,
            "pending": self.pending,
            "waiting_for_sign_in": self.waiting,
            "open_cases": self.cases,
        }


def on_registration(
    database: Database,
    tenant_id: int,
    config: TenantConfiguration,
    registration_id: str,
    after: TenantConfiguration | None = None,
) -> Dependents:
    """What depends on the registration ``registration_id`` of ``config`` (none: nothing).

    ``after``: the configuration that replaces ``config`` (default: ``config`` without the
    registration). A case stays workable when a registration of ``after`` names its FHIR
    server (another id replacing this one); the writes through this id do not."""
    registration = config.registration_by_id(registration_id)
    if registration is None:
        return Dependents()
    server = base_url_key(registration.fhir_base_url)
    remaining = (
        [r for r in config.registrations if r.id != registration_id]
        if after is None
        else after.registrations
    )
    # a case is worked from any registration of its server (the configuration allows one,
    # but a version stored before that check may name a server twice)
    served_elsewhere = any(base_url_key(r.fhir_base_url) == server for r in remaining)
    with database.session() as session:
        by_state: dict[str, int] = dict(
            session.execute(
                select(OutboxEntry.state, func.count())
                .where(
                    OutboxEntry.tenant_id == tenant_id,
                    OutboxEntry.registration_id == registration_id,
                    OutboxEntry.state.in_(
                        (DeliveryState.PENDING, DeliveryState.WAITING_AUTHORISATION)
                    ),
                )
                .group_by(OutboxEntry.state)
            ).all()
        )
        # by server as stored, then compared as base_url_key compares: few servers a hospital
        open_by_server: list[tuple[str, int]] = (
            []
            if served_elsewhere
            else [
                (url, n)
                for url, n in session.execute(
                    select(Concern.fhir_base_url, func.count())
                    .where(Concern.tenant_id == tenant_id, Concern.status == "open")
                    .group_by(Concern.fhir_base_url)
                )
            ]
        )
        cases = sum(n for url, n in open_by_server if base_url_key(url) == server)
    return Dependents(
        pending=by_state.get(DeliveryState.PENDING, 0),
        waiting=by_state.get(DeliveryState.WAITING_AUTHORISATION, 0),
        cases=cases,
    )


@dataclass(frozen=True)
class Stranded:
    """A registration a change removes (``moved_to`` None) or moves to another FHIR server,
    and what depends on it."""

    registration: EhrRegistration
    moved_to: str | None
    depending: Dependents

    def refusal(self, force: str) -> str:
        """Why it was not removed or moved (English: the API's and the command's), ending
        with how to do it anyway (``force``: "send ?force=true", "import the file with
        --force")."""
        registration, depending = self.registration, self.depending
        gone, verb = ("removed", "remove") if self.moved_to is None else ("moved", "move")
        done = gone if self.moved_to is None else f"moved to {self.moved_to}"
        writes = _counted(depending.writes, "undelivered write", "undelivered writes")
        cases = _counted(depending.cases, "open case", "open cases")
        return (
            f"registration '{registration.id}' ({registration.fhir_base_url}) was not {done}: "
            f"{writes} through it ({depending.pending} pending, {depending.waiting} waiting for "
            f"a sign-in) and {cases} on the worklist depend on it. A save waiting for a sign-in "
            "is sent only by a later launch through this registration, and a case is worked "
            f"only from an EHR registered with its FHIR server: once it is {gone} they stay "
            "undelivered and cannot be worked until a registration with the same id and FHIR "
            "server is added again. Let the writes be delivered first (`kindreflex outbox "
            f"waiting` lists those waiting for a sign-in), or {force} to {verb} it anyway"
        )


def _counted(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def stranded_by(
    database: Database, tenant_id: int, before: TenantConfiguration, after: TenantConfiguration
) -> list[Stranded]:
    """The registrations of ``before`` that ``after`` removes or moves (its id kept, its FHIR
    base written otherwise) while anything depends on them, counted against ``after``: a case whose
    server another registration of ``after`` names stays workable."""
    servers = {r.id: r.fhir_base_url for r in after.registrations}
    stranded = []
    for registration in before.registrations:
        moved_to = servers.get(registration.id)
        # the same server written another way moves it too: a launch takes over the saves
        # queued with the base as written (Outbox.adopt_session), and a patient's saves keep
        # their order by it
        if moved_to == registration.fhir_base_url:
            continue  # kept: its launches take over what waits for it
        depending = on_registration(database, tenant_id, before, registration.id, after)
        if depending:
            stranded.append(Stranded(registration, moved_to, depending))
    return stranded
