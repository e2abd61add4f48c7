"""The "test connection": what an EHR supports of what Kindreflex needs, in plain words.

Fetches ``{iss}/.well-known/smart-configuration`` (SMART App Launch 2.x) and
``{iss}/metadata`` (the FHIR CapabilityStatement) and checks each thing the app relies
on. The result is data (check id, found or not, needed or nice to have) plus the
sentence for the administrator in their language; nothing is stored but an admin event.

Both fetches are bounded (:mod:`service.bounded_fetch`): the test runs in a thread of the
pool every hospital's pages share, and httpx's timeout bounds each read, not the answer,
so an EHR trickling its answer (or sending one without end) would hold that thread and
the memory for as long as it liked. ``ANSWER_BOUNDS`` fits a real EHR: a CapabilityStatement
listing every resource with its search parameters and operations is a few hundred KiB
(a large EHR's approaches 1 MiB), generated within a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from service.bounded_fetch import BlockingClient, BodyTooLargeError, Bounds, UndecodableBodyError
from service.i18n import Language, translate
from service.scopes import UPDATED_RESOURCES, WRITTEN_RESOURCES
from service.tenant_config import EhrRegistration, scopes_missing
from service.triage import CHART_REVINCLUDES

#: Resources the app creates only when their business identifier finds none
#: (``ifNoneExist``), so that a save sent again creates nothing twice; Provenance and
#: AuditEvent have no identifier in R4 (the outbox sends them once).
CONDITIONALLY_CREATED = ("RelatedPerson", "Observation", "ServiceRequest", "Organization", "Flag")
#: Resources the app and the CDS service read.
READ_RESOURCES = ("Patient", "Encounter", "Condition")
#: Resources the outbox reads at the version the user saw (``Type/id/_history/version``,
#: a vread) to lay a merge update over it (``outbox.TransactionBuilder.merge_update``): a
#: child the record holds, corrected by the nurse.
VREAD_RESOURCES = ("RelatedPerson",)
#: Each of the two fetches, whole: four times the largest CapabilityStatement seen.
ANSWER_BOUNDS = Bounds(seconds=10.0, max_bytes=4 * 1024 * 1024)


@dataclass(frozen=True)
class Check:
    """One capability: found or not; ``needed`` False means nice to have."""

    id: str
    ok: bool
    needed: bool
    message: str


@dataclass(frozen=True)
class ConnectionReport:
    iss: str
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        """Everything needed is there."""
        return all(check.ok for check in self.checks if check.needed)

    def as_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "ready": self.ready,
            "checks": [check.__dict__ for check in self.checks],
        }


Reason = tuple[str, dict[str, object]]  # a message id suffix and its values


def _fetch_json(client: BlockingClient, url: str) -> tuple[dict[str, Any] | None, Reason | None]:
    """The JSON object at ``url``, or None and why not."""
    try:
        response = client.request(
            "GET", url, headers={"Accept": "application/json, application/fhir+json"}
        )
    except httpx.TimeoutException:  # one network operation took longer than the timeout
        return None, ("timeout", {})
    except TimeoutError:  # each step in time, the whole answer not
        return None, ("too_slow", {"seconds": f"{ANSWER_BOUNDS.seconds:g}"})
    except BodyTooLargeError as error:
        return None, ("too_large", {"mib": f"{error.max_bytes / 1024 / 1024:g}"})
    except UndecodableBodyError:
        return None, ("undecodable", {})
    except httpx.HTTPError:
        return None, ("unreachable", {})
    if response.status_code != 200:
        return None, ("http", {"status": response.status_code})
    try:
        data = response.json()
    except (ValueError, RecursionError):  # nested too deep to read
        return None, ("not_json", {})
    return (data, None) if isinstance(data, dict) else (None, ("not_json", {}))


class _Report:
    """Collects checks with their translated sentences."""

    def __init__(self, language: Language) -> None:
        self.language = language
        self.checks: list[Check] = []

    def reason(self, reason: Reason) -> str:
        return translate(self.language, f"admin.reason.{reason[0]}", **reason[1])

    def add(self, check_id: str, ok: bool, needed: bool = True, **values: object) -> None:
        message = translate(
            self.language, f"admin.check.{check_id}.{'ok' if ok else 'missing'}", **values
        )
        self.checks.append(Check(check_id, ok, needed, message))


class _Members:
    """An EHR's answer read member by member, a member of the wrong kind ignored and noted.

    The answers are JSON from a server we do not control: a list of capabilities holding an
    object, a ``rest`` entry that is a string or an ``interaction`` that is no list made
    ``set()`` and ``.get()`` raise, a 500 instead of a report. What was ignored is named
    in the report (``_note_ignored``), so that the administrator knows why a check fails.
    """

    #: At most this many places are named; a broken answer may have thousands.
    SHOWN = 5

    def __init__(self) -> None:
        self.ignored: list[str] = []

    def _list(self, document: dict[str, Any], key: str, where: str) -> list[Any]:
        value = document.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.ignored.append(f"{where}{key}")
            return []
        return value

    def strings(self, document: dict[str, Any], key: str, where: str = "") -> set[str]:
        """The text items of the list ``document[key]``; other items noted."""
        items = self._list(document, key, where)
        self.ignored += [
            f"{where}{key}[{i}]" for i, v in enumerate(items) if not isinstance(v, str)
        ]
        return {item for item in items if isinstance(item, str)}

    def text(self, document: dict[str, Any], key: str, where: str) -> str | None:
        """The text ``document[key]``; None when absent, or noted when of another kind."""
        value = document.get(key)
        if value is not None and not isinstance(value, str):
            self.ignored.append(f"{where}{key}")
        return value if isinstance(value, str) else None

    def objects(
        self, document: dict[str, Any], key: str, where: str = ""
    ) -> list[tuple[str, dict[str, Any]]]:
        """The JSON objects of the list ``document[key]`` with their places; others noted."""
        places = [(f"{where}{key}[{i}]", v) for i, v in enumerate(self._list(document, key, where))]
        self.ignored += [place for place, value in places if not isinstance(value, dict)]
        return [(place, value) for place, value in places if isinstance(value, dict)]


def _note_ignored(report: _Report, check_id: str, members: _Members) -> None:
    """Says which members of the answer were of the wrong kind, if any (nice to have)."""
    if members.ignored:
        shown = members.ignored[: _Members.SHOWN]
        more = len(members.ignored) - len(shown)
        report.add(
            check_id,
            False,
            needed=False,
            members=", ".join(shown) + (f" (+{more})" if more else ""),
        )


def _smart_checks(report: _Report, smart: dict[str, Any], registration: EhrRegistration) -> None:
    members = _Members()
    capabilities = members.strings(smart, "capabilities")
    grants = members.strings(smart, "grant_types_supported")
    pkce = members.strings(smart, "code_challenge_methods_supported")
    auth_methods = members.strings(smart, "token_endpoint_auth_methods_supported")
    scopes = members.strings(smart, "scopes_supported")
    report.add("launch_ehr", "launch-ehr" in capabilities)
    report.add("authorization_code", "authorization_code" in grants)
    report.add("pkce_s256", "S256" in pkce)
    if registration.client_auth == "private_key_jwt":
        report.add(
            "private_key_jwt",
            "private_key_jwt" in auth_methods or "client-confidential-asymmetric" in capabilities,
        )
    # the registration's own request: a stored one from before the check on saving it
    missing = scopes_missing(registration.scopes)
    report.add("registration_scopes", not missing, missing=" ".join(missing))
    report.add("context_ehr_encounter", "context-ehr-encounter" in capabilities)
    openid = "sso-openid-connect" in capabilities or {"openid", "fhirUser"} <= scopes
    report.add("openid_fhiruser", openid)
    report.add("launch_standalone", "launch-standalone" in capabilities, needed=False)
    # without refresh tokens a save still undelivered when the nurse's session ends waits
    # for her next sign-in: it works, late
    offline = "permission-offline" in capabilities or "offline_access" in scopes
    report.add("refresh_tokens", offline, needed=False)
    # RFC 9207, or an answer only at the registration's own redirect URI: else another
    # registered EHR, of any hospital, can have a sign-in at this one used in a launch of
    # its own (docs/architecture.md, SMART sessions). Nice to have: with no other EHR
    # registered in the installation there is none to fear
    named = smart.get("authorization_response_iss_parameter_supported") is True
    told_apart = named or registration.own_redirect_uri
    report.add("answers_told_apart", told_apart, needed=False, id=registration.id)
    _note_ignored(report, "smart_configuration_members", members)


def _fhir_checks(report: _Report, metadata: dict[str, Any]) -> None:
    version = str(metadata.get("fhirVersion", ""))
    report.add("fhir_r4", version.startswith("4.0"), version=version or "?")
    members = _Members()
    interactions: dict[str, set[str]] = {}
    system: set[str] = set()  # the whole-system interactions (transaction, batch…)
    conditional: set[str] = set()  # the types declaring conditionalCreate
    versioned: set[str] = set()  # the types declaring versioning versioned-update (If-Match)
    revincluded: set[str] = set()  # the Patient search's declared _revinclude values
    for rest_at, rest in members.objects(metadata, "rest"):
        system |= _codes(members, rest, rest_at)
        for at, resource in members.objects(rest, "resource", f"{rest_at}."):
            kind = str(resource.get("type"))
            interactions.setdefault(kind, set()).update(_codes(members, resource, at))
            if resource.get("conditionalCreate") is True:
                conditional.add(kind)
            if members.text(resource, "versioning", f"{at}.") == "versioned-update":
                versioned.add(kind)
            if kind == "Patient":
                revincluded |= members.strings(resource, "searchRevInclude", f"{at}.")
    # every save is one transaction: all its resources are written, or none
    report.add("transaction", "transaction" in system)
    cannot_write = [r for r in WRITTEN_RESOURCES if "create" not in interactions.get(r, set())]
    report.add("write_resources", not cannot_write, resources=", ".join(cannot_write))
    cannot_update = [r for r in UPDATED_RESOURCES if "update" not in interactions.get(r, set())]
    report.add("update_resources", not cannot_update, resources=", ".join(cannot_update))
    cannot_read = [r for r in READ_RESOURCES if "read" not in interactions.get(r, set())]
    report.add("read_resources", not cannot_read, resources=", ".join(cannot_read))
    # R4 declares vread apart from read: without it every merge update fails at delivery
    cannot_vread = [r for r in VREAD_RESOURCES if "vread" not in interactions.get(r, set())]
    report.add("vread_resources", not cannot_vread, resources=", ".join(cannot_vread))
    unconditional = [r for r in CONDITIONALLY_CREATED if r not in conditional]
    report.add("conditional_create", not unconditional, resources=", ".join(unconditional))
    unguarded = [r for r in UPDATED_RESOURCES if r not in versioned]
    report.add("versioned_update", not unguarded, resources=", ".join(unguarded))
    # the triage page reads the patient's children and Flags with the Patient, in one
    # search: a server ignoring a _revinclude shows no child (typed again: twice on the
    # record) and no open concern (a second one raised)
    unread = [r for r in CHART_REVINCLUDES if r not in revincluded]
    report.add("chart_revinclude", not unread, includes=", ".join(unread))
    _note_ignored(report, "capability_statement_members", members)


def _codes(members: _Members, declared: dict[str, Any], at: str) -> set[str]:
    """The codes of ``declared``'s interactions (of a ``rest`` entry or of a resource)."""
    return {
        code
        for code_at, interaction in members.objects(declared, "interaction", f"{at}.")
        if (code := members.text(interaction, "code", f"{code_at}.")) is not None
    }


def check_connection(
    registration: EhrRegistration, language: Language, timeout_seconds: float
) -> ConnectionReport:
    """Ask the EHR what it supports; never raises for what the EHR answers."""
    iss = registration.fhir_base_url
    report = _Report(language)
    with BlockingClient(ANSWER_BOUNDS, timeout_seconds) as client:
        smart, smart_error = _fetch_json(client, f"{iss}/.well-known/smart-configuration")
        metadata, metadata_error = _fetch_json(client, f"{iss}/metadata")
    if smart is None or not smart.get("authorization_endpoint"):
        why = report.reason(smart_error or ("no_authorization_endpoint", {}))
        report.add("smart_configuration", False, reason=why)
    else:
        report.add("smart_configuration", True)
        _smart_checks(report, smart, registration)
    if metadata is None or metadata.get("resourceType") != "CapabilityStatement":
        why = report.reason(metadata_error or ("no_capability_statement", {}))
        report.add("capability_statement", False, reason=why)
    else:
        report.add("capability_statement", True)
        _fhir_checks(report, metadata)
    return ConnectionReport(iss, tuple(report.checks))
