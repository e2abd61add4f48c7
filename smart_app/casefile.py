"""The social worker's case file (issue 5): one case's page, the forms of steps 4-6 and
closing, and the printable referral summary.

* ``GET /social/cases/{id}``: the patient, the flag, the children, the findings so far,
  the delivery state and the assignment; the forms of the steps the protocol allows next.
* ``POST /social/cases/{id}/step-4|step-5|step-6|close``: the forms (CSRF token required).
* ``GET /social/cases/{id}/referral``: what the mandated facility needs for the call.
* ``GET /social/static/casefile.css|casefile.js``: the stylesheet (screen and print) and
  the referral's print button.

Mounted plain and under ``/t/{tenant}``, social-worker role only. The case is read from
the FHIR server (the source of truth) and replayed by the protocol each time a page is
opened, through the same use case as the JSON API (``service.casework.Casework``), which
also audits the read. Every save goes through the same use case as the API; a refused
save shows the page again with the input kept and the reason next to the field.

A case whose concern Flag is not on the FHIR server shows the worklist's row and says why:
its nurse's save still on its way (``not-on-server``), waiting for a sign-in
(``waiting-sign-in``), or refused by the server for good (``refused``, ``refused-conflict``,
``refused-no-reason``: :class:`~service.casework.RaisingSaveRefusedError`). The refused
case stays on the worklist, as a nurse's worry must, and its page says when the nurse
saved, the server's reason, that none of it is in the patient's record and what to do: a
nurse records the finding again from the patient's chart, whose save continues this case.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import partial
from typing import Any, Literal, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from service import social
from service.api.deps import DatabaseDep
from service.audit import AuditAction
from service.casework import (
    CaseFile,
    CaseNotOnServerError,
    CaseOnAnotherServerError,
    Casework,
    ClosedOnServerError,
    CloseRefusedError,
    IncompleteCaseError,
    NoReferralError,
    RaisingSaveRefusedError,
    Reopening,
    SaveOnItsWayError,
    StepInput,
    StepResult,
    UnknownReferralError,
    closable,
)
from service.fhir import terminology
from service.fhir.client import (
    FhirError,
    FhirUnavailable,
    FhirUnreadable,
    ReauthorisationRequired,
)
from service.fhir.mapping import (
    STAT,
    AddedNote,
    UnreadableResourceError,
    referral_notes,
    referral_performer,
    referral_priority,
    referral_target,
    request_status,
)
from service.i18n import Language, translate
from service.local_time import local_today
from service.outbox import UNDELIVERED_STATES
from service.partners import Partner
from service.protocol import (
    ACUTE_DANGER_TARGETS,
    STEP_6_TARGETS,
    AdviceKind,
    CaseClosure,
    Child,
    CloseReason,
    Consultation,
    ContactChannel,
    ErrorCode,
    ExpectedChild,
    Finding,
    HeardChild,
    KeyPersonRole,
    KindreflexCase,
    ProgressAssessment,
    ProtocolError,
    ReferralStatus,
    ReferralTarget,
    SafetyAction,
    Step,
    Step2Finding,
    Step4Decision,
    Step6Referral,
    TeamDecision,
    advice,
    age_in_months,
    earliest_contact,
    latest_follow_up,
    leads_to_referral,
    referral_subjects,
    step4_problems,
    team_decisions_open,
)
from service.social import CaseSummary, Step4Input, Step5Input, Step6Input
from smart_app import dates
from smart_app.assets import asset_response
from smart_app.errors import free_text, shown_back
from smart_app.pages import TEMPLATES
from smart_app.session import LaunchContext, csrf_token, pinned, security_headers
from smart_app.social import (
    CaseId,
    CaseworkDep,
    ClaimRefusal,
    Closing,
    ReferralStatusChange,
    SocialWorker,
    audit_refusal,
    token_refused,
    verify_case_csrf,
)

router = APIRouter(prefix="/social", include_in_schema=False)

#: The lines a form offers for the agreed actions of step 5.
AGREED_ACTION_ROWS = 3
#: From this age a child decides much itself: the page asks for the child's own say.
OWN_SAY_AGE = 12
#: The channel the step 6 form shows for the contact with the facility until another is
#: chosen (``step6_body``; ``error.contact-person`` names it).
CONTACT_CHANNEL_DEFAULT = ContactChannel.PHONE

#: Where on the page a refused move is shown (the id of the field it is about).
_ERROR_ANCHOR: Mapping[ErrorCode, str] = {
    ErrorCode.TEAM_DISCUSSION_REQUIRED: "s4-consultations",
    ErrorCode.CONCERNS_NOT_DISCUSSED: "s4-discussed",
    ErrorCode.EXPLANATION_WITHOUT_DISCUSSION: "s4-discussed",
    ErrorCode.CHILD_CONSENT_REQUIRED: "s4-children",
    ErrorCode.KEY_PERSON_TEXT_REQUIRED: "s4-key-other-text",
    ErrorCode.FOLLOW_UP_IN_PAST: "s5-next-follow-up",
    ErrorCode.FOLLOW_UP_TOO_FAR_AHEAD: "s5-next-follow-up",
    ErrorCode.CONTACT_IN_FUTURE: "s6-contact-on",
    ErrorCode.CONTACT_TOO_LONG_AGO: "s6-contact-on",
    ErrorCode.ACUTE_DANGER_REQUIRED: "s6-partner",
    ErrorCode.OCJ_WITHOUT_COOPERATION_ONLY: "s6-cooperation",
    ErrorCode.NOT_A_MANDATED_FACILITY: "s6-partner",
    ErrorCode.PATIENT_NOT_INFORMED: "s6-informed",
    ErrorCode.NOT_INFORMED_REASON_REQUIRED: "s6-not-informed-reason",
    ErrorCode.REASON_WITHOUT_NOT_INFORMED: "s6-not-informed-reason",
    ErrorCode.CLOSE_REASON_TEXT_REQUIRED: "close-reason-text",
}
#: Where a refused move is shown in a form whose ids are its own (a referral's status form,
#: ``referral_form``): the field of the form sent, by its name.
_FORM_FIELD: Mapping[ErrorCode, str] = {ErrorCode.REVOCATION_REASON_REQUIRED: "note"}
#: A field the API refuses (``s4-team-members``) → its id on the page, where the two differ:
#: a message at an anchor the page lacks would be shown nowhere.
_FIELD_ANCHOR: Mapping[str, str] = {
    "s4-discussed-with-patient": "s4-discussed",
    "s4-patient-explanation": "s4-explanation",
    "s4-children-heard": "s4-children",
    "s4-team-members": "s4-team",
    "s6-partner-id": "s6-partner",
    "s6-with-cooperation": "s6-cooperation",
    "s6-patient-informed": "s6-informed",
    "s6-follow-up-actions": "s6-follow-up",
}


# -- the form as typed ------------------------------------------------------------------------


@dataclass(frozen=True)
class Typed:
    """The form the social worker sent (``form`` names which one), kept to show it again."""

    form: str = ""
    values: Mapping[str, list[str]] = field(default_factory=dict)

    def value(self, form: str, name: str, default: str = "") -> str:
        if form != self.form:
            return default
        return (self.values.get(name) or [default])[0]

    def checked(self, form: str, name: str, value: str = "on") -> bool:
        return form == self.form and value in self.values.get(name, [])


@dataclass(frozen=True)
class Problem:
    """What went wrong with a save: the message and the field it belongs to (or ``form``)."""

    form: str
    anchor: str
    message: str


def _one(values: Mapping[str, list[str]], name: str) -> str | None:
    """A single text field; blank means absent."""
    found = (values.get(name) or [""])[0].strip()
    return found or None


def _yes_no(values: Mapping[str, list[str]], name: str) -> bool | None:
    """A yes/no question; unanswered is None, which the API refuses next to the question
    (a silent "no" would record an answer nobody gave)."""
    return {"yes": True, "no": False}.get(_one(values, name) or "")


def _lines(values: Mapping[str, list[str]], name: str) -> list[str]:
    return [line.strip() for line in (_one(values, name) or "").splitlines() if line.strip()]


def _ticked_or_typed(values: Mapping[str, list[str]], name: str, text_prefix: str) -> list[str]:
    """The choices ticked under ``name``, and those whose own text field (``text_prefix`` and
    the choice) was filled without ticking the choice: what a person wrote next to a choice
    is not dropped."""
    typed = [
        key.removeprefix(text_prefix)
        for key in values
        if key.startswith(text_prefix) and _one(values, key)
    ]
    return list(dict.fromkeys([*values.get(name, []), *typed]))


def step4_body(values: Mapping[str, list[str]]) -> dict[str, Any]:
    """The step 4 form as the API's body. A factor's specifics, a child's own say or the
    other key person typed without ticking its box count as ticked: the protocol still asks
    for the child's consent."""
    roles, other = values.get("key_person", []), _one(values, "key_person_other")
    key_persons: list[dict[str, Any]] = [{"role": role} for role in roles if role != "other"]
    if "other" in roles or other:
        key_persons.append({"role": "other", "text": other})
    return {
        "decision": _one(values, "decision"),
        "factors": [
            {"code": code, "text": _one(values, f"factor_text_{code}")}
            for code in _ticked_or_typed(values, "factor", "factor_text_")
        ],
        "consultations": values.get("consultation", []),
        "discussed_with_patient": "discussed" in values,
        "patient_explanation": _one(values, "patient_explanation"),
        "children_heard": [
            {
                "child_ref": ref,
                "consent_given": f"child_consent_{ref}" in values,
                "own_say": _one(values, f"child_say_{ref}"),
            }
            for ref in _ticked_or_typed(values, "child_heard", "child_say_")
        ],
        "key_persons": key_persons,
        "team_members": _lines(values, "team_members"),
        "note": _one(values, "note"),
    }


def step5_body(values: Mapping[str, list[str]]) -> dict[str, Any]:
    rows = (
        (_one(values, f"action_text_{i}"), _one(values, f"action_on_{i}"))
        for i in range(AGREED_ACTION_ROWS)
    )
    return {
        "progress": _one(values, "progress"),
        "actions": values.get("action", []),
        "services": values.get("service", []),
        "consultations": values.get("consultation", []),
        # a date without its action is refused (the action's text is required), not dropped
        "agreed_actions": [{"text": text, "follow_up_on": on} for text, on in rows if text or on],
        "next_follow_up": _one(values, "next_follow_up"),
        "note": _one(values, "note"),
    }


def step6_body(values: Mapping[str, list[str]]) -> dict[str, Any]:
    """The step 6 form as the API's body. The page draws the contact's date as today and its
    channel as :data:`CONTACT_CHANNEL_DEFAULT`, so a contact is recorded when a person is
    named or either was changed; a changed one without a person is refused at the person,
    where it was dropped without a word (found by review). A page drawn before midnight and
    sent after it is refused so, too: better asked again than a contact lost."""
    person = _one(values, "contact_person")
    on, channel = _one(values, "contact_on"), _one(values, "contact_channel")
    drawn = (local_today().isoformat(), CONTACT_CHANNEL_DEFAULT.value)
    changed = (on or drawn[0], channel or drawn[1]) != drawn
    contact = {"on": on, "person": person, "channel": channel} if person or changed else None
    return {
        "partner_id": _one(values, "partner_id") or "",
        "with_cooperation": _yes_no(values, "cooperation"),
        "patient_informed": _yes_no(values, "informed"),
        "not_informed_reason": _one(values, "not_informed_reason"),
        "follow_up_actions": _lines(values, "follow_up_actions"),
        "contact": contact,
        "note": _one(values, "note"),
    }


# -- what the page shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A case as the page shows it: its worklist row, and what the FHIR server holds of it
    (``opened`` is None when it could not be read; ``unreadable`` says why)."""

    summary: CaseSummary
    opened: CaseFile | None = None
    unreadable: str | None = None
    #: what the message of ``unreadable`` names (the resource that cannot be read)
    unreadable_values: Mapping[str, str] = field(default_factory=dict)

    @property
    def case(self) -> KindreflexCase | None:
        return None if self.opened is None else self.opened.case

    @property
    def patient_name(self) -> str:
        """The name on the hospital's FHIR server, else the worklist's (a reference at worst)."""
        identity = self.opened.patient if self.opened is not None else None
        if identity is not None and identity.name:
            return identity.name
        return self.summary.patient_display or self.summary.patient

    def name_of(self, reference: str) -> str:
        """A person the case names (a finding's author, the nurse who flagged it, the
        assignee): their name on the FHIR server, else the worklist's, else their
        reference."""
        people = self.opened.people if self.opened is not None else {}
        indexed = {
            self.summary.flagged_by: self.summary.flagged_by_display,
            self.summary.assigned_to: self.summary.assigned_to_display,
        }
        return people.get(reference) or indexed.get(reference) or reference

    def added_notes(self, at: int) -> tuple[AddedNote, ...]:
        """The notes others (the EHR's users) added to the case's finding at ``at``."""
        return () if self.opened is None else self.opened.added_notes[at]

    @property
    def patient_birth_date(self) -> str | None:
        identity = self.opened.patient if self.opened is not None else None
        return None if identity is None else identity.birth_date

    @property
    def save_on_its_way(self) -> bool:
        """Whether the case's latest save is still to reach the FHIR server: no change is
        offered until it has (``casework.SaveOnItsWayError``)."""
        delivery = self.summary.delivery
        return delivery is not None and delivery.state in UNDELIVERED_STATES

    def offers(self, step: Step) -> bool:
        if self.save_on_its_way:
            return False
        if step is Step.STEP_4:
            return bool(self.team_decisions)
        return (
            self.case is not None and self.summary.status == "open" and step in self.case.next_steps
        )

    @property
    def team_decisions(self) -> tuple[str, ...]:
        """The decisions the step 4 form offers: all when step 4 is next, only "acute
        danger" once the social service follows the concern (``protocol.team_decisions_open``)."""
        if self.case is None or self.summary.status != "open":
            return ()
        return tuple(d.value for d in team_decisions_open(self.case, local_today()))

    def referral_of(self, finding: Step6Referral) -> ShownReferral | None:
        """The referral ServiceRequest a step 6 finding wrote, authored at the moment it was
        recorded: the finding names only the facility's type (VK), the request the facility
        and where the referral stands now. None: not read."""
        return next((r for r in self.referrals if r.authored == finding.recorded_at), None)

    def facility_name(self, referral: Step6Referral) -> str | None:
        """The name of the facility a step 6 finding referred the case to (None: unknown)."""
        shown = self.referral_of(referral)
        return None if shown is None else shown.facility_name

    @property
    def referrals(self) -> tuple[ShownReferral, ...]:
        """Every referral of the case as read, newest first, each with its facility; their
        status goes on after closing. An earlier one still running (the VK's, after a later
        step 6 to the police) has its own form: showing only the latest left it active for
        good. One the EHR set to a status we do not write (draft, unknown) is shown with
        that status and no form, as ``casework.referral_transaction`` refuses to change it
        ("change it in the EHR")."""
        if self.opened is None:
            return ()
        facilities = self.opened.facilities
        return tuple(ShownReferral(r, _facility_of(r, facilities)) for r in self.opened.referrals)

    def offered(self, retry: str) -> dict[str, bool]:
        """Whether the page offers each form, by its name: the steps the protocol allows
        next, closing and each running referral's status. ``retry``: the form just sent
        while the case could not be read or its previous save was on its way, shown again
        with its input (a referral's only while it runs)."""
        forms = {
            "s4": self.offers(Step.STEP_4),
            "s5": self.offers(Step.STEP_5),
            "s6": self.offers(Step.STEP_6),
            "close": self.may_close,
        }
        forms |= {r.form: not self.save_on_its_way for r in self.referrals if r.running}
        if retry in forms:
            forms[retry] = True
        return forms

    @property
    def may_close(self) -> bool:
        """The use case's rule (``casework.closable``): no step 4, 5 or 6 due, or referred."""
        return (
            self.case is not None
            and self.summary.status == "open"
            and not self.save_on_its_way
            and closable(self.case)
        )


def _authored(request: Mapping[str, Any]) -> datetime | None:
    """When a referral ServiceRequest was written (None: it does not say)."""
    authored = request.get("authoredOn")
    return datetime.fromisoformat(authored) if isinstance(authored, str) else None


def _facility_of(
    request: Mapping[str, Any], facilities: Mapping[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The facility a referral ServiceRequest goes to, its Organization as read among
    ``facilities`` (None: not read). A facility the EHR renamed to a display only (no
    reference) is that name alone."""
    performer = referral_performer(request)
    if performer is not None:
        return facilities.get(performer)
    named = referral_performer(request, "display")
    return None if named is None else {"name": named}


def referral_form(referral_id: str) -> str:
    """The name of a referral's status form, the prefix of its fields' ids. A FHIR id may
    hold "-": as "_", which no id holds, one id's form ("a-note") cannot take another's
    field ("a"'s note)."""
    return "referral-" + referral_id.replace("-", "_")


@dataclass(frozen=True)
class ShownReferral:
    """One of the case's referrals as the page lists it: the facility it goes to, where it
    stands and the name of its status form."""

    request: Mapping[str, Any]
    #: its Organization as read (None: not read)
    facility: Mapping[str, Any] | None

    @property
    def id(self) -> str:
        return str(self.request["id"])

    @property
    def form(self) -> str:
        return referral_form(self.id)

    @property
    def status(self) -> str:
        """An R4 request-status code."""
        return request_status(self.request)

    @property
    def followed(self) -> bool:
        """Whether Kindreflex follows its status up (not a draft the EHR made)."""
        return self.status in _FOLLOWED_STATUSES

    @property
    def running(self) -> bool:
        """Whether the facility's work goes on, so its status may still change."""
        return self.status in (ReferralStatus.ACTIVE, ReferralStatus.ON_HOLD)

    @property
    def target(self) -> str | None:
        """The kind of facility (vk, ocj, parket, police); None: the EHR took it away."""
        return referral_target(self.request)

    @property
    def facility_name(self) -> str | None:
        name = (self.facility or {}).get("name")
        return str(name) if name else None

    @property
    def authored(self) -> datetime | None:
        return _authored(self.request)

    @property
    def notes(self) -> tuple[tuple[AddedNote, datetime | None], ...]:
        """The notes added since it was made (``mapping.referral_notes``), each with its
        moment when it gives one: why its status changed, what the facility said. They were
        written to the FHIR server and shown nowhere, not even to a colleague taking the
        case over (found by review)."""
        return tuple((note, _instant(note.time)) for note in referral_notes(self.request))


def _instant(written: str | None) -> datetime | None:
    """A FHIR dateTime that names a moment (with its offset); None for a day alone or none,
    which the page then writes as written."""
    try:
        moment = datetime.fromisoformat(written) if written else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


_FOLLOWED_STATUSES = frozenset(status.value for status in ReferralStatus)


def _waits_for_sign_in(summary: social.CaseSummary) -> bool:
    """The case's latest save waits for a new launch for its patient through the same EHR
    (``Outbox.adopt_session``): the social worker's own launch from the patient's chart
    is one, so the page says how to send it rather than only that it is on its way."""
    return summary.delivery is not None and summary.delivery.state == "waiting-authorisation"


def _refused_values(error: RaisingSaveRefusedError) -> tuple[str, dict[str, str]]:
    """The message of a case whose nurse's save the FHIR server refused for good, and what
    it names: when she saved, and the server's reason (a conflict: the record changed)."""
    moment = dates.shown_moment(error.saved_at)
    if error.state == "conflict":
        return "refused-conflict", {"moment": moment}
    if error.reason is None:
        return "refused-no-reason", {"moment": moment}
    return "refused", {"moment": moment, "reason": error.reason}


def _load(ctx: LaunchContext, database: DatabaseDep, work: Casework, case_id: int) -> Shown | None:
    """The case of this hospital (None: no such case), reconciled from the FHIR server
    (an audited read, also when the server could not be read)."""
    with database.session() as session:
        summary = social.case_summary(session, ctx.tenant.id, case_id, today=local_today())
    if summary is None:  # another hospital's id, or none: a refused read all the same
        audit_refusal(ctx, database, AuditAction.READ)
        return None
    values: dict[str, str] = {}
    try:
        opened = work.open_case(ctx, case_id)
        if opened.status == summary.status:
            return Shown(summary, opened)
        with database.session() as session:  # closed in the EHR (casework._reconcile_index)
            reconciled = social.case_summary(session, ctx.tenant.id, case_id, today=local_today())
        return None if reconciled is None else Shown(reconciled, opened)
    except social.CaseNotFoundError:
        return None
    except CaseOnAnotherServerError:
        unreadable = "other-ehr"
    except RaisingSaveRefusedError as error:  # not on its way: never sent again
        unreadable, values = _refused_values(error)
    except CaseNotOnServerError:
        unreadable = "waiting-sign-in" if _waits_for_sign_in(summary) else "not-on-server"
    except ReauthorisationRequired:
        unreadable = "reauthorise"
    except UnreadableResourceError as error:  # a resource of ours the EHR changed: which one
        unreadable, values = "fhir-resource", _unreadable_values(error)
    except FhirUnreadable:
        unreadable = "fhir-garbled"
    except FhirUnavailable:
        unreadable = "fhir-down"
    except FhirError as error:
        unreadable = "reauthorise" if token_refused(error) else "fhir-refused"
    # The page still shows the worklist's row of the patient: a read, audited as failed, in
    # that patient's trail. A case of another EHR has its patient on that EHR's server.
    audit_refusal(ctx, database, AuditAction.READ, summary.patient, summary.fhir_server)
    return Shown(summary, unreadable=unreadable, unreadable_values=values)


def _message(language: Language, message_id: str, **values: object) -> str:
    """A message of this screen's catalogue domain (ids prefixed ``casefile.``)."""
    return translate(language, f"casefile.{message_id}", **values)


def _display(language: Language) -> Callable[[str, str], str]:
    return lambda code_system, code: terminology.display(code_system, code, language)


def _wording(ctx: LaunchContext) -> Callable[[str, str], str]:
    """The facility's wording of a choice (``team-decision/safe``), else the guide's display."""
    plan = ctx.tenant.config.plan

    def word(choice_set: str, code: str) -> str:
        own = plan.text(f"{choice_set}/{code}", "title", ctx.language)
        system = {"consultation": "consultation-type", "safety-progress": "safety-progress"}.get(
            choice_set, choice_set
        )
        return own or terminology.display(system, code, ctx.language)

    return word


def _step_title(ctx: LaunchContext, step: Step) -> str:
    own = ctx.tenant.config.plan.text(step, "title", ctx.language)
    return own or terminology.display("kindreflex-step", step.value, ctx.language)


def _partners(ctx: LaunchContext, case: KindreflexCase | None) -> list[Partner]:
    """The facilities this case may be referred to: the branch decides (parket and police
    only after acute danger)."""
    allowed = set(STEP_6_TARGETS)
    if case is None or not case.acute_danger:
        allowed -= set(ACUTE_DANGER_TARGETS)
    return [p for p in ctx.tenant.config.partners.directory().partners if p.type in allowed]


def _children(case: KindreflexCase | None) -> list[tuple[str, str, int]]:
    """(ref, name, age in completed months) of the recorded children, oldest first."""
    return [] if case is None else _listed(case.children)


#: What each kind of advice says: Kind & Gezin's start conversation in the nurse's words.
_ADVICE_TEXT = {
    AdviceKind.CLB: "casefile.advice.clb",
    AdviceKind.CHILD_CONSENT: "casefile.advice.child-consent",
    AdviceKind.KIND_EN_GEZIN_START: "app.advice.kind-en-gezin",
}


def _advice(language: Language, file: Shown) -> list[tuple[str, str]]:
    """(kind, text) of the protocol's advice where the case stands (``protocol.advice``):
    the CLB for school-age children (seed 002, steps 4 to 6), the children's consent to
    involve them (seed 001, step 4), Kind & Gezin's start conversation (step 3), each with
    the children it is for, as the nurse's page says them. None while the case takes no
    step."""
    if file.case is None or file.save_on_its_way or file.summary.status != "open":
        return []
    names = {c.ref: c.name for c in file.case.children}
    shown = []
    for given in advice(file.case, local_today()):
        parts = [translate(language, _ADVICE_TEXT[given.kind])]
        if given.child_refs:
            named = ", ".join(names.get(ref, ref) for ref in given.child_refs)
            parts.append(translate(language, "app.advice.concerns-children", names=named))
        if given.includes_expected_child:
            parts.append(translate(language, "app.advice.concerns-expected-child"))
        shown.append((given.kind.value, " ".join(parts)))
    return shown


def _listed(children: Iterable[Child]) -> list[tuple[str, str, int]]:
    today = local_today()
    kids = sorted(children, key=lambda c: c.birth_date)
    return [(c.ref, c.name, age_in_months(c.birth_date, today)) for c in kids]


def _render(
    ctx: LaunchContext,
    file: Shown,
    *,
    typed: Typed = Typed(),
    problems: tuple[Problem, ...] = (),
    saved: str | None = None,
    reopening: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    html = TEMPLATES.get_template("social/case.html").render(
        t=partial(_message, ctx.language),
        social=lambda message_id, **values: translate(
            ctx.language, f"social.{message_id}", **values
        ),
        lang=ctx.language,
        product_name=translate(ctx.language, "product.name"),
        csrf_token=csrf_token(ctx),
        pinned=partial(pinned, ctx),  # the forms post for this page's launch (LAUNCH_PARAM)
        prefix=ctx.path_prefix,
        me=ctx.actor,
        can_claim=social.assignable(ctx.actor),
        file=file,
        birth=dates.born(file.patient_birth_date, ctx.language),
        days_open=partial(dates.shown_days_open, language=ctx.language),
        children=_children(file.case),
        advice=_advice(ctx.language, file),
        own_say_age=OWN_SAY_AGE,
        steps=Step,
        typed=typed,
        problems=problems,
        problem_at=lambda anchor: [p.message for p in problems if p.anchor == anchor],
        saved=saved,
        reopening=reopening,
        display=_display(ctx.language),
        word=_wording(ctx),
        step_title=partial(_step_title, ctx),
        factors=terminology.factors(),
        decisions=[d.value for d in TeamDecision],
        consultations=[c.value for c in Consultation],
        key_roles=[r.value for r in KeyPersonRole if r is not KeyPersonRole.OTHER],
        progress=list(ProgressAssessment),
        safety_actions=[a.value for a in SafetyAction],
        support_services=[t.value for t in ReferralTarget if t not in STEP_6_TARGETS],
        referral_statuses=[r.value for r in ReferralStatus],
        agreed_rows=range(AGREED_ACTION_ROWS),
        channels=list(ContactChannel),
        default_channel=CONTACT_CHANNEL_DEFAULT.value,
        close_reasons=[r.value for r in CloseReason],
        child_names={c.ref: c.name for c in file.case.children} if file.case else {},
        partners=_partners(ctx, file.case),
        today=local_today().isoformat(),
        latest_follow_up=latest_follow_up(local_today()).isoformat(),
        earliest_contact=earliest_contact(local_today()).isoformat(),
        shown_back=lambda: _shown_back(ctx.language, typed),
    )
    return HTMLResponse(html, status_code=status, headers=security_headers(ctx))


def _shown_back(language: Language, typed: Typed) -> Markup:
    """The free text of a refused form the case no longer offers (a colleague moved it on),
    read-only: the form is not drawn again, and her notes were shown nowhere (found by
    review)."""
    sent = [(name, value) for name, values in typed.values.items() for value in values]
    title, message = "casefile.kept.title", "casefile.kept.message"
    return Markup(shown_back(free_text(sent), language, title, message))  # noqa: S704 - escaped


def _not_found(ctx: LaunchContext) -> HTMLResponse:
    html = TEMPLATES.get_template("social/case_missing.html").render(
        t=partial(_message, ctx.language),
        lang=ctx.language,
        product_name=translate(ctx.language, "product.name"),
        prefix=ctx.path_prefix,
        pinned=partial(pinned, ctx),
    )
    return HTMLResponse(html, status_code=404, headers=security_headers(ctx))


# -- the pages --------------------------------------------------------------------------------


@router.get("/static/{name}")
def static_file(name: str, v: str | None = None) -> Response:
    """The case pages' stylesheet and print button (same origin: the CSP stays 'self');
    ``v``: the version the page linked (``smart_app.assets``)."""
    return asset_response(name, v, served=("casefile.css", "casefile.js"))


@router.get("/cases/{case_id}", response_class=HTMLResponse)
def case_page(
    ctx: SocialWorker,
    database: DatabaseDep,
    work: CaseworkDep,
    case_id: CaseId,
    saved: str | None = None,
    reopening: str | None = None,
) -> HTMLResponse:
    file = _load(ctx, database, work, case_id)
    if file is None:
        return _not_found(ctx)
    shown = saved if saved in ("delivered", "pending") else None
    if shown == "pending" and _waits_for_sign_in(file.summary):
        shown = "waiting-sign-in"  # not retried by itself: the page says what sends it
    said = reopening if shown and reopening in get_args(Reopening) else None
    return _render(ctx, file, saved=shown, reopening=said)


def claim_refused(
    ctx: LaunchContext,
    database: DatabaseDep,
    work: Casework,
    case_id: int,
    refusal: ClaimRefusal,
) -> HTMLResponse:
    """The case page again after its 'Neem op mij' was refused: the social worker stays on
    the case she was reading, shown as it is now, with who has it (409), or told that her
    sign-in names no one a case can be assigned to (400)."""
    file = _load(ctx, database, work, case_id)
    if file is None:
        return _not_found(ctx)
    status = 409
    if isinstance(refusal, social.InvalidAssigneeError):
        message = translate(ctx.language, "social.problem.not-a-practitioner")
        status = 400
    elif refusal.reason == "closed":
        message = translate(ctx.language, "social.problem.closed")
    else:
        nobody = translate(ctx.language, "social.worklist.nobody")
        holder = file.name_of(refusal.holder) if refusal.holder else nobody
        message = _message(ctx.language, "claim.changed", holder=holder)
    return _render(ctx, file, problems=(Problem("claim", "claim", message),), status=status)


class _Form(BaseModel):
    """What every form carries besides its fields."""

    row_version: int


async def _typed(request: Request, form: str) -> Typed:
    data = await request.form()
    return Typed(form, {key: [str(v) for v in data.getlist(key)] for key in data})


def _save_step(
    ctx: LaunchContext,
    database: DatabaseDep,
    work: Casework,
    case_id: int,
    typed: Typed,
    save: Callable[[int], StepResult],
) -> Response:
    """Run a save from a form; on success back to the case (post/redirect/get), on a
    refusal the page again with the input kept and the reason next to the field."""
    problems: tuple[Problem, ...] = ()
    status = 200
    try:
        version = _Form.model_validate({"row_version": typed.value(typed.form, "row_version")})
        result = save(version.row_version)
    except ValidationError as error:
        problems, status = _invalid(ctx, typed.form, error), 422
    except ProtocolError as error:
        anchor = _protocol_anchor(error, typed)
        message = translate(ctx.language, f"app.protocol.{error.code.value}")
        problems, status = (Problem(typed.form, anchor, message),), 422
    except social.CatalogueError:
        anchor = "s6-partner" if typed.form == "s6" else f"{typed.form}-factors"
        problems = (Problem(typed.form, anchor, _message(ctx.language, "error.catalogue")),)
        status = 422
    except social.CaseNotFoundError:
        audit_refusal(ctx, database, case_id=case_id)
        return _not_found(ctx)
    except social.CaseConflict as conflict:
        key = "error.closed" if conflict.reason == "closed" else "error.conflict"
        if work.saved_twice(ctx, case_id, version.row_version):
            key = "error.closed-twice" if typed.form == "close" else "error.saved-twice"
        problems, status = _about_form(ctx, typed, key), 409
    except IncompleteCaseError:
        problems, status = _about_form(ctx, typed, "error.incomplete"), 409
    except SaveOnItsWayError:
        problems, status = _about_form(ctx, typed, "error.save-on-its-way"), 409
    except ClosedOnServerError:
        problems, status = _about_form(ctx, typed, "error.closed-in-ehr"), 409
    except RaisingSaveRefusedError:  # the page says why, above: not "not yet"
        problems, status = _about_form(ctx, typed, "error.raising-refused"), 409
    except (CaseNotOnServerError, CloseRefusedError, NoReferralError):
        problems, status = _about_form(ctx, typed, "error.not-now"), 409
    except UnknownReferralError:  # retracted in the EHR meanwhile, or a form made up
        problems, status = _about_form(ctx, typed, "error.unknown-referral"), 422
    except ReauthorisationRequired:
        problems, status = _about_form(ctx, typed, "error.reauthorise"), 401
    except UnreadableResourceError as error:
        problems = _about_form(ctx, typed, "error.fhir-resource", **_unreadable_values(error))
        status = 502
    except FhirUnreadable:
        problems, status = _about_form(ctx, typed, "error.fhir-garbled"), 502
    except FhirUnavailable:
        problems, status = _about_form(ctx, typed, "error.fhir-down"), 503
    except FhirError as error:
        if token_refused(error):
            problems, status = _about_form(ctx, typed, "error.reauthorise"), 401
        else:
            problems, status = _about_form(ctx, typed, "error.fhir-refused"), 502
    if problems and typed.form == "s4":  # every problem of the form at once, not one per save
        problems = _with_step4_rules(ctx, typed, problems)
    if problems and typed.form == "s5":
        problems = _with_step5_dates(ctx, typed, problems)
    if not problems and result.status == "failed":
        # A rejection is final: nothing reached the case and its row went back
        # (``casework.undo_refused_save``), so the input stays on the page to be redone.
        problems, status = _about_form(ctx, typed, "error.fhir-rejected"), 502
    if not problems:
        # what a referral's change did to its closed case, said on the page it goes back to
        reopening = f"&reopening={result.reopening}" if result.reopening else ""
        target = pinned(ctx, f"/social/cases/{case_id}?saved={result.status}{reopening}")
        return RedirectResponse(target, status_code=303)
    audit_refusal(ctx, database, case_id=case_id)
    file = _load(ctx, database, work, case_id)
    if file is None:
        return _not_found(ctx)
    return _render(ctx, file, typed=typed, problems=problems, status=status)


def _with_step4_rules(
    ctx: LaunchContext, typed: Typed, problems: tuple[Problem, ...]
) -> tuple[Problem, ...]:
    """A refused step 4 with the protocol's rules its form breaks besides: a missing
    decision hid the explanation typed without "discussed" until the next save. A field
    keeps the first problem said of it."""
    body = step4_body(typed.values)
    try:
        decision: TeamDecision | None = TeamDecision(body["decision"])
    except ValueError:
        decision = None
    rules = step4_problems(
        decision,
        consultations=[Consultation(c) for c in body["consultations"] if c in _CONSULTATIONS],
        discussed_with_patient=body["discussed_with_patient"],
        patient_explanation=body["patient_explanation"],
        children_heard=[
            HeardChild(h["child_ref"], h["consent_given"]) for h in body["children_heard"]
        ],
    )
    said = {problem.anchor for problem in problems}
    more = []
    for rule in rules:
        anchor = _protocol_anchor(rule, typed)
        if anchor not in said:
            said.add(anchor)
            message = translate(ctx.language, f"app.protocol.{rule.code.value}")
            more.append(Problem(typed.form, anchor, message))
    return (*problems, *more)


_CONSULTATIONS = frozenset(c.value for c in Consultation)


def _with_step5_dates(
    ctx: LaunchContext, typed: Typed, problems: tuple[Problem, ...]
) -> tuple[Problem, ...]:
    """A refused step 5 with every follow-up date out of bounds, each at its own field: the
    protocol stops at the first, and an agreed action's was said of all of them, one per
    save (found by review)."""
    today = local_today()
    latest = latest_follow_up(today)
    fields = [(f"s5-action-on-{i}", f"action_on_{i}", i + 1) for i in range(AGREED_ACTION_ROWS)]
    fields.append(("s5-next-follow-up", "next_follow_up", 0))
    dated = []
    for anchor, name, row in fields:
        day = _typed_date(typed.value("s5", name))
        if day is None or today <= day <= latest:
            continue
        rule = "in-past" if day < today else "too-far-ahead"
        message_id = f"app.protocol.follow-up-{rule}"
        if row:  # an agreed action's date: named by its row
            message_id = f"casefile.error.action-date-{rule}"
        dated.append(Problem("s5", anchor, translate(ctx.language, message_id, n=row)))
    if not dated:
        return problems
    said = {translate(ctx.language, f"app.protocol.{code.value}") for code in _DATE_CODES}
    return (*(p for p in problems if p.message not in said), *dated)


_DATE_CODES = (ErrorCode.FOLLOW_UP_IN_PAST, ErrorCode.FOLLOW_UP_TOO_FAR_AHEAD)


def _about_form(
    ctx: LaunchContext, typed: Typed, message_id: str, **values: object
) -> tuple[Problem]:
    """A refusal of the whole form (not of one field), shown at its head."""
    return (Problem(typed.form, typed.form, _message(ctx.language, message_id, **values)),)


def _unreadable_values(error: UnreadableResourceError) -> dict[str, str]:
    """What the messages about a resource that cannot be read say of it."""
    return {"resource": error.resource, "problem": error.problem}


def _protocol_anchor(error: ProtocolError, typed: Typed) -> str:
    """Where a refused move is shown (a step 5's dates: each at its own field, by
    :func:`_with_step5_dates`)."""
    field = _FORM_FIELD.get(error.code)
    if field is not None:
        return f"{typed.form}-{field}"
    return _ERROR_ANCHOR.get(error.code, typed.form)


def _typed_date(day: str) -> date | None:
    """A date as the form's date input sends it (None: none or no date)."""
    try:
        return date.fromisoformat(day)
    except ValueError:
        return None


def _invalid(ctx: LaunchContext, form: str, error: ValidationError) -> tuple[Problem, ...]:
    """Each field the form sent in a shape the API refuses (a missing choice, a bad date),
    once: all of them at a time, not one per save."""
    said: dict[str, str] = {}
    for problem in error.errors():
        anchor = _field_anchor(form, problem["loc"])
        said.setdefault(anchor, _what_is_wrong(ctx.language, anchor, problem))
    return tuple(Problem(form, anchor, message) for anchor, message in said.items())


#: The choices a form is not saved without (a radio group's id → its question's message):
#: one left open is named in the error summary ("Teambeslissing: kies …"), where "fill in
#: this field correctly" said neither which field nor what to do.
_CHOICE_QUESTION: Mapping[str, str] = {
    "s4-decision": "s4.decision",
    "s5-progress": "s5.progress",
    "s6-partner": "s6.partner",
    "s6-cooperation": "s6.cooperation",
    "s6-informed": "s6.informed",
    "close-reason": "close.reason",
}


def _what_is_wrong(language: Language, anchor: str, problem: ErrorDetails) -> str:
    """What the social worker is to do about a field the API refused."""
    question = _CHOICE_QUESTION.get(anchor)
    if question is not None:
        return _message(language, "error.choose", question=_message(language, question))
    if problem["type"] == "string_too_long":  # the nurse's screen says it so, too
        return translate(language, "app.error.too-long", max=problem.get("ctx", {})["max_length"])
    if anchor == "s6-contact-person" and problem["type"] == "string_type":
        # none named, yet a date or channel changed (``step6_body``): "fill in" said not why
        channel = terminology.display("contact-channel", CONTACT_CHANNEL_DEFAULT.value, language)
        return _message(language, "error.contact-person", channel=channel)
    return _message(language, "error.field")


def _field_anchor(form: str, loc: tuple[int | str, ...]) -> str:
    """The id on the page of the field an API error names (``loc``: its path in the body).
    A field of a nested object has its own input (the contact's person: ``s6-contact-person``);
    an item of a list is shown at the list, whose rows have no id each."""
    names = itertools.takewhile(lambda part: isinstance(part, str), loc)
    where = "-".join(str(name) for name in names).replace("_", "-")
    anchor = form if where in ("", "row-version") else f"{form}-{where}"
    return _FIELD_ANCHOR.get(anchor, anchor)


@router.post("/cases/{case_id}/close", dependencies=[Depends(verify_case_csrf)])
async def close(
    request: Request, ctx: SocialWorker, database: DatabaseDep, work: CaseworkDep, case_id: CaseId
) -> Response:
    typed = await _typed(request, "close")

    def save(version: int) -> StepResult:
        body = Closing.model_validate(
            {
                "reason": _one(typed.values, "reason"),
                "reason_text": _one(typed.values, "reason_text"),
            }
        )
        return work.close_case(ctx, case_id, version, CaseClosure(body.reason, body.reason_text))

    return await run_in_threadpool(_save_step, ctx, database, work, case_id, typed, save)


#: Each step's form: its name on the page and how its fields become the API's body.
_STEP_FORMS: Mapping[str, tuple[str, Callable[[Mapping[str, list[str]]], StepInput]]] = {
    "step-4": ("s4", lambda values: Step4Input.model_validate(step4_body(values))),
    "step-5": ("s5", lambda values: Step5Input.model_validate(step5_body(values))),
    "step-6": ("s6", lambda values: Step6Input.model_validate(step6_body(values))),
}


@router.post("/cases/{case_id}/referral-status", dependencies=[Depends(verify_case_csrf)])
async def referral_status(
    request: Request, ctx: SocialWorker, database: DatabaseDep, work: CaseworkDep, case_id: CaseId
) -> Response:
    """A referral's status as the facility's work proceeds (also on a closed case)."""
    sent = await _typed(request, "")
    referral_id = _one(sent.values, "referral_id")
    # each referral has its own form: a refusal is shown in the one sent, with its input
    typed = Typed(referral_form(referral_id or ""), sent.values)

    def save(version: int) -> StepResult:
        body = ReferralStatusChange.model_validate(
            {
                "referral_id": referral_id,
                "status": _one(typed.values, "status"),
                "note": _one(typed.values, "note"),
            }
        )
        return work.update_referral(ctx, case_id, version, body.referral_id, body.status, body.note)

    return await run_in_threadpool(_save_step, ctx, database, work, case_id, typed, save)


# After ``/close`` and ``/referral-status`` (and the worklist's ``/claim``): a route matches
# on its path first.
@router.post("/cases/{case_id}/{step}", dependencies=[Depends(verify_case_csrf)])
async def record_step(
    request: Request,
    ctx: SocialWorker,
    database: DatabaseDep,
    work: CaseworkDep,
    case_id: CaseId,
    step: Literal["step-4", "step-5", "step-6"],
) -> Response:
    form, body_of = _STEP_FORMS[step]
    typed = await _typed(request, form)

    def save(version: int) -> StepResult:
        return work.record_step(ctx, case_id, version, body_of(typed.values))

    return await run_in_threadpool(_save_step, ctx, database, work, case_id, typed, save)


# -- the printable referral ------------------------------------------------------------------


@dataclass(frozen=True)
class ReferralSummary:
    """Exactly what the facility needs for the call, nothing more."""

    partner_name: str
    phones: list[tuple[str | None, str]]
    decision: Step4Decision | None
    referral: Step6Referral
    #: where its ServiceRequest stands now (an R4 request-status code): a referral revoked
    #: since was printed as if it were running
    status: str
    #: whether it follows from acute danger (its ServiceRequest's priority "stat"), which the
    #: sheet says first: a facility called from it read a routine referral (found by review)
    urgent: bool
    concern: Step2Finding | None
    children: tuple[Child, ...]
    expecting: ExpectedChild | None


def _referral_summary(ctx: LaunchContext, file: Shown) -> ReferralSummary | None:
    """The latest referral of the case, the facility it went to and where it stands (None:
    no referral). The page lists the case's other referrals beside it (``Shown.referrals``)."""
    case = file.case
    referrals = [f for f in case.findings if isinstance(f, Step6Referral)] if case else []
    made = file.referral_of(referrals[-1]) if referrals else None
    if case is None or made is None or made.facility is None:
        return None
    organization = made.facility
    partner_system = terminology.identifier_system("partner")
    partner_id = next(
        (i["value"] for i in organization.get("identifier", []) if i["system"] == partner_system),
        "",
    )
    partner = ctx.tenant.config.partners.directory().get(partner_id)
    if partner is not None:  # the directory's numbers, with their labels (e.g. "24/7")
        phones = [(p.label, p.number) for p in partner.phones]
    else:
        telecom = organization.get("telecom", [])
        phones = [(None, str(t["value"])) for t in telecom if t["system"] == "phone"]
    referral = referrals[-1]
    before = case.findings[: case.findings.index(referral)]
    # the latest step 2 that gave reasons: a later visit's "no concern" keeps the concern open
    concerns = [f for f in before if isinstance(f, Step2Finding) and f.reasons]
    children, expecting = _about_when_made(case, referral)
    return ReferralSummary(
        partner_name=str(organization.get("name", "")),
        phones=phones,
        decision=_referral_decision(before),
        referral=referral,
        status=made.status,
        urgent=referral_priority(made.request) == STAT,
        concern=concerns[-1] if concerns else None,
        children=children,
        expecting=expecting,
    )


def _about_when_made(
    case: KindreflexCase, referral: Step6Referral
) -> tuple[tuple[Child, ...], ExpectedChild | None]:
    """Whom ``referral`` was about when it was made, as its ServiceRequest names them
    (``casework.referral_about``): a child a later step 1 added was not named."""
    made = case.findings[: case.findings.index(referral) + 1]
    return referral_subjects(
        KindreflexCase.replay(case.patient_ref, case.encounter_ref, made), referral
    )


def _referral_decision(before: Sequence[Finding]) -> Step4Decision | None:
    """The team decision the referral follows from: its reason (``leads_to_referral``) when
    that is a step 4, the step 4 before it when that is a step 5 "not restored"; none after
    a step 2's acute danger (an older decision, "safe" say, is not what the facility is told)."""
    reasons = [at for at, finding in enumerate(before) if leads_to_referral(finding)]
    if not reasons or isinstance(before[reasons[-1]], Step2Finding):
        return None
    decisions = [f for f in before[: reasons[-1] + 1] if isinstance(f, Step4Decision)]
    return decisions[-1] if decisions else None


@router.get("/cases/{case_id}/referral", response_class=HTMLResponse)
def referral_page(
    ctx: SocialWorker, database: DatabaseDep, work: CaseworkDep, case_id: CaseId
) -> HTMLResponse:
    file = _load(ctx, database, work, case_id)
    if file is None:
        return _not_found(ctx)
    try:
        summary = _referral_summary(ctx, file)
    except (FhirError, LookupError):
        summary = None
    if summary is None:
        return _render(
            ctx,
            file,
            problems=(Problem("", "referral", _message(ctx.language, "error.no-referral")),),
            status=404,
        )
    html = TEMPLATES.get_template("social/referral.html").render(
        t=partial(_message, ctx.language),
        lang=ctx.language,
        product_name=translate(ctx.language, "product.name"),
        prefix=ctx.path_prefix,
        pinned=partial(pinned, ctx),
        file=file,
        birth=dates.born(file.patient_birth_date, ctx.language),
        children=_listed(summary.children),
        # who the children are, for the facility to find them: with their birth dates
        births={c.ref: c.birth_date for c in summary.children},
        # who refers: the referral's author and the hospital, for the facility's call back
        hospital=ctx.tenant.config.name,
        summary=summary,
        display=_display(ctx.language),
        printed_on=local_today(),
    )
    return HTMLResponse(html, headers=security_headers(ctx))
