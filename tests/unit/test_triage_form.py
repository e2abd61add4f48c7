"""The nurse's form when it comes back after a save the record refused: her child rows
when someone else changed the patient's data first (``smart_app.nurse.rows_after_conflict``),
her other answers when the refusal came after she had left the page
(``smart_app.nurse.with_answers``)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from service.outbox import DeliveryState
from service.protocol import (
    Child,
    ChildRelationship,
    Consultation,
    ExpectedChild,
    HagueTrigger,
    LivesWith,
    PregnancyOf,
    SafetyAssessment,
    Step2Finding,
    Step3Support,
    SupportAction,
)
from service.triage import KEPT_CHANGING, EditsShown, RecordedChart, RefusedAnswers
from smart_app.nurse import (
    ChildRow,
    TriageForm,
    refused_answers_notice,
    rows_after_conflict,
    with_answers,
)


def _child(ref: str, name: str) -> Child:
    return Child(ref, name, date(2019, 7, 3), ChildRelationship.CHILD, LivesWith.PERMANENTLY)


def _typed(ref: str, name: str, *, recorded: bool = True) -> ChildRow:
    return ChildRow(ref=ref, name=name, birth_date="03/07/2019", recorded=recorded)


def test_each_child_as_she_typed_it_unless_the_record_holds_another_version() -> None:
    changed = _child("RelatedPerson/1/_history/3", "Lotte")  # someone else's version 3
    unchanged = _child("RelatedPerson/2/_history/1", "Mats")
    pending = _child("urn:uuid:7d1e0c43-5f62-4f0e-9a8e-0c2b7b1d9f10", "Noor")  # a save waits
    delivered = _child("RelatedPerson/5/_history/1", "Jens")  # it waited on her page
    jens = "urn:uuid:2b0f4a0e-6c1d-4e8a-8f57-3a1f0d9c7e21"
    chart = RecordedChart(
        None,
        [changed, unchanged, pending, delivered],
        pending=frozenset({pending.ref}),
        conflicts=frozenset({changed.ref, unchanged.ref}),  # both edits were in her save
        identified_as={delivered.ref: (jens,)},
    )
    typed = [
        _typed("RelatedPerson/1/_history/2", "Lotte Junior"),  # the version she saw
        _typed("RelatedPerson/2/_history/1", "Mats Marie"),
        _typed(pending.ref, "Noor Peeters"),  # her correction of the child waiting
        _typed(jens, "Jens Peeters"),  # her correction of the child waiting then
        _typed("RelatedPerson/9/_history/1", "Gone"),  # no longer on the record
        _typed("urn:uuid:0c5f7a52-8f0e-4a43-9d59-000000000001", "Lina", recorded=False),
    ]
    # her page showed Noor and Jens waiting, as the chart has them now
    shown = EditsShown.of([pending, _child(jens, "Jens")])

    rows, gone = rows_after_conflict(typed, chart, shown)

    assert [(r.ref, r.name, r.delivery) for r in rows] == [
        ("RelatedPerson/1/_history/3", "Lotte", DeliveryState.CONFLICT),  # the record's
        ("RelatedPerson/2/_history/1", "Mats Marie", ""),  # hers, said as she saw it
        (pending.ref, "Noor Peeters", ""),  # hers: created or merged by its identifier
        (delivered.ref, "Jens Peeters", ""),  # hers, on the record's version
        ("urn:uuid:0c5f7a52-8f0e-4a43-9d59-000000000001", "Lina", ""),
    ]
    assert [r.recorded for r in rows] == [True, True, True, True, False]
    assert gone == ["Gone"]


def test_a_new_child_someone_changed_since_her_page_showed_it_waiting_is_the_charts() -> None:
    """Her page showed Jens waiting; delivered meanwhile, a colleague renamed him in the
    record, and her save was refused over another child. The form kept her row of Jens by
    his identifier: saved again, her values were laid over the colleague's rename, which
    the form had read and never shown (found by review). It shows Jens as the record has
    him; likewise a waiting Noor whose save someone corrected since."""
    renamed = _child("RelatedPerson/5/_history/2", "Jens Janssens")  # the colleague's
    jens = "urn:uuid:2b0f4a0e-6c1d-4e8a-8f57-3a1f0d9c7e21"
    corrected = _child("urn:uuid:7d1e0c43-5f62-4f0e-9a8e-0c2b7b1d9f10", "Noor Janssens")
    chart = RecordedChart(
        None,
        [renamed, corrected],
        pending=frozenset({corrected.ref}),
        identified_as={renamed.ref: (jens,)},
    )
    typed = [_typed(jens, "Jens Peeters"), _typed(corrected.ref, "Noor Peeters")]
    shown = EditsShown.of([_child(jens, "Jens"), _child(corrected.ref, "Noor")])

    rows, gone = rows_after_conflict(typed, chart, shown)

    assert [(r.ref, r.name, r.delivery) for r in rows] == [
        (renamed.ref, "Jens Janssens", ""),
        (corrected.ref, "Noor Janssens", "pending"),
    ]
    assert gone == []


def test_her_correction_of_an_edit_her_page_showed_waiting_stays_once_it_is_delivered() -> None:
    """Her page showed another nurse's edit of Lotte waiting (made on version 2) and she
    corrected it; her save was refused over another child. Meanwhile that edit was
    delivered: the record holds Lotte in version 3, as her page showed her. The form after
    the conflict showed version 3 marked "someone else changed it", her correction gone
    (found by review). It keeps her correction, on version 3, unmarked; a version 3 that
    is not the edit her page showed is the record's, marked, as before."""
    waiting = _child("RelatedPerson/1/_history/2", "Lotte Peeters")  # the edit, as shown
    delivered = _child("RelatedPerson/1/_history/3", "Lotte Peeters")
    someone_elses = _child("RelatedPerson/1/_history/3", "Lotte Janssens")
    typed = [_typed("RelatedPerson/1/_history/2", "Lotte Peeters-Maes")]
    shown = EditsShown.of([waiting])

    def after(record: Child) -> list[tuple[str, str, str]]:
        chart = RecordedChart(None, [record], conflicts=frozenset({record.ref}))
        rows, _ = rows_after_conflict(typed, chart, shown)
        return [(r.ref, r.name, r.delivery) for r in rows]

    assert after(delivered) == [("RelatedPerson/1/_history/3", "Lotte Peeters-Maes", "")]
    assert after(someone_elses) == [
        ("RelatedPerson/1/_history/3", "Lotte Janssens", DeliveryState.CONFLICT)
    ]
    unshown, _ = rows_after_conflict(typed, RecordedChart(None, [delivered]))
    assert [r.name for r in unshown] == ["Lotte Peeters"]  # another page: the record's


def test_a_child_with_an_edit_waiting_that_her_page_never_showed_is_shown_as_it_waits() -> None:
    """Her save was refused; since her page was drawn, a colleague's save of an edit of
    Lotte's version 2 waits. The form after the conflict kept her row of version 2, while
    its new page counted the colleague's edit as shown: saved again, her values were laid
    over that edit unseen (found by review). The form shows the edit, marked pending; one
    her page did show keeps her row (her correction of it)."""
    waiting = _child("RelatedPerson/1/_history/2", "Lotte Janssens")  # the colleague's edit
    chart = RecordedChart(None, [waiting], pending=frozenset({waiting.ref}))
    typed = [_typed("RelatedPerson/1/_history/2", "Lotte Peeters-Maes")]

    unseen, _ = rows_after_conflict(typed, chart)
    seen, _ = rows_after_conflict(typed, chart, EditsShown.of([waiting]))

    assert [(r.name, r.delivery) for r in unseen] == [("Lotte Janssens", "pending")]
    assert [(r.name, r.delivery) for r in seen] == [("Lotte Peeters-Maes", "")]


def test_a_form_left_without_children_gets_its_empty_row() -> None:
    rows, gone = rows_after_conflict([], RecordedChart(None, []))

    assert len(rows) == 1
    assert rows[0].is_blank
    assert gone == []


def test_a_child_the_ehr_merged_from_two_is_found_by_either_identifier() -> None:
    merged = _child("RelatedPerson/5/_history/2", "Jens")
    first, second = (f"urn:uuid:2b0f4a0e-6c1d-4e8a-8f57-3a1f0d9c7e2{i}" for i in (1, 2))
    chart = RecordedChart(None, [merged], identified_as={merged.ref: (first, second)})

    shown = EditsShown.of([_child(second, "Jens")])  # her page showed him waiting so

    rows, gone = rows_after_conflict([_typed(second, "Jens Peeters")], chart, shown)

    assert [(r.ref, r.name) for r in rows] == [(merged.ref, "Jens Peeters")]
    assert gone == []


SAVED_AT = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
NURSE = "Practitioner/nurse-1"


def test_her_refused_answers_fill_the_form_as_she_gave_them() -> None:
    """Niet-pluis with acute danger, for a pregnancy of the partner: every answer comes
    back in the field she gave it in, the reasons one a line, the children left as the
    chart has them."""
    row = ChildRow(ref="RelatedPerson/1/_history/2", name="Lotte", recorded=True)
    answers = RefusedAnswers(
        saved_at=SAVED_AT,
        no_children=False,
        expecting=ExpectedChild(PregnancyOf.PARTNER, date(2027, 3, 1)),
        step2=Step2Finding(
            recorded_by=NURSE,
            recorded_at=SAVED_AT,
            assessment=SafetyAssessment.NIET_PLUIS,
            reasons=("Dreigt de kinderen iets aan te doen", "Slaapt in de auto"),
            who_helps="Zijn zus",
            consultations=frozenset({Consultation.COLLEAGUE}),
            acute_danger=True,
            triggers=frozenset({HagueTrigger.DOMESTIC_VIOLENCE}),
        ),
        step3=None,
    )

    form = with_answers(TriageForm(children=[row]), answers, RecordedChart(None, []))

    assert form.children == [row]
    assert (form.no_children, form.expecting) == (False, True)
    assert (form.pregnancy_of, form.expected_date) == ("partner", "01/03/2027")
    assert form.assessment == "niet-pluis"
    assert form.reasons == "Dreigt de kinderen iets aan te doen\nSlaapt in de auto"
    assert (form.who_helps, form.discussed_with_colleague, form.acute_danger) == (
        "Zijn zus",
        True,
        True,
    )
    assert (form.support_actions, form.support_note) == (frozenset(), "")
    assert form.triggers == {HagueTrigger.DOMESTIC_VIOLENCE}  # this launch's card may not say it


def test_her_refused_no_concern_with_support_fills_step_3() -> None:
    answers = RefusedAnswers(
        saved_at=SAVED_AT,
        no_children=False,
        expecting=None,
        step2=Step2Finding(
            recorded_by=NURSE, recorded_at=SAVED_AT, assessment=SafetyAssessment.NO_CONCERN
        ),
        step3=Step3Support(
            recorded_by=NURSE,
            recorded_at=SAVED_AT,
            actions=frozenset({SupportAction.ASK_REGULARLY, SupportAction.DISCUSS_IMPACT}),
            note="Folder Kind & Gezin meegegeven",
        ),
    )

    form = with_answers(TriageForm(), answers, RecordedChart(None, []))

    assert (form.expecting, form.pregnancy_of, form.expected_date) == (False, "", "")
    assert (form.assessment, form.reasons, form.acute_danger) == ("no-concern", "", False)
    assert form.support_actions == {"ask-regularly", "discuss-impact"}
    assert form.support_note == "Folder Kind & Gezin meegegeven"


def test_her_refused_no_children_is_ticked_again() -> None:
    answers = RefusedAnswers(SAVED_AT, no_children=True, expecting=None, step2=None, step3=None)

    form = with_answers(TriageForm(), answers, RecordedChart(None, []))

    assert form.no_children
    assert (form.assessment, form.expecting) == ("", False)


def test_the_children_she_added_in_a_refused_save_come_back_as_her_rows() -> None:
    """She added a child in the save the record refused: it is not in the record, and the
    page showed her reasons about it without it (found by review). It comes back as a row
    of hers, by the same identifier; one the chart lists (another save wrote it since) is
    the chart's."""
    mila = _child("urn:uuid:0c5f7a52-8f0e-4a43-9d59-000000000007", "Mila")
    noor = _child("urn:uuid:0c5f7a52-8f0e-4a43-9d59-000000000008", "Noor")
    written = _child("RelatedPerson/4/_history/1", "Noor")
    chart = RecordedChart(None, [written], identified_as={written.ref: (noor.ref,)})
    answers = RefusedAnswers(
        SAVED_AT, no_children=False, expecting=None, step2=None, step3=None,
        new_children=(mila, noor),
    )  # fmt: skip

    form = with_answers(TriageForm(children=[ChildRow.of(written, chart)]), answers, chart)

    assert [(r.ref, r.name, r.recorded) for r in form.children] == [
        (written.ref, "Noor", True),
        (mila.ref, "Mila", False),
    ]
    alone = with_answers(TriageForm(), answers, RecordedChart(None, []))
    assert [r.name for r in alone.children] == ["Mila", "Noor"]  # no blank row before them


def test_the_notice_says_why_the_record_refused_her_answers() -> None:
    """A refused content may be refused again: that notice says whom to tell, not only to
    save again; the others say who or what changed the record."""
    said = {
        why: refused_answers_notice(
            "nl", RefusedAnswers(SAVED_AT, False, None, None, None, refusal=why)
        )
        for why in (DeliveryState.CONFLICT, KEPT_CHANGING, DeliveryState.FAILED)
    }

    assert all(notice.startswith("Wat u op ") for notice in said.values())
    assert "iemand anders" in said[DeliveryState.CONFLICT]
    assert "telkens opnieuw gewijzigd" in said[KEPT_CHANGING]
    assert "functioneel beheer" in said[DeliveryState.FAILED]
    assert "functioneel beheer" not in said[DeliveryState.CONFLICT]
    english = RefusedAnswers(SAVED_AT, False, None, None, None, refusal=DeliveryState.FAILED)
    assert "application manager" in refused_answers_notice("en", english)
