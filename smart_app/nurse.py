"""The nurse's triage screen: Kindreflex steps 1 and 2 (and step 3 support) on one page.

An emergency nurse has minutes at triage, so steps 1-2 fit one server-rendered page:
the children (one row each, sensible defaults, the date typed), "expects a child", the
safety gut feeling with its reasons, and - only with "no concern" - how the patient was
supported (step 3). Every button works without JavaScript (a server round trip);
``static/nurse.js`` only saves round trips (add/remove a row, show step 3 when it applies).

The page talks to the rest of the service through the triage use case only
(``record_triage`` / ``load_chart``, or ``pending_children`` when the chart cannot be
read: the children of saves still waiting for delivery); the protocol decides what is valid
(its ``ProtocolError`` codes are translated here), the use case decides how it is
written. A FHIR outage never shows an error page: the save is committed locally and the
page says "delivery pending".
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from service.fhir.client import FhirError, ReauthorisationRequired
from service.i18n import Language, translate
from service.local_time import local_now
from service.outbox import DeliveryState
from service.partners import Partner
from service.protocol import (
    ACUTE_DANGER_TARGETS,
    MAX_CHILDREN,
    STEP_6_TARGETS,
    AdviceKind,
    Child,
    ChildRelationship,
    Consultation,
    ErrorCode,
    ExpectedChild,
    HagueTrigger,
    KindreflexCase,
    LivesWith,
    PregnancyOf,
    ProtocolError,
    ReferralTarget,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
    Step3Support,
    SupportAction,
    advice,
    cares_for_minors,
)
from service.text import same_name, typed_text, worklist_display
from service.triage import (
    CHANGED_ELSEWHERE,
    KEPT_CHANGING,
    ChildRecordedMeanwhile,
    EditsShown,
    RecordedChart,
    RefusedAnswers,
    SaveConflict,
    SaveResult,
    Triage,
    TriageDep,
    TriageInput,
    unversioned,
    validate,
)
from smart_app import dates
from smart_app.assets import ICON, asset_response, icon_response
from smart_app.pages import TEMPLATES, messages_by_field
from smart_app.session import (
    LaunchContext,
    csrf_token,
    current_launch,
    pinned,
    require_role,
    security_headers,
    verify_csrf,
)
from smart_app.social import token_refused

__all__ = [
    "MAX_CHILDREN",
    "NO_FIELD",
    "ChildRow",
    "FieldError",
    "TriageForm",
    "parse_typed_date",
    "router",
]

router = APIRouter(prefix="/app", include_in_schema=False)

LaunchDep = Annotated[LaunchContext, Depends(current_launch)]
NURSE_ONLY = [Depends(require_role("nurse"))]

#: Dates typed before this year are typos (0019 for 2019), not dates of birth.
_EARLIEST_YEAR = 1900
#: A child row's fields. "+ kind" offers no more than MAX_CHILDREN typed rows besides the
#: record's children, and a save with more is refused next to the children, the rows
#: kept; the work a forged form can cause is capped by these three-digit row numbers and
#: the form parser's 1000 fields.
_CHILD_FIELD = re.compile(r"^child-(\d{1,3})-ref$")
#: A row's "remove" button; ASCII digits only (``str.isdigit`` took "²", which ``int`` refuses).
_REMOVE_CHILD = re.compile(r"remove-child-([0-9]{1,3})")
_DATE_PARTS = re.compile(r"^(\d{1,2})[/.\- ](\d{1,2})[/.\- ](\d{4})$")
_DATE_DIGITS = re.compile(r"^(\d{2})(\d{2})(\d{4})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

#: The longest text a field keeps, as on the social service's screens: more is a paste
#: gone wrong, refused next to its field with the input kept, not written to the record.
#: (Checked on the server only: a browser's ``maxlength`` cuts a paste without a word.)
MAX_NAME_LENGTH = 200
_MAX_LENGTH: Mapping[str, int] = {"reasons": 4000, "who_helps": 1000, "support_note": 4000}

#: Where an error without a field of its own is linked from the error summary, and the
#: key of its message above the save button: the summary itself, which takes focus
#: (tabindex="-1", the id of ``_fields.html``'s error_summary) and says the message. The
#: form (``#form``) cannot take focus: a link to it moved neither focus nor screen reader.
NO_FIELD = "error-summary"
#: Where on the page a refused move is shown (the id of the field to focus).
_ERROR_ANCHOR: Mapping[ErrorCode, str] = {
    ErrorCode.REASONS_REQUIRED: "reasons",
    ErrorCode.ACUTE_DANGER_NEEDS_CONCERN: "assessment-no-concern",
    ErrorCode.CHILD_BORN_IN_FUTURE: "children",
    ErrorCode.DUPLICATE_CHILD: "children",
    ErrorCode.EXPECTED_DATE_IMPLAUSIBLE: "expected_date",
    ErrorCode.SUPPORT_REQUIRED: "support",
    ErrorCode.KIND_EN_GEZIN_OUT_OF_AGE: "support",
}


# ---------------------------------------------------------------------------------------
# The form as typed: kept verbatim so a refused save shows the nurse's input again
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """A message for the nurse, attached to the input (id) it is about."""

    field: str
    message: str


@dataclass
class ChildRow:
    """One child row as typed. ``ref`` is fixed when the row is first rendered."""

    ref: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    name: str = ""
    birth_date: str = ""
    relationship: str = ChildRelationship.CHILD.value
    lives_with: str = LivesWith.PERMANENTLY.value
    recorded: bool = False
    #: What the page says of a recorded child besides "already in the record" (one of
    #: :data:`DELIVERY_MARKERS`): ``pending``, an edit of it saved and waiting in the outbox
    #: (shown with the saved values); ``conflict``, an edit of it the FHIR server refused
    #: because someone else changed it first (shown as the server has it);
    #: ``changed-elsewhere``, an edit of it refused with its save because someone else had
    #: changed another part of it first (likewise);
    #: ``kept-changing``, an edit of it not applied because the record kept changing under
    #: its save (likewise); ``failed``, an edit of it the server refused for another reason
    #: (likewise). Posted back with the row, so the page shown again (a row added, an
    #: error) still says it.
    delivery: str = ""
    #: The name the record holds, when longer than :data:`MAX_NAME_LENGTH` (an EHR's own):
    #: left as it is, it is no typing of hers to refuse; anything else typed in its place
    #: is held to the limit (a letter pasted there went to the record: found by review).
    long_recorded_name: str = ""

    @property
    def is_blank(self) -> bool:
        """An untouched empty row (the page always offers one) is not a child."""
        return not self.recorded and not self.name.strip() and not self.birth_date.strip()

    @property
    def pending(self) -> bool:
        """A child of a save still waiting in the outbox (``Triage.pending_children``):
        shown with its identifier's ``urn:uuid:``, not yet a version on the FHIR server."""
        return self.recorded and self.ref.startswith("urn:uuid:")

    @property
    def in_the_record(self) -> bool:
        """A child the FHIR server holds (a version of it), not one of a save still waiting."""
        return self.recorded and not self.pending

    @property
    def marker(self) -> str | None:
        """The message id of what the page says above a recorded child's fields."""
        if not self.recorded:
            return None
        if self.pending:
            return "step1.pending-child"
        return _DELIVERY_MESSAGES.get(self.delivery, "step1.recorded-child")

    @property
    def warned(self) -> bool:
        """The page warns at this child: an edit of it is not in the record."""
        return self.recorded and not self.pending and self.delivery in _NOT_IN_THE_RECORD

    @classmethod
    def of(cls, child: Child, chart: RecordedChart | None = None) -> ChildRow:
        """A row for a child already on the FHIR server (or pending delivery to it), shown
        for confirmation; ``chart`` says whether it shows a pending edit or a refused one."""
        marked = () if chart is None else _marked(chart)
        delivery = next((marker for marker, refs in marked if child.ref in refs), "")
        return cls(
            ref=child.ref,
            name=child.name,
            birth_date=dates.shown_date(child.birth_date),
            relationship=child.relationship.value,
            lives_with=child.lives_with.value,
            recorded=True,
            delivery=delivery,
            long_recorded_name=child.name if len(child.name) > MAX_NAME_LENGTH else "",
        )


#: What the page says of a recorded child, by :attr:`ChildRow.delivery`: message ids.
_DELIVERY_MESSAGES = {
    "pending": "step1.pending-edit",
    DeliveryState.CONFLICT: "step1.conflict-child",
    CHANGED_ELSEWHERE: "step1.changed-elsewhere-child",
    KEPT_CHANGING: "step1.kept-changing-child",
    DeliveryState.FAILED: "step1.failed-child",
}
#: The values of :attr:`ChildRow.delivery` the page knows (anything else posted reads as "").
DELIVERY_MARKERS = frozenset(_DELIVERY_MESSAGES)
#: The markers of an edit the record does not have (a refused one): the page warns.
_NOT_IN_THE_RECORD = DELIVERY_MARKERS - {"pending"}


def _marked(chart: RecordedChart) -> tuple[tuple[str, frozenset[str]], ...]:
    """Each :attr:`ChildRow.delivery` marker with the refs of the chart's children it marks."""
    return (
        ("pending", chart.pending),
        (DeliveryState.CONFLICT, chart.conflicts),
        (CHANGED_ELSEWHERE, chart.changed_elsewhere),
        (KEPT_CHANGING, chart.kept_changing),
        (DeliveryState.FAILED, chart.failed),
    )


@dataclass
class TriageForm:
    """Everything on the triage page, as the nurse typed it."""

    children: list[ChildRow] = field(default_factory=lambda: [ChildRow()])
    no_children: bool = False
    expecting: bool = False
    #: No answer preset: "the patient" preset recorded a man as pregnant when left alone.
    pregnancy_of: str = ""
    expected_date: str = ""
    assessment: str = ""
    reasons: str = ""
    discussed_with_colleague: bool = False
    acute_danger: bool = False
    who_helps: str = ""
    support_actions: frozenset[str] = frozenset()
    support_note: str = ""
    #: The Hague triggers of a refused save offered back (:func:`with_answers`): this
    #: launch's card may not say them. Carried through the form, so that step 2 keeps them.
    triggers: frozenset[HagueTrigger] = frozenset()
    # The patient as the FHIR server named them when the page was loaded: carried through
    # the form for the patient banner, drawn again after an error. Display only: what the
    # browser posts names no one else (the worklist's name is the session's, from the
    # server: ``service.triage``).
    patient_name: str = ""
    patient_birth_date: str = ""
    #: This page of the form (the chart's page, ``RecordedChart.page``): rendered into it,
    #: posted back with it, kept when the page is shown again (a row added, an error). The
    #: same form posted twice is one save (:func:`submission_of`); the waiting edits of a
    #: child this page showed are the ones her save may lay her values over.
    page_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def parse(cls, form: FormData) -> TriageForm:
        """Read the posted form; unknown or missing fields read as empty."""

        def text(name: str) -> str:
            value = form.get(name)
            return typed_text(value) if isinstance(value, str) else ""

        children = [
            ChildRow(
                ref=text(f"child-{i}-ref") or f"urn:uuid:{uuid.uuid4()}",
                name=text(f"child-{i}-name"),
                birth_date=text(f"child-{i}-birth_date"),
                relationship=text(f"child-{i}-relationship"),
                lives_with=text(f"child-{i}-lives_with"),
                recorded=text(f"child-{i}-recorded") == "1",
                delivery=d if (d := text(f"child-{i}-delivery")) in DELIVERY_MARKERS else "",
                long_recorded_name=text(f"child-{i}-long_recorded_name"),
            )
            for i in posted_rows(form)
        ]
        return cls(
            children=children,
            no_children=text("no_children") == "1",
            expecting=text("expecting") == "1",
            pregnancy_of=text("pregnancy_of"),
            expected_date=text("expected_date"),
            assessment=text("assessment"),
            reasons=text("reasons"),
            discussed_with_colleague=text("discussed_with_colleague") == "1",
            acute_danger=text("acute_danger") == "1",
            who_helps=text("who_helps"),
            support_actions=frozenset(
                v for v in form.getlist("support_actions") if isinstance(v, str)
            ),
            support_note=text("support_note"),
            triggers=frozenset(_TRIGGERS[v] for v in form.getlist("triggers") if v in _TRIGGERS),
            patient_name=worklist_display(text("patient_name")),
            patient_birth_date=text("patient_birth_date")[:10],
            page_id=page_id if _PAGE_ID.fullmatch(page_id := text("page_id")) else uuid.uuid4().hex,
        )

    @property
    def added_rows(self) -> int:
        """The rows of children not on the FHIR server yet: typed on this page, or of a
        save still waiting. The limit counts these only: the record's children cannot be
        removed here, and a patient with more of them than :data:`MAX_CHILDREN`
        (grandchildren, nieces and nephews count too) could otherwise never be saved
        (found by review). A row claims to be the record's by its server version, not by
        its ``recorded`` mark alone: new rows forged as recorded escaped the limit."""
        return sum(not row.in_the_record for row in self.children)

    @property
    def room_for_a_child(self) -> bool:
        """Whether "+ kind" may add a row: never beyond :data:`MAX_CHILDREN` new ones."""
        return self.added_rows < MAX_CHILDREN

    def with_blank_row(self) -> TriageForm:
        """Another row, unless the form is full (a page from before the last row was added
        still offers "+ kind"): then the same rows."""
        if self.room_for_a_child:
            self.children.append(ChildRow())
        return self

    def without_row(self, index: int) -> TriageForm:
        """Without the typed row ``index``; a recorded child stays (the page offers no
        removal of it: leaving it out of a save would not take it out of the record)."""
        if 0 <= index < len(self.children) and not self.children[index].recorded:
            del self.children[index]
        if not self.children:
            self.children.append(ChildRow())
        return self


def posted_rows(form: FormData) -> list[int]:
    """The numbers of the posted child rows (``child-N-…``) in page order. They have gaps
    once the page's script removed a row (it does not rename the others): a row's number
    is not its place in :attr:`TriageForm.children`."""
    return sorted(int(m.group(1)) for key in form if (m := _CHILD_FIELD.match(key)))


def parse_typed_date(text: str) -> date | None:
    """A date as a Belgian nurse types it: 3/7/2019, 03-07-2019, 03072019 or 2019-07-03."""
    text = text.strip()
    try:
        if _ISO_DATE.match(text):
            return _plausible(date.fromisoformat(text))
        match = _DATE_PARTS.match(text) or _DATE_DIGITS.match(text)
        if match:
            day, month, year = (int(part) for part in match.groups())
            return _plausible(date(year, month, day))
    except ValueError:
        return None  # e.g. 31/02/2020: the right shape, not a date
    return None


def _plausible(day: date) -> date | None:
    """A typo such as 0019 for 2019 is no date of this century or the last."""
    return day if day.year >= _EARLIEST_YEAR else None


# ---------------------------------------------------------------------------------------
# Why the EHR's card asked for the Kindreflex (the card's appContext)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardContext:
    """What our CDS card passed at launch: the Hague triggers seen, an open concern."""

    triggers: tuple[HagueTrigger, ...] = ()
    open_concern: bool = False


#: The Hague triggers by their code, as a card's appContext and the form carry them.
_TRIGGERS = {t.value: t for t in HagueTrigger}


def card_context(app_context: str | None) -> CardContext:
    """Read our card's ``appContext`` (service.cds.cards); anything else reads as empty.

    It only informs the nurse and the step 2 finding's ``triggers``; an EHR that launches
    without a card, or with another app context, loses nothing.
    """
    try:
        data = json.loads(app_context) if app_context else {}
    except (ValueError, RecursionError):
        return CardContext()
    reasons = data.get("reasons") if isinstance(data, dict) else None
    if not isinstance(reasons, list):
        return CardContext()
    return CardContext(
        triggers=tuple(_TRIGGERS[r] for r in reasons if isinstance(r, str) and r in _TRIGGERS),
        open_concern="open-concern" in reasons,
    )


# ---------------------------------------------------------------------------------------
# From the typed form to the protocol's findings
# ---------------------------------------------------------------------------------------


class InvalidFormError(Exception):
    """The form cannot become findings; ``errors`` say why, per field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} field error(s)")
        self.errors = errors


_E = TypeVar("_E", ChildRelationship, LivesWith, PregnancyOf, SafetyAssessment)


def _enum_value(kind: type[_E], value: str) -> _E | None:
    try:
        return kind(value)
    except ValueError:
        return None


def _children(
    form: TriageForm, t: Callable[..., str], errors: list[FieldError], today: date
) -> tuple[Child, ...]:
    children: list[Child] = []
    listed: dict[tuple[str, date], tuple[int, ChildRow]] = {}
    for index, row in enumerate(form.children):
        if row.is_blank:
            continue
        at = f"child-{index}"
        born = parse_typed_date(row.birth_date)
        if born is not None and row.name:
            first = listed.setdefault((same_name(row.name), born), (index, row))
            # two children both recorded are left alone: this form removes neither
            if first[0] != index and not (first[1].recorded and row.recorded):
                message = t("error.duplicate-child", n=index + 1, first=first[0] + 1)
                errors.append(FieldError(f"{at}-name", message))
        relationship = _enum_value(ChildRelationship, row.relationship)
        lives_with = _enum_value(LivesWith, row.lives_with)
        if not row.name:
            errors.append(FieldError(f"{at}-name", t("error.child-name-required", n=index + 1)))
        elif len(row.name) > MAX_NAME_LENGTH and row.name != row.long_recorded_name:
            message = t("error.child-name-too-long", n=index + 1, max=MAX_NAME_LENGTH)
            errors.append(FieldError(f"{at}-name", message))
        if born is None:
            message_id = "error.date-invalid" if row.birth_date else "error.birth-date-required"
            errors.append(FieldError(f"{at}-birth_date", t(message_id, n=index + 1)))
        elif born > today:  # the protocol's rule, shown at the child's own date
            message = t("error.child-born-in-future", n=index + 1)
            errors.append(FieldError(f"{at}-birth_date", message))
        # named, as the other errors of a row are: the summary lists every child's
        for name, question, value in (
            ("relationship", "step1.relationship", relationship),
            ("lives_with", "step1.lives-with", lives_with),
        ):
            if value is None:
                message = t("error.child-choose-option", n=index + 1, question=t(question))
                errors.append(FieldError(f"{at}-{name}", message))
        if row.name and born and born <= today and relationship and lives_with:
            children.append(Child(row.ref, row.name, born, relationship, lives_with))
    return tuple(children)


def _expecting(
    form: TriageForm, t: Callable[..., str], errors: list[FieldError]
) -> ExpectedChild | None:
    if not form.expecting:
        return None
    pregnancy_of = _enum_value(PregnancyOf, form.pregnancy_of)
    expected = parse_typed_date(form.expected_date) if form.expected_date else None
    if form.expected_date and expected is None:
        errors.append(FieldError("expected_date", t("error.date-invalid-plain")))
    if pregnancy_of is None:
        errors.append(FieldError("pregnancy_of", t("error.pregnancy-of-required")))
        # Never saved (the error refuses the save); built so that the protocol still
        # checks the expected date in this same save, not in the next one.
        return ExpectedChild(pregnancy_of=PregnancyOf.PARTNER, expected_date=expected)
    return ExpectedChild(pregnancy_of=pregnancy_of, expected_date=expected)


def _too_long(form: TriageForm, t: Callable[..., str]) -> list[FieldError]:
    """The free texts longer than they may be; step 3's note only when it would be saved
    (with "no concern"; otherwise the page hides it)."""
    typed = {"reasons": form.reasons, "who_helps": form.who_helps}
    if form.assessment == SafetyAssessment.NO_CONCERN.value:
        typed["support_note"] = form.support_note
    return [
        FieldError(name, t("error.too-long", max=_MAX_LENGTH[name]))
        for name, text in typed.items()
        if len(text) > _MAX_LENGTH[name]
    ]


def _support(form: TriageForm, author: str, now: datetime) -> Step3Support | None:
    """Step 3 goes with "no concern" only, and only once something was done or noted."""
    actions = frozenset(a for a in SupportAction if a.value in form.support_actions)
    if not actions and not form.support_note:
        return None
    return Step3Support(
        recorded_by=author, recorded_at=now, actions=actions, note=form.support_note or None
    )


def _marks_a_concern(form: TriageForm, assessment: SafetyAssessment | None) -> bool:
    """Whether step 2 says something is wrong (niet-pluis, unclear, acute danger). Without
    children step 2 is not recorded, so such a finding next to "no children" is refused
    rather than dropped: the save would say "Kindreflex complete" and hand nobody over."""
    concern = assessment is not None and assessment is not SafetyAssessment.NO_CONCERN
    return concern or form.acute_danger


def _no_children_contradiction(form: TriageForm, children: tuple[Child, ...], today: date) -> str:
    """The message id of "cares for no children" refused beside a minor or an expected
    child. When the only minors are the record's, she typed nothing to choose between:
    she is told she cannot remove them here, and what to do instead."""
    recorded = {row.ref for row in form.children if row.in_the_record}
    typed = (child for child in children if child.ref not in recorded)
    if form.expecting or cares_for_minors(typed, None, today):
        return "error.no-children-contradiction"
    return "error.no-children-recorded-minors"


def _typed_beyond_step1(form: TriageForm) -> list[str]:
    """The fields of steps 2-3 given an answer other than the assessment. Step 3 only with
    "no concern": otherwise the page hides it and does not save it."""
    typed = {
        "reasons": bool(form.reasons),
        "discussed_with_colleague": form.discussed_with_colleague,
        "who_helps": bool(form.who_helps),
    }
    if form.assessment == SafetyAssessment.NO_CONCERN.value:
        typed["support"] = bool(form.support_actions or form.support_note)
    return [name for name, given in typed.items() if given]


def build_input(
    form: TriageForm, ctx: LaunchContext, now: datetime, t: Callable[..., str]
) -> TriageInput:
    """The findings of the form, validated by the protocol. Raises :class:`InvalidFormError`."""
    errors: list[FieldError] = []
    children = _children(form, t, errors, now.date())
    expecting = _expecting(form, t, errors)
    has_family = bool(children) or form.expecting
    gauged = cares_for_minors(children, expecting, now.date())  # step 2 has someone to gauge
    # a row typed with a mistake has its own error: "fill in the children" would contradict it
    typed_rows = any(not row.is_blank for row in form.children)
    if not has_family and not typed_rows and not form.no_children:
        errors.append(FieldError("child-0-name", t("error.children-or-none")))
    # "cares for no children" is true beside grown-up children: the Kindreflex ends there
    if gauged and form.no_children:
        message = _no_children_contradiction(form, children, now.date())
        errors.append(FieldError("no_children", t(message)))
    if form.added_rows > MAX_CHILDREN:
        errors.append(FieldError("children", t("error.too-many-children", max=MAX_CHILDREN)))
    assessment = _enum_value(SafetyAssessment, form.assessment)
    # a row not read yet (its own error) may be a minor: the assessment is asked for with
    # it, not on the save after it is mended (found by review: one more round at triage)
    unread = sum(not row.is_blank for row in form.children) > len(children)
    if (gauged or (unread and not form.no_children)) and assessment is None:
        errors.append(FieldError("assessment-no-concern", t("error.assessment-required")))
    if form.no_children and not has_family and _marks_a_concern(form, assessment):
        errors.append(FieldError("no_children", t("error.concern-without-children")))
    if has_family and not gauged and _marks_a_concern(form, assessment):
        errors.append(FieldError("assessment-no-concern", t("error.concern-about-adults")))
    # Without a minor (or an expected child) steps 2-3 are not recorded: what was typed
    # there is refused, every such field at once, not dropped while the save says "saved"
    # (found by review). Not while step 1 is to be mended: a row with its own error, or
    # "cares for no children" ticked beside a child, may still be a minor.
    no_minor = not gauged and not unread and (has_family or form.no_children)
    if no_minor and not _marks_a_concern(form, assessment):
        message = t("error.answers-without-minors")
        errors += [FieldError(name, message) for name in _typed_beyond_step1(form)]
    errors += _too_long(form, t)
    author = ctx.user.fhir_user
    step1 = _checked(
        errors,
        t,
        partial(
            Step1Finding,
            recorded_by=author,
            recorded_at=now,
            children=children,
            expecting=expecting,
        ),
    )
    step2 = step3 = None
    if assessment is not None and (gauged or not (has_family or form.no_children)):
        step2 = _checked(errors, t, partial(_step2, form, ctx, assessment, now))
    if step2 is not None and assessment is SafetyAssessment.NO_CONCERN:
        step3 = _checked(errors, t, partial(_support, form, author, now))
    if step1 is None:
        raise InvalidFormError(in_page_order(errors))
    findings = TriageInput(step1, step2, step3)
    # step 3 against the children (Kind & Gezin's ages), with the other errors: said alone
    # once they were mended, it cost one more save. Not before every row is read (one not
    # read may be the child of that age), nor without a minor (step 2 is then refused).
    if step3 is not None and gauged and not unread:
        _checked(errors, t, partial(validate, ctx, findings))
    if errors:
        raise InvalidFormError(in_page_order(errors))
    return findings


#: Where each field's error is on the page (``triage.html``), a child's row at ``child``
#: with its fields in ``_ROW_ORDER``; the summary above the form lists the errors so, as
#: the nurse meets the fields, whichever check found them (NO_FIELD's is above "save").
_PAGE_ORDER = (
    "children",
    "child",
    "pregnancy_of",
    "expected_date",
    "no_children",
    "assessment-no-concern",
    "reasons",
    "discussed_with_colleague",
    "who_helps",
    "support",
    "support_note",
    NO_FIELD,
)
_ROW_ORDER = ("name", "birth_date", "relationship", "lives_with")
_ROW_FIELD = re.compile(r"child-(\d+)-([a-z_]+)")


def in_page_order(errors: list[FieldError]) -> list[FieldError]:
    """The errors in the order of their fields on the page; a field's own in the order found."""
    return sorted(errors, key=_place_on_page)


def _place_on_page(error: FieldError) -> tuple[int, int, int]:
    # a field not listed (one added to the form later) goes last: a summary out of order
    # is better than a nurse's page that fails
    if row := _ROW_FIELD.fullmatch(error.field):
        return _place(_PAGE_ORDER, "child"), int(row[1]), _place(_ROW_ORDER, row[2])
    return _place(_PAGE_ORDER, error.field), 0, 0


def _place(order: tuple[str, ...], field: str) -> int:
    return order.index(field) if field in order else len(order)


def _step2(
    form: TriageForm, ctx: LaunchContext, assessment: SafetyAssessment, now: datetime
) -> Step2Finding:
    """Step 2 as filled in; the card's Hague triggers say why the check was prompted."""
    return Step2Finding(
        recorded_by=ctx.user.fhir_user,
        recorded_at=now,
        assessment=assessment,
        reasons=tuple(line.strip() for line in form.reasons.splitlines() if line.strip()),
        who_helps=form.who_helps or None,
        consultations=(
            frozenset({Consultation.COLLEAGUE}) if form.discussed_with_colleague else frozenset()
        ),
        acute_danger=form.acute_danger,
        triggers=frozenset(card_context(ctx.app_context).triggers) | form.triggers,
    )


_F = TypeVar("_F")


def _checked(errors: list[FieldError], t: Callable[..., str], make: Callable[[], _F]) -> _F | None:
    """The protocol's finding, or None with its refusal added to ``errors``. Each step is
    checked even when the form or another step is refused, so that the nurse sees every
    problem of the page at once instead of one per save."""
    try:
        return make()
    except ProtocolError as error:
        errors.append(protocol_error(error, t))
        return None


def protocol_error(error: ProtocolError, t: Callable[..., str]) -> FieldError:
    """A refused move, translated, placed next to the field it is about."""
    return FieldError(_ERROR_ANCHOR.get(error.code, NO_FIELD), t(f"protocol.{error.code.value}"))


# ---------------------------------------------------------------------------------------
# What the page shows besides the form: advice and phone numbers
# ---------------------------------------------------------------------------------------


def _support_partners(ctx: LaunchContext) -> tuple[Partner, ...]:
    """Services a nurse may call at step 3: every partner with a phone except step 6's, from
    the hospital's own directory (its region's numbers)."""
    directory = ctx.tenant.config.partners.directory()
    return tuple(p for p in directory.partners if p.phones and p.type not in STEP_6_TARGETS)


@dataclass(frozen=True)
class KindEnGezinAdvice:
    """Step 3 advice: a Kind & Gezin start conversation, for these children."""

    child_names: tuple[str, ...]
    includes_expected_child: bool
    partners: tuple[Partner, ...]


def kind_en_gezin_advice(
    ctx: LaunchContext, findings: TriageInput, today: date
) -> KindEnGezinAdvice | None:
    """The protocol's Kind & Gezin advice for the saved findings, with whom to call."""
    case = KindreflexCase.replay(  # only to ask the protocol; nothing is stored
        f"Patient/{ctx.patient_id}",
        f"Encounter/{ctx.encounter_id}",
        [f for f in (findings.step1, findings.step2, findings.step3) if f is not None],
    )
    for item in advice(case, today):
        if item.kind is AdviceKind.KIND_EN_GEZIN_START:
            names = tuple(c.name for ref in item.child_refs if (c := case.child(ref)))
            partners = tuple(
                p for p in _support_partners(ctx) if p.type is ReferralTarget.KIND_EN_GEZIN
            )
            return KindEnGezinAdvice(names, item.includes_expected_child, partners)
    return None


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _app_message(language: Language, message_id: str, **values: object) -> str:
    """A message of this screen's catalogue domain (ids prefixed ``app.``)."""
    return translate(language, f"app.{message_id}", **values)


def _translator(language: Language) -> Callable[..., str]:
    return partial(_app_message, language)


def _choices(language: Language) -> dict[str, list[tuple[str, str]]]:
    """The options of each select and checkbox group, with their translated labels."""
    t = _translator(language)

    def labelled(prefix: str, values: Iterable[str]) -> list[tuple[str, str]]:
        return [(value, t(f"{prefix}.{value}")) for value in values]

    return {
        "relationship": labelled("relationship", (r.value for r in ChildRelationship)),
        "lives_with": labelled("lives-with", (v.value for v in LivesWith)),
        "pregnancy_of": labelled("pregnancy-of", (p.value for p in PregnancyOf)),
        "assessment": labelled("assessment", (a.value for a in SafetyAssessment)),
        "support_actions": labelled("support-action", (a.value for a in SupportAction)),
    }


def render(
    ctx: LaunchContext, template: str, *, status_code: int = 200, **values: Any
) -> HTMLResponse:
    """A page in the launch's language, with CSRF token and the security headers."""
    html = TEMPLATES.get_template(template).render(
        t=_translator(ctx.language),
        product_name=translate(ctx.language, "product.name"),
        lang=ctx.language,
        csrf_token=csrf_token(ctx),
        pinned=partial(pinned, ctx),  # links back stay with this launch (LAUNCH_PARAM)
        choices=_choices(ctx.language),
        support_partners=_support_partners(ctx),
        **values,
    )
    headers = {**security_headers(ctx), "Cache-Control": "no-store"}
    return HTMLResponse(html, status_code=status_code, headers=headers)


def _form_page(
    ctx: LaunchContext,
    form: TriageForm,
    *,
    errors: list[FieldError] | None = None,
    notice: str | None = None,
    focus: str | None = None,
    status_code: int | None = None,
    open_concern: bool = False,
    acute_danger: bool = False,
) -> HTMLResponse:
    """``open_concern``: the worklist holds an open concern for the patient (a hand-off
    saved earlier), said on the page as the card's open concern is. ``acute_danger``: the
    parket and the police to call now, above the form (a save refused meanwhile)."""
    errors = errors or []
    card = card_context(ctx.app_context)
    triggers = tuple(t for t in HagueTrigger if t in card.triggers or t in form.triggers)
    return render(
        ctx,
        "triage.html",
        status_code=status_code or (422 if errors else 200),
        card=replace(card, triggers=triggers, open_concern=card.open_concern or open_concern),
        form=form,
        errors=errors,
        error_for=messages_by_field(errors),
        notice=notice,
        focus=focus,
        blank_row=ChildRow(ref=""),
        max_children=MAX_CHILDREN,
        patient_banner=ctx.need_patient_banner and bool(form.patient_name),
        born=dates.born(form.patient_birth_date, ctx.language),
        acute_danger=acute_danger,
        acute_danger_partners=_acute_danger_partners(ctx) if acute_danger else (),
    )


def _message_page(ctx: LaunchContext, message: str, status_code: int) -> HTMLResponse:
    """A page that only explains what to do next (e.g. open the app again from the EHR)."""
    return render(ctx, "message.html", status_code=status_code, message=message)


def _relaunch_page(ctx: LaunchContext) -> HTMLResponse:
    return _message_page(ctx, "relaunch", 401)


# ---------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------


@router.get("/triage", dependencies=NURSE_ONLY, response_class=HTMLResponse)
def triage_page(ctx: LaunchDep, triage: TriageDep) -> HTMLResponse:
    """Steps 1-2, with the children already on the FHIR server shown for confirmation."""
    if not ctx.patient_id or not ctx.encounter_id:
        return _message_page(ctx, "no-context", 400)
    notice = None
    try:
        chart = triage.load_chart(ctx)
    except ReauthorisationRequired:
        return _relaunch_page(ctx)
    except FhirError as error:
        if token_refused(error):  # revoked or narrowed: only a new launch gets one it takes
            return _relaunch_page(ctx)
        # unreachable or refused the request: the nurse can still enter the children
        chart = triage.pending_chart(ctx)  # what our saves still waiting will write
        notice = _app_message(ctx.language, "notice.children-not-loaded")
    rows = [ChildRow.of(child, chart) for child in chart.children]
    form = TriageForm(children=rows or [ChildRow()], page_id=chart.page)
    if chart.patient is not None:
        form.patient_name = chart.patient.name or ""
        form.patient_birth_date = chart.patient.birth_date or ""
    refused, focus = triage.refused_answers(ctx), None
    if refused is not None:
        form = with_answers(form, refused, chart)
        said = refused_answers_notice(ctx.language, refused)
        notice = f"{said} {notice}" if notice else said
        # what she is told first: whom to call, else that these are her answers of then
        focus = "acute-title" if form.acute_danger else "page-notice"
    return _form_page(
        ctx,
        form,
        notice=notice,
        focus=focus,
        open_concern=triage.has_open_concern(ctx),
        acute_danger=form.acute_danger,  # only a refused save's answers fill it in here
    )


#: The notice above a form filled with a refused save's answers, by why it was refused: a
#: content the record refused may be refused again, and saying "save again" alone sent
#: her round in a circle.
_REFUSED_ANSWERS_NOTICES = {
    DeliveryState.CONFLICT: "triage.refused-answers",
    KEPT_CHANGING: "triage.refused-answers-kept-changing",
    DeliveryState.FAILED: "triage.refused-answers-failed",
}


def refused_answers_notice(language: Language, answers: RefusedAnswers) -> str:
    """What the page says of her answers filled in again: when she saved them, and why the
    record did not take them."""
    message = _REFUSED_ANSWERS_NOTICES[answers.refusal]
    return _app_message(language, message, moment=dates.shown_moment(answers.saved_at))


def with_answers(form: TriageForm, answers: RefusedAnswers, chart: RecordedChart) -> TriageForm:
    """The form with her answers of a save the record refused after she had left the page
    (:meth:`Triage.refused_answers`), as :func:`build_input` reads them again: the children
    on the chart as it has them, with the rows of the children she added that it does not
    list (saved again, created by the same identifier), and her step 1 to 3 answers, with
    the Hague triggers her step 2 named. With acute danger, the page says whom to call now
    above it, as when the refusal comes while she waits."""
    step2, step3, expecting = answers.step2, answers.step3, answers.expecting
    expected_date = expecting.expected_date if expecting else None
    listed = {c.ref for c in chart.children} | {
        way for ways in chart.identified_as.values() for way in ways
    }
    added = [
        replace(ChildRow.of(child), recorded=False)
        for child in answers.new_children
        if child.ref not in listed
    ]
    return replace(
        form,
        children=[*(row for row in form.children if not row.is_blank), *added] or [ChildRow()],
        triggers=step2.triggers if step2 else frozenset(),
        no_children=answers.no_children,
        expecting=expecting is not None,
        pregnancy_of=expecting.pregnancy_of.value if expecting else "",
        expected_date=dates.shown_date(expected_date) if expected_date else "",
        assessment=step2.assessment.value if step2 else "",
        reasons="\n".join(step2.reasons) if step2 else "",
        discussed_with_colleague=step2 is not None
        and Consultation.COLLEAGUE in step2.consultations,
        acute_danger=step2 is not None and step2.acute_danger,
        who_helps=(step2.who_helps or "") if step2 else "",
        support_actions=frozenset(a.value for a in step3.actions) if step3 else frozenset(),
        support_note=(step3.note or "") if step3 else "",
    )


@router.post(
    "/triage",
    dependencies=[*NURSE_ONLY, Depends(verify_csrf)],
    response_class=HTMLResponse,
)
async def triage_submit(request: Request, ctx: LaunchDep, triage: TriageDep) -> HTMLResponse:
    """One form, three buttons: add a child row, remove one, or save (the default)."""
    if not ctx.patient_id or not ctx.encounter_id:
        return _message_page(ctx, "no-context", 400)
    posted = await request.form()
    form = TriageForm.parse(posted)
    action = str(posted.get("action") or "save")
    if action != "save":
        page = partial(_form_page, open_concern=triage.has_open_concern(ctx))
    if action == "add-child":
        form.with_blank_row()
        return page(ctx, form, focus=f"child-{len(form.children) - 1}-name")
    if removed := _REMOVE_CHILD.fullmatch(action):
        rows, row = posted_rows(posted), int(removed.group(1))
        place = rows.index(row) if row in rows else len(rows)
        # the focus on "+ kind", as the script leaves it: it was lost on the body
        return page(ctx, form.without_row(place), focus="add-child")
    if action != "save":  # only a forged form names another: said as the page's errors
        unknown = FieldError(NO_FIELD, _app_message(ctx.language, "error.unknown-action"))
        return page(ctx, form, errors=[unknown], status_code=400)
    return await run_in_threadpool(_save, ctx, triage, form, submission_of(posted))


def submission_of(posted: FormData) -> str | None:
    """The same for the same page of the form posted again with the same values (a double
    click on "save", a browser resending the form), else different: the findings'
    identifiers and the save's witness come from it (``TriageInput.submission``), so the
    second post joins the first save instead of recording every finding twice. A post
    without a page id (a page from before this rule) has none: its time is used."""
    if not _PAGE_ID.fullmatch(str(posted.get("page_id") or "")):
        return None
    values = sorted(
        (key, value)
        for key, value in posted.multi_items()
        if isinstance(value, str) and key not in ("csrf_token", "action")
    )
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


_PAGE_ID = re.compile(r"[0-9a-f]{32}")


def _save(
    ctx: LaunchContext, triage: Triage, form: TriageForm, submission: str | None = None
) -> HTMLResponse:
    t = _translator(ctx.language)
    now = local_now()  # a child born "today" is born today in Belgium
    try:
        findings = replace(build_input(form, ctx, now, t), submission=submission, page=form.page_id)
        result: SaveResult | None = triage.record_triage(ctx, findings)
    except InvalidFormError as invalid:
        return _refused_form(ctx, triage, form, invalid.errors)
    except ProtocolError as error:  # a rule that needs the recorded history
        return _refused_form(ctx, triage, form, [protocol_error(error, t)])
    except ChildRecordedMeanwhile as meanwhile:
        # each such row now names the child the other save wrote: saved again, it is that
        # child (merged with what she typed), not a second; the rest of her input stays
        errors = [
            FieldError(f"child-{i}-name", t("error.child-recorded-meanwhile", n=i + 1))
            for i, row in enumerate(form.children)
            if row.ref in meanwhile.refs
        ]
        rows = [replace(row, ref=meanwhile.refs.get(row.ref, row.ref)) for row in form.children]
        return _refused_form(ctx, triage, replace(form, children=rows), errors)
    except SaveConflict:
        try:
            return _form_after_conflict(ctx, triage, form)
        except (FhirError, ReauthorisationRequired):
            # the record cannot be read now: a page that says to open the app again and,
            # with acute danger, to call the parket or the police now (found by review:
            # the conflict page said only "conflict")
            result = None
    except ReauthorisationRequired:
        return _relaunch_page(ctx)
    return render(
        ctx,
        "triage_saved.html",
        outcome=_outcome(findings),
        acute_danger_partners=_acute_danger_partners(ctx),
        result=result,
        advice=kind_en_gezin_advice(ctx, findings, now.date()),
        # "no concern" now leaves a hand-off made earlier open: the page must not say otherwise
        open_concern=triage.has_open_concern(ctx),
    )


def _form_after_conflict(ctx: LaunchContext, triage: Triage, form: TriageForm) -> HTMLResponse:
    """The form again after a save the record refused because someone else had changed the
    patient's data first (:class:`SaveConflict`): the children as the record has them now
    (:func:`rows_after_conflict`), every other answer as she gave it, and, with acute
    danger, the parket or the police to call now. Before, the page told her to open the
    app again and fill in the steps again: her reasons, typed in a crisis, were in the
    outbox but no longer in front of her."""
    shown = triage.edits_shown(ctx, form.page_id)  # of the page she saved, before the new one
    chart = triage.load_chart(ctx)
    rows, gone = rows_after_conflict(form.children, chart, shown)
    # a page of its own: saved again as shown, it is a new save, not the refused one
    again = replace(form, children=rows, page_id=chart.page)
    say = partial(_app_message, ctx.language)
    errors = [FieldError(NO_FIELD, say("triage.conflict"))]
    if gone:
        errors.append(FieldError("children", say("triage.conflict-gone", names=", ".join(gone))))
    return _refused_form(ctx, triage, again, errors, status_code=409)


def _refused_form(
    ctx: LaunchContext,
    triage: Triage,
    form: TriageForm,
    errors: list[FieldError],
    *,
    status_code: int | None = None,
) -> HTMLResponse:
    """The form again with why her save was refused, her input kept. With acute danger
    ticked, the parket or the police to call now above it, and the summary a screen reader
    reads first names that first: acute danger waits neither for the record (a conflict)
    nor for a typo to be mended. Whatever else the form says (even "no concern" beside it,
    refused), she ticked it: the numbers are shown rather than held back."""
    if form.acute_danger:
        call_now = FieldError("acute-title", _app_message(ctx.language, "saved.acute-title"))
        errors = [call_now, *errors]
    return _form_page(
        ctx,
        form,
        errors=errors,
        status_code=status_code,
        open_concern=triage.has_open_concern(ctx),
        acute_danger=form.acute_danger,
    )


def rows_after_conflict(
    typed: list[ChildRow], chart: RecordedChart, shown: EditsShown | None = None
) -> tuple[list[ChildRow], list[str]]:
    """The child rows of the form shown again after a conflict, and the names of the
    children on her page the record no longer lists (withdrawn or removed meanwhile, or
    waiting in a save since refused): she is told, not shown them.

    A child the record holds in the version she saw keeps the values she typed (saved
    again, her edit is made on that version). So does a child whose edit her page showed
    waiting (``shown``: the page's :meth:`Triage.edits_shown`) when the record now holds
    it as that edit, delivered meanwhile: saved again, her values are laid over the
    record's version. So does a new child she saw waiting (by its ``urn:uuid:``) while the
    chart has it as her page showed it: still waiting (saved again, it is created or
    merged by its identifier), or delivered meanwhile (her values on the record's
    version). Any other child is shown as the chart has it, marked as
    :meth:`Triage.load_chart` says: one the record holds in another version (her edit of
    it: ``conflict``), one whose version has an edit waiting now that her page never
    showed (someone else's, saved since: ``pending``), a new one someone changed since
    her page showed it. A child she added keeps its row."""
    shown = shown or EditsShown()
    # her recorded rows by the child they are: its id on the server, or its urn:uuid
    hers = {unversioned(row.ref): row for row in typed if row.recorded}
    rows = []
    for child in chart.children:
        ways = (unversioned(child.ref), *chart.identified_as.get(child.ref, ()))
        mine = hers.pop(next((way for way in ways if way in hers), ""), None)
        rows.append(_row_after_conflict(mine, child, chart, shown))
    rows += [row for row in typed if not row.recorded]
    return rows or [ChildRow()], [row.name for row in hers.values()]


def _row_after_conflict(
    mine: ChildRow | None, child: Child, chart: RecordedChart, shown: EditsShown
) -> ChildRow:
    """Her row of ``child`` (``mine``) while the chart has the child as her page had it,
    else the chart's (see :func:`rows_after_conflict`)."""
    theirs = ChildRow.of(child, chart)
    if mine is None:
        return theirs
    as_shown = shown.include(mine.ref, child)
    if mine.ref == child.ref:  # the version she saw, or a new child still waiting
        # unless a waiting save changed it that her page never showed (a new child the
        # chart lists by its urn:uuid always waits): the new page would count that save
        # as shown without drawing it, and hers lay her values over it unseen (review)
        return mine if as_shown or child.ref not in chart.pending else theirs
    # the record holds another version: an edit her page showed waiting, or the new child
    # it showed waiting, delivered meanwhile (hers, on the record's version); else
    # someone else's change, which her values laid over unseen (found by review)
    return replace(mine, ref=child.ref, delivery="") if as_shown else theirs


def _outcome(findings: TriageInput) -> str:
    """Where the protocol goes next: nothing to do, step 3 support, step 4, or, with acute
    danger, the parket or the police now (seed 002) besides the hand-off to step 4."""
    if findings.step2 is None:
        return "grown-up-children" if findings.step1.children else "no-children"
    if findings.step2.acute_danger:
        return "acute-danger"
    if findings.step2.assessment is SafetyAssessment.NO_CONCERN:
        return "support"
    return "handed-off"


def _acute_danger_partners(ctx: LaunchContext) -> tuple[Partner, ...]:
    """The hospital's parket and police, as its directory names them (the pocket card gives
    no numbers: each hospital adds its arrondissement's)."""
    directory = ctx.tenant.config.partners.directory()
    return tuple(p for p in directory.partners if p.type in ACUTE_DANGER_TARGETS)


@router.get("/static/{name}")
def static_file(name: str, v: str | None = None) -> Response:
    """The pages' stylesheet, script and icon (same origin: the CSP can stay 'self'); ``v``:
    the version the page linked (``smart_app.assets``)."""
    return asset_response(name, v, served=("nurse.css", "nurse.js", ICON))


#: At the origin's root only, where a browser asks for the icon of a page linking none.
icon_router = APIRouter(include_in_schema=False)


@icon_router.get("/favicon.ico")
def favicon() -> Response:
    return icon_response()
