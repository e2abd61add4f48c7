"""Seed the sandbox hospital: Flemish emergency-department patients, staff and history.

``seed(fhir_base)`` is idempotent: every resource carries a business identifier and is
created with a conditional create (``If-None-Exist``), so seeding twice creates nothing
twice. All SSINs (national numbers) and NIHDI numbers are fake, though well-formed (SSIN
check digits per the INSZ/NISS rule; serial numbers from 900 upwards).

Codes come from ``sandbox.codes`` (the built guide in ``fhir_profiles/``, with documented
fallbacks while it is not built).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import httpx

from . import codes
from .codes import (
    NIHDI_PROFESSIONAL_SYSTEM,
    PATIENT_NUMBER_SYSTEM,
    RECORD_SYSTEM,
    SANDBOX_SYSTEM,
    SSIN_SYSTEM,
    VISIT_NUMBER_SYSTEM,
    TriggerCategory,
)

__all__ = [
    "USERS",
    "SandboxUser",
    "SeedResult",
    "SeededPatient",
    "new_ed_visit",
    "seed",
    "ssin",
    "years_ago",
]

log = logging.getLogger("sandbox.seed")
Role = Literal["nurse", "social-worker", "admin"]


@dataclass(frozen=True)
class SandboxUser:
    """A person who can log in to the sandbox EHR (a Practitioner on the FHIR server)."""

    key: str
    given: str
    family: str
    role: Role
    nihdi: str  # fake NIHDI/RIZIV number (11 digits)
    title: str

    @property
    def display(self) -> str:
        return f"{self.given} {self.family}"


USERS: tuple[SandboxUser, ...] = (
    SandboxUser("nurse", "Sofie", "Maes", "nurse", "49999900101", "Verpleegkundige spoedgevallen"),
    SandboxUser(
        "social-worker",
        "Pieter",
        "Jacobs",
        "social-worker",
        "99999900202",
        "Maatschappelijk werker, sociale dienst",
    ),
    SandboxUser("admin", "Hilde", "Mertens", "admin", "99999900303", "EPD-beheerder"),
)


def ssin(birth: date, serial: int) -> str:
    """A well-formed Belgian national number (INSZ/NISS) for a birth date and serial (1–997)."""
    if not 1 <= serial <= 997:
        raise ValueError("SSIN serial must be within 1..997")
    base = f"{birth:%y%m%d}{serial:03d}"
    number = int(("2" + base) if birth.year >= 2000 else base)
    return f"{base}{97 - number % 97:02d}"


@dataclass(frozen=True)
class ChildSpec:
    key: str
    given: str
    family: str
    gender: Literal["male", "female"]
    age_days: int
    lives_with: int  # index into the guide's lives-with codes (0 = permanently)


@dataclass(frozen=True)
class PatientSpec:
    key: str
    given: str
    family: str
    gender: Literal["male", "female"]
    birth: date
    serial: int
    scenario: str
    presenting: str  # free-text presenting problem at the ED desk (Dutch)
    trigger: TriggerCategory | None = None
    trigger_as_condition: bool = False  # the trigger as a Condition linked to the encounter
    trigger_system: str | None = None  # preferred code system for the trigger code
    trigger_hint: str | None = None  # preferred words in the trigger code's display
    children: tuple[ChildSpec, ...] = ()
    earlier_visit: bool = False
    open_concern: bool = False
    arrived: bool = True  # an ED encounter in status "arrived" waits for triage


@dataclass
class SeededPatient:
    key: str
    id: str
    name: str
    ssin: str
    birth_date: str
    gender: str
    scenario: str
    trigger: str | None
    arrived_encounter_id: str | None
    related_person_ids: list[str] = field(default_factory=list)
    flag_ids: list[str] = field(default_factory=list)
    concern: SeededConcern | None = None  # the open Kindreflex concern of an earlier visit


@dataclass(frozen=True)
class SeededConcern:
    """An open concern as the app would have raised it at the earlier visit: what the demo
    puts on the social service's worklist (``service.demo``)."""

    flag_identifier: str
    flagged_at: datetime
    flagged_by: str
    encounter_id: str | None  # the earlier visit
    children_birth_dates: tuple[str, ...]


@dataclass
class SeedResult:
    fhir_base: str
    patients: dict[str, SeededPatient]
    practitioners: dict[str, str]  # user key -> Practitioner id
    organization_id: str

    def patient(self, key: str) -> SeededPatient:
        return self.patients[key]


def _earlier_visit_start(today: date) -> datetime:
    """When a returning patient's earlier ED visit began: a fixed time of a day, so that
    seeding again the same day reports the same concern (``SeededConcern.flagged_at``)."""
    return datetime.combine(today - timedelta(days=200), time(9, 0), UTC)


def years_ago(today: date, years: int, extra_days: int = 0) -> date:
    try:
        d = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        d = today.replace(year=today.year - years, day=28)
    return d - timedelta(days=extra_days)


def patient_specs(today: date) -> tuple[PatientSpec, ...]:
    """The seeded patients; age-sensitive birth dates are relative to ``today``."""
    return (
        PatientSpec(
            "an-peeters",
            "An",
            "Peeters",
            "female",
            date(1991, 4, 12),
            902,
            "adult, no Hague trigger",
            "Enkeldistorsie links na val van de trap",
        ),
        PatientSpec(
            "jan-janssens",
            "Jan",
            "Janssens",
            "male",
            date(1984, 9, 3),
            901,
            "adult, domestic violence",
            "Letsels na partnergeweld",
            trigger="domestic-violence",
        ),
        PatientSpec(
            "lotte-claes",
            "Lotte",
            "Claes",
            "female",
            date(1996, 1, 22),
            904,
            "adult, intoxication (as a Condition of the encounter)",
            "Verminderd bewustzijn, vermoedelijke intoxicatie",
            trigger="substance",
            trigger_as_condition=True,
            trigger_system=codes.ICD10CM,
            trigger_hint="with intoxication, uncomplicated",
        ),
        PatientSpec(
            "tom-wouters",
            "Tom",
            "Wouters",
            "male",
            date(1988, 6, 30),
            903,
            "adult, suicide attempt / self-harm",
            "Snijwonden polsen, suïcidepoging",
            trigger="self-harm",
            trigger_system=codes.SNOMED,
            trigger_hint="cutting",
        ),
        PatientSpec(
            "els-goossens",
            "Els",
            "Goossens",
            "female",
            date(1986, 11, 5),
            906,
            "returning patient, two children already recorded",
            "Buikpijn",
            earlier_visit=True,
            children=(
                ChildSpec("lucas", "Lucas", "Goossens", "male", 9 * 365 + 40, 0),
                ChildSpec("emma", "Emma", "Goossens", "female", 2 * 365 + 100, 1),
            ),
        ),
        PatientSpec(
            "karim-el-amrani",
            "Karim",
            "El Amrani",
            "male",
            date(1979, 2, 17),
            905,
            "open Kindreflex concern from an earlier visit",
            "Thoraxpijn",
            earlier_visit=True,
            open_concern=True,
            children=(ChildSpec("yasmine", "Yasmine", "El Amrani", "female", 6 * 365, 0),),
        ),
        PatientSpec(
            "noor-vermeulen",
            "Noor",
            "Vermeulen",
            "female",
            years_ago(today, 17, extra_days=120),
            908,
            "minor (17 years old)",
            "Polsfractuur na sportongeval",
        ),
        PatientSpec(
            "milan-de-smet",
            "Milan",
            "De Smet",
            "male",
            years_ago(today, 18),
            907,
            "just 18 (birthday today)",
            "Hoofdwonde na val",
        ),
    )


class _Seeder:
    def __init__(self, client: httpx.Client, base: str, now: datetime) -> None:
        self.client = client
        self.base = base.rstrip("/")
        self.now = now

    def ensure(
        self, rtype: str, system: str, value: str, resource: dict[str, Any], extra_query: str = ""
    ) -> str:
        """Conditional create by business identifier; returns the resource id."""
        resource = {"resourceType": rtype, **resource}
        query = f"identifier={system}|{value}{extra_query}"
        r = self.client.post(
            f"{self.base}/{rtype}",
            json=resource,
            headers={
                "If-None-Exist": query,
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
            },
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(f"seeding {rtype} {value}: HTTP {r.status_code} {r.text[:500]}")
        body: dict[str, Any] = r.json() if r.content else {}
        rid = body.get("id")
        if not rid:  # Prefer: return=minimal or an empty 200: find it
            s = self.client.get(f"{self.base}/{rtype}", params={"identifier": f"{system}|{value}"})
            s.raise_for_status()
            rid = s.json()["entry"][0]["resource"]["id"]
        return str(rid)


def seed(
    fhir_base: str, *, client: httpx.Client | None = None, today: date | None = None
) -> SeedResult:
    """Seed the FHIR server at ``fhir_base`` (idempotent) and describe what is there."""
    own = client is None
    http = client or httpx.Client(timeout=30.0)
    try:
        return _seed(_Seeder(http, fhir_base, datetime.now(UTC)), today or date.today())
    finally:
        if own:
            http.close()


def _human_name(given: str, family: str) -> dict[str, Any]:
    return {"use": "official", "family": family, "given": [given], "text": f"{given} {family}"}


def _seed(s: _Seeder, today: date) -> SeedResult:
    org_id = s.ensure(
        "Organization",
        RECORD_SYSTEM,
        "org-az-sandbox",
        {
            "identifier": [{"system": RECORD_SYSTEM, "value": "org-az-sandbox"}],
            "active": True,
            "name": "AZ Sandbox Gent — spoedgevallen",
            "address": [{"city": "Gent", "postalCode": "9000", "country": "BE"}],
        },
    )
    practitioners: dict[str, str] = {}
    for u in USERS:
        practitioners[u.key] = s.ensure(
            "Practitioner",
            NIHDI_PROFESSIONAL_SYSTEM,
            u.nihdi,
            {
                "identifier": [{"system": NIHDI_PROFESSIONAL_SYSTEM, "value": u.nihdi}],
                "active": True,
                "name": [{**_human_name(u.given, u.family), "prefix": []}],
                "qualification": [{"code": {"text": u.title}}],
            },
        )
    nurse_ref = f"Practitioner/{practitioners['nurse']}"
    lives_with = codes.lives_with_extension()
    profile_child = codes.child_profile()
    profile_flag = codes.concern_flag_profile()
    concern_code = codes.concern_flag_code()

    patients: dict[str, SeededPatient] = {}
    for i, p in enumerate(patient_specs(today)):
        number = f"P{1000 + i}"
        nr = ssin(p.birth, p.serial)
        pid = s.ensure(
            "Patient",
            PATIENT_NUMBER_SYSTEM,
            number,
            {
                "identifier": [
                    {"use": "official", "system": SSIN_SYSTEM, "value": nr},
                    {"use": "usual", "system": PATIENT_NUMBER_SYSTEM, "value": number},
                ],
                "active": True,
                "name": [_human_name(p.given, p.family)],
                "gender": p.gender,
                "birthDate": p.birth.isoformat(),
                "address": [{"city": "Gent", "postalCode": "9000", "country": "BE"}],
                "communication": [
                    {
                        "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl-BE"}]},
                        "preferred": True,
                    }
                ],
                "managingOrganization": {"reference": f"Organization/{org_id}"},
            },
        )
        patient_ref = f"Patient/{pid}"
        seeded = SeededPatient(
            p.key,
            pid,
            f"{p.given} {p.family}",
            nr,
            p.birth.isoformat(),
            p.gender,
            p.scenario,
            p.trigger,
            None,
        )
        earlier_enc: str | None = None
        if p.earlier_visit:
            start = _earlier_visit_start(today)
            earlier_enc = s.ensure(
                "Encounter",
                VISIT_NUMBER_SYSTEM,
                f"V{number}-1",
                {
                    "identifier": [{"system": VISIT_NUMBER_SYSTEM, "value": f"V{number}-1"}],
                    "status": "finished",
                    "class": {"system": codes.V3_ACT, "code": "EMER", "display": "emergency"},
                    "subject": {"reference": patient_ref},
                    "period": {
                        "start": start.isoformat(),
                        "end": (start + timedelta(hours=5)).isoformat(),
                    },
                    "reasonCode": [{"text": "Eerder bezoek spoedgevallen"}],
                    "serviceProvider": {"reference": f"Organization/{org_id}"},
                },
            )
        for j, c in enumerate(p.children):
            birth = today - timedelta(days=c.age_days)
            child_nr = ssin(birth, 910 + 2 * j + (1 if c.gender == "male" else 0))
            # the guide's business identifier (a UUID), stable per patient and child
            child_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SANDBOX_SYSTEM}/{number}/{c.key}"))
            child_system = codes.identifier_system("child") or RECORD_SYSTEM
            child: dict[str, Any] = {
                "identifier": [
                    {"system": child_system, "value": child_uuid},
                    {"system": SSIN_SYSTEM, "value": child_nr},
                ],
                "active": True,
                "patient": {"reference": patient_ref},
                "relationship": [
                    {"coding": [{"system": codes.V3_ROLE, "code": "CHILD", "display": "child"}]}
                ],
                "name": [_human_name(c.given, c.family)],
                "gender": c.gender,
                "birthDate": birth.isoformat(),
            }
            if profile_child:
                child["meta"] = {"profile": [profile_child]}
            if lives_with and lives_with[1]:
                system, code = lives_with[1][min(c.lives_with, len(lives_with[1]) - 1)].split(
                    "|", 1
                )
                child["extension"] = [
                    {"url": lives_with[0], "valueCoding": {"system": system, "code": code}}
                ]
            seeded.related_person_ids.append(
                s.ensure("RelatedPerson", child_system, child_uuid, child)
            )
        if p.open_concern:
            concern_system = codes.identifier_system("concern") or RECORD_SYSTEM
            concern_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{SANDBOX_SYSTEM}/{number}/concern"))
            flagged_at = _earlier_visit_start(today) + timedelta(hours=1)  # at its step 2
            flag: dict[str, Any] = {
                "identifier": [{"system": concern_system, "value": concern_uuid}],
                "status": "active",
                "category": [
                    {
                        "coding": [
                            {"system": codes.FLAG_CATEGORY, "code": "safety", "display": "Safety"}
                        ]
                    }
                ],
                "code": (
                    {"coding": [concern_code], "text": "Kindreflex: open verontrusting"}
                    if concern_code
                    else {"text": "Kindreflex: open verontrusting"}
                ),
                "subject": {"reference": patient_ref},
                "period": {"start": flagged_at.isoformat()},
                "author": {"reference": nurse_ref},
            }
            last_step_url = codes.extension_url("concern-last-step")
            # handed to the social service at step 2 (service.demo records steps 1 and 2)
            step2 = codes.code_in("kindreflex-step", "step-2")
            if last_step_url and step2:
                flag["extension"] = [{"url": last_step_url, "valueCoding": step2}]
            if profile_flag:
                flag["meta"] = {"profile": [profile_flag]}
            seeded.flag_ids.append(s.ensure("Flag", concern_system, concern_uuid, flag))
            seeded.concern = SeededConcern(
                concern_uuid,
                flagged_at,
                nurse_ref,
                earlier_enc,
                tuple(sorted((today - timedelta(days=c.age_days)).isoformat() for c in p.children)),
            )
        if p.arrived:
            seeded.arrived_encounter_id = _arrived_encounter(
                s, p, number, patient_ref, org_id, nurse_ref
            )
        patients[p.key] = seeded
    log.info("seeded %d patients and %d users on %s", len(patients), len(practitioners), s.base)
    return SeedResult(s.base, patients, practitioners, org_id)


def new_ed_visit(
    fhir_base: str,
    patient_key: str,
    *,
    status: Literal["arrived", "in-progress"] = "in-progress",
    practitioner_id: str | None = None,
    client: httpx.Client | None = None,
    today: date | None = None,
) -> str:
    """A new ED visit of a seeded patient with the same presenting problem (and trigger).

    The sandbox EHR uses it when the seeded waiting visit was triaged already (a demo that is
    run again, a test that triages twice): the patient presents again.
    """
    specs = patient_specs(today or date.today())
    index, spec = next((i, p) for i, p in enumerate(specs) if p.key == patient_key)
    number = f"P{1000 + index}"
    own = client is None
    http = client or httpx.Client(timeout=30.0)
    try:
        s = _Seeder(http, fhir_base, datetime.now(UTC))
        found = http.get(
            f"{s.base}/Patient", params={"identifier": f"{PATIENT_NUMBER_SYSTEM}|{number}"}
        )
        found.raise_for_status()
        pid = found.json()["entry"][0]["resource"]["id"]
        org = http.get(
            f"{s.base}/Organization", params={"identifier": f"{RECORD_SYSTEM}|org-az-sandbox"}
        )
        org.raise_for_status()
        org_id = org.json()["entry"][0]["resource"]["id"]
        nurse_ref = f"Practitioner/{practitioner_id}" if practitioner_id else None
        return _arrived_encounter(
            s,
            spec,
            number,
            f"Patient/{pid}",
            org_id,
            nurse_ref,
            visit=f"V{number}-{uuid.uuid4().hex[:8]}",
            status=status,
        )
    finally:
        if own:
            http.close()


def _arrived_encounter(
    s: _Seeder,
    p: PatientSpec,
    number: str,
    patient_ref: str,
    org_id: str,
    nurse_ref: str | None,
    *,
    visit: str | None = None,
    status: str = "arrived",
) -> str:
    """Today's ED visit, registered at the desk ("arrived"), waiting for triage."""
    visit = visit or f"V{number}-2"
    reason: dict[str, Any] = {"text": p.presenting}
    trigger = (
        codes.trigger_coding(p.trigger, system=p.trigger_system, hint=p.trigger_hint)
        if p.trigger
        else None
    )
    if trigger and not p.trigger_as_condition:
        reason["coding"] = [trigger]
    enc: dict[str, Any] = {
        "identifier": [{"system": VISIT_NUMBER_SYSTEM, "value": visit}],
        "status": status,
        "class": {"system": codes.V3_ACT, "code": "EMER", "display": "emergency"},
        "subject": {"reference": patient_ref},
        "period": {"start": (s.now - timedelta(minutes=20)).isoformat()},
        "reasonCode": [reason],
        "serviceProvider": {"reference": f"Organization/{org_id}"},
    }
    enc_id = s.ensure("Encounter", VISIT_NUMBER_SYSTEM, visit, enc)
    if p.trigger and p.trigger_as_condition:
        cond: dict[str, Any] = {
            "identifier": [{"system": RECORD_SYSTEM, "value": f"cond-{visit}"}],
            "clinicalStatus": {"coding": [{"system": codes.CONDITION_CLINICAL, "code": "active"}]},
            "category": [
                {"coding": [{"system": codes.CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}
            ],
            "code": {"coding": [trigger], "text": p.presenting}
            if trigger
            else {"text": p.presenting},
            "subject": {"reference": patient_ref},
            "encounter": {"reference": f"Encounter/{enc_id}"},
            "recordedDate": s.now.isoformat(),
            **({"recorder": {"reference": nurse_ref}} if nurse_ref else {}),
        }
        cond_id = s.ensure("Condition", RECORD_SYSTEM, f"cond-{visit}", cond)
        # link the Condition from the Encounter too (Encounter.diagnosis), once
        r = s.client.get(f"{s.base}/Encounter/{enc_id}")
        r.raise_for_status()
        current = r.json()
        if not current.get("diagnosis"):
            current["diagnosis"] = [{"condition": {"reference": f"Condition/{cond_id}"}, "rank": 1}]
            u = s.client.put(
                f"{s.base}/Encounter/{enc_id}",
                json=current,
                headers={"If-Match": f'W/"{current["meta"]["versionId"]}"'},
            )
            if u.status_code not in (200, 201):
                raise RuntimeError(
                    f"linking Condition to Encounter: {u.status_code} {u.text[:300]}"
                )
    return enc_id
