"""The partner directory: the shipped Oost-Vlaanderen data and the loader's validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.partners import (
    Partner,
    PartnerDirectory,
    PartnerDirectoryError,
    Phone,
    load_default_directory,
    load_directory,
    parse_directory,
)
from service.protocol import ReferralTarget
from tests.support.partners import MINIMAL_DIRECTORY, with_entry


@pytest.fixture(scope="module")
def directory() -> PartnerDirectory:
    return load_default_directory()


def numbers(partner: Partner) -> list[tuple[str, str | None]]:
    return [(phone.number, phone.label) for phone in partner.phones]


def test_the_default_directory_is_oost_vlaanderen(directory: PartnerDirectory) -> None:
    assert directory.region == "oost-vlaanderen"
    assert len({p.id for p in directory.partners}) == len(directory.partners)


def test_the_pocket_card_numbers(directory: PartnerDirectory) -> None:
    """Every number of seed 002 (and the Opvoedingslijn of seed 001), as written there."""
    by_type = {t: directory.by_type(t) for t in ReferralTarget}
    (vk,) = by_type[ReferralTarget.VK]
    (ocj,) = by_type[ReferralTarget.OCJ]
    (kg,) = by_type[ReferralTarget.KIND_EN_GEZIN]
    (rtj,) = by_type[ReferralTarget.RTJ]
    (opvoedingslijn,) = by_type[ReferralTarget.OPVOEDINGSLIJN]
    assert numbers(vk) == [("09 216 73 30", None)]
    assert numbers(ocj) == [("02 243 51 07", None)]
    assert numbers(kg) == [("078 150 100", None)]
    assert numbers(rtj) == [("09 376 70 58", None)]
    assert numbers(opvoedingslijn) == [("078 15 00 10", None)]
    assert opvoedingslijn.region == "vlaanderen"
    assert opvoedingslijn.opening_hours is not None
    clbs = {p.name: numbers(p) for p in by_type[ReferralTarget.CLB]}
    assert clbs == {
        "Vrij CLB Zuid-Oost-Vlaanderen": [
            ("055 31 38 62", "Oudenaarde"),
            ("09 361 14 01", "Zottegem"),
        ],
        "GO! CLB": [("055 33 74 70", None)],
    }


def test_every_partner_type_has_an_entry(directory: PartnerDirectory) -> None:
    assert directory.types == set(ReferralTarget)


def test_entries_without_a_number_in_the_seeds_have_no_phone(
    directory: PartnerDirectory,
) -> None:
    without = {p.type for p in directory.partners if not p.phones}
    assert without == {
        ReferralTarget.PARKET,
        ReferralTarget.POLICE,
        ReferralTarget.CGG,
        ReferralTarget.CKG,
        ReferralTarget.FARA,
        ReferralTarget.ECHO,
        ReferralTarget.CAR,
        ReferralTarget.FIOLA,
        ReferralTarget.GP,
        ReferralTarget.CAW,
        ReferralTarget.OCMW,
        ReferralTarget.HUIS_VAN_HET_KIND,
        ReferralTarget.MUTUALITY,
    }


def test_lookups(directory: PartnerDirectory) -> None:
    vk = directory.get("vk-oost-vlaanderen")
    assert vk is not None
    assert vk.type is ReferralTarget.VK
    assert vk.phones[0].tel_uri == "tel:+3292167330"
    assert directory.get("nope") is None
    assert [p.id for p in directory.by_type(ReferralTarget.CLB)] == [
        "vrij-clb-zuid-oost-vlaanderen",
        "go-clb-oudenaarde",
    ]


def test_phone_tel_uri() -> None:
    assert Phone("078 150 100").tel_uri == "tel:+3278150100"
    assert Phone("055 31 38 62", "Oudenaarde").tel_uri == "tel:+3255313862"
    assert Phone("101").tel_uri == "tel:101"  # a short number is dialled as it is


def test_a_belgian_short_number_is_a_phone_of_the_directory() -> None:
    """Found by review: the police (101), 112 or the violence helpline (1712) could not be
    listed; only the national form was read."""
    for short in ("101", "112", "1712"):
        partner = parse_directory(with_entry(phones=[{"number": short}])).get("vk-test")
        assert partner is not None
        assert [phone.number for phone in partner.phones] == [short]
    for not_a_number in ("10", "17123", "2101", "1 01"):
        with pytest.raises(PartnerDirectoryError, match="is not a Belgian phone number"):
            parse_directory(with_entry(phones=[{"number": not_a_number}]))


# --- validation -----------------------------------------------------------------------


def test_a_minimal_file_parses() -> None:
    directory = parse_directory(MINIMAL_DIRECTORY)
    assert directory.region == "test-region"
    assert [p.region for p in directory.partners] == ["test-region", "elsewhere"]
    assert directory.partners[0].phones == (Phone("09 216 73 30", "Gent"),)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "vkk"}, "entry 1 ('vk-test'): unknown type 'vkk'"),
        ({"name": ""}, "entry 1 ('vk-test'): 'name' must be non-empty text"),
        ({"name": None}, "entry 1 ('vk-test'): 'name' is missing"),
        ({"id": "VK Test"}, "entry 1 ('VK Test'): id must be lower-case"),
        ({"id": "vk-" + "x" * 62}, "id must be at most 64 characters"),
        ({"phone": "09 216 73 30"}, "entry 1 ('vk-test'): unknown field(s) phone"),
        ({"phones": "09 216 73 30"}, "entry 1 ('vk-test'): 'phones' must be a list"),
        ({"phones": [{"number": 92167330}]}, "phone 1: 'number' must be text"),
        ({"phones": [{"number": "9 216 73 30"}]}, "is not a Belgian phone number"),
        ({"phones": [{"number": "09 216 73"}]}, "is not a Belgian phone number"),
        ({"phones": [{"number": "09 216 73 30", "lable": "x"}]}, "unknown field(s) lable"),
        ({"website": "www.example.be"}, "website must start with https://"),
        ({"email": "nobody"}, "is not an e-mail address"),
    ],
)
def test_a_bad_entry_is_named_in_the_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PartnerDirectoryError) as error:
        parse_directory(with_entry(**changes), source="partners.yaml")
    assert str(error.value).startswith("partners.yaml: ")
    assert message in str(error.value)


def test_an_id_as_long_as_step_6_takes_is_read() -> None:
    """Step 6 names its partner by a code of at most 64 characters (service.text.Code)."""
    longest = "vk-" + "x" * 61
    assert parse_directory(with_entry(id=longest)).get(longest) is not None


def test_a_duplicate_id_is_refused() -> None:
    data = copy.deepcopy(MINIMAL_DIRECTORY)
    data["entries"][1]["id"] = "vk-test"
    with pytest.raises(PartnerDirectoryError, match=r"entry 2 \('vk-test'\): the id is used twice"):
        parse_directory(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping with 'region' and 'entries'"),
        ({"region": "x", "entries": []}, "'entries' must be a non-empty list"),
        ({"entries": MINIMAL_DIRECTORY["entries"]}, "'region' is missing"),
        ({**MINIMAL_DIRECTORY, "extra": 1}, "unknown top-level field(s) extra"),
        ({"region": "x", "entries": ["vk"]}, "entry 1: expected a mapping"),
    ],
)
def test_a_bad_file_structure_is_refused(data: object, message: str) -> None:
    with pytest.raises(PartnerDirectoryError) as error:
        parse_directory(data)
    assert message in str(error.value)


def test_load_directory_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump(MINIMAL_DIRECTORY), encoding="utf-8")
    assert load_directory(path) == parse_directory(MINIMAL_DIRECTORY)


def test_load_directory_reports_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text("region: [unclosed", encoding="utf-8")
    with pytest.raises(PartnerDirectoryError, match="not valid YAML"):
        load_directory(path)


def test_an_unquoted_number_that_yaml_reads_as_an_integer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(
        "region: x\nentries:\n  - id: a\n    type: vk\n    name: A\n"
        # only octal digits: YAML 1.1 reads an unquoted 022435107 as an integer
        "    phones:\n      - number: 022435107\n",
        encoding="utf-8",
    )
    with pytest.raises(PartnerDirectoryError, match="quote it in YAML"):
        load_directory(path)
