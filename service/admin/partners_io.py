"""The partner directory as CSV and as a FHIR Bundle of Organization + HealthcareService.

Imports validate every row (the rules of ``service.partners``) and collect all problems
with their row number before anything is returned: a bad row rejects the whole file.

Bundle mapping (FHIR R4, ``Bundle.type`` collection), per partner:

* ``Organization`` (profile kindreflex-partner-organization): identifier = the directory
  key (Kindreflex partner naming system) and, where known, the KBO/BCE number (HL7
  Belgium naming system); ``type`` from the guide's partner-type CodeSystem; name;
  ``telecom`` = unlabelled phones, website, e-mail; ``address.text``; a labelled phone
  (e.g. "Oudenaarde") becomes a ``contact`` with that name.
* ``HealthcareService``: ``providedBy`` the Organization; ``comment`` = description;
  ``availabilityExceptions`` = opening hours; ``coverageArea.display`` = the region.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from service.admin.config import ConfigurationError, Problem, Reason, issue_reason
from service.fhir import terminology
from service.partners import PartnerDirectoryError
from service.tenant_config import SUBMITTED, PartnerEntry, PartnerSettings

CSV_COLUMNS = (
    "id", "type", "name", "description", "phones", "website", "email", "address",
    "opening_hours", "region", "cbe",
)  # fmt: skip
_PHONE_CELL = re.compile(r"^\s*(?P<number>[0-9][0-9 ]*?)\s*(?:\((?P<label>[^()]*)\))?\s*$")
_NAMESPACE = uuid.UUID("6f2b0c1e-1d7e-4e0a-9a57-6b1f3c4d5e6f")  # stable fullUrls per partner id


# --- the guide's codes and identifier systems ------------------------------------------

PROFILE = "kindreflex-partner-organization"


@lru_cache(maxsize=1)
def _guide() -> dict[str, str]:
    """The URLs the mapping needs, from the built guide (nothing typed here)."""
    profile = terminology.guide().structure_definition(PROFILE)
    fixed = {e["id"]: e["fixedUri"] for e in profile["differential"]["element"] if "fixedUri" in e}
    return {
        "profile": terminology.profile_url(PROFILE),
        "partner_type": terminology.code_system_url("partner-type"),
        "sid_partner": terminology.identifier_system("partner"),
        # HL7 Belgium's KBO/BCE naming system, as the profile's identifier slice fixes it
        "cbe": fixed["Organization.identifier:cbe.system"],
    }


# --- validation shared by both formats ---------------------------------------------------


def _validated(
    region: str, rows: Iterable[tuple[int, Callable[[], dict[str, Any]]]], unit: str
) -> PartnerSettings:
    """Every row checked on its own (all problems collected), then the directory as a whole,
    with the checks of a submitted configuration (``SUBMITTED``: a text too long): the
    directory is saved as checked here, not validated again."""
    entries: list[PartnerEntry] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, read in rows:
        at, place = f"{unit} {number}", (unit, number)
        try:
            entry = PartnerEntry.model_validate(read(), context=SUBMITTED)
            PartnerSettings(region=region, entries=[entry])  # the directory rules, per row
        except (ValidationError, ValueError) as error:
            problems.append(Problem(_reason(error), at, None, _why(error), place))
            continue
        except (KeyError, TypeError, AttributeError):  # e.g. a telecom that is not an object
            message, reason = "not a valid Organization/HealthcareService", _NOT_A_PARTNER
            problems.append(Problem(message, at, None, (reason,), place))
            continue
        if entry.id in seen:
            message, reason = f"the id '{entry.id}' is used twice", _id_twice(entry.id)
            problems.append(Problem(message, at, None, (reason,), place))
        seen.add(entry.id)
        entries.append(entry)
    if not entries and not problems:
        problems.append(
            Problem("the file has no partners", reasons=(Reason("admin.problem.no-partners"),))
        )
    if problems:
        raise ConfigurationError(problems)
    try:
        return PartnerSettings.model_validate(
            {"region": region, "entries": entries}, context=SUBMITTED
        )
    except ValidationError as error:  # the region (a bundle's)
        raise ConfigurationError([Problem(_reason(error), reasons=_why(error))]) from None


_NOT_A_PARTNER = Reason("admin.problem.not-a-partner")


def _id_twice(partner_id: str) -> Reason:
    return Reason.of("admin.problem.id-twice", id=partner_id)


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in issue['loc']) or 'row'}: "
            f"{str(issue['msg']).removeprefix('Value error, ')}"
            for issue in error.errors(include_url=False)
        )
    return str(error).removeprefix("partners: ").split(": ", 1)[-1]


class RowError(ValueError):
    """A row that cannot be read, with the reason a screen translates."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


def _why(error: Exception) -> tuple[Reason, ...]:
    """``_reason``'s words as Reasons: one per field at fault (the column as ``field``)."""
    if isinstance(error, RowError):
        return (error.reason,)
    if isinstance(error, ValidationError):
        return tuple(
            issue_reason(issue, _column(issue)) for issue in error.errors(include_url=False)
        )
    return (Reason.of("admin.problem.rejected", detail=_reason(error)),)


def _column(issue: Any) -> str:
    """Where in the row: pydantic's path in the entry, or where a rule of the directory
    (checked on a directory of this one row) is broken inside its entry (``phones.0.number``)."""
    own = issue.get("ctx", {}).get("error")
    in_entry = isinstance(own, PartnerDirectoryError) and own.loc[:1] == ("entries",)
    return ".".join(str(p) for p in (own.loc[2:] if in_entry else issue["loc"]))


# --- CSV ------------------------------------------------------------------------------


def export_csv(partners: PartnerSettings) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in partners.entries:
        row = entry.model_dump(mode="json", exclude={"phones"})
        row["phones"] = "; ".join(
            f"{p.number} ({p.label})" if p.label else p.number for p in entry.phones
        )
        row["region"] = entry.region or partners.region
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def import_csv(text: str, region: str) -> PartnerSettings:
    """A directory from CSV (header row = row 1).

    The directory's region is the first row's ``region`` cell, else ``region`` (the current
    one); like a Bundle's first coverage area, so both formats round-trip.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in CSV_COLUMNS]
    missing = [c for c in ("id", "type", "name") if c not in header]
    if unknown or missing:
        wrong = [(f"unknown column '{c}'", "unknown-column", c) for c in unknown]
        wrong += [(f"the column '{c}' is missing", "missing-column", c) for c in missing]
        raise ConfigurationError(
            [
                Problem(
                    message,
                    "row 1",
                    reasons=(Reason.of(f"admin.problem.{code}", column=column),),
                    place=("row", 1),
                )
                for message, code, column in wrong
            ]
        )
    records = list(reader)
    region = (records[0].get("region") or "").strip() or region if records else region
    rows = [(number, _csv_row(row, region)) for number, row in enumerate(records, start=2)]
    return _validated(region, rows, "row")


def _csv_row(row: dict[str, str | None], region: str) -> Callable[[], dict[str, Any]]:
    def read() -> dict[str, Any]:
        if None in row:
            raise RowError("more cells than columns", Reason("admin.problem.extra-cells"))
        data: dict[str, Any] = {k: v.strip() for k, v in row.items() if v and v.strip()}
        data["phones"] = [
            _phone(cell) for cell in data.get("phones", "").split(";") if cell.strip()
        ]
        if data.get("region") == region:
            del data["region"]
        return data

    return read


def _phone(cell: str) -> dict[str, str | None]:
    match = _PHONE_CELL.match(cell)
    if match is None:
        raise RowError(
            f"phones: '{cell.strip()}' is not 'number' or 'number (label)'",
            Reason.of("admin.problem.phone", "phones", value=cell.strip()),
        )
    return {"number": match["number"], "label": match["label"]}


# --- FHIR Bundle ----------------------------------------------------------------------


def _full_url(partner_id: str, resource: str = "Organization") -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource}/{partner_id}')}"


def organization(entry: PartnerEntry) -> dict[str, Any]:
    guide = _guide()
    identifiers = [{"system": guide["sid_partner"], "value": entry.id}]
    if entry.cbe:
        identifiers.append({"system": guide["cbe"], "value": entry.cbe})
    telecom = [{"system": "phone", "value": p.number} for p in entry.phones if not p.label]
    telecom += [{"system": "url", "value": entry.website}] if entry.website else []
    telecom += [{"system": "email", "value": entry.email}] if entry.email else []
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "meta": {"profile": [guide["profile"]]},
        "identifier": identifiers,
        "active": True,
        "type": [{"coding": [terminology.coding("partner-type", entry.type)]}],
        "name": entry.name,
    }
    if telecom:
        resource["telecom"] = telecom
    if entry.address:
        resource["address"] = [{"text": entry.address}]
    contacts = [
        {"name": {"text": p.label}, "telecom": [{"system": "phone", "value": p.number}]}
        for p in entry.phones
        if p.label
    ]
    if contacts:
        resource["contact"] = contacts
    return resource


def healthcare_service(entry: PartnerEntry, region: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "active": True,
        "providedBy": {"reference": _full_url(entry.id), "display": entry.name},
        "name": entry.name,
        "coverageArea": [{"display": entry.region or region}],
    }
    if entry.description:
        resource["comment"] = entry.description
    if entry.opening_hours:
        resource["availabilityExceptions"] = entry.opening_hours
    return resource


def export_bundle(partners: PartnerSettings) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for entry in partners.entries:
        entries.append({"fullUrl": _full_url(entry.id), "resource": organization(entry)})
        service = healthcare_service(entry, partners.region)
        entries.append({"fullUrl": _full_url(entry.id, "HealthcareService"), "resource": service})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else empty: a damaged Bundle is read, not trusted."""
    return value if isinstance(value, dict) else {}


def _objs(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a JSON array (anything else in it, or no array: none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def import_bundle(bundle: Any) -> PartnerSettings:
    """A directory from a Bundle; problems name the entry number (1-based) and resource."""
    if _obj(bundle).get("resourceType") != "Bundle":
        not_a_bundle = (Reason("admin.problem.not-a-bundle"),)
        raise ConfigurationError([Problem("expected a FHIR Bundle", reasons=not_a_bundle)])
    entries = [
        (_text(e.get("fullUrl")), _obj(e.get("resource"))) for e in _objs(bundle.get("entry"))
    ]
    services = {
        _text(_obj(resource.get("providedBy")).get("reference")): resource
        for _, resource in entries
        if resource.get("resourceType") == "HealthcareService"
    }
    organizations = [
        (number, full_url, resource)
        for number, (full_url, resource) in enumerate(entries, start=1)
        if resource.get("resourceType") == "Organization"
    ]
    if not organizations:
        no_organization = (Reason("admin.problem.no-organization"),)
        raise ConfigurationError(
            [Problem("the Bundle has no Organization", reasons=no_organization)]
        )
    region = _region(services.get(organizations[0][1], {})) or "unknown"
    rows = [
        (number, _bundle_row(resource, services.get(full_url, {}), region))
        for number, full_url, resource in organizations
    ]
    return _validated(region, rows, "entry")


def _region(service: dict[str, Any]) -> str | None:
    areas = _objs(service.get("coverageArea"))
    return _text(areas[0].get("display")) if areas else None


def _bundle_row(
    org: dict[str, Any], service: dict[str, Any], region: str
) -> Callable[[], dict[str, Any]]:
    def read() -> dict[str, Any]:
        guide = _guide()
        ids = {_text(i.get("system")): i.get("value") for i in _objs(org.get("identifier"))}
        telecom = _objs(org.get("telecom"))
        codes = [
            c.get("code")
            for t in _objs(org.get("type"))
            for c in _objs(t.get("coding"))
            if c.get("system") == guide["partner_type"]
        ]
        phones = [{"number": t.get("value")} for t in telecom if t.get("system") == "phone"]
        phones += [
            {"number": t.get("value"), "label": _obj(c.get("name")).get("text")}
            for c in _objs(org.get("contact"))
            for t in _objs(c.get("telecom"))
            if t.get("system") == "phone"
        ]
        own_region = _region(service)
        return {
            "id": ids.get(guide["sid_partner"]),
            "cbe": ids.get(guide["cbe"]),
            "type": codes[0] if codes else None,
            "name": org.get("name"),
            "description": service.get("comment"),
            "phones": phones,
            "website": next((t.get("value") for t in telecom if t.get("system") == "url"), None),
            "email": next((t.get("value") for t in telecom if t.get("system") == "email"), None),
            "address": next((a.get("text") for a in _objs(org.get("address"))), None),
            "opening_hours": service.get("availabilityExceptions"),
            "region": own_region if own_region != region else None,
        }

    return read
