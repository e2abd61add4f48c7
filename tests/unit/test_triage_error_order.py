"""The error summary above the nurse's form lists the errors as she meets their fields
(``smart_app.nurse.in_page_order``), whichever check found them."""

from __future__ import annotations

from smart_app.nurse import NO_FIELD, FieldError, in_page_order


def _fields(errors: list[FieldError]) -> list[str]:
    return [error.field for error in in_page_order(errors)]


def test_errors_are_listed_in_the_order_of_their_fields_on_the_page() -> None:
    found = [
        FieldError("support_note", "te lang"),
        FieldError(NO_FIELD, "niet opgeslagen"),
        FieldError("child-2-birth_date", "geen datum"),
        FieldError("reasons", "verplicht"),
        FieldError("child-1-relationship", "kies"),
        FieldError("child-1-name", "verplicht"),
    ]
    assert _fields(found) == [
        "child-1-name",
        "child-1-relationship",
        "child-2-birth_date",
        "reasons",
        "support_note",
        NO_FIELD,
    ]


def test_a_field_the_order_does_not_know_goes_last_rather_than_failing_the_page() -> None:
    found = [
        FieldError("a_field_added_later", "nieuw"),
        FieldError("child-1-a_column_added_later", "nieuw"),
        FieldError("child-1-name", "verplicht"),
        FieldError("reasons", "verplicht"),
    ]
    assert _fields(found) == [
        "child-1-name",
        "child-1-a_column_added_later",
        "reasons",
        "a_field_added_later",
    ]
