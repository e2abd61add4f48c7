"""Configuration files: problems point at the YAML line; the audit diff masks secrets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from service.admin.changes import Change, diff
from service.admin.config import (
    ConfigurationError,
    ConfigurationFile,
    Problem,
    export_yaml,
    parse_yaml,
    read_yaml,
)
from service.admin.partners_io import import_csv
from service.tenant_config import (
    EhrRegistration,
    HookSettings,
    PlanSettings,
    TenantConfiguration,
    default_partners,
)


def problems_or_none(call: Callable[[], object]) -> tuple[Problem, ...]:
    """The problems of a refused input; () when it was accepted. Any other error fails."""
    try:
        call()
    except ConfigurationError as error:
        return error.problems
    return ()


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigurationError) as caught:
        parse_yaml(text)
    return [str(problem) for problem in caught.value.problems]


GOOD = """\
name: AZ Gent
registrations:
  - id: epd
    name: EPD
    fhir_base_url: https://epd.example/fhir
    client_id: kindreflex
hooks:
  enabled: [encounter-start]
  adult_age: 18
"""


def test_a_good_file_is_read() -> None:
    config = parse_yaml(GOOD)
    assert config.registrations[0].client_auth == "private_key_jwt"
    assert config.hooks.enabled == ["encounter-start"]


def test_a_syntax_error_names_its_line() -> None:
    broken = GOOD.replace("  adult_age: 18", "  adult_age: [18")
    (problem,) = problems_of(broken)
    assert problem.startswith("line 9: not valid YAML: expected ',' or ']'")


def test_an_alias_is_refused_before_anything_expands_it() -> None:
    """A "billion laughs": nine levels of nine aliases are 9**9 strings once stored."""
    levels = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9)
    ]
    bomb = GOOD.replace("hooks:", "registrations_note:\n" + "\n".join(levels) + "\nhooks:")
    (problem,) = problems_of(bomb)  # line 9: the first alias, l1's
    assert problem == (
        "line 9: not valid YAML: an alias (*name) is not accepted here: write the value out"
    )
    anchored = GOOD.replace("name: AZ Gent", "name: &hospital AZ Gent")
    assert parse_yaml(anchored).name == "AZ Gent"  # an anchor alone is harmless


def test_a_key_written_twice_is_refused_with_both_lines() -> None:
    """YAML forbids it; PyYAML kept the last silently (found by review)."""
    twice = GOOD.replace("  adult_age: 18", "  adult_age: 18\n  adult_age: 17")
    assert problems_of(twice) == [
        "line 10: not valid YAML: the key 'adult_age' is written twice in one mapping "
        "(first on line 9); a key may be written once: keep one of them"
    ]
    flow = GOOD.replace("  adult_age: 18", "  card_wording: {nl: {}, nl: {}}")
    assert problems_of(flow)[0].startswith("line 9: not valid YAML: the key 'nl' is written twice")
    inside_a_list = GOOD.replace("    client_id: kindreflex", "    name: X\n    client_id: k")
    assert problems_of(inside_a_list)[0].startswith("line 6: not valid YAML: the key 'name' is")
    merged = GOOD.replace("name: AZ Gent", "name: AZ Gent\n<<: {name: AZ Brugge}")
    assert parse_yaml(merged).name == "AZ Gent"  # YAML's merge: the mapping's own key wins


def test_an_unknown_field_names_its_line_and_path() -> None:
    typo = GOOD.replace("    client_id: kindreflex", "    client_id: kindreflex\n    clientid: x")
    assert problems_of(typo) == ["line 7: registrations[0].clientid: unknown field"]


def test_a_wrong_type_names_its_line_and_path() -> None:
    wrong = GOOD.replace("adult_age: 18", "adult_age: eighteen")
    (problem,) = problems_of(wrong)
    assert problem.startswith("line 9: hooks.adult_age: Input should be a valid integer")


def test_a_value_that_cannot_be_read_names_its_line() -> None:
    impossible = GOOD.replace("adult_age: 18", "adult_age: 2025-02-30")
    assert problems_of(impossible) == [
        "line 9: not valid YAML: the value '2025-02-30' cannot be read "
        "(day is out of range for month)"
    ]
    not_a_number = GOOD.replace("adult_age: 18", "adult_age: !!int achttien")
    (problem,) = problems_of(not_a_number)
    assert problem.startswith("line 9: not valid YAML: the value 'achttien' cannot be read")


@pytest.mark.parametrize(
    "number", ["0x" + "f" * 4000, "0" + "7" * 5000, "0b" + "1" * 5000, "9" * 4000, "0x1" + "0" * 16]
)
def test_a_number_too_large_for_any_setting_names_its_line(number: str) -> None:
    """YAML's hexadecimal and octal integers have no digit limit: one of thousands of
    digits passed, and saying what was wrong with it was a 500 (found by fuzzing)."""
    huge = GOOD.replace("adult_age: 18", f"adult_age: {number}")
    (problem,) = problems_of(huge)
    assert problem.startswith("line 9: not valid YAML:"), problem
    assert len(problem) < 200


def test_half_a_character_names_its_line() -> None:
    """YAML's "\\ud800" escape is a lone UTF-16 surrogate: it passed validation, and the
    database write failed, a 500 on the API and the screen (the typed file lost) and a
    traceback from kindreflex config import (found by review)."""
    for half in ("\\ud800", "\\udfff"):
        halved = GOOD.replace("name: EPD", f'name: "EPD {half}"')
        assert problems_of(halved) == [
            "line 4: not valid YAML: the value cannot be read: it holds half a character "
            "(an escape \\ud800 to \\udfff without its other half)"
        ]
    whole = GOOD.replace("name: EPD", 'name: "EPD \\U0001f3e5 🏥"')  # YAML's 32-bit escape
    assert parse_yaml(whole).registrations[0].name == "EPD \U0001f3e5 \U0001f3e5"


def test_yaml_nested_a_hundred_thousand_deep_is_a_problem_not_a_crash() -> None:
    assert problems_of("name: AZ\nhooks: " + "[" * 100_000) == ["not valid YAML: nested too deeply"]


def test_a_missing_field_points_at_its_parent() -> None:
    missing = GOOD.replace("    client_id: kindreflex\n", "")
    assert problems_of(missing) == ["line 3: registrations[0].client_id: Field required"]


def test_every_problem_is_reported_at_once() -> None:
    two = GOOD.replace("adult_age: 18", "adult_age: 99").replace("[encounter-start]", "[x]")
    lines = [problem.split(":")[0] for problem in problems_of(two)]
    assert lines == ["line 8", "line 9"]


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of("- just\n- a list\n") == ["line 1: expected a mapping with at least 'name'"]


def test_export_leaves_secrets_out_and_reads_back() -> None:
    registration = EhrRegistration.model_validate(
        {"id": "epd", "name": "EPD", "fhir_base_url": "https://epd.example/fhir",
         "client_id": "k", "client_auth": "client_secret_basic", "client_secret": "s3cr3t"}
    )  # fmt: skip
    config = TenantConfiguration(
        name="AZ", registrations=[registration], hooks=HookSettings(adult_age=16)
    )
    text = export_yaml(config)
    assert "s3cr3t" not in text
    assert "client_secret:" not in text
    again = parse_yaml(text)
    assert again.model_copy(update={"registrations": config.registrations}) == config
    assert read_yaml(text).config == again  # the export writes every part an import needs


def test_a_file_to_import_names_the_parts_it_leaves_out_with_its_other_problems() -> None:
    """An import replaces the whole configuration: a part left out is refused, not
    emptied or reset to its default (found by review); the file's other problems too."""
    wrong = GOOD.replace("adult_age: 18", "adult_age: 99")
    with pytest.raises(ConfigurationError) as caught:
        read_yaml(wrong)
    missing, too_old = caught.value.problems
    assert str(missing).startswith("the file leaves out partners, plan: an import replaces")
    assert (missing.line, [r.code for r in missing.reasons]) == (
        None,
        ["admin.problem.parts-missing"],
    )
    assert str(too_old).startswith("line 9: hooks.adult_age: ")
    directory = default_partners().model_dump(mode="json", exclude_none=True)
    whole = GOOD + yaml.safe_dump({"partners": directory}) + "plan: {}\n"
    assert read_yaml(whole).config.plan == PlanSettings()  # a part written empty: emptied


def test_an_export_names_its_version_and_a_file_to_import_reads_it_back() -> None:
    config = TenantConfiguration(name="AZ")
    text = export_yaml(config, 7)
    assert "\nversion: 7\nname: AZ\n" in text
    assert read_yaml(text) == ConfigurationFile(config, exported_from=7)
    assert read_yaml(export_yaml(config)) == ConfigurationFile(config, exported_from=None)
    for wrong, reason in (("0", "too-small"), ("zeven", "not-integer"), ("true", "not-integer")):
        with pytest.raises(ConfigurationError) as caught:
            read_yaml(text.replace("version: 7", f"version: {wrong}"))
        (problem,) = caught.value.problems
        line = text.splitlines().index("version: 7") + 1
        assert (problem.line, problem.path) == (line, "version")
        assert [r.code for r in problem.reasons] == [f"admin.problem.{reason}"]


def test_diff_lists_changed_paths_by_id_and_masks_secrets() -> None:
    old = {"registrations": [{"id": "a", "client_secret": "one", "name": "A"}], "hooks": {"x": 1}}
    new = {"registrations": [{"id": "a", "client_secret": "two", "name": "A"},
                             {"id": "b", "client_secret": "three"}], "hooks": {"x": 2}}  # fmt: skip
    assert diff(old, new) == [
        Change("registrations[a].client_secret", "***", "***"),
        Change("registrations[b]", None, {"id": "b", "client_secret": "***"}),
        Change("hooks.x", 1, 2),
    ]
    assert diff(new, new) == []


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab: -[]{}\n\"'#&*!|>0x9.,")), max_size=80))
def test_any_text_is_a_configuration_or_a_configuration_error(text: str) -> None:
    problems = problems_or_none(lambda: parse_yaml("name: AZ\n" + text))
    assert all(p.line is None or p.line >= 1 for p in problems)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list('id,type,name,phones\n"(); 09vk-x')), max_size=80)
)
def test_any_csv_is_a_directory_or_rows_with_reasons(text: str) -> None:
    problems = problems_or_none(lambda: import_csv(text, "oost-vlaanderen"))
    assert all(str(p) for p in problems)
