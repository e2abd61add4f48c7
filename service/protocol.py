"""The Kindreflex protocol: the six steps, what each records, and the branch rules.

The Kindreflex ("child reflex") asks every professional who treats an adult to see the
children behind that adult. This module is the whole protocol in one place, written so
that a clinician can review it from top to bottom. It is pure Python: no I/O, no clock,
no FHIR. The FHIR mapping, the database and the screens build on the types defined here.

How to read it
==============
1. Code values (enums). Their *values* are the codes of the Kindreflex FHIR guide; do
   not change them without changing the guide.
2. Errors. Every refused move raises a :class:`ProtocolError` with an English message a
   nurse understands and a stable ``code`` (an :class:`ErrorCode`) that the screens
   translate.
3. The case: the adult patient, the children, an expected child.
4. The six steps, one frozen dataclass per step, each recording what the step asks to
   note in the record. Every finding records its author (``recorded_by``, a user
   reference such as a fhirUser URL) and its time (``recorded_at``, timezone-aware; the
   engine never reads the clock, the caller passes the time).
5. The branch rules: :func:`apply` validates one move and returns the new, immutable
   state; :meth:`KindreflexCase.replay` rebuilds a state from its recorded findings.
6. Derived advice: Kind & Gezin, the child's consent, CLB.

Closing a case (:class:`CaseClosure`, :func:`check_closure`), the status of a step 6
referral (:class:`ReferralStatus`, :func:`check_referral_status`), a new referral's
reason for not informing the patient (:func:`check_not_informed_reason`) and how far the
dates of a new step 5 or 6 may lie from the day they are recorded
(:func:`check_plausible_dates`) are ruled at the end of section 5.

The route through the steps (sources: seeds 000-002, see ``/work/shared/domain.md``)::

    step 1  talk about the children and parenthood
      |     (no minor children and no child expected: nothing more to do; the
      |     Kindreflex concerns minors, seed 000 "minderjarigen")
    step 2  gauge safety at home and the children's well-being
      |-- no concern ------------------------------------------> step 3
      |-- niet-pluis or unclear (reasons required) ------------> step 4
      '-- acute danger (with niet-pluis or unclear) -----------> step 4 or step 6
    step 3  support the patient as a parent -------------------> step 3 again, or step 2
            (keep asking about the children; when new worries arise, gauge safety again)
    step 4  team decision on concern and willingness
      |-- safe ------------------------------------------------> step 3
      |-- concerning, patient willing -------------------------> step 5
      |-- concerning, patient unable or resisting -------------> step 6
      '-- acute danger ----------------------------------------> step 6
    step 5  restore safety
      |-- improving -------------------------------------------> step 3
      |-- safety not restored ---------------------------------> step 6
      '-- with a next follow-up date: also ---------------------> step 5 (the follow-up)
    step 6  involve a mandated facility: VK, OCJ, or with acute danger parket / police
            ---------------------------------------------------> step 6 again (another
            facility), step 5 (restore safety together with the facility) or step 3

Rules that hold at any point after step 1:

* Step 1 may be recorded again: at the patient's next contact (the Kindreflex is done at
  every contact, seed 000) or to update the children (a birth, a correction). It opens
  step 2 when there are minor children (or a child expected) to gauge, and it keeps what
  was open: a concern the social service follows (steps 4-6 ahead) stays open, with the
  children and the expected child it is about (a later "no children", from a patient
  who says less or whose child lives elsewhere now, does not take them off the concern;
  the expected child stays until it is born: a month past its expected date, with a
  child born since among the children).
  A step 1 without minor children and without a child expected leaves nothing else open.
* A step 2 (without acute danger) while a concern is open adds its route to the
  concern's; it does not close it. A nurse who finds no concern at the next visit does
  not end the team's follow-up, nor does the support she records after it (step 3
  following a step 2), and an acute danger the team found stays until the team's route
  says otherwise (step 4, step 5, or a step 3 that route led to). A niet-pluis or unclear
  she finds keeps step 4 ahead until the team records one: the work on the older plan
  meanwhile (a step 5 follow-up, a referral, the support they lead to) does not decide on
  the new worries.
* Acute danger does not wait for the route: a step 2 finding with acute danger may be
  recorded at any point and leads straight to step 6 (or to a team decision, step 4);
  once the social service follows the concern (a step 4, 5 or 6 is recorded), the team
  may record the decision "acute danger" at any point too
  (:func:`team_may_find_acute_danger`), which opens the parket and the police.

Dutch terms used once and explained here:

* *niet-pluis* (Dutch: the gut feeling that something is wrong at home);
* *VK*, Vertrouwenscentrum Kindermishandeling (confidential centre for child abuse);
* *OCJ*, Ondersteuningscentrum Jeugdhulp (support centre for youth care);
* *parket*, the public prosecutor's office;
* *meldrecht*, the legal right of a professional bound by secrecy to report to the
  parket when a child's physical or psychological integrity is in serious danger;
* *Kind & Gezin*, the Flemish agency for young children and families;
* *CLB*, Centrum voor Leerlingenbegeleiding (pupil guidance centre of the schools).
"""

from __future__ import annotations

import calendar
import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import ClassVar

from service.local_time import LOCAL_ZONE

__all__ = [
    "ACUTE_DANGER_TARGETS",
    "ADULT_FROM_MONTHS",
    "CONTACT_AT_MOST_YEARS_BEFORE",
    "DECIDES_LARGELY_FROM_MONTHS",
    "FOLLOW_UP_AT_MOST_YEARS_AHEAD",
    "KIND_EN_GEZIN_UNTIL_MONTHS",
    "MANDATED_FACILITIES",
    "MAX_CHILDREN",
    "SCHOOL_AGE_FROM_MONTHS",
    "STEP_6_TARGETS",
    "STEP_HEADINGS",
    "Advice",
    "AdviceKind",
    "AgreedAction",
    "CaseClosure",
    "Child",
    "ChildConsentAdvice",
    "ChildFinding",
    "ChildRelationship",
    "CloseReason",
    "Consultation",
    "ContactChannel",
    "ErrorCode",
    "ExpectedChild",
    "FacilityContact",
    "Factor",
    "FactorKind",
    "Finding",
    "FindingBase",
    "HagueTrigger",
    "HeardChild",
    "InvalidFindingError",
    "KeyPerson",
    "KeyPersonRole",
    "KindreflexCase",
    "LivesWith",
    "MissingInformationError",
    "PregnancyOf",
    "ProgressAssessment",
    "ProtocolError",
    "ReferralStatus",
    "ReferralTarget",
    "SafetyAction",
    "SafetyAssessment",
    "Step",
    "Step1Finding",
    "Step2Finding",
    "Step3Support",
    "Step4Decision",
    "Step5Progress",
    "Step6Referral",
    "StepOrderError",
    "SupportAction",
    "TeamDecision",
    "advice",
    "age_in_months",
    "apply",
    "cares_for_minors",
    "check_closure",
    "check_not_informed_reason",
    "check_plausible_dates",
    "check_referral_status",
    "child_consent_advice",
    "clb_children",
    "earliest_contact",
    "kind_en_gezin_advised",
    "latest_follow_up",
    "referral_subjects",
    "reopens_after_referral_change",
    "team_decisions_open",
    "team_may_find_acute_danger",
]


# ---------------------------------------------------------------------------------------
# 1. Code values
# ---------------------------------------------------------------------------------------


class Step(StrEnum):
    """The six steps of the Kindreflex."""

    STEP_1 = "step-1"
    STEP_2 = "step-2"
    STEP_3 = "step-3"
    STEP_4 = "step-4"
    STEP_5 = "step-5"
    STEP_6 = "step-6"

    @property
    def number(self) -> int:
        return int(self.value.removeprefix("step-"))

    @property
    def heading(self) -> str:
        """The step's English heading (the screens translate it)."""
        return STEP_HEADINGS[self]


STEP_HEADINGS: Mapping[Step, str] = {
    Step.STEP_1: "Talk about the children and parenthood",
    Step.STEP_2: "Gauge safety at home and the children's well-being",
    Step.STEP_3: "Support the patient as a parent",
    Step.STEP_4: "Check for concern and willingness",
    Step.STEP_5: "Restore safety",
    Step.STEP_6: "Involve a mandated facility",
}


class LivesWith(StrEnum):
    """Whether a child lives with the patient (step 1)."""

    PERMANENTLY = "permanently"
    PART_TIME = "part-time"  # e.g. co-parenting, weekends
    NOT = "not"


class ChildRelationship(StrEnum):
    """How the child is related to the patient.

    These are codes of HL7 v3 RoleCode (``http://terminology.hl7.org/CodeSystem/v3-RoleCode``),
    not Kindreflex codes: the FHIR guide reuses them for ``RelatedPerson.relationship``.
    The patient may care for a child who is not their own (a partner's child, a foster
    child, a grandchild), so the list is wider than "own child".
    """

    CHILD = "CHILD"  # child, unspecified
    NATURAL_CHILD = "NCHILD"
    STEPCHILD = "STPCHLD"  # also a partner's child
    FOSTER_CHILD = "CHLDFOST"
    ADOPTED_CHILD = "CHLDADOPT"
    GRANDCHILD = "GRNDCHILD"
    NIECE_OR_NEPHEW = "NIENEPH"


class PregnancyOf(StrEnum):
    """Who is pregnant when the patient expects a child (step 1)."""

    PATIENT = "patient"
    PARTNER = "partner"


class SafetyAssessment(StrEnum):
    """Step 2: the outcome of gauging safety at home.

    ``niet-pluis`` is the Dutch term for the gut feeling that something is wrong; it is
    kept as the code because the Flemish professionals know it by that name.
    """

    NO_CONCERN = "no-concern"
    NIET_PLUIS = "niet-pluis"
    UNCLEAR = "unclear"


class TeamDecision(StrEnum):
    """Step 4: the team's decision on concern and the patient's willingness."""

    SAFE = "safe"
    CONCERNING_WILLING = "concerning-willing"
    CONCERNING_UNWILLING = "concerning-unwilling"  # inability or resistance
    ACUTE_DANGER = "acute-danger"


class ProgressAssessment(StrEnum):
    """Step 5: has safety been restored?"""

    IMPROVING = "improving"
    NOT_RESTORED = "not-restored"


class SupportAction(StrEnum):
    """Step 3: how the patient was supported as a parent."""

    ASK_REGULARLY = "ask-regularly"  # ask regularly about the children and parenthood
    DISCUSS_IMPACT = "discuss-impact"  # discuss the impact of the situation on the children
    STRENGTHEN_RESILIENCE = "strengthen-resilience"  # help strengthen the children's resilience
    INVOLVE_CHILDREN = "involve-children"  # involve the children, support them where needed
    INVOLVE_NETWORK = "involve-network"  # partner, grandparents, neighbour, friend
    INVOLVE_SERVICE = "involve-service"  # another service supports the patient
    KIND_EN_GEZIN_START = "kind-en-gezin-start"  # start conversation, children -9 months..3


class SafetyAction(StrEnum):
    """Step 5: what was done to restore safety."""

    CREATE_SAFE_SITUATION = "create-safe-situation"  # alone or with a suitable service
    WORK_WITH_FAMILY = "work-with-family"  # the patient's context, the whole family
    HELP_FOR_CHILDREN = "help-for-children"  # install help for the children
    ANONYMOUS_CONSULTATION = "anonymous-consultation"  # VK and/or OCJ by phone
    REVISIT_PARENTHOOD = "revisit-parenthood"  # discuss parenthood again, stay alert
    INVOLVE_SERVICE = "involve-service"


class HagueTrigger(StrEnum):
    """Presentations at the emergency department that call for an elevated prompt.

    From the Dutch Hague Protocol (2008-2013): adults presenting with one of these were
    screened for children in their care, and maltreatment was confirmed in about 9 of
    10 referred families. The code lists (ICD-10, SNOMED CT) that map onto these
    categories are configuration of the FHIR guide and the hospital, not of this module.
    """

    DOMESTIC_VIOLENCE = "domestic-violence"  # intimate-partner or domestic violence
    SUBSTANCE_ABUSE = "substance-abuse"  # substance abuse or intoxication
    # suicide attempt, self-harm or serious psychiatric problems
    SELF_HARM_PSYCHIATRIC = "self-harm-psychiatric"


class Consultation(StrEnum):
    """Whom the professional consulted before judging (steps 2, 4 and 5).

    Own norms and values bias judgement; the Kindreflex asks to discuss with colleagues
    or experts, and in doubt to call the VK and/or OCJ anonymously.
    """

    COLLEAGUE = "colleague"
    EXPERT = "expert"
    VK_ANONYMOUS = "vk-anonymous"
    OCJ_ANONYMOUS = "ocj-anonymous"
    CLB = "clb"  # consult of the school's CLB (seed 002 step 4); see docs/codes-requested.md


class ReferralTarget(StrEnum):
    """Services a patient can be referred to; also the types of the partner directory."""

    VK = "vk"
    OCJ = "ocj"
    PARKET = "parket"
    POLICE = "police"
    KIND_EN_GEZIN = "kind-en-gezin"
    CLB = "clb"
    CAW = "caw"  # Centrum Algemeen Welzijnswerk: general welfare work
    CGG = "cgg"  # Centrum Geestelijke Gezondheidszorg: mental health care
    CKG = "ckg"  # Centrum voor Kinderzorg en Gezinsondersteuning: parenting support
    OCMW = "ocmw"  # public social welfare centre of the municipality
    HUIS_VAN_HET_KIND = "huis-van-het-kind"
    OPVOEDINGSLIJN = "opvoedingslijn"  # parenting helpline
    RTJ = "rtj"  # regional youth-care table, e.g. "1 Gezin 1 Plan"
    FARA = "fara"  # pregnancy choices
    ECHO = "echo"  # peer support for survivors of child abuse
    CAR = "car"  # rehabilitation centre for children (development)
    FIOLA = "fiola"  # support for suspected developmental problems
    GP = "gp"
    MUTUALITY = "mutuality"  # health insurance fund (ziekenfonds)


#: The mandated facilities of step 6 for a concerning situation.
MANDATED_FACILITIES: frozenset[ReferralTarget] = frozenset({ReferralTarget.VK, ReferralTarget.OCJ})
#: Involved only with acute danger, under the legal right to report (meldrecht).
ACUTE_DANGER_TARGETS: frozenset[ReferralTarget] = frozenset(
    {ReferralTarget.PARKET, ReferralTarget.POLICE}
)
#: Everything a step 6 referral may go to.
STEP_6_TARGETS: frozenset[ReferralTarget] = MANDATED_FACILITIES | ACUTE_DANGER_TARGETS


class FactorKind(StrEnum):
    """Step 4: a risk factor or a protective factor."""

    RISK = "risk"
    PROTECTIVE = "protective"


class KeyPersonRole(StrEnum):
    """Step 4: an adult key person heard (children heard are :class:`HeardChild`)."""

    PARTNER = "partner"
    GRANDPARENT = "grandparent"
    OTHER = "other"  # a neighbour, an aunt, a family friend: say who in the text


class ContactChannel(StrEnum):
    """Step 6: how the hospital contacted the mandated facility."""

    PHONE = "phone"
    LETTER = "letter"
    EMAIL = "email"
    OTHER = "other"


class CloseReason(StrEnum):
    """Why the social service closed a case (the concern Flag becomes inactive)."""

    SAFETY_RESTORED = "safety-restored"  # the team found the home safe, or safety restored
    REFERRED = "referred"  # a mandated facility took over (step 6)
    PATIENT_LEFT_CARE = "patient-left-care"  # the patient is no longer in the hospital's care
    OTHER = "other"  # say why in the text


class ReferralStatus(StrEnum):
    """Where a step 6 referral stands (the FHIR ServiceRequest status it is written as)."""

    ACTIVE = "active"  # sent; the facility works on it
    ON_HOLD = "on-hold"  # paused, e.g. the facility waits for the family
    COMPLETED = "completed"  # the facility finished its part
    REVOKED = "revoked"  # withdrawn by the hospital


# ---------------------------------------------------------------------------------------
# 2. Errors
# ---------------------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """Stable codes of refused moves; the screens translate them."""

    STEP_OUT_OF_ORDER = "step-out-of-order"
    TIME_OUT_OF_ORDER = "time-out-of-order"
    AUTHOR_REQUIRED = "author-required"
    TIMEZONE_REQUIRED = "timezone-required"
    VALUE_REQUIRED = "value-required"
    CHILD_BORN_IN_FUTURE = "child-born-in-future"
    EXPECTED_DATE_IMPLAUSIBLE = "expected-date-implausible"
    DUPLICATE_CHILD = "duplicate-child"
    UNKNOWN_CHILD = "unknown-child"
    REASONS_REQUIRED = "reasons-required"
    ACUTE_DANGER_NEEDS_CONCERN = "acute-danger-needs-concern"
    SUPPORT_REQUIRED = "support-required"
    KIND_EN_GEZIN_OUT_OF_AGE = "kind-en-gezin-out-of-age"
    NOT_A_SUPPORT_SERVICE = "not-a-support-service"
    TEAM_DISCUSSION_REQUIRED = "team-discussion-required"
    CONCERNS_NOT_DISCUSSED = "concerns-not-discussed"
    CHILD_CONSENT_REQUIRED = "child-consent-required"
    NOT_A_MANDATED_FACILITY = "not-a-mandated-facility"
    OCJ_WITHOUT_COOPERATION_ONLY = "ocj-without-cooperation-only"
    ACUTE_DANGER_REQUIRED = "acute-danger-required"
    PATIENT_NOT_INFORMED = "patient-not-informed"
    NOT_INFORMED_REASON_REQUIRED = "not-informed-reason-required"
    REASON_WITHOUT_NOT_INFORMED = "reason-without-not-informed"
    KEY_PERSON_TEXT_REQUIRED = "key-person-text-required"
    EXPLANATION_WITHOUT_DISCUSSION = "explanation-without-discussion"
    FOLLOW_UP_IN_PAST = "follow-up-in-past"
    FOLLOW_UP_TOO_FAR_AHEAD = "follow-up-too-far-ahead"
    CONTACT_IN_FUTURE = "contact-in-future"
    CONTACT_TOO_LONG_AGO = "contact-too-long-ago"
    CLOSE_REASON_TEXT_REQUIRED = "close-reason-text-required"
    REFERRAL_STATUS_FINAL = "referral-status-final"
    REVOCATION_REASON_REQUIRED = "revocation-reason-required"
    NOT_REFERRED = "not-referred"
    REFERRALS_REVOKED = "referrals-revoked"
    NO_REFERRAL_STANDS = "no-referral-stands"


class ProtocolError(Exception):
    """A move the Kindreflex does not allow. ``message`` is meant for the nurse."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class StepOrderError(ProtocolError):
    """The step cannot be recorded now (skipped a step, or recorded back in time)."""


class MissingInformationError(ProtocolError):
    """The step lacks something the Kindreflex asks to record (reasons, consent, ...)."""


class InvalidFindingError(ProtocolError):
    """A recorded value is impossible or contradicts the protocol."""


# ---------------------------------------------------------------------------------------
# 3. The case: the patient, the children, an expected child
# ---------------------------------------------------------------------------------------


def _require_text(value: str | None, what: str) -> None:
    if value is None or not value.strip():
        raise MissingInformationError(ErrorCode.VALUE_REQUIRED, f"Please fill in {what}.")


@dataclass(frozen=True)
class Child:
    """A child the patient cares for, fully, partly or occasionally (step 1).

    ``ref`` identifies the child within the case (for example the id of the FHIR
    RelatedPerson); findings of later steps point at children through it. Children of
    any age may be recorded (a genogram); the advice only concerns minors.
    """

    ref: str
    name: str
    birth_date: date
    relationship: ChildRelationship
    lives_with: LivesWith

    def __post_init__(self) -> None:
        _require_text(self.ref, "a reference for the child")
        _require_text(self.name, "the child's name")


@dataclass(frozen=True)
class ExpectedChild:
    """The patient expects a child: their own pregnancy or their partner's (step 1)."""

    pregnancy_of: PregnancyOf
    expected_date: date | None = None


# ---------------------------------------------------------------------------------------
# 4. The six steps: what each records
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FindingBase:
    """What every finding records: who, when, where, and an optional free-text note.

    ``recorded_by`` is a user reference (e.g. a fhirUser URL ``Practitioner/123``);
    ``recorded_at`` must be timezone-aware; the day it falls on is :attr:`recorded_on`.
    ``encounter_ref`` is the encounter in which
    the finding was recorded when it differs from the encounter that opened the case.
    """

    step: ClassVar[Step]

    recorded_by: str
    recorded_at: datetime
    encounter_ref: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if not self.recorded_by or not self.recorded_by.strip():
            raise MissingInformationError(
                ErrorCode.AUTHOR_REQUIRED, "Every finding must say who recorded it."
            )
        if self.recorded_at.tzinfo is None or self.recorded_at.utcoffset() is None:
            raise InvalidFindingError(
                ErrorCode.TIMEZONE_REQUIRED,
                "The time of the finding must include its time zone.",
            )

    @property
    def recorded_on(self) -> date:
        """The day the finding was recorded, in Belgium: the dates it is checked against
        (a birth, a follow-up, a call to the facility) are the Belgian dates people typed,
        whatever offset the moment comes back with (a FHIR server may return it in UTC,
        where 00:30 in Brussels is still yesterday)."""
        return self.recorded_at.astimezone(LOCAL_ZONE).date()


@dataclass(frozen=True, kw_only=True)
class ChildFinding(FindingBase):
    """A finding of steps 2-6, about some or all of the children.

    ``focus`` holds the ``ref`` of each child concerned; empty means all children.
    """

    focus: tuple[str, ...] = ()


#: An expected date lies within a pregnancy seen from the day it is recorded: at most
#: about ten months (43 weeks) ahead, and a month past for a late birth.
EXPECTED_DATE_AHEAD_DAYS = 301
EXPECTED_DATE_OVERDUE_DAYS = 31


@dataclass(frozen=True, kw_only=True)
class Step1Finding(FindingBase):
    """Step 1, talk about the children and parenthood.

    Say the topic is standard, ask whether the patient cares for children or expects a
    child (also the partner's pregnancy), and note per child the name, the date of birth
    and whether the child lives with the patient. An empty list of children with no
    expected child is a valid answer: the Kindreflex then ends here.
    """

    step: ClassVar[Step] = Step.STEP_1

    children: tuple[Child, ...] = ()
    expecting: ExpectedChild | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        today = self.recorded_on
        seen: set[str] = set()
        for child in self.children:
            if child.birth_date > today:
                raise InvalidFindingError(
                    ErrorCode.CHILD_BORN_IN_FUTURE,
                    f"The date of birth of {child.name} ({child.birth_date.isoformat()}) "
                    "lies in the future. An unborn child is recorded as an expected child.",
                )
            if child.ref in seen:
                raise InvalidFindingError(
                    ErrorCode.DUPLICATE_CHILD, f"The child {child.name} is listed twice."
                )
            seen.add(child.ref)
        expected = self.expecting.expected_date if self.expecting else None
        if expected is not None and not (
            today - timedelta(days=EXPECTED_DATE_OVERDUE_DAYS)
            <= expected
            <= today + timedelta(days=EXPECTED_DATE_AHEAD_DAYS)
        ):
            raise InvalidFindingError(
                ErrorCode.EXPECTED_DATE_IMPLAUSIBLE,
                f"The expected date {expected.isoformat()} is not within a pregnancy: at most "
                "ten months ahead and one month past. A child already born is recorded as a "
                "child.",
            )


@dataclass(frozen=True, kw_only=True)
class Step2Finding(ChildFinding):
    """Step 2, gauge safety at home and the children's well-being.

    Who or what helps on a bad day; discuss with a colleague, because one's own norms
    bias the judgement. A niet-pluis feeling (or an unclear situation) is recorded with
    its reasons. ``acute_danger`` records that the situation at home is acutely unsafe
    (the pocket card's "degree of urgency"); it only goes with niet-pluis or unclear.
    ``triggers`` notes a Hague presentation that prompted the check, if any.

    ``consultations`` is recorded, not required: seeds 001-003 ask to discuss the
    judgement with a colleague ("Overleg steeds met andere collega's of een expert"), but
    at triage the nurse has minutes and may have no colleague free; step 4, the team's
    decision, requires one. That a "no concern" may be recorded by one nurse alone, a
    Hague presentation too, is a deviation for a clinician to confirm or to narrow (e.g.
    ask for the tick when the card warned).
    """

    step: ClassVar[Step] = Step.STEP_2

    assessment: SafetyAssessment
    reasons: tuple[str, ...] = ()
    who_helps: str | None = None
    consultations: frozenset[Consultation] = frozenset()
    acute_danger: bool = False
    triggers: frozenset[HagueTrigger] = frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        has_reasons = any(reason.strip() for reason in self.reasons)
        if self.assessment is not SafetyAssessment.NO_CONCERN and not has_reasons:
            raise MissingInformationError(
                ErrorCode.REASONS_REQUIRED,
                "Write down why you have a niet-pluis feeling or why the situation is "
                "unclear: the reasons are part of the record.",
            )
        if self.acute_danger and self.assessment is SafetyAssessment.NO_CONCERN:
            raise InvalidFindingError(
                ErrorCode.ACUTE_DANGER_NEEDS_CONCERN,
                "Acute danger cannot go with 'no concern'. Choose niet-pluis or unclear "
                "and write down the reasons.",
            )


def _check_support_services(services: frozenset[ReferralTarget]) -> None:
    mandated = services & STEP_6_TARGETS
    if mandated:
        names = ", ".join(sorted(target.value for target in mandated))
        raise InvalidFindingError(
            ErrorCode.NOT_A_SUPPORT_SERVICE,
            f"A referral to {names} is recorded at step 6 (involve a mandated facility). "
            "An anonymous call to the VK or OCJ is a consultation.",
        )


@dataclass(frozen=True, kw_only=True)
class Step3Support(ChildFinding):
    """Step 3, support the patient as a parent.

    Ask regularly about the children; discuss the impact of the situation on them; help
    strengthen their resilience; involve the children and the network; involve another
    service if needed (for children from 9 months before birth to 3 years: Kind & Gezin
    for a start conversation). Record how the patient was supported: at least one
    action or a note. ``services`` are the supporting services involved (not the VK,
    OCJ, parket or police: those belong to step 6).
    """

    step: ClassVar[Step] = Step.STEP_3

    actions: frozenset[SupportAction] = frozenset()
    services: frozenset[ReferralTarget] = frozenset()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.actions and not (self.note and self.note.strip()):
            raise MissingInformationError(
                ErrorCode.SUPPORT_REQUIRED,
                "Record how you supported the patient as a parent.",
            )
        _check_support_services(self.services)


@dataclass(frozen=True)
class Factor:
    """A risk or protective factor weighed at step 4.

    ``code`` comes from the hospital's catalogue of factors (extensible, so it is not an
    enum here; the catalogue validates it); ``text`` adds the specifics of this family.
    """

    code: str
    kind: FactorKind
    text: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.code, "the factor")


@dataclass(frozen=True)
class HeardChild:
    """A child listened to as a key person at step 4; needs the child's consent.

    ``own_say`` is what the child itself said or wants (from 12 a child decides much
    itself; younger children may be heard too).
    """

    child_ref: str
    consent_given: bool
    own_say: str | None = None


@dataclass(frozen=True)
class KeyPerson:
    """An adult key person listened to at step 4; ``text`` says who (required for OTHER)."""

    role: KeyPersonRole
    text: str | None = None

    def __post_init__(self) -> None:
        if self.role is KeyPersonRole.OTHER and not (self.text and self.text.strip()):
            raise MissingInformationError(
                ErrorCode.KEY_PERSON_TEXT_REQUIRED,
                "Say who the other key person is (for example 'neighbour' or 'aunt').",
            )


@dataclass(frozen=True, kw_only=True)
class Step4Decision(ChildFinding):
    """Step 4, check for concern and willingness.

    Gather more information and weigh risk and protective factors; listen to key
    persons (a child only with the child's consent; from 12 a child decides much
    itself); discuss first with a colleague or expert, and in doubt call the VK and/or
    OCJ anonymously; name the worries concretely to the patient and stay open to other
    explanations; then decide as a team whether the situation is concerning and whether
    the patient is willing to change it.

    Rules: the decision is discussed with at least one colleague, expert, CLB, VK or OCJ
    (``consultations``), except with acute danger, which cannot wait. A decision about
    the patient's willingness ("concerning-willing" or "concerning-unwilling") requires
    that the worries were discussed with the patient (``discussed_with_patient``); the
    patient's own explanation of them (``patient_explanation``) can only be recorded
    then. ``key_persons`` are the adults heard (partner, grandparents, others);
    ``team_members`` who took part in the team decision (names or roles, as text).
    """

    step: ClassVar[Step] = Step.STEP_4

    decision: TeamDecision
    factors: tuple[Factor, ...] = ()
    consultations: frozenset[Consultation] = frozenset()
    discussed_with_patient: bool = False
    children_heard: tuple[HeardChild, ...] = ()
    key_persons: tuple[KeyPerson, ...] = ()
    patient_explanation: str | None = None
    team_members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = step4_problems(
            self.decision,
            consultations=self.consultations,
            discussed_with_patient=self.discussed_with_patient,
            patient_explanation=self.patient_explanation,
            children_heard=self.children_heard,
        )
        if problems:
            raise problems[0]

    @property
    def risk_factors(self) -> tuple[Factor, ...]:
        return tuple(f for f in self.factors if f.kind is FactorKind.RISK)

    @property
    def protective_factors(self) -> tuple[Factor, ...]:
        return tuple(f for f in self.factors if f.kind is FactorKind.PROTECTIVE)


def step4_problems(
    decision: TeamDecision | None,
    *,
    consultations: Collection[Consultation],
    discussed_with_patient: bool,
    patient_explanation: str | None,
    children_heard: Iterable[HeardChild],
) -> list[ProtocolError]:
    """Every rule of :class:`Step4Decision` its values break, in the order the finding checks
    them (it raises the first): a form shows them all at once. ``decision`` None (not
    chosen yet): the rules that depend on it are left to the decision."""
    problems: list[ProtocolError] = []
    if patient_explanation and patient_explanation.strip() and not discussed_with_patient:
        problems.append(
            InvalidFindingError(
                ErrorCode.EXPLANATION_WITHOUT_DISCUSSION,
                "The patient's explanation is recorded after the worries were named to the "
                "patient; tick that they were discussed.",
            )
        )
    if decision is not None and decision is not TeamDecision.ACUTE_DANGER and not consultations:
        problems.append(
            MissingInformationError(
                ErrorCode.TEAM_DISCUSSION_REQUIRED,
                "Discuss the situation with a colleague or an expert (or call the VK or "
                "OCJ anonymously) before deciding.",
            )
        )
    if (
        decision in (TeamDecision.CONCERNING_WILLING, TeamDecision.CONCERNING_UNWILLING)
        and not discussed_with_patient
    ):
        problems.append(
            MissingInformationError(
                ErrorCode.CONCERNS_NOT_DISCUSSED,
                "Name your worries concretely to the patient before deciding whether the "
                "patient is willing to change the situation.",
            )
        )
    if any(not heard.consent_given for heard in children_heard):
        problems.append(
            MissingInformationError(
                ErrorCode.CHILD_CONSENT_REQUIRED,
                "A child is only listened to with the child's own consent.",
            )
        )
    return problems


def _check_not_before(day: date | None, finding: FindingBase) -> None:
    if day is not None and day < finding.recorded_on:
        raise InvalidFindingError(
            ErrorCode.FOLLOW_UP_IN_PAST,
            f"The follow-up date {day.isoformat()} lies before today; a follow-up is planned "
            "ahead.",
        )


@dataclass(frozen=True)
class AgreedAction:
    """Step 5: an action agreed with the patient, the family or a service, and when to
    check on it (``follow_up_on``, optional)."""

    text: str
    follow_up_on: date | None = None

    def __post_init__(self) -> None:
        _require_text(self.text, "the action agreed")


@dataclass(frozen=True, kw_only=True)
class Step5Progress(ChildFinding):
    """Step 5, restore safety.

    Create a safe situation, yourself or with a suitable service; work with the whole
    family; install help for the children; call the VK and/or OCJ anonymously when
    needed; revisit parenthood regularly and stay alert. Record the progress: improving
    (back to supporting the parent, step 3) or safety not restored (step 6).

    Restoring safety takes several conversations: ``agreed_actions`` are the actions
    agreed (each with an optional follow-up date), ``next_follow_up`` the date of the
    next check. A next follow-up keeps step 5 open: the next check is recorded as another
    step 5, whose ``note`` is the progress note of that follow-up.
    """

    step: ClassVar[Step] = Step.STEP_5

    progress: ProgressAssessment
    actions: frozenset[SafetyAction] = frozenset()
    services: frozenset[ReferralTarget] = frozenset()
    consultations: frozenset[Consultation] = frozenset()
    agreed_actions: tuple[AgreedAction, ...] = ()
    next_follow_up: date | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_support_services(self.services)
        _check_not_before(self.next_follow_up, self)
        for action in self.agreed_actions:
            _check_not_before(action.follow_up_on, self)

    @property
    def first_check(self) -> date | None:
        """The first day the social service planned to look again while step 5 goes on (a
        next follow-up): that follow-up or an agreed action's check, whichever comes first
        (the worklist's "follow-up due"). Without a next follow-up step 5 is over, and a
        date it could not record was shown overdue for good (found by review)."""
        if self.next_follow_up is None:
            return None
        planned = (a.follow_up_on for a in self.agreed_actions if a.follow_up_on is not None)
        return min((self.next_follow_up, *planned))


@dataclass(frozen=True)
class FacilityContact:
    """Step 6: the contact with the mandated facility: when, with whom, how."""

    on: date
    person: str
    channel: ContactChannel

    def __post_init__(self) -> None:
        _require_text(self.person, "the person contacted at the facility")


@dataclass(frozen=True, kw_only=True)
class Step6Referral(ChildFinding):
    """Step 6, involve a mandated facility.

    The facility (``target``):

    * VK, with or without the patient's cooperation;
    * OCJ, only without the patient's cooperation;
    * parket and/or police, only with acute danger; information is then shared under
      the legal right to report when a child's integrity is in danger (meldrecht).

    One referral goes to one facility; record a second step 6 for a second facility
    (e.g. the police now and the VK for the follow-up).

    Informing the patient: the patient must be informed and prepared (told what will
    happen) before the referral, ``patient_informed``. The one exception is acute
    danger, where informing first could put the child or others at risk: then the
    patient may be informed afterwards, and ``not_informed_reason`` must say why this
    did not happen first. Informing afterwards belongs among the ``follow_up_actions``.
    This exception is a deliberate deviation, for a clinician to confirm: the pocket card
    (seed 002) says "Breng de cliënt op de hoogte" in its acute column too. Without it, a
    social worker whose call to the police cannot wait for the parent would have to
    record something untrue or delay the call; with it, the record says what happened.
    Two points for that clinician: the exception holds for any referral while the case's
    acute danger stands (the VK's too, and a later one, until a step 3, 4 or 5 ends the
    danger), not only the call to the police or the parket; and that informing afterwards
    is among the follow-up actions is not checked (they are free text).

    ``follow_up_actions`` are what was agreed with the facility that the hospital does
    itself to help restore safety; ``contact`` is the contact with the facility (date,
    person, channel), which cannot lie after the finding. Neither is required, unlike
    step 3's support ("Noteer de vervolgacties in het cliëntdossier", seeds 001 and 003):
    the referral is often recorded as the call is made, before anything is agreed, and
    the referral's status updates carry a note each. Whether to require at least one
    follow-up action or a note is for a clinician to decide; findings recorded without
    one must stay readable then.
    """

    step: ClassVar[Step] = Step.STEP_6

    target: ReferralTarget
    with_cooperation: bool
    patient_informed: bool
    not_informed_reason: str | None = None
    follow_up_actions: tuple[str, ...] = ()
    contact: FacilityContact | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contact is not None and self.contact.on > self.recorded_on:
            raise InvalidFindingError(
                ErrorCode.CONTACT_IN_FUTURE,
                "The contact with the facility is recorded after it took place; its date "
                "cannot lie in the future.",
            )
        if self.target not in STEP_6_TARGETS:
            raise InvalidFindingError(
                ErrorCode.NOT_A_MANDATED_FACILITY,
                "Step 6 involves the VK, the OCJ or, with acute danger, the parket or the "
                f"police; '{self.target.value}' is a supporting service (step 3 or 5).",
            )
        if self.target is ReferralTarget.OCJ and self.with_cooperation:
            raise InvalidFindingError(
                ErrorCode.OCJ_WITHOUT_COOPERATION_ONLY,
                "The OCJ is involved when the parents do not cooperate. When they do, "
                "contact the VK.",
            )


#: Any finding of the six steps.
Finding = Step1Finding | Step2Finding | Step3Support | Step4Decision | Step5Progress | Step6Referral


# ---------------------------------------------------------------------------------------
# 5. The branch rules
# ---------------------------------------------------------------------------------------

_NO_STEPS: frozenset[Step] = frozenset()
#: the steps of an open concern, which the social service follows
CONCERN_STEPS: frozenset[Step] = frozenset({Step.STEP_4, Step.STEP_5, Step.STEP_6})


@dataclass(frozen=True)
class KindreflexCase:
    """The state of the Kindreflex for one adult patient.

    Build it with :meth:`open` or :meth:`replay` and move it on with :func:`apply` (or
    :meth:`record`); never construct the derived fields by hand.

    * ``next_steps``: the steps the protocol expects next (empty: nothing to do);
    * ``children`` and ``expecting``: from the latest step 1, and while a concern is open
      also those of the step 1s before it (a concern keeps the children it is about, and
      its expected child until it is born and recorded as a child);
    * ``acute_danger``: the route into step 6 comes from an acute-danger finding, which
      is what allows the parket or the police.
    """

    patient_ref: str
    encounter_ref: str
    findings: tuple[Finding, ...] = ()
    next_steps: frozenset[Step] = frozenset({Step.STEP_1})
    children: tuple[Child, ...] = ()
    expecting: ExpectedChild | None = None
    acute_danger: bool = False

    @classmethod
    def open(cls, patient_ref: str, encounter_ref: str) -> KindreflexCase:
        """A new case: the protocol starts at step 1."""
        _require_text(patient_ref, "the patient")
        _require_text(encounter_ref, "the encounter")
        return cls(patient_ref=patient_ref, encounter_ref=encounter_ref)

    @classmethod
    def replay(
        cls, patient_ref: str, encounter_ref: str, findings: Iterable[Finding]
    ) -> KindreflexCase:
        """Rebuild the state from recorded findings, validating every move again."""
        case = cls.open(patient_ref, encounter_ref)
        for finding in findings:
            case = apply(case, finding)
        return case

    def record(self, finding: Finding) -> KindreflexCase:
        """Same as ``apply(self, finding)``."""
        return apply(self, finding)

    @property
    def current_step(self) -> Step | None:
        """The step of the latest finding, or None before step 1."""
        return self.findings[-1].step if self.findings else None

    @property
    def is_closed(self) -> bool:
        """Nothing more to do: the patient cares for no minor child and expects none."""
        return not self.next_steps

    @property
    def has_open_concern(self) -> bool:
        """A concern is open: steps 4, 5 or 6 lie ahead (what fills the worklist)."""
        return bool(self.next_steps & CONCERN_STEPS)

    def can_record(self, step: Step) -> bool:
        """Whether a finding of this step may be recorded now.

        Step 1 always may (a new contact, an update of the children). Not covered: a step 2
        with acute danger, which may interrupt the route at any point after step 1.
        """
        return step in self.next_steps or (step is Step.STEP_1)

    def child(self, ref: str) -> Child | None:
        return next((c for c in self.children if c.ref == ref), None)


def leads_to_referral(finding: Finding) -> bool:
    """Whether a step 6 referral may follow from ``finding`` (the referral's reason): the
    team decision "concerning, unwilling" or "acute danger" (step 4), safety not restored
    (step 5), or an acute danger found at step 2."""
    match finding:
        case Step4Decision():
            return finding.decision in (
                TeamDecision.CONCERNING_UNWILLING,
                TeamDecision.ACUTE_DANGER,
            )
        case Step5Progress():
            return finding.progress is ProgressAssessment.NOT_RESTORED
        case Step2Finding():
            return finding.acute_danger
    return False


def referral_subjects(
    case: KindreflexCase, referral: Step6Referral
) -> tuple[tuple[Child, ...], ExpectedChild | None]:
    """Whom a referral is about: the children it names. Naming none, it is about the
    case's minors on the day it is made and the expected child: the Kindreflex concerns
    minors, from pregnancy on (seeds 000 and 002), so a grown-up child of the patient is
    not handed to a facility unasked. Only when no minor and no expected child is left
    (the children came of age while the case was open) is it about all of them."""
    if referral.focus:
        named = set(referral.focus)
        return tuple(child for child in case.children if child.ref in named), None
    on = referral.recorded_on
    minors = tuple(
        child for child in case.children if age_in_months(child.birth_date, on) < ADULT_FROM_MONTHS
    )
    if minors or case.expecting is not None:
        return minors, case.expecting
    return case.children, None


def team_may_find_acute_danger(case: KindreflexCase, on: date) -> bool:
    """Whether the team may record a step 4 "acute danger" now, out of its route: once the
    social service follows the concern (a finding of steps 4-6: a team decision, or the
    referral and the work on safety that a nurse's acute danger led to straight away),
    danger found later (a new incident, what the facility tells) leads to the parket or the
    police at any moment ("Er is acuut gevaar: betrek het parket en/of de politie", seed
    002; seed 003, step 4: "acuut gevaar? Ga naar stap 6"), without waiting for a nurse's
    step 2 at the patient's next visit. Neither seed asks for an earlier team decision: a
    case that went from a nurse's acute danger to the police and then to step 5 has none,
    and the parket and the police were closed to it for good (found by review)."""
    followed = any(f.step in CONCERN_STEPS for f in case.findings)
    return followed and cares_for_minors(case.children, case.expecting, on)


def team_decisions_open(case: KindreflexCase, on: date) -> tuple[TeamDecision, ...]:
    """The step 4 decisions the team may record now: all of them when step 4 is next, only
    "acute danger" when danger interrupts the route (:func:`team_may_find_acute_danger`)."""
    if Step.STEP_4 in case.next_steps:
        return tuple(TeamDecision)
    if team_may_find_acute_danger(case, on):
        return (TeamDecision.ACUTE_DANGER,)
    return ()


def _supports_after_a_triage(case: KindreflexCase) -> bool:
    """Whether a step 3 now follows a step 2 (a nurse's "no concern" at a visit) rather
    than the concern's route (a team decision "safe", progress "improving", a referral):
    the latest finding of steps 2, 4, 5 or 6 is a step 2."""
    routing = (f for f in reversed(case.findings) if f.step not in (Step.STEP_1, Step.STEP_3))
    return isinstance(next(routing, None), Step2Finding)


def _awaits_team_decision(findings: tuple[Finding, ...]) -> bool:
    """Whether a nurse's niet-pluis or unclear (step 2, without acute danger) still waits
    for the team's decision: no step 4 is recorded after it. Seed 003, step 2: "Heb je een
    niet-pluisgevoel, of voel je onduidelijkheid? Ga naar STAP 4." The work on an older
    plan (a step 5 follow-up, a referral, the support it leads to) does not decide on the
    new worries: before, it replaced the step 4 the nurse's finding had opened, and the
    case could be closed without a team decision on them (found by review). A step 2 with
    acute danger has a route of its own in place of any other (step 4 or step 6): a
    referral answers it, and with it any worries found before it."""
    for finding in reversed(findings):
        if isinstance(finding, Step4Decision):
            return False
        if (
            isinstance(finding, Step2Finding)
            and finding.assessment is not SafetyAssessment.NO_CONCERN
        ):
            return not finding.acute_danger
    return False


def apply(case: KindreflexCase, finding: Finding) -> KindreflexCase:
    """Validate one move and return the new state. Raises a :class:`ProtocolError`."""
    _check_time(case, finding)
    _check_step_allowed(case, finding)
    if isinstance(finding, ChildFinding):
        _check_focus(case, finding)

    children, expecting = case.children, case.expecting
    acute = case.acute_danger
    match finding:
        case Step1Finding():
            children, expecting = _children_after(case, finding)
            kept = case.next_steps if case.findings else _NO_STEPS
            if cares_for_minors(finding.children, finding.expecting, finding.recorded_on):
                nxt = kept | {Step.STEP_2}
            else:  # nothing to gauge: only a concern the social service follows stays
                nxt = kept & CONCERN_STEPS
        case Step2Finding():
            acute = finding.acute_danger or case.acute_danger
            if finding.acute_danger:
                nxt = frozenset({Step.STEP_4, Step.STEP_6})  # in place of any other route
            else:
                no_concern = finding.assessment is SafetyAssessment.NO_CONCERN
                own = Step.STEP_3 if no_concern else Step.STEP_4  # niet-pluis or unclear: 4
                # an open concern stays open: the triage does not close it
                nxt = frozenset({own}) | (case.next_steps & CONCERN_STEPS)
        case Step3Support():
            _check_kind_en_gezin_start(case, finding)
            nxt = frozenset({Step.STEP_3, Step.STEP_2})
            if _supports_after_a_triage(case):
                # the nurse's support after her "no concern": the team's route stays open
                nxt |= case.next_steps & CONCERN_STEPS
            else:
                # the team's route led here: its concern is over (a nurse's worries that
                # still wait for the team keep step 4 ahead: _awaits_team_decision)
                acute = False
        case Step4Decision():
            acute = finding.decision is TeamDecision.ACUTE_DANGER
            nxt = {
                TeamDecision.SAFE: frozenset({Step.STEP_3}),
                TeamDecision.CONCERNING_WILLING: frozenset({Step.STEP_5}),
                TeamDecision.CONCERNING_UNWILLING: frozenset({Step.STEP_6}),
                TeamDecision.ACUTE_DANGER: frozenset({Step.STEP_6}),
            }[finding.decision]
        case Step5Progress():
            acute = False
            nxt = {
                ProgressAssessment.IMPROVING: frozenset({Step.STEP_3}),
                ProgressAssessment.NOT_RESTORED: frozenset({Step.STEP_6}),
            }[finding.progress]
            if finding.next_follow_up is not None:
                nxt |= {Step.STEP_5}  # the next check is another step 5
        case Step6Referral():
            if finding.target in ACUTE_DANGER_TARGETS and not case.acute_danger:
                raise InvalidFindingError(
                    ErrorCode.ACUTE_DANGER_REQUIRED,
                    "The parket or the police are involved only with acute danger. Record "
                    "the acute danger first (step 2 or the team decision of step 4), or "
                    "contact the VK or the OCJ.",
                )
            if not finding.patient_informed:
                if not case.acute_danger:
                    raise MissingInformationError(
                        ErrorCode.PATIENT_NOT_INFORMED,
                        "Inform the patient and explain what will happen before the "
                        "referral; only with acute danger may this happen afterwards.",
                    )
                if not (finding.not_informed_reason and finding.not_informed_reason.strip()):
                    raise MissingInformationError(
                        ErrorCode.NOT_INFORMED_REASON_REQUIRED,
                        "Write down why the patient could not be informed first, and "
                        "inform the patient afterwards.",
                    )
            nxt = frozenset({Step.STEP_6, Step.STEP_5, Step.STEP_3})
    findings = (*case.findings, finding)
    if _awaits_team_decision(findings):
        nxt |= {Step.STEP_4}  # whatever else moved on meanwhile
    return dataclasses.replace(
        case,
        findings=findings,
        next_steps=nxt,
        children=children,
        expecting=expecting,
        acute_danger=acute,
    )


def cares_for_minors(children: Iterable[Child], expecting: ExpectedChild | None, on: date) -> bool:
    """Whether step 1 leaves children to look after on ``on``: a minor child, or one
    expected (grown-up children stay in the record but end the Kindreflex there)."""
    return expecting is not None or any(
        age_in_months(c.birth_date, on) < ADULT_FROM_MONTHS for c in children
    )


def _children_after(
    case: KindreflexCase, step_1: Step1Finding
) -> tuple[tuple[Child, ...], ExpectedChild | None]:
    """The children and the expected child after a new step 1: the step's own, and while a
    concern is open also the concern's that the step leaves out, so that the social
    service's route (a team decision about a child, a referral naming it) keeps them; the
    concern's expected child until it is born (:func:`_still_expected`)."""
    if not case.has_open_concern:
        return step_1.children, step_1.expecting
    listed = {child.ref for child in step_1.children}
    kept = tuple(child for child in case.children if child.ref not in listed)
    children = (*step_1.children, *kept)
    still_expected = _still_expected(case.expecting, children, step_1.recorded_on)
    return children, step_1.expecting or still_expected


def _still_expected(
    expecting: ExpectedChild | None, children: tuple[Child, ...], on: date
) -> ExpectedChild | None:
    """The concern's expected child as a step 1 on ``on`` keeps it: not once it is born, its
    expected date more than EXPECTED_DATE_OVERDUE_DAYS past (a step 1 no longer accepts
    that date: a child already born is recorded as a child) and a child born since the
    pregnancy began (at most EXPECTED_DATE_AHEAD_DAYS before that date) among the concern's
    children. Before, a referral after the birth named the newborn twice, once as a child
    still expected (found by review). A newborn the patient leaves out keeps it: the
    expected child is then the only record of that baby, and the concern stays about it."""
    due = expecting.expected_date if expecting is not None else None
    if due is None or due >= on - timedelta(days=EXPECTED_DATE_OVERDUE_DAYS):
        return expecting
    pregnancy_began = due - timedelta(days=EXPECTED_DATE_AHEAD_DAYS)
    born = any(child.birth_date >= pregnancy_began for child in children)
    return None if born else expecting


def _check_kind_en_gezin_start(case: KindreflexCase, support: Step3Support) -> None:
    """A Kind & Gezin start conversation is for children from -9 months to 3 years (seed
    002); recorded for a family without one, it would count a referral that cannot apply."""
    if SupportAction.KIND_EN_GEZIN_START not in support.actions:
        return
    if kind_en_gezin_advised(case, support.recorded_on) is None:
        raise InvalidFindingError(
            ErrorCode.KIND_EN_GEZIN_OUT_OF_AGE,
            "A Kind & Gezin start conversation is for children from 9 months before birth "
            "to 3 years; none of the patient's children is of that age.",
        )


def _check_time(case: KindreflexCase, finding: Finding) -> None:
    if case.findings and finding.recorded_at < case.findings[-1].recorded_at:
        raise StepOrderError(
            ErrorCode.TIME_OUT_OF_ORDER,
            "This finding is dated before the previous one; findings are recorded in order.",
        )


def _check_step_allowed(case: KindreflexCase, finding: Finding) -> None:
    step = finding.step
    if step is Step.STEP_1 or step in case.next_steps:
        return
    gauged = cares_for_minors(case.children, case.expecting, finding.recorded_on)
    if isinstance(finding, Step2Finding) and finding.acute_danger and gauged:
        return  # acute danger does not wait for the route (but needs children, step 1)
    if isinstance(finding, Step4Decision) and finding.decision in team_decisions_open(
        case, finding.recorded_on
    ):
        return  # the team's "acute danger" does not wait for the route either
    if not case.next_steps:
        expected = "nothing: the patient cares for no minor children and expects none"
    else:
        expected = " or ".join(
            f"step {s.number} ({s.heading.lower()})" for s in sorted(case.next_steps)
        )
    raise StepOrderError(
        ErrorCode.STEP_OUT_OF_ORDER,
        f"Step {step.number} ({step.heading.lower()}) cannot be recorded now. Next is {expected}.",
    )


def _check_focus(case: KindreflexCase, finding: ChildFinding) -> None:
    known = {child.ref for child in case.children}
    refs = list(finding.focus)
    if isinstance(finding, Step4Decision):
        refs += [heard.child_ref for heard in finding.children_heard]
    for ref in refs:
        if ref not in known:
            raise InvalidFindingError(
                ErrorCode.UNKNOWN_CHILD,
                "This finding names a child who is not recorded at step 1. Add the child "
                "at step 1 first.",
            )


@dataclass(frozen=True)
class CaseClosure:
    """Why a case was closed; ``text`` adds the specifics (required for OTHER).

    When a case may be closed (no step 4 or 5 due, or after a referral) depends on the
    whole case and is checked where the case is read (``service.casework``).
    """

    reason: CloseReason
    text: str | None = None

    def __post_init__(self) -> None:
        if self.reason is CloseReason.OTHER and not (self.text and self.text.strip()):
            raise MissingInformationError(
                ErrorCode.CLOSE_REASON_TEXT_REQUIRED, "Write down why the case is closed."
            )


def check_closure(
    case: KindreflexCase,
    closure: CaseClosure,
    referral_statuses: Collection[ReferralStatus],
) -> None:
    """Refuse a close reason the case contradicts: "referred" (a mandated facility took
    over) needs a step 6 referral, and one that stands on the FHIR server, not revoked.
    ``referral_statuses``: where the case's referrals stand there (a referral withdrawn in
    the EHR, entered in error or cancelled, has none: it was never sent, as far as the
    record says, while its step 6 finding stays)."""
    if closure.reason is not CloseReason.REFERRED:
        return
    if not any(isinstance(f, Step6Referral) for f in case.findings):
        raise InvalidFindingError(
            ErrorCode.NOT_REFERRED,
            "This case has no referral to a mandated facility (step 6); choose another "
            "reason for closing it.",
        )
    if not referral_statuses:
        raise InvalidFindingError(
            ErrorCode.NO_REFERRAL_STANDS,
            "No referral of this case stands on the FHIR server: it was withdrawn there. "
            "Record a new referral (step 6), or choose another reason for closing it.",
        )
    if not _any_stands(referral_statuses):
        raise InvalidFindingError(
            ErrorCode.REFERRALS_REVOKED,
            "Every referral of this case was revoked: no facility took it over. Record a new "
            "referral (step 6), or choose another reason for closing it.",
        )


def reopens_after_referral_change(
    closure: CaseClosure | None, referral_statuses: Collection[ReferralStatus]
) -> bool:
    """Whether a referral's status change reopens a case closed as "referred": once it is
    made (``referral_statuses``: where the case's referrals then stand), every referral of
    the case is revoked, the state :func:`check_closure` refuses to close in. No facility
    holds the case any more, so the social service follows it again, with step 6 (a new
    referral) open. ``closure``: why the case was closed (None: it is open). A case closed
    for another reason, or with a referral still standing, stays as it is."""
    return (
        closure is not None
        and closure.reason is CloseReason.REFERRED
        and bool(referral_statuses)
        and not _any_stands(referral_statuses)
    )


def _any_stands(referral_statuses: Collection[ReferralStatus]) -> bool:
    """Whether a facility holds the case: one of its referrals is not revoked (a completed
    one stands: the facility did its part)."""
    return any(s is not ReferralStatus.REVOKED for s in referral_statuses)


def check_not_informed_reason(referral: Step6Referral) -> None:
    """Refuse a reason why the patient was not informed next to "informed": a contradiction
    the facility would read. Checked when a referral is recorded, not in the finding
    itself: referrals already recorded so must still replay."""
    if referral.patient_informed and referral.not_informed_reason:
        raise InvalidFindingError(
            ErrorCode.REASON_WITHOUT_NOT_INFORMED,
            "A reason why the patient was not informed goes with 'not informed'; choose 'no' "
            "or clear the reason.",
        )


#: A follow-up (step 5's next check, an agreed action's date) lies at most a year ahead of
#: the day it is planned. Restoring safety means revisiting the family regularly and staying
#: alert (seed 001, step 5); a check planned further away is not a follow-up of this
#: concern, and the likely cause is a year typed wrong (2062 for 2026). A later check is
#: planned at the next follow-up.
FOLLOW_UP_AT_MOST_YEARS_AHEAD = 1
#: The contact with the mandated facility (step 6) lies at most a year before the day the
#: referral is recorded. It is noted when the referral is recorded, normally the same day
#: (the screen offers today); a year leaves room for a record caught up late, and refuses a
#: year typed wrong (2002 for 2026), which would tell the facility of a contact before the
#: concern could have existed. (The concern itself may be older than a year: a case
#: followed at step 5 for long; so the bound is the recording day, not the concern's start.)
CONTACT_AT_MOST_YEARS_BEFORE = 1


def _years_from(day: date, years: int) -> date:
    """The same calendar day ``years`` later (earlier when negative); 29 February becomes
    the 28th in a year without it."""
    return _months_from(day, 12 * years)


def _months_from(day: date, months: int) -> date:
    """The same day of the month ``months`` later (earlier when negative); a day the month
    lacks becomes its last (31 May - 3 months: 28 or 29 February)."""
    year, month = divmod(day.month - 1 + months, 12)
    year, month = day.year + year, month + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def latest_follow_up(recorded_on: date) -> date:
    """The latest follow-up date a step 5 recorded on ``recorded_on`` may plan."""
    return _years_from(recorded_on, FOLLOW_UP_AT_MOST_YEARS_AHEAD)


def earliest_contact(recorded_on: date) -> date:
    """The earliest date of a facility contact a step 6 recorded on ``recorded_on`` may give."""
    return _years_from(recorded_on, -CONTACT_AT_MOST_YEARS_BEFORE)


def check_plausible_dates(finding: Finding) -> None:
    """Refuse a step 5 follow-up more than a year ahead and a step 6 facility contact more
    than a year back (see the bounds above). Checked when a finding is recorded, not in the
    finding itself: findings already recorded with such a date must still replay (their
    case stays readable). Other findings have no such dates."""
    recorded_on = finding.recorded_on
    if isinstance(finding, Step5Progress):
        latest = latest_follow_up(recorded_on)
        planned = [finding.next_follow_up, *(a.follow_up_on for a in finding.agreed_actions)]
        for day in planned:
            if day is not None and day > latest:
                raise InvalidFindingError(
                    ErrorCode.FOLLOW_UP_TOO_FAR_AHEAD,
                    f"The follow-up date {day.isoformat()} lies more than a year ahead (after "
                    f"{latest.isoformat()}); check the year, and plan a later check at the next "
                    "follow-up.",
                )
    if isinstance(finding, Step6Referral) and finding.contact is not None:
        earliest = earliest_contact(recorded_on)
        if finding.contact.on < earliest:
            raise InvalidFindingError(
                ErrorCode.CONTACT_TOO_LONG_AGO,
                f"The contact with the facility on {finding.contact.on.isoformat()} lies more "
                f"than a year back (before {earliest.isoformat()}); check the year.",
            )


#: A referral that is completed or revoked is history; it does not move again.
_FINAL_REFERRAL_STATUSES = frozenset({ReferralStatus.COMPLETED, ReferralStatus.REVOKED})


def check_referral_status(
    current: ReferralStatus, new: ReferralStatus, note: str | None = None
) -> None:
    """Refuse a status change of a finished referral (completed or revoked are final), and
    a revocation without its reason (``note``). Revoking withdraws the hospital's referral
    of the children to a mandated facility, for good: the record says why (the facility
    declined, the family moved away, it was made in error), for a colleague who takes the
    case over and for the inspection that checks the plan is applied. Before, it could be
    revoked without a word. Other changes keep the note optional."""
    if current in _FINAL_REFERRAL_STATUSES and new is not current:
        raise InvalidFindingError(
            ErrorCode.REFERRAL_STATUS_FINAL,
            f"This referral is {current.value}; a finished referral does not change again. "
            "Record a new step 6 to involve the facility again.",
        )
    if new is ReferralStatus.REVOKED and new is not current and not (note and note.strip()):
        raise MissingInformationError(
            ErrorCode.REVOCATION_REASON_REQUIRED,
            "Write down why the referral is revoked (for example what the facility said, "
            "or that it was made in error).",
        )


# ---------------------------------------------------------------------------------------
# 6. Derived advice
# ---------------------------------------------------------------------------------------

#: Kind & Gezin start conversation: from 9 months before birth (an expected child)
#: until the third birthday ("van -9 maanden tot 3 jaar").
KIND_EN_GEZIN_FROM_MONTHS = -9
KIND_EN_GEZIN_UNTIL_MONTHS = 36
#: Adulthood: the Kindreflex concerns minors.
ADULT_FROM_MONTHS = 18 * 12
#: From 12 a child decides much itself (seed 001, step 4).
DECIDES_LARGELY_FROM_MONTHS = 12 * 12
#: School age for the CLB: Flemish children may go to nursery school (kleuterschool)
#: from 2.5 years; compulsory education runs until 18. So 30 months up to 18 years.
SCHOOL_AGE_FROM_MONTHS = 30
#: The most children one list names: more than any family has. The triage screen offers
#: no more rows to add (besides the children the record already holds), and the social
#: service's lists of children (those a step concerns, those heard) hold no more, so a
#: forged request cannot make the service do unbounded work.
MAX_CHILDREN = 25


def age_in_months(birth_date: date, on: date) -> int:
    """Completed months of age on a date (negative before birth)."""
    months = (on.year - birth_date.year) * 12 + (on.month - birth_date.month)
    if months > 0 and on.day < birth_date.day:
        months -= 1
    elif months < 0 and on.day > birth_date.day:
        months += 1
    return months


class AdviceKind(StrEnum):
    """Kinds of derived advice (shown by the screens, not recorded in FHIR)."""

    KIND_EN_GEZIN_START = "kind-en-gezin-start"
    CHILD_CONSENT = "child-consent"
    CLB = "clb"


@dataclass(frozen=True)
class Advice:
    """A hint for the professional; ``child_refs`` empty with an expected child."""

    kind: AdviceKind
    step: Step
    child_refs: tuple[str, ...]
    includes_expected_child: bool = False


@dataclass(frozen=True)
class ChildConsentAdvice:
    """Involving this child needs the child's consent; from 12 it decides much itself."""

    child_ref: str
    decides_largely_themselves: bool


def kind_en_gezin_advised(case: KindreflexCase, on: date) -> Advice | None:
    """Step 3: refer to Kind & Gezin for a start conversation.

    For children from 9 months before birth to their third birthday; an expected child
    counts (when its expected date is known: from 9 months before it until three years
    after it).
    """
    refs = tuple(
        c.ref
        for c in case.children
        if 0 <= age_in_months(c.birth_date, on) < KIND_EN_GEZIN_UNTIL_MONTHS
    )
    due = case.expecting.expected_date if case.expecting is not None else None
    # compared by day: completed months round towards zero before birth, which would let
    # 9 months and 3 weeks ahead pass as "-9 months"
    expected = case.expecting is not None and (
        due is None
        or _months_from(due, KIND_EN_GEZIN_FROM_MONTHS)
        <= on
        < _months_from(due, KIND_EN_GEZIN_UNTIL_MONTHS)
    )
    if not refs and not expected:
        return None
    return Advice(AdviceKind.KIND_EN_GEZIN_START, Step.STEP_3, refs, expected)


def child_consent_advice(case: KindreflexCase, on: date) -> tuple[ChildConsentAdvice, ...]:
    """Step 4: every minor child needs to consent before being involved as a key person."""
    return tuple(
        ChildConsentAdvice(c.ref, age_in_months(c.birth_date, on) >= DECIDES_LARGELY_FROM_MONTHS)
        for c in case.children
        if age_in_months(c.birth_date, on) < ADULT_FROM_MONTHS
    )


def clb_children(case: KindreflexCase, on: date) -> tuple[Child, ...]:
    """School-age children (2.5 to 18 years), for whom the school's CLB is involved."""
    return tuple(
        c
        for c in case.children
        if SCHOOL_AGE_FROM_MONTHS <= age_in_months(c.birth_date, on) < ADULT_FROM_MONTHS
    )


def advice(case: KindreflexCase, on: date) -> tuple[Advice, ...]:
    """The advice that fits where the case stands now (its current and next steps).

    * Kind & Gezin start conversation: when step 3 is current or next.
    * The child's consent: when step 4 is current or next, for every minor child.
    * CLB for school-age children: when step 4, 5 or 6 is current or next. The
      workshop asks for the CLB at step 5; the pocket card also names it at step 4
      ("for school children, involve the CLB too") and at step 6 ("consult the CLB").
    """
    steps = set(case.next_steps)
    if case.current_step is not None:
        steps.add(case.current_step)
    result: list[Advice] = []
    if Step.STEP_3 in steps and (kg := kind_en_gezin_advised(case, on)) is not None:
        result.append(kg)
    if Step.STEP_4 in steps and (consent := child_consent_advice(case, on)):
        result.append(
            Advice(AdviceKind.CHILD_CONSENT, Step.STEP_4, tuple(a.child_ref for a in consent))
        )
    concern_steps = steps & {Step.STEP_4, Step.STEP_5, Step.STEP_6}
    if concern_steps and (school := clb_children(case, on)):
        result.append(Advice(AdviceKind.CLB, min(concern_steps), tuple(c.ref for c in school)))
    return tuple(result)
