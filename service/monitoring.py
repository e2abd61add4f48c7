"""The monitoring figures an inspector asks for (issue 5 §6), for one hospital and period.

Computed from this service's own tables only — never from the FHIR server:

* ``cds_cards``: the cards the CDS service returned (one row per card, a one-way key of
  the ED presentation, see :func:`presentation_key`) → presentations with a card;
* ``cds_feedback``: what the user did with a card → accepted, overridden (per reason);
* ``outbox_entries`` of kind ``triage`` and ``social``: the transaction each save wrote,
  holding the step finding Observations and the concern Flag. Each save is read ONCE, the
  first time a report runs after it, into ``monitoring_findings`` (step, coded outcome,
  acute danger, case, children named — nothing else; ``monitoring_saves`` says which saves
  were read), so that a report costs SQL counts, not a year of bundles → step 1 done,
  children named at step 1, the step 2 findings that hand the patient to the social
  service (niet-pluis and unclear, each on its line, and those of them with acute danger),
  cases reaching steps 4/5/6, referrals per target. Saves the FHIR server refused
  (``failed``) or that lost an If-Match race (``conflict``) were never recorded and do
  not count (their state is read at report time: a save may fail after it was read); a
  finding saved twice (a double click, a retry) counts once, by its business identifier;
* ``concerns``: when each case was flagged → the median time from the flag to the case's
  first team decision (step 4), of the cases whose first decision was saved in the period.
  A case decided again later counts once, in the period of its first decision.

What falls in a period: a card when issued, feedback when the user acted, a finding when
it was saved (the outbox entry's ``created_at``). Periods are whole calendar days in
Brussels time, both ends included, at most :data:`MAX_PERIOD_DAYS` long, between
:data:`FIRST_DAY` and :data:`LAST_DAY`.

The figures count; they never list. No output carries a patient id or name. Small counts
are NOT suppressed: the output goes only to the hospital's social service and admins
(and through them to the inspectorate), holds no identifier to link a count to, and the
inspector needs exact numbers that add up.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from pydantic import SecretStr
from sqlalchemy import ColumnElement, Select, Subquery, distinct, exists, func, or_, select
from sqlalchemy.orm import Session

from service import casework, triage
from service.db.base import insert_new
from service.db.models import (
    CdsCard,
    CdsFeedback,
    Concern,
    MonitoringFinding,
    MonitoringSave,
    OutboxEntry,
)
from service.fhir import mapping, terminology
from service.keys import purpose_key
from service.local_time import LOCAL_ZONE
from service.outbox import DeliveryState
from service.protocol import (
    Finding,
    ProtocolError,
    SafetyAssessment,
    Step,
    Step2Finding,
    Step4Decision,
    Step5Progress,
    Step6Referral,
)
from service.tenant_config import OVERRIDE_REASONS

log = logging.getLogger(__name__)

#: Periods are calendar days where the hospitals are.
#: The longest period one report covers (a leap year): bounds the work of one request.
MAX_PERIOD_DAYS = 366
#: The days a period may cover. The service holds nothing from before 2000 or after 2999,
#: and at the calendar's own ends (years 1 and 9999) a day's bounds in UTC do not exist.
FIRST_DAY = date(2000, 1, 1)
LAST_DAY = date(2999, 12, 31)
#: Outbox kinds whose bundles hold step findings.
SAVE_KINDS = (triage.KIND, casework.KIND)
#: Saves that never reached the hospital's record.
_NOT_RECORDED = (DeliveryState.FAILED.value, DeliveryState.CONFLICT.value)


class Figure(StrEnum):
    """The figures; the values are the codes of the guide's ``monitoring-figure`` CodeSystem
    (the groups of the Measure ``kindreflex-ed-monitoring``)."""

    PRESENTATIONS_WITH_CARD = "presentations-with-card"
    CARDS_ACCEPTED = "cards-accepted"
    CARDS_OVERRIDDEN = "cards-overridden"
    STEP_1_DONE = "step-1-done"
    CHILDREN_RECORDED = "children-recorded"
    NIET_PLUIS = "niet-pluis"
    UNCLEAR = "unclear"
    STEP_2_ACUTE_DANGER = "step-2-acute-danger"  # a niet-pluis or unclear, counted there too
    STEP_4_REACHED = "step-4-reached"
    STEP_5_REACHED = "step-5-reached"
    STEP_6_REACHED = "step-6-reached"
    REFERRALS = "referrals"
    TIME_TO_DECISION = "time-to-decision"


class Breakdown(StrEnum):
    """What a figure is broken down by (its stratifier)."""

    INDICATOR = "indicator"  # the card's CDS Hooks indicator: info | warning
    OVERRIDE_REASON = "override-reason"  # the reason code the EHR sent ("" when none)
    REFERRAL_TARGET = "referral-target"  # the guide's partner-type code (vk, ocj, …)


#: The breakdown of each figure that has one.
BREAKDOWN_OF: Mapping[Figure, Breakdown] = {
    Figure.PRESENTATIONS_WITH_CARD: Breakdown.INDICATOR,
    Figure.CARDS_OVERRIDDEN: Breakdown.OVERRIDE_REASON,
    Figure.REFERRALS: Breakdown.REFERRAL_TARGET,
}


class PeriodError(ValueError):
    """A period that cannot be reported on: ``code`` names the problem for a translated
    message (``ends-before-start``, ``too-long``, ``not-a-date``, ``out-of-range``: a day
    outside ``FIRST_DAY``…``LAST_DAY``), the text says it in English.
    """

    def __init__(self, code: str, message: str, **values: object) -> None:
        super().__init__(message)
        self.code = code
        self.values = values


@dataclass(frozen=True)
class Period:
    """Whole calendar days in Brussels, ``first`` and ``last`` included."""

    first: date
    last: date

    def __post_init__(self) -> None:
        for day in (self.first, self.last):
            if not FIRST_DAY <= day <= LAST_DAY:
                raise PeriodError(
                    "out-of-range",
                    f"a period lies between {FIRST_DAY} and {LAST_DAY}, not on {day}",
                    first=FIRST_DAY.isoformat(),
                    last=LAST_DAY.isoformat(),
                )
        if self.last < self.first:
            raise PeriodError("ends-before-start", "the period ends before it starts")
        if (self.last - self.first).days + 1 > MAX_PERIOD_DAYS:
            raise PeriodError(
                "too-long", f"a period covers at most {MAX_PERIOD_DAYS} days", days=MAX_PERIOD_DAYS
            )

    @property
    def start(self) -> datetime:
        """The first instant of the period (aware, UTC)."""
        return _midnight(self.first)

    @property
    def end(self) -> datetime:
        """The first instant after the period (aware, UTC)."""
        return _midnight(self.last + timedelta(days=1))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=LOCAL_ZONE).astimezone(UTC)


def presentation_secret(secret_key: SecretStr | None) -> bytes:
    """The key of :func:`presentation_key`, derived from ``KINDREFLEX_SECRET_KEY`` for this
    purpose alone. Empty without one, and then the key protects nothing: only a trial on
    this machine runs without it (``kindreflex serve`` refuses production without it)."""
    return b"" if secret_key is None else purpose_key(secret_key, "presentation")


def presentation_key(
    secret: bytes, fhir_server: str, patient_id: str, encounter_id: str | None, day: date
) -> str:
    """A one-way key of an ED presentation: the encounter, or without one the patient's day.

    Cards of the same presentation (a patient-view on every chart opening) share the key,
    so presentations are counted without storing a patient or encounter id. An HMAC under
    a secret the database does not hold (:func:`presentation_secret`): the ids are
    guessable, and a plain hash of them gave the encounter of a card's reasons (a suicide
    attempt, domestic violence) back to whoever read the database or a backup, in
    milliseconds (found by review). A new secret key starts new keys: a presentation
    across a rotation counts twice.
    """
    subject = f"Encounter/{encounter_id}" if encounter_id else f"Patient/{patient_id}|{day}"
    message = f"{fhir_server.rstrip('/')}|{subject}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Value:
    """One figure: its count (for the median: the number of cases it is the median of),
    its breakdown (code → count) and, for the median, the hours."""

    count: int
    breakdown: Mapping[str, int] = field(default_factory=dict)
    hours: float | None = None


@dataclass(frozen=True)
class Figures:
    """The figures of one hospital and period, in :class:`Figure` order."""

    period: Period
    values: Mapping[Figure, Value]
    unreadable_saves: int = 0  # saves whose findings could not be read back (logged)

    def __iter__(self) -> Iterator[tuple[Figure, Value]]:
        return ((figure, self.values[figure]) for figure in Figure)


def figures(session: Session, tenant_id: int, period: Period) -> Figures:
    """Every figure of ``period`` for the hospital ``tenant_id``."""
    read_new_saves(session, tenant_id)
    values = {
        **_card_figures(session, tenant_id, period),
        **_step_figures(session, tenant_id, period),
        Figure.TIME_TO_DECISION: _time_to_decision(
            session, tenant_id, _decisions(session, tenant_id, period)
        ),
    }
    return Figures(period, values, _unreadable(session, tenant_id, period))


# -- cards and feedback -------------------------------------------------------------------


def _card_figures(session: Session, tenant_id: int, period: Period) -> dict[Figure, Value]:
    """Presentations with a card, per indicator too: a presentation that got an info and
    later a warning card counts once in the total and once on each line."""
    issued = [
        CdsCard.tenant_id == tenant_id,
        CdsCard.issued_at >= period.start,
        CdsCard.issued_at < period.end,
    ]
    presentations = func.count(distinct(CdsCard.presentation))
    per_indicator = session.execute(
        select(CdsCard.indicator, presentations).where(*issued).group_by(CdsCard.indicator)
    )
    breakdown = {str(indicator): int(n) for indicator, n in per_indicator}
    total = session.scalar(select(presentations).where(*issued))
    return {
        Figure.PRESENTATIONS_WITH_CARD: Value(int(total or 0), breakdown),
        Figure.CARDS_ACCEPTED: Value(_feedback_cards(session, tenant_id, period, "accepted")),
        Figure.CARDS_OVERRIDDEN: _overridden(session, tenant_id, period),
    }


def _feedback_in(tenant_id: int, period: Period, outcome: str) -> list[ColumnElement[bool]]:
    """The period's feedback with ``outcome`` on cards this hospital issued: feedback names
    its card by uuid only, and one never issued here counted as accepted or overridden
    beside no presentation (found by review)."""
    issued = select(CdsCard.id).where(
        CdsCard.tenant_id == CdsFeedback.tenant_id, CdsCard.card_uuid == CdsFeedback.card_uuid
    )
    return [
        CdsFeedback.tenant_id == tenant_id,
        CdsFeedback.outcome == outcome,
        CdsFeedback.outcome_at >= period.start,
        CdsFeedback.outcome_at < period.end,
        exists(issued),
    ]


def _feedback_cards(session: Session, tenant_id: int, period: Period, outcome: str) -> int:
    """Cards (not feedback posts: a card may be reported twice) with this outcome."""
    query = select(func.count(distinct(CdsFeedback.card_uuid))).where(
        *_feedback_in(tenant_id, period, outcome)
    )
    return int(session.scalar(query) or 0)


def _overridden(session: Session, tenant_id: int, period: Period) -> Value:
    """The overridden cards by reason: ours by code; one the EHR added to the card's
    (CDS Hooks lets it) as ``system|code``, so that its code never counts as one of ours.

    A card dismissed more than once (CDS Hooks 2.0 asks the EHR to report each of the
    user's interactions) counts under its latest reason of the period, so that the lines
    add up to the cards: it counted under each reason, and the MeasureReport's strata
    outnumbered their population (found by review)."""
    ours = terminology.code_system_url(OVERRIDE_REASONS)
    latest = func.row_number().over(
        partition_by=CdsFeedback.card_uuid,
        order_by=(CdsFeedback.outcome_at.desc(), CdsFeedback.id.desc()),
    )
    per_card = (
        select(CdsFeedback.override_system, CdsFeedback.override_code, latest.label("nth"))
        .where(*_feedback_in(tenant_id, period, "overridden"))
        .subquery()
    )
    query = (
        select(per_card.c.override_system, per_card.c.override_code, func.count())
        .where(per_card.c.nth == 1)
        .group_by(per_card.c.override_system, per_card.c.override_code)
    )
    reasons: dict[str, int] = {}
    for system, code, n in session.execute(query):
        key = str(code or "") if system in (None, ours) else f"{system}|{code}"
        reasons[key] = reasons.get(key, 0) + int(n)
    return Value(_feedback_cards(session, tenant_id, period, "overridden"), reasons)


# -- the saves of steps 1-6 ---------------------------------------------------------------
# Each save is read once (``read_new_saves``) into ``monitoring_findings``; the figures are
# then SQL counts over the period's findings whose save reached the hospital's record.


def _step_figures(session: Session, tenant_id: int, period: Period) -> dict[Figure, Value]:
    recorded = _recorded_findings(tenant_id, period).subquery()
    per_step = {
        step: (int(findings), int(cases))
        for step, findings, cases in session.execute(
            select(
                recorded.c.step,
                func.count(distinct(recorded.c.finding_id)),
                func.count(distinct(recorded.c.case_key)),
            ).group_by(recorded.c.step)
        )
    }
    outcomes = {
        (step, outcome): int(n)
        for step, outcome, n in session.execute(
            select(recorded.c.step, recorded.c.outcome, func.count(distinct(recorded.c.finding_id)))
            .where(recorded.c.step.in_((Step.STEP_2.value, Step.STEP_6.value)))
            .group_by(recorded.c.step, recorded.c.outcome)
        )
    }
    assessed = {str(o): n for (step, o), n in outcomes.items() if step == Step.STEP_2.value}
    referrals = {str(o): n for (step, o), n in outcomes.items() if step == Step.STEP_6.value}
    return {
        Figure.STEP_1_DONE: Value(per_step.get(Step.STEP_1.value, (0, 0))[0]),
        Figure.CHILDREN_RECORDED: Value(_children(session, recorded)),
        Figure.NIET_PLUIS: Value(assessed.get(SafetyAssessment.NIET_PLUIS.value, 0)),
        Figure.UNCLEAR: Value(assessed.get(SafetyAssessment.UNCLEAR.value, 0)),
        Figure.STEP_2_ACUTE_DANGER: Value(_acute_dangers(session, recorded)),
        Figure.STEP_4_REACHED: Value(per_step.get(Step.STEP_4.value, (0, 0))[1]),
        Figure.STEP_5_REACHED: Value(per_step.get(Step.STEP_5.value, (0, 0))[1]),
        Figure.STEP_6_REACHED: Value(per_step.get(Step.STEP_6.value, (0, 0))[1]),
        Figure.REFERRALS: Value(sum(referrals.values()), referrals),
    }


def _recorded_findings(tenant_id: int, period: Period | None) -> Select[Any]:
    """The period's findings (None: of every period) whose save was not refused (an outbox
    row purged after its delivery counts as recorded)."""
    query = (
        select(MonitoringFinding)
        .outerjoin(OutboxEntry, OutboxEntry.id == MonitoringFinding.outbox_id)
        .where(
            MonitoringFinding.tenant_id == tenant_id,
            or_(OutboxEntry.state.is_(None), OutboxEntry.state.not_in(_NOT_RECORDED)),
        )
    )
    if period is None:
        return query
    return query.where(
        MonitoringFinding.saved_at >= period.start, MonitoringFinding.saved_at < period.end
    )


def _children(session: Session, recorded: Subquery) -> int:
    """Children named by the step 1 findings, each finding once even if saved twice."""
    per_finding = (
        select(func.max(recorded.c.children).label("children"))
        .where(recorded.c.step == Step.STEP_1.value)
        .group_by(recorded.c.finding_id)
        .subquery()
    )
    return int(session.scalar(select(func.coalesce(func.sum(per_finding.c.children), 0))) or 0)


def _acute_dangers(session: Session, recorded: Subquery) -> int:
    """Step 2 findings that marked acute danger, each once even if saved twice."""
    query = select(func.count(distinct(recorded.c.finding_id))).where(
        recorded.c.step == Step.STEP_2.value, recorded.c.acute_danger.is_(True)
    )
    return int(session.scalar(query) or 0)


def _decisions(session: Session, tenant_id: int, period: Period) -> dict[str, datetime]:
    """Case (concern identifier) → its first team decision (step 4), for the cases whose
    first decision was saved in the period. A later decision of the same case (the team
    deciding again at a returning patient's niet-pluis) is no time to a decision: measured
    from the case's flag it grew with the case's age (found by review)."""
    recorded = _recorded_findings(tenant_id, None).subquery()
    query = (
        select(recorded.c.case_key, func.min(recorded.c.recorded_at))
        .where(recorded.c.step == Step.STEP_4.value)
        .group_by(recorded.c.case_key)
        .having(
            func.min(recorded.c.saved_at) >= period.start,
            func.min(recorded.c.saved_at) < period.end,
        )
    )
    return dict(session.execute(query).all())


def _unreadable(session: Session, tenant_id: int, period: Period) -> int:
    query = select(func.count()).where(
        MonitoringSave.tenant_id == tenant_id,
        MonitoringSave.saved_at >= period.start,
        MonitoringSave.saved_at < period.end,
        MonitoringSave.readable.is_(False),
    )
    return int(session.scalar(query) or 0)


def read_new_saves(session: Session, tenant_id: int) -> None:
    """Read every save not read yet (of any period) into ``monitoring_findings``.

    Idempotent and safe when two reports run at once: rows already there are skipped.
    """
    unread = (
        select(OutboxEntry.id, OutboxEntry.bundle, OutboxEntry.created_at)
        .where(
            OutboxEntry.tenant_id == tenant_id,
            OutboxEntry.kind.in_(SAVE_KINDS),
            ~exists().where(MonitoringSave.outbox_id == OutboxEntry.id),
        )
        .order_by(OutboxEntry.id)
        .execution_options(yield_per=500)
    )
    saves: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    for entry_id, bundle, saved_at in session.execute(unread):
        common = {"tenant_id": tenant_id, "outbox_id": entry_id, "saved_at": saved_at}
        try:
            # a save without a concern Flag (steps 1-3, no concern) is a case of its own
            read = _findings_of(bundle, fallback_case=f"save-{entry_id}")
        except (ProtocolError, mapping.UnreadableResourceError, ValueError, KeyError, TypeError):
            # our own write read back: a bug, not the user's input — count it, never guess
            log.exception("monitoring: outbox entry %s cannot be read back", entry_id)
            saves.append({**common, "readable": False})
            continue
        saves.append({**common, "readable": True})
        findings += [{**common, **finding} for finding in read]
    insert_new(session, MonitoringSave, saves)
    insert_new(session, MonitoringFinding, findings)


def _findings_of(bundle: Mapping[str, Any], fallback_case: str) -> list[dict[str, Any]]:
    """The counted facts of each step finding in a save's transaction bundle."""
    resources = [e.get("resource", {}) for e in bundle.get("entry", [])]
    case = next(_identifiers(resources, "Flag", "concern"), fallback_case)
    finding_system = terminology.identifier_system("finding")
    result = []
    for resource in resources:
        finding = mapping.finding_from_observation(resource)
        if finding is None:
            continue
        finding_id = next(
            (i["value"] for i in resource.get("identifier", []) if i["system"] == finding_system),
            None,
        )
        if finding_id is None:
            raise ValueError("a step finding without its business identifier")
        result.append(
            {
                "finding_id": finding_id,
                "step": finding.step.value,
                "case_key": case,
                "outcome": _outcome(finding),
                "acute_danger": isinstance(finding, Step2Finding) and finding.acute_danger,
                # a step 1 Observation names its children in focus (an unchanged child is
                # not written again, so the RelatedPersons are not all in the bundle)
                "children": len(resource.get("focus", [])),
                "recorded_at": finding.recorded_at,
            }
        )
    return result


def _outcome(finding: Finding) -> str | None:
    match finding:
        case Step2Finding():
            return finding.assessment.value
        case Step4Decision():
            return finding.decision.value
        case Step5Progress():
            return finding.progress.value
        case Step6Referral():
            return finding.target.value
        case _:
            return None


def _identifiers(resources: Iterable[Mapping[str, Any]], rtype: str, kind: str) -> Iterator[str]:
    system = terminology.identifier_system(kind)
    for resource in resources:
        if resource.get("resourceType") == rtype:
            for identifier in resource.get("identifier", []):
                if identifier.get("system") == system:
                    yield str(identifier["value"])


def _time_to_decision(session: Session, tenant_id: int, decisions: Mapping[str, datetime]) -> Value:
    """The median time from a case's flag to its first team decision in the period."""
    if not decisions:
        return Value(0)
    query = select(Concern.flag_identifier, Concern.flagged_at).where(
        Concern.tenant_id == tenant_id, Concern.flag_identifier.in_(list(decisions))
    )
    flagged: dict[str, datetime] = dict(session.execute(query).all())
    hours = [
        (decided - flagged[case]).total_seconds() / 3600
        for case, decided in decisions.items()
        if case in flagged
    ]
    if not hours:
        return Value(0)
    return Value(len(hours), hours=round(statistics.median(hours), 1))


# -- as a FHIR R4 MeasureReport -----------------------------------------------------------

MEASURE_ID = "kindreflex-ed-monitoring"
_UCUM = "http://unitsofmeasure.org"  # FHIR's unit system; the median is in hours


def measure_url() -> str:
    """The canonical URL of the guide's Measure the report is on."""
    return str(terminology.guide().examples[f"Measure/{MEASURE_ID}"]["url"])


def measure_report(result: Figures, *, reporter: str, generated_at: datetime) -> dict[str, Any]:
    """A summary MeasureReport of ``result``: one group per figure, counts only."""
    return {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": measure_url(),
        "date": generated_at.isoformat(),
        "reporter": {"display": reporter},
        "period": {"start": result.period.first.isoformat(), "end": result.period.last.isoformat()},
        "group": [_group(figure, value) for figure, value in result],
    }


def _population_code(figure: Figure) -> dict[str, Any]:
    """The code of the one population of ``figure``'s group, as the guide's Measure defines
    it: a cohort measure's initial-population (FHIR's measure-population, to which the
    element is bound); the figure itself is the group's code."""
    measure = terminology.guide().examples[f"Measure/{MEASURE_ID}"]
    for group in measure["group"]:
        if any(c.get("code") == figure.value for c in group["code"]["coding"]):
            return copy.deepcopy(dict(group["population"][0]["code"]))
    raise terminology.GuideError(f"the Measure {MEASURE_ID} has no group {figure.value}")


def _group(figure: Figure, value: Value) -> dict[str, Any]:
    code = {"coding": [terminology.coding("monitoring-figure", figure.value)]}
    population = _population_code(figure)
    group: dict[str, Any] = {
        "code": code,
        "population": [{"code": population, "count": value.count}],
    }
    if value.hours is not None:
        group["measureScore"] = {"value": value.hours, "unit": "h", "system": _UCUM, "code": "h"}
    breakdown = BREAKDOWN_OF.get(figure)
    if breakdown is not None:
        group["stratifier"] = [
            {
                "code": [{"coding": [terminology.coding("monitoring-breakdown", breakdown.value)]}],
                "stratum": [
                    {
                        "value": _stratum_value(breakdown, key),
                        "population": [{"code": population, "count": count}],
                    }
                    for key, count in sorted(value.breakdown.items())
                ],
            }
        ]
    return group


def _stratum_value(breakdown: Breakdown, key: str) -> dict[str, Any]:
    if breakdown is Breakdown.REFERRAL_TARGET:
        return {"coding": [terminology.coding("partner-type", key)]}
    return {"text": key or "none"}
