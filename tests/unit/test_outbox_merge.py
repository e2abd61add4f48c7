"""The outbox's merge at delivery, as pure functions: whether laying ours over the server's
version of a resource changes it (``service.outbox._unchanged``), compared with what the
overlay writes (``laid_over``). Against a real FHIR server in
tests/integration/test_triage_save.py."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from service.fhir import mapping, terminology
from service.outbox import _changed_by_both, _changed_from, _one_for_one, _unchanged, laid_over
from service.protocol import Child, ChildRelationship, HagueTrigger, LivesWith, Step
from tests.support.validator import validate

DV = HagueTrigger.DOMESTIC_VIOLENCE.value
SA = HagueTrigger.SUBSTANCE_ABUSE.value
SH = HagueTrigger.SELF_HARM_PSYCHIATRIC.value
TRIGGER = terminology.extension_url("concern-trigger")


def _flag(*triggers: str, step: Step = Step.STEP_2) -> dict[str, Any]:
    return mapping.concern_flag(
        patient_ref="Patient/1",
        author="Practitioner/nurse-1",
        flagged_at=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        identifier=mapping.identifier("concern", "c-1"),
        last_step=step,
        triggers=triggers,
    )


def _on_server(flag: dict[str, Any]) -> dict[str, Any]:
    """The Flag as the FHIR server returns it: an id, a version, its codings' displays."""
    return {**flag, "id": "7", "meta": {**flag["meta"], "versionId": "3"}}


def _triggers(resource: dict[str, Any]) -> list[str]:
    return sorted(e["valueCoding"]["code"] for e in resource["extension"] if e["url"] == TRIGGER)


def test_a_flag_with_several_triggers_that_already_says_ours_is_unchanged() -> None:
    """Keyed by URL, only the Flag's last trigger was compared: ours with two triggers never
    agreed with it, so a merge that changes nothing was written once more (a new version)."""
    assert _unchanged(_on_server(_flag(DV, SA)), _flag(DV, SA))
    assert _unchanged(_on_server(_flag(DV, SA, SH)), _flag(SH, DV, SA))


def test_a_trigger_of_the_servers_ours_does_not_name_is_no_change() -> None:
    """The concern Flag's merge keeps the server's triggers beside ours (as_laid_over)."""
    seen = _on_server(_flag(DV, SA))
    assert _unchanged(seen, _flag(SA))
    assert _unchanged(seen, _flag(DV))
    assert _triggers(laid_over(seen, _flag(SA))) == [DV, SA]


def test_a_trigger_the_flag_lacks_is_a_change() -> None:
    assert not _unchanged(_on_server(_flag(DV)), _flag(DV, SA))
    assert not _unchanged(_on_server(_flag(DV, SA)), _flag(DV, SA, SH))
    assert not _unchanged(_on_server(_flag(SA, SH)), _flag(DV))


def test_another_last_step_is_a_change_whatever_the_triggers() -> None:
    assert not _unchanged(_on_server(_flag(DV, SA, step=Step.STEP_4)), _flag(DV, SA))


def test_a_trigger_twice_on_the_server_is_a_change_the_overlay_writes_once() -> None:
    seen = _on_server(_flag(DV, SA))
    doubled = {**seen, "extension": [*seen["extension"], seen["extension"][-1]]}
    assert not _unchanged(doubled, _flag(DV, SA))
    assert _triggers(laid_over(doubled, _flag(DV, SA))) == [DV, SA]


def test_an_element_the_flags_rules_drop_is_a_change() -> None:
    """A Flag an earlier version wrote with an encounter loses it in the merge (the
    profile's 0..0): the merge is written even when ours says nothing new."""
    seen = {**_on_server(_flag(DV)), "encounter": {"reference": "Encounter/1"}}
    assert not _unchanged(seen, _flag(DV))
    assert "encounter" not in laid_over(seen, _flag(DV))
    assert _unchanged(_on_server(_flag(DV)), _flag(DV))


def test_elsewhere_more_extensions_of_one_url_on_the_server_are_a_change() -> None:
    """Outside the concern Flag, ours of a URL take the place of all the server's of that
    URL (laid_over): one of the server's more would be dropped by the write."""
    url = terminology.extension_url("lives-with")
    seen = {
        "resourceType": "RelatedPerson",
        "id": "5",
        "meta": {"versionId": "2"},
        "extension": [
            {"url": url, "valueCode": "part-time"},
            {"url": url, "valueCode": "permanently"},
        ],
    }
    ours = {
        "resourceType": "RelatedPerson",
        "extension": [{"url": url, "valueCode": "permanently"}],
    }
    assert not _unchanged(seen, ours)
    assert laid_over(seen, ours)["extension"] == ours["extension"]
    assert _unchanged({**seen, "extension": ours["extension"]}, ours)


def test_the_name_ours_stands_for_is_the_one_shown_not_the_first() -> None:
    """The nurse sees a person's current official name (``mapping.current_name``), not an
    old one the EHR keeps first: her correction replaces that name, the old one stays, and
    the name she left as it was is no change."""
    old = {"use": "old", "family": "Janssens", "given": ["Emma"], "period": {"end": "2020-01-01"}}
    official = {"use": "official", "family": "Peeters", "given": ["Emma"]}
    seen = {"resourceType": "RelatedPerson", "id": "c1", "name": [old, official]}

    def ours(name: str) -> dict[str, Any]:
        return {"resourceType": "RelatedPerson", "name": [{"text": name}]}

    assert _unchanged(seen, ours("Emma Peeters"))
    corrected = laid_over(seen, ours("Emma Peeters-Claes"))["name"]
    assert corrected == [old, {"use": "official", "text": "Emma Peeters-Claes"}]
    assert mapping.display_name({"name": corrected}) == "Emma Peeters-Claes"


def test_each_of_ours_is_matched_by_a_different_one_of_theirs() -> None:
    """An entry of ours that spells out less (no code) may agree with several of theirs; the
    matching gives each of ours one of its own where one exists."""
    system = "urn:test"

    def ext(**coding: str) -> dict[str, Any]:
        return {"url": TRIGGER, "valueCoding": {"system": system, **coding}}

    theirs = [ext(code="a"), ext(code="b")]
    assert _one_for_one(theirs, [ext(), ext(code="a")])
    assert _one_for_one(theirs, [ext(code="b"), ext(code="a")])
    assert not _one_for_one(theirs, [ext(code="a"), ext(code="a")])
    assert not _one_for_one(theirs, [ext(code="a")])
    assert not _one_for_one(theirs[:1], [ext(code="a"), ext()])


V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
POWER_OF_ATTORNEY = {"coding": [{"system": V3_ROLE_CODE, "code": "HPOWATT"}]}
EMERGENCY_CONTACT = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "C"}]
}
SSIN = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin"


def _child(born: date, relationship: ChildRelationship = ChildRelationship.NATURAL_CHILD) -> Any:
    child = Child("x", "Anna Peeters", born, relationship, LivesWith.NOT)
    resource = mapping.child_related_person(
        child, patient_ref="Patient/1", identifier=mapping.identifier("child")
    )
    return {**resource, "id": "5"}


def _with_roles(*roles: dict[str, Any]) -> dict[str, Any]:
    """The child as the EHR stores it: its relationship entries ``roles``."""
    return {**_child(date(1990, 4, 1)), "meta": {"versionId": "1"}, "relationship": list(roles)}


def _codes(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for r in resource["relationship"] for c in r["coding"]]


def test_the_ehrs_other_roles_of_a_child_stay_and_an_unchanged_save_is_no_change() -> None:
    """v3 RoleCode holds the child codes and the person's other roles (HPOWATT…): the merge
    matched by code system, so the power of attorney was dropped or taken for the child's
    relationship, and an unchanged save was a change. Matched by the child-relationship
    value set now, whatever the EHR's order."""
    child_role = _child(date(1990, 4, 1))["relationship"][0]
    for roles in ([POWER_OF_ATTORNEY, child_role], [child_role, POWER_OF_ATTORNEY]):
        seen = _with_roles(*roles)
        assert _unchanged(seen, _child(date(1990, 4, 1)))
        assert laid_over(seen, _child(date(1991, 4, 1)))["relationship"] == roles
        stepchild = laid_over(seen, _child(date(1990, 4, 1), ChildRelationship.STEPCHILD))
        assert sorted(_codes(stepchild)) == ["HPOWATT", "STPCHLD"]


def test_a_child_relationship_the_ehr_removed_is_added_beside_its_other_roles() -> None:
    seen = _with_roles(POWER_OF_ATTORNEY)
    assert not _unchanged(seen, _child(date(1990, 4, 1)))
    assert _codes(laid_over(seen, _child(date(1990, 4, 1)))) == ["HPOWATT", "NCHILD"]


def test_a_child_with_the_ehrs_other_roles_or_without_our_identifier_is_written_valid() -> None:
    """Found by a review of the guide: the merge kept the EHR's other roles of the child,
    which the profile's required binding refused, and a child the EHR recorded without our
    business identifier was written under our profile without it."""
    child_role = _child(date(1990, 4, 1))["relationship"][0]
    for roles in ([POWER_OF_ATTORNEY, child_role], [child_role, EMERGENCY_CONTACT]):
        assert validate(laid_over(_with_roles(*roles), _child(date(1991, 4, 1)))) == []
    only_roles_of_others = laid_over(_with_roles(POWER_OF_ATTORNEY), _child(date(1991, 4, 1)))
    assert validate({**only_roles_of_others, "relationship": [POWER_OF_ATTORNEY]}) != []

    ssin = {"system": SSIN, "value": "90040112345"}
    merged = laid_over({**_with_roles(child_role), "identifier": [ssin]}, _child(date(1991, 4, 1)))
    assert merged["identifier"][0] == ssin  # theirs first, as they were
    assert [i["system"] for i in merged["identifier"][1:]] == [
        terminology.identifier_system("child")
    ]
    assert validate(merged) == []


def test_an_element_only_ours_spells_out_is_a_change_unless_it_only_shows_a_code() -> None:
    # Before, every element only ours had was taken as agreeing: a period ours ends was
    # kept as the server's open one, and the end was lost.
    seen = _on_server(_flag(DV))
    ours = {**_flag(DV), "period": {**seen["period"], "end": "2026-03-09T10:00:00+00:00"}}

    assert not _unchanged(seen, ours)
    assert laid_over(seen, ours)["period"] == ours["period"]

    no_displays = _on_server(_flag(DV))
    for coding in no_displays["code"]["coding"]:
        coding.pop("display", None)
    assert _unchanged(no_displays, _flag(DV))  # a display only ours writes changes nothing


def _generated_narrative(text: str) -> dict[str, str]:
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{text}</p></div>',
    }


def test_a_merge_that_changes_a_child_drops_the_servers_narrative_of_the_old_values() -> None:
    """A nurse corrected the birth date of a child the EHR recorded, whose version had a
    narrative generated from its data: the merge wrote the new birthDate and kept the
    narrative, still 'generated' (R4: entirely generated from the content), still naming
    the old date, and the EHR's readers of the text saw the wrong child's age (found by
    review). A merge that changes anything leaves the narrative out (R4 makes it optional;
    the server may generate it anew); one that changes nothing keeps it."""
    seen = {
        **_child(date(2018, 3, 4)),
        "meta": {"versionId": "1"},
        "text": _generated_narrative("Anna Peeters, born 2018-03-04, child of the patient"),
    }

    corrected = laid_over(seen, _child(date(2019, 3, 4)))
    assert corrected["birthDate"] == "2019-03-04"
    assert "text" not in corrected
    assert laid_over(seen, _child(date(2018, 3, 4)))["text"] == seen["text"]


def _new_child(name: str, born: date, lives_with: LivesWith = LivesWith.NOT) -> Any:
    child = Child("x", name, born, ChildRelationship.NATURAL_CHILD, lives_with)
    identifier = mapping.identifier("child", "x")
    return mapping.child_related_person(child, patient_ref="Patient/1", identifier=identifier)


def test_what_she_and_someone_else_both_changed_of_a_new_child_is_told_apart() -> None:
    """The three-way check of a create-or-merge (``_changed_by_both``): she was shown
    ``shown``, an earlier save's new child; the record holds ``seen`` at delivery. An
    element only one of them changed merges; one both changed into different values is
    named; the server's way of writing a name (its ``use``) is no change."""
    born = date(2024, 5, 1)
    shown = _new_child("Mila Peeters", born)
    on_server = {**shown, "id": "5", "meta": {"versionId": "2"}}
    on_server["name"] = [{**shown["name"][0], "use": "official"}]

    def both(seen: dict[str, Any], ours: dict[str, Any]) -> list[str]:
        return _changed_by_both(seen, shown, _changed_from(shown, ours))

    renamed = {**on_server, "name": [{"text": "Mila Janssens", "use": "official"}]}
    lives_with = terminology.extension_url("lives-with")
    assert both(on_server, _new_child("Mila Claes", born)) == []  # only she changed it
    assert both(renamed, _new_child("Mila Peeters", date(2024, 5, 4))) == []  # apart
    assert both(renamed, _new_child("Mila Janssens", born)) == []  # the same change
    assert both(renamed, _new_child("Mila Claes", born)) == ["name"]
    moved_in = {
        **on_server,
        "extension": _new_child("Mila Peeters", born, LivesWith.PERMANENTLY)["extension"],
    }
    part_time = _new_child("Mila Peeters", born, LivesWith.PART_TIME)
    assert both(moved_in, part_time) == [f"extension {lives_with}"]
    assert both(on_server, part_time) == []
    relabelled = {**on_server, "relationship": _relabelled(on_server["relationship"])}
    relabelled["extension"] = _relabelled(on_server["extension"])
    stepchild = _new_child("Mila Peeters", born)
    stepchild["relationship"] = _child(born, ChildRelationship.STEPCHILD)["relationship"]
    assert both(relabelled, stepchild) == []  # the EHR's own words for the same codes
    assert both(relabelled, part_time) == []


def _relabelled(value: Any) -> Any:
    """``value`` with each coding's display as an EHR may word it."""
    if isinstance(value, list):
        return [_relabelled(item) for item in value]
    if isinstance(value, dict):
        return {k: "(EHR)" if k == "display" else _relabelled(v) for k, v in value.items()}
    return value
