"""The admin screen's refusals in the page's language, each next to the field it concerns.

A broken YAML file, a broken partner CSV and a configuration that parses but breaks the
rules are refused: the sentence comes from the catalogues (Dutch by default, French with
``Accept-Language``), the technical data (line, path, value) inside it; the field says
``aria-invalid="true"`` and is described by the message; the error summary links to the
field; nothing is saved. The real app on SQLite and PostgreSQL, nothing mocked.
"""

from __future__ import annotations

import csv
import html
import json
import re
from datetime import timedelta

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm
from pydantic import SecretStr
from sqlalchemy import select, update

from service.admin import access
from service.admin.config import export_yaml
from service.db.base import Database, utcnow
from service.db.models import AdminSession
from service.outbox import DeliveryState
from service.protocol import Step
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import DEFAULT_SCOPES, CdsIssuer, TenantConfiguration
from smart_app.errors import FREE_TEXT
from tests.support.admin import (
    DEPLOYMENT_KEY,
    Hospital,
    admin_app,
    assert_tied,
    bearer,
    case_on,
    client,
    field_tag,
    gent,
    screen_sign_in,
    stored_gent,
    undelivered_save,
)
from tests.support.cds import EHR_KEY

__all__ = ["client", "gent"]  # the admin tests' fixtures (tests/support/admin)

FRENCH = {"Accept-Language": "fr-BE,fr;q=0.9"}


def registration_form(hidden: dict[str, str], **changes: str) -> dict[str, str]:
    """The registration form as the screen posts it: a new EHR "nieuw", with ``changes``."""
    return {
        **hidden, "id": "nieuw", "name": "Nieuw EPD", "fhir_base_url": "https://n.example/fhir",
        "client_id": "kindreflex", "client_auth": "private_key_jwt", "scopes": DEFAULT_SCOPES,
        "frame_origins": "", "cds_issuers": "", "default_language": "nl", **changes,
    }  # fmt: skip


def _signed_in(
    client: TestClient, database: Database, gent: Hospital
) -> tuple[dict[str, str], TenantContext]:
    """An admin of AZ Gent signed in on the screen: the forms' hidden fields, and the
    configuration as stored before anything is sent."""
    hidden = screen_sign_in(client, database, gent)
    return hidden, stored_gent(database)


def _posted_yaml(
    client: TestClient,
    hidden: dict[str, str],
    text: str,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """The configuration form sent with ``text`` in its YAML box."""
    answer: httpx.Response = client.post(
        "/admin/config", data={**hidden, "yaml": text}, headers=headers
    )
    return answer


def _assert_nothing_saved(database: Database, before: TenantContext) -> None:
    """AZ Gent's stored configuration is still ``before``: same version, same content."""
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)


def test_a_broken_yaml_file_is_refused_in_the_pages_language_next_to_the_text(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden, before = _signed_in(client, database, gent)
    broken = export_yaml(before.config).replace("adult_age: 18", "adult_age: [18")

    dutch = _posted_yaml(client, hidden, broken)
    assert dutch.status_code == 422
    assert "<title>Fout: " in dutch.text  # a screen reader says so as the page opens
    message = assert_tied(dutch.text, "textarea", "yaml")
    assert re.fullmatch(
        r"Fout: Regel \d+: Dit is geen geldige YAML \(de YAML-lezer meldt: .+\)\.", message
    )
    assert "not valid YAML" not in dutch.text
    # what was typed comes back to be corrected, not the configuration in force
    assert "adult_age: [18" in dutch.text
    # the script that moves the focus to the summary, as on the case pages, is served
    script = re.search(r'<script src="([^"]+casefile\.js[^"]*)"', dutch.text)
    assert script is not None
    assert client.get(script.group(1)).status_code == 200

    french = _posted_yaml(client, hidden, broken, FRENCH)
    assert french.status_code == 422
    assert '<html lang="fr">' in french.text
    message = assert_tied(french.text, "textarea", "yaml")
    assert re.fullmatch(
        r"Erreur : Ligne \d+ : Ce n&#39;est pas du YAML valide \(le lecteur YAML signale : .+\)\.",
        message,
    )
    _assert_nothing_saved(database, before)


def test_a_key_written_twice_in_the_yaml_box_is_refused_with_both_lines_in_the_pages_language(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """PyYAML kept the last of two `adult_age:` lines silently; now the screen refuses the
    text, the line of the second and of the first in its own words (found by review)."""
    hidden, before = _signed_in(client, database, gent)
    exported = export_yaml(before.config)
    twice = exported.replace("  adult_age: 18\n", "  adult_age: 18\n  adult_age: 16\n")
    first = exported.splitlines().index("  adult_age: 18") + 1

    dutch = _posted_yaml(client, hidden, twice)
    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "textarea", "yaml")
    assert message == (
        f"Fout: Regel {first + 1}: De sleutel adult_age staat twee keer in dezelfde mapping (de "
        f"eerste keer op regel {first}); een sleutel mag er maar één keer staan. Houd er één "
        "van over."
    )
    french = _posted_yaml(client, hidden, twice, FRENCH)
    assert "La clé <code>adult_age</code> figure deux fois" in french.text
    _assert_nothing_saved(database, before)


def test_a_yaml_text_that_leaves_out_a_part_is_refused_in_the_pages_language(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The box's text replaces the whole configuration: a part deleted from it was emptied
    or reset to its default, and the screen said "saved" (found by review)."""
    hidden, before = _signed_in(client, database, gent)
    exported = export_yaml(before.config)
    without = exported[: exported.index("partners:\n")] + exported[exported.index("plan:\n") :]

    dutch = _posted_yaml(client, hidden, without)
    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "textarea", "yaml")
    assert message.startswith(
        "Fout: Het bestand laat partners weg. Een import vervangt de hele configuratie"
    )
    assert message.endswith("leeg: registrations: [].")
    french = _posted_yaml(client, hidden, without, FRENCH)
    assert "Le fichier omet <code>partners</code>." in french.text
    _assert_nothing_saved(database, before)


def test_a_yaml_text_of_a_version_no_longer_in_force_is_refused_saying_so(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The box shows the configuration with the version it is; a text of an earlier
    version pasted in (an export kept aside) would undo what was changed since: refused,
    in the page's language, the text kept."""
    hidden, before = _signed_in(client, database, gent)
    page = client.get("/admin").text
    assert f"version: {before.version}\nname: " in html.unescape(page)
    old = export_yaml(before.config, before.version).replace("adult_age: 18", "adult_age: 16")
    newer = before.config.hooks.model_copy(update={"adult_age": 20})
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    tenants.save(gent.slug, before.config.model_copy(update={"hooks": newer}), actor="An")
    now = stored_gent(database)

    refused = client.post("/admin/config", data={**hidden, "version": str(now.version),
                                                 "yaml": old})  # fmt: skip

    assert refused.status_code == 409
    (message,) = _messages(refused.text)
    assert message == (
        f"Deze tekst werd geëxporteerd uit versie {before.version} van de configuratie; intussen "
        f"geldt versie {now.version}. Er werd niets opgeslagen: de tekst zou ongedaan maken wat "
        "sindsdien gewijzigd werd (zie Wijzigingen). Begin opnieuw van de configuratie zoals ze "
        "nu is, of haal de regel version weg om de configuratie toch door deze tekst te "
        "vervangen."
    )
    assert "adult_age: 16" in refused.text  # the text kept
    after = stored_gent(database)
    assert (after.version, after.config.hooks.adult_age) == (now.version, 20)


def test_a_schema_invalid_configuration_names_the_path_and_value_in_a_translated_sentence(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden, before = _signed_in(client, database, gent)
    invalid = export_yaml(before.config).replace("adult_age: 18", "adult_age: 40")

    french = _posted_yaml(client, hidden, invalid, FRENCH)
    assert french.status_code == 422
    message = assert_tied(french.text, "textarea", "yaml")
    assert re.fullmatch(
        r"Erreur : Ligne \d+, hooks\.adult_age : Doit valoir au plus 25 \(donné : 40\)\.", message
    )
    # the path and the value are data, shown as code inside the sentence
    assert "<code>hooks.adult_age</code>" in french.text
    assert "<code>40</code>" in french.text
    assert "less than or equal" not in french.text

    dutch = _posted_yaml(client, hidden, invalid)
    message = assert_tied(dutch.text, "textarea", "yaml")
    assert re.fullmatch(
        r"Fout: Regel \d+, hooks\.adult_age: Mag hoogstens 25 zijn \(gegeven: 40\)\.", message
    )

    # a form's field: the hooks' adult age typed as a word
    form = {**hidden, "adult_age": "zestien", "hook-patient-view": "on"}
    typed = client.post("/admin/hooks", data=form, headers=FRENCH)
    assert typed.status_code == 422
    message = assert_tied(typed.text, "input", "adult_age")
    assert message == (
        "Erreur : Adulte à partir de (ans) : Doit être un nombre entier (donné : zestien)."
    )
    assert 'aria-invalid="true"' not in field_tag(typed.text, "textarea", "yaml")

    # a registration's field: a new registration that needs a secret and has none
    registration = registration_form(hidden, client_auth="client_secret_basic")
    refused = client.post("/admin/registrations", data=registration, headers=FRENCH)
    assert refused.status_code == 422
    message = assert_tied(refused.text, "input", "new-client_secret")
    assert message == (
        "Erreur : Secret client (vide = inchangé) : client_secret_basic exige un secret client "
        "(ou choisissez private_key_jwt)."
    )

    _assert_nothing_saved(database, before)


def test_a_broken_partner_csv_is_refused_per_row_next_to_the_file_input(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden, before = _signed_in(client, database, gent)
    exported = client.get("/admin/api/partners?format=csv").text
    lines = exported.splitlines()
    bad_rows = "\n".join([lines[0], lines[1].replace(",", ",,", 1), lines[1]]).encode()
    bad_header = "\n".join([lines[0] + ",fax", *lines[1:]]).encode()

    dutch = client.post("/admin/partners", data=hidden, files={"file": ("p.csv", bad_rows)})
    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "input", "partners-file")
    assert message.startswith("Fout: Rij 2 van het bestand: ")
    assert "Rij 3 van het bestand: " not in message  # row 3 is right: only row 2 is named
    assert "row 2" not in dutch.text

    french = client.post(
        "/admin/partners", data=hidden, files={"file": ("p.csv", bad_header)}, headers=FRENCH
    )
    assert french.status_code == 422
    message = assert_tied(french.text, "input", "partners-file")
    assert message == "Erreur : Ligne 1 du fichier : Colonne inconnue : fax."
    assert "<code>fax</code>" in french.text
    assert "unknown column" not in french.text

    _assert_nothing_saved(database, before)
    # the same form takes a good file (the screen read no uploaded file before: the form
    # holds Starlette's UploadFile, not FastAPI's subclass it was checked against)
    good = "\n".join([*lines[:2]]).encode()
    saved = client.post(
        "/admin/partners", data=hidden, files={"file": ("p.csv", good)}, follow_redirects=False
    )
    # post/redirect/get: the saved page, reloaded, sent the form again and was told the
    # configuration had changed meanwhile (found by review)
    assert saved.status_code == 303
    assert re.fullmatch(r"/admin\?saved=\d+", saved.headers["location"])
    assert 'id="saved"' in client.get(saved.headers["location"]).text
    assert 'id="saved"' not in client.get("/admin").text
    assert [e.id for e in stored_gent(database).config.partners.entries] == [lines[1].split(",")[0]]


def test_the_api_keeps_its_english_operation_outcome(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The screen's translation does not change the API's documented answer."""
    screen_sign_in(client, database, gent)
    yaml_text = export_yaml(stored_gent(database).config).replace("adult_age: 18", "adult_age: 40")
    token, _ = access.issue_bootstrap_token(database, gent.id)
    issued = access.redeem_bootstrap_token(database, gent.id, token, "API")
    refused = client.put(
        "/admin/api/config.yaml",
        content=yaml_text.encode(),
        headers={"Authorization": f"Bearer {issued.token}", **FRENCH},
    )
    assert refused.status_code == 422
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["hooks.adult_age"]
    assert re.fullmatch(
        r"line \d+: hooks.adult_age: Input should be less than .*25", issue["diagnostics"]
    )


def _broken_by_our_validators(config: TenantConfiguration) -> str:
    """The configuration as YAML, broken against the rules of our own validators (not
    pydantic's): a card summary's placeholder, an override reason, a plan choice, an
    issuer's JWK Set and a partner's website."""
    document = config.model_dump(mode="json")
    document["hooks"]["card_wording"] = {"nl": {"warning_summary": "Let op {kinderen}"}}
    document["hooks"]["override_reasons"] = ["not-now", "geen-tijd"]
    document["plan"]["choices"] = {"lives-with/hond": {"title": {"nl": "Hond"}}}
    document["registrations"][0]["cds_issuers"] = [{"iss": "https://epd.example", "jwks": {}}]
    document["partners"]["entries"][1]["website"] = "www.example.be"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _messages(page: str) -> list[str]:
    """The error summary's sentences, tags removed."""
    summary = page[page.index('id="problems"') :]
    summary = summary[: summary.index("</div>")]
    return [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", summary)]


def test_our_own_validators_refusals_are_translated_on_the_screen(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden, before = _signed_in(client, database, gent)
    broken = _broken_by_our_validators(before.config)

    dutch = _posted_yaml(client, hidden, broken)
    assert dutch.status_code == 422
    assert "<title>Fout: " in dutch.text  # a screen reader says so as the page opens
    assert_tied(dutch.text, "textarea", "yaml")
    said = " | ".join(_messages(dutch.text))
    for sentence in (
        r"Regel \d+, registrations\[0\]\.cds_issuers\[0\]\.jwks: Een JWK Set is een "
        r"JSON-object waarvan &#34;keys&#34; een lijst van JWK&#39;s is\.",
        r"Regel \d+, hooks\.override_reasons: Onbekende reden\(en\) om de kaart niet te "
        r"volgen: geen-tijd; mogelijk: already-done, .*\.",
        r"Regel \d+, hooks\.card_wording: nl\.warning_summary: Alleen de placeholder "
        r"\{reasons\} mag gebruikt worden, niet \{kinderen\}\.",
        r"Regel \d+, partners: entries\[1\]\.website: www\.example\.be is geen website: die "
        r"begint met https:// of http://\.",
        r"Regel \d+, plan\.choices: lives-with/hond is geen keuze van het plan "
        r"\(vorm: &lt;keuzeset&gt;/&lt;code&gt;\)\.",
    ):
        assert re.search(sentence, said), said
    # the data inside the sentences are code, and none of our English words is left
    assert "<code>{kinderen}</code>" in dutch.text
    assert "<code>nl.warning_summary</code>" in dutch.text
    for english in ("may be used", "unknown override", "not a choice", "must start with"):
        assert english not in dutch.text
    assert "JWK Set is a JSON object" not in dutch.text

    french = _posted_yaml(client, hidden, broken, FRENCH)
    assert french.status_code == 422
    said = " | ".join(_messages(french.text))
    for sentence in (
        r"Ligne \d+, hooks\.card_wording : nl\.warning_summary: Seul l&#39;espace réservé "
        r"\{reasons\} peut être utilisé, pas \{kinderen\}\.",
        r"Ligne \d+, hooks\.override_reasons : Motif\(s\) inconnu\(s\) de ne pas suivre la "
        r"carte : geen-tijd ; possibles : already-done, .*\.",
        r"Ligne \d+, partners : entries\[1\]\.website: www\.example\.be n&#39;est pas un site "
        r"web : il commence par https:// ou http://\.",
        r"Ligne \d+, plan\.choices : lives-with/hond n&#39;est pas un choix du plan",
    ):
        assert re.search(sentence, said), said

    _assert_nothing_saved(database, before)


def test_a_partner_row_that_breaks_the_directorys_rules_names_its_column_in_dutch(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden = screen_sign_in(client, database, gent)
    lines = client.get("/admin/api/partners?format=csv").text.splitlines()
    header = lines[0].split(",")
    row = next(csv.reader([lines[1]]))
    row[header.index("phones")] = "09 216 73"
    bad = "\n".join([lines[0], ",".join(f'"{cell}"' for cell in row)]).encode()

    dutch = client.post("/admin/partners", data=hidden, files={"file": ("p.csv", bad)})
    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "input", "partners-file")
    assert message == (
        "Fout: Rij 2 van het bestand: phones.0.number: 09 216 73 is geen Belgisch "
        "telefoonnummer (een 0 en dan 8 of 9 cijfers, of een kort nummer zoals 101 of 1712)."
    )


def test_a_partner_id_longer_than_step_6_takes_is_refused_in_dutch(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Step 6 names its partner by a code of at most 64 characters: a longer id could be
    listed but never chosen, so the import refuses it like the directory's other rules."""
    hidden, before = _signed_in(client, database, gent)
    lines = client.get("/admin/api/partners?format=csv").text.splitlines()
    row = next(csv.reader([lines[1]]))
    row[lines[0].split(",").index("id")] = "vk-" + "x" * 62
    bad = "\n".join([lines[0], ",".join(f'"{cell}"' for cell in row)]).encode()

    dutch = client.post("/admin/partners", data=hidden, files={"file": ("p.csv", bad)})
    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "input", "partners-file")
    assert message == "Fout: Rij 2 van het bestand: id: Mag hoogstens 64 tekens lang zijn."
    _assert_nothing_saved(database, before)


def test_the_api_says_our_own_validators_refusals_in_english_as_before(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The codes are for the screen; the API's OperationOutcome keeps its English words."""
    token, _ = access.issue_bootstrap_token(database, gent.id)
    issued = access.redeem_bootstrap_token(database, gent.id, token, "API")
    refused = client.put(
        "/admin/api/config.yaml",
        content=_broken_by_our_validators(stored_gent(database).config).encode(),
        headers={"Authorization": f"Bearer {issued.token}", **FRENCH},
    )
    assert refused.status_code == 422
    said = {issue["expression"][0]: issue["diagnostics"] for issue in refused.json()["issue"]}
    assert re.fullmatch(
        r"line \d+: hooks\.card_wording: card_wording\.nl\.warning_summary: only the "
        r"placeholder \{reasons\} may be used \(unknown placeholder \{kinderen\}\)",
        said["hooks.card_wording"],
    )
    assert re.fullmatch(
        r"line \d+: hooks\.override_reasons: unknown override reason\(s\) \['geen-tijd'\]; "
        r"known: \[.*\]",
        said["hooks.override_reasons"],
    )
    assert re.fullmatch(
        r"line \d+: plan\.choices: 'lives-with/hond' is not a choice of the plan "
        r"\(<choice set>/<code>\)",
        said["plan.choices"],
    )
    assert re.fullmatch(
        r"line \d+: partners: partners: entry 2 \('[a-z0-9-]+'\): website must start with "
        r"https:// or http://",
        said["partners"],
    )
    assert re.fullmatch(
        r"line \d+: registrations\[0\]\.cds_issuers\[0\]\.jwks: a JWK Set is a JSON object "
        r'whose "keys" is a list of JWKs',
        said["registrations[0].cds_issuers[0].jwks"],
    )


def _plan_legends(page: str) -> list[str]:
    """The legends of the plan section's fieldsets: which step each set of fields words."""
    section = page[page.index('<section id="plan">') :]
    section = section[: section.index("</section>")]
    return re.findall(r"<legend>(.*?)</legend>", section)


def test_the_plan_section_names_each_step_in_the_screens_language(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The plan's fields were headed by the steps' English names ("4. Check for concern and
    willingness") on the Dutch and the French screen alike."""
    screen_sign_in(client, database, gent)

    dutch = _plan_legends(client.get("/admin").text)
    assert len(dutch) == 6
    assert dutch[0] == "Stap 1: voer een positief gesprek over de kinderen en het ouderschap"
    assert dutch[3] == "Stap 4: ga na of er sprake is van verontrusting en bereidheid"

    french = _plan_legends(client.get("/admin", headers=FRENCH).text)
    assert french[5] == "Étape 6 : impliquer un service mandaté"


def test_the_default_language_choices_name_each_language(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The "default language" choices showed the bare codes nl, fr and en; each now reads
    as the language's own name, on the Dutch and the French screen alike."""
    screen_sign_in(client, database, gent)

    for headers in ({}, FRENCH):
        page = client.get("/admin", headers=headers).text
        select = re.search(r'<select id="[^"]*-default_language"[^>]*>(.*?)</select>', page, re.S)
        assert select is not None
        options = re.findall(r'<option value="(\w+)"[^>]*>([^<]*)</option>', select.group(1))
        assert options == [("nl", "Nederlands"), ("fr", "Français"), ("en", "English")]


def test_each_form_of_the_admin_screen_sends_its_version_once(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """ "Test the connection" (and the registration's save and delete) sent ``version`` twice,
    two hidden fields with the same name: each form now sends each hidden field once."""
    screen_sign_in(client, database, gent)

    page = client.get("/admin").text
    forms = re.findall(r'<form method="post" action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
    assert any(action.endswith("/test") for action, _ in forms)
    for action, body in forms:
        hidden = re.findall(r'<input type="hidden" name="([^"]+)"', body)
        assert len(hidden) == len(set(hidden)), (action, hidden)


def test_saving_a_registration_on_the_screen_keeps_what_its_form_does_not_show(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The form shows an issuer's iss and jku only: a save of it (here a new name) rebuilt
    the issuers without their configured keys and allowed CDS client ids, so the issuer
    could verify no call and any client id was let in (found by review). Its own redirect
    URI, which the form does not show, is kept too: dropped, the EHR's answers would come
    to a URI the launch no longer asks for."""
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    current = tenants.get(gent.slug)
    (registration,) = current.config.registrations
    issuer = CdsIssuer(
        iss="https://az-gent.example", jwks={"keys": [EHR_KEY.public_jwk()]}, subjects=["cds-1"]
    )
    with_keys = registration.model_copy(update={"cds_issuers": [issuer], "own_redirect_uri": True})
    tenants.save(gent.slug, current.config.model_copy(update={"registrations": [with_keys]}), "t")
    hidden = screen_sign_in(client, database, gent)
    form = registration_form(
        hidden,
        id="ehr",
        name="EPD (nieuw)",
        fhir_base_url=registration.fhir_base_url,
        client_auth="client_secret_basic",
        cds_issuers="https://az-gent.example\nhttps://other.example https://other.example/jwks",
    )

    saved = client.post("/admin/registrations", data=form, follow_redirects=False)

    assert saved.status_code in (200, 303), saved.text
    (stored,) = stored_gent(database).config.registrations
    assert stored.name == "EPD (nieuw)"
    assert stored.own_redirect_uri
    assert stored.cds_issuers == [
        issuer,
        CdsIssuer(iss="https://other.example", jku=["https://other.example/jwks"]),
    ]


def test_a_forged_version_field_is_the_pages_error_and_the_typed_form_is_kept(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    # "²" passed str.isdigit() and 5000 digits too; int() refused both: a 500, the form lost
    hidden, before = _signed_in(client, database, gent)
    registration = registration_form(hidden)
    for forged in ("²", "7" * 5000):
        refused = client.post("/admin/registrations", data={**registration, "version": forged})
        assert refused.status_code == 400
        assert "is geen versienummer; er is niets bewaard" in refused.text
        assert 'value="Nieuw EPD"' in refused.text
        assert 'value="https://n.example/fhir"' in refused.text
    _assert_nothing_saved(database, before)


def test_a_frame_origin_that_is_no_ascii_origin_is_refused_next_to_its_field(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden, before = _signed_in(client, database, gent)
    registration = registration_form(
        hidden, frame_origins="https://epd.example\nhttps://ziekenhuis.例え.jp"
    )
    refused = client.post("/admin/registrations", data=registration, headers=FRENCH)
    assert refused.status_code == 422
    message = assert_tied(refused.text, "textarea", "new-frame_origins")
    assert message == (
        "Erreur : Origines autorisées à intégrer l&#39;application (une par ligne), ligne 2 : "
        "https://ziekenhuis.例え.jp "
        "n&#39;est pas une origine telle que https://epd.example.be:8443 (https, ou http "
        "sur cette machine uniquement ; sans chemin, espace, « ; » ni « , »). Écrivez un "
        "nom de domaine contenant des lettres non ASCII en Punycode (xn--…)."
    )
    assert "ziekenhuis.例え.jp</textarea>" in refused.text  # what was typed, kept
    _assert_nothing_saved(database, before)


def _free_text_fields(page: str) -> list[str]:
    """The names of the page's text areas and text inputs (an input without a type is text)."""
    tags = re.findall(r"<(?:textarea|input)\b[^>]*>", page)
    return [
        name.group(1)
        for tag in tags
        if not re.search(r'type="(?!text")', tag) and (name := re.search(r'name="([^"]+)"', tag))
    ]


def test_an_admin_form_sent_after_the_session_ended_shows_its_text_back_not_the_secret(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: the screen answered an ended session with the sign-in page and a
    pasted configuration was gone. Now the refusal shows it back to copy (the app's
    ``FREE_TEXT``), with the way to sign in again, and changes nothing."""
    hidden = screen_sign_in(client, database, gent)
    page = client.get("/admin").text
    # every field an admin types text in is shown back; a registration's id is a slug
    assert {"yaml", "cds_issuers", "name", "step-1.help.fr"} <= set(_free_text_fields(page))
    assert {n for n in _free_text_fields(page) if not FREE_TEXT.fullmatch(n)} == {"id"}
    before = stored_gent(database)
    with database.session() as session, session.begin():
        session.execute(update(AdminSession).values(expires_at=utcnow()))
    pasted = export_yaml(before.config).replace("adult_age: 18", "adult_age: 16")
    ours = {"Sec-Fetch-Site": "same-origin"}

    ended = _posted_yaml(client, hidden, pasted, ours)
    assert ended.status_code == 401
    assert "Beheersessie verlopen" in ended.text
    assert "Meld u daarna opnieuw aan als beheerder" in ended.text
    assert '<a href="/admin/login">Opnieuw aanmelden als beheerder</a>' in ended.text
    kept = re.findall(r"<textarea [^>]*readonly>(.*?)</textarea>", ended.text, re.S)
    assert [html.unescape(text) for text in kept] == [pasted.strip()]

    form = registration_form(hidden, client_secret="geheim-1234", cds_issuers="https://epd.x")
    registration = client.post("/admin/registrations", data=form, headers=ours)
    assert registration.status_code == 401
    assert "geheim-1234" not in registration.text
    assert "https://epd.x" in registration.text
    # another site's post cannot put its text on our page
    elsewhere = _posted_yaml(client, hidden, pasted)
    assert elsewhere.status_code == 401
    assert "adult_age: 16" not in elsewhere.text
    # a page asked for, not sent, still goes to the sign-in page; so does signing out
    asked = client.get("/admin", follow_redirects=False)
    assert (asked.status_code, asked.headers["location"]) == (303, "/admin/login")
    out = client.post("/admin/logout", data=hidden, headers=ours, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/admin/login")
    _assert_nothing_saved(database, before)


def _admin_last_used(database: Database, ago: timedelta) -> None:
    """The admin's last request ``ago`` (what the clock would say that long after)."""
    with database.session() as session, session.begin():
        session.execute(update(AdminSession).values(last_active_at=utcnow() - ago))


def test_an_admin_session_idle_past_the_limit_is_refused_as_an_ended_one(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """An administrator's session lasted its 8 hours however long the shared workstation
    lay unused. Past KINDREFLEX_SESSION_IDLE_MINUTES (15 here) it is refused as an ended
    one: a page asked for goes to the sign-in, a form sent shows its text back to copy
    and saves nothing, the API says 401; within it the session goes on, its use recorded."""
    ours = {"Sec-Fetch-Site": "same-origin"}
    with TestClient(admin_app(database, database_url, session_idle_minutes=15)) as client:
        hidden = screen_sign_in(client, database, gent)
        api = bearer(database, gent.id)
        _admin_last_used(database, timedelta(minutes=14))
        assert client.get("/admin").status_code == 200
        assert client.get("/admin/api/config", headers=api).status_code == 200
        with database.session() as session:
            used = session.scalars(select(AdminSession.last_active_at)).all()
        assert all(at is not None and utcnow() - at < timedelta(seconds=30) for at in used)

        before = stored_gent(database)
        pasted = export_yaml(before.config).replace("adult_age: 18", "adult_age: 16")
        _admin_last_used(database, timedelta(minutes=16))
        asked = client.get("/admin", follow_redirects=False)
        assert (asked.status_code, asked.headers["location"]) == (303, "/admin/login")
        idle = _posted_yaml(client, hidden, pasted, ours)
        assert idle.status_code == 401
        assert "Beheersessie verlopen" in idle.text
        kept = re.findall(r"<textarea [^>]*readonly>(.*?)</textarea>", idle.text, re.S)
        assert [html.unescape(text) for text in kept] == [pasted.strip()]
        refused = client.get("/admin/api/config", headers=api)
        assert refused.status_code == 401
        _assert_nothing_saved(database, before)

        # word for word what a session past its 8 hours gets
        with database.session() as session, session.begin():
            session.execute(
                update(AdminSession).values(last_active_at=utcnow(), expires_at=utcnow())
            )
        expired = _posted_yaml(client, hidden, pasted, ours)
        assert (expired.status_code, expired.text) == (401, idle.text)
        assert client.get("/admin/api/config", headers=api).json() == refused.json()


def test_a_second_registration_of_the_same_ehr_is_refused_next_to_its_fhir_base(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    hidden = screen_sign_in(client, database, gent)
    (first,) = stored_gent(database).config.registrations
    form = registration_form(hidden, fhir_base_url=first.fhir_base_url)

    refused = client.post("/admin/registrations", data=form)
    assert refused.status_code == 422
    message = assert_tied(refused.text, "input", "new-fhir_base_url")
    assert message.startswith(
        "Fout: FHIR-basis-URL (iss): Een andere registratie heeft al de FHIR-basis"
    )
    assert len(stored_gent(database).config.registrations) == 1


def test_the_new_registration_form_refuses_an_id_in_use_and_keeps_what_was_typed(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: the id of a registration in use, typed in the new registration's
    form, replaced that registration (its client secret dropped, its sessions ended) and
    the screen said "saved". The form says it is the new one; the id is refused next to it."""
    hidden = screen_sign_in(client, database, gent)
    page = client.get("/admin").text
    new_form = page[page.index('id="registration-new"') :]
    assert '<input type="hidden" name="form" value="new">' in new_form[: new_form.index("</form>")]
    before = stored_gent(database)
    form = registration_form(
        hidden, form="new", id="ehr", name="Tweede EPD", fhir_base_url="https://tweede.example/fhir"
    )

    refused = client.post("/admin/registrations", data=form, follow_redirects=False)

    assert refused.status_code == 422
    message = assert_tied(refused.text, "input", "new-id")
    assert message == (
        "Fout: Sleutel (kleine letters, cijfers, -): Er is al een registratie met het id ehr; "
        "er werd niets gewijzigd. Kies een ander id, of wijzig die registratie in haar eigen "
        "formulier."
    )
    assert 'value="Tweede EPD"' in refused.text
    assert 'value="https://tweede.example/fhir"' in refused.text
    french = client.post("/admin/registrations", data=form, headers=FRENCH)
    assert "Il existe déjà un enregistrement avec l&#39;identifiant" in french.text
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)
    assert after.config.registrations[0].client_secret is not None


def _ticked(page: str, field_id: str) -> bool:
    return " checked" in field_tag(page, "input", field_id)


def test_a_refused_hooks_form_shows_what_was_typed_unticked_boxes_too(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: refused (422, or 409 when another admin saved meanwhile), the hooks
    form showed the hooks in force again, and what the admin had changed was gone."""
    hidden, before = _signed_in(client, database, gent)
    unticked = {**hidden, "hook-encounter-start": "on"}  # patient-view and once: unticked

    refused = client.post("/admin/hooks", data={**unticked, "adult_age": ""})

    assert refused.status_code == 422
    assert_tied(refused.text, "input", "adult_age")
    assert 'value=""' in field_tag(refused.text, "input", "adult_age")
    assert _ticked(refused.text, "hook-encounter-start")
    assert not _ticked(refused.text, "hook-patient-view")
    assert not _ticked(refused.text, "once_per_encounter")
    assert stored_gent(database).version == before.version

    api = bearer(database, gent.id)  # another admin changes the plan meanwhile
    other = {"steps": {"step-2": {"title": {"nl": "Peil naar veiligheid"}}}}
    assert client.put("/admin/api/plan", headers=api, json=other).status_code == 200
    stale = client.post("/admin/hooks", data={**unticked, "adult_age": "16"})

    assert stale.status_code == 409
    assert "De configuratie werd intussen gewijzigd" in stale.text
    assert 'value="16"' in field_tag(stale.text, "input", "adult_age")
    assert not _ticked(stale.text, "hook-patient-view")
    assert not _ticked(stale.text, "once_per_encounter")
    assert stored_gent(database).config.hooks == before.config.hooks
    # the message says to send the kept form again: it saves over the other admin's version
    assert "verstuur het formulier opnieuw" in stale.text
    current = re.search(r'name="version" value="(\d+)"', stale.text)
    assert current is not None
    assert int(current[1]) == stored_gent(database).version
    again = {**unticked, "adult_age": "16", "version": current[1]}
    sent_again = client.post("/admin/hooks", data=again, follow_redirects=False)
    assert sent_again.status_code == 303
    saved = stored_gent(database).config
    assert saved.hooks.adult_age == 16
    assert saved.plan.text(Step.STEP_2, "title", "nl") == "Peil naar veiligheid"


def test_a_card_source_url_that_is_no_web_url_is_refused_next_to_its_field(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The hooks form has the card's source link (every card's ``source.url``, which the
    EHR opens in the browser): one that is no absolute https URL is refused next to it, in
    the page's language, what was typed kept. A value stored before that check (any text
    was saved) is shown in the form, and a save of the form names it until it is mended."""
    hidden, before = _signed_in(client, database, gent)
    form = {**hidden, "hook-encounter-start": "on", "hook-patient-view": "on",
            "adult_age": "18", "once_per_encounter": "on"}  # fmt: skip

    refused = client.post("/admin/hooks", data={**form, "source_url": "javascript:alert(1)"})

    assert refused.status_code == 422
    message = assert_tied(refused.text, "input", "source_url")
    assert message == (
        "Fout: Link van de bron op de kaart (https; leeg: geen link): javascript:alert(1) is "
        "geen volledig https-adres zoals "
        "https://kindreflex.be/ (http alleen op deze machine): het EPD opent het vanaf elke "
        "kaart in de browser. Laat het leeg voor geen link."
    )
    assert 'value="javascript:alert(1)"' in field_tag(refused.text, "input", "source_url")
    french = client.post(
        "/admin/hooks", data={**form, "source_url": "kindreflex.be"}, headers=FRENCH
    )
    assert french.status_code == 422
    assert assert_tied(french.text, "input", "source_url").startswith(
        "Erreur : Lien de la source sur la carte (https ; vide : pas de lien) : kindreflex.be "
        "n&#39;est pas une adresse https complète"
    )
    _assert_nothing_saved(database, before)

    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    hooks = before.config.hooks.model_copy(update={"source_url": "/over-kindreflex"})
    tenants.save(gent.slug, before.config.model_copy(update={"hooks": hooks}), "older version")
    hidden = screen_sign_in(client, database, gent)
    page = client.get("/admin").text
    assert 'value="/over-kindreflex"' in field_tag(page, "input", "source_url")
    older = {**form, **hidden, "adult_age": "17"}
    stuck = client.post("/admin/hooks", data={**older, "source_url": "/over-kindreflex"})
    assert stuck.status_code == 422
    assert_tied(stuck.text, "input", "source_url")
    mended = {**older, "source_url": " https://www.az-gent.be/kindreflex "}
    saved = client.post("/admin/hooks", data=mended, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    stored = stored_gent(database).config.hooks
    assert (stored.adult_age, stored.source_url) == (17, "https://www.az-gent.be/kindreflex")


def test_a_client_secret_typed_in_a_refused_form_is_asked_for_again(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: the 409 page said what was typed is still in the form, but a
    secret is never drawn again. Sent again as shown, the save said "saved" and kept the
    old secret: the rotation was lost without a word."""
    hidden = screen_sign_in(client, database, gent)
    (registration,) = stored_gent(database).config.registrations
    form = {
        **hidden, "id": registration.id, "name": registration.name,
        "fhir_base_url": registration.fhir_base_url, "client_id": registration.client_id,
        "client_auth": "client_secret_basic", "scopes": DEFAULT_SCOPES, "frame_origins": "",
        "cds_issuers": "", "default_language": "nl",
    }  # fmt: skip
    api = bearer(database, gent.id)  # another admin changes the plan meanwhile
    other = {"steps": {"step-2": {"title": {"nl": "Peil naar veiligheid"}}}}
    assert client.put("/admin/api/plan", headers=api, json=other).status_code == 200

    stale = client.post("/admin/registrations", data={**form, "client_secret": "nieuw-geheim"})

    assert stale.status_code == 409
    secret_field = f"{registration.id}-client_secret"
    assert "nieuw-geheim" not in stale.text  # never drawn again
    assert "Vul het client secret opnieuw in" in assert_tied(stale.text, "input", secret_field)
    current = re.search(r'name="version" value="(\d+)"', stale.text)
    assert current is not None
    again = {**form, "client_secret": "nieuw-geheim", "version": current[1]}
    assert (
        client.post("/admin/registrations", data=again, follow_redirects=False).status_code == 303
    )
    (stored,) = stored_gent(database).config.registrations
    assert stored.client_secret is not None
    assert stored.client_secret.get_secret_value() == "nieuw-geheim"


def test_a_partner_file_refused_as_stale_is_not_said_to_be_still_in_the_form(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: a file input is drawn empty, yet the 409 page said the typing was
    kept and to send the form again; sent again, it was refused with "choose a file"."""
    hidden = screen_sign_in(client, database, gent)
    exported = client.get("/admin/api/partners?format=csv").text
    api = bearer(database, gent.id)
    other = {"steps": {"step-2": {"title": {"nl": "Peil naar veiligheid"}}}}
    assert client.put("/admin/api/plan", headers=api, json=other).status_code == 200

    upload = {"file": ("p.csv", "\n".join(exported.splitlines()[:2]).encode())}
    stale = client.post("/admin/partners", data=hidden, files=upload)

    assert stale.status_code == 409
    assert "staat nog in het formulier" not in stale.text
    assert "doe de wijziging opnieuw" in stale.text


def test_a_plan_form_refused_as_stale_shows_what_was_typed_emptied_texts_too(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    api = bearer(database, gent.id)
    ours = {"steps": {"step-2": {"title": {"nl": "Peil naar veiligheid (ons ziekenhuis)"}}}}
    assert client.put("/admin/api/plan", headers=api, json=ours).status_code == 200
    hidden = screen_sign_in(client, database, gent)
    # another admin changes the hooks meanwhile
    assert client.put("/admin/api/hooks", headers=api, json={"adult_age": 16}).status_code == 200
    typed = "Ons eigen teamoverleg, zoals afgesproken in 2026"
    form = {**hidden, "step-4.title.nl": typed, "step-1.help.fr": "Appelez le service social"}

    refused = client.post("/admin/plan", data={**form, "step-2.title.nl": ""})

    assert refused.status_code == 409
    assert "De configuratie werd intussen gewijzigd" in refused.text
    assert f'value="{typed}"' in field_tag(refused.text, "input", "step-4.title.nl")
    assert 'value="Appelez le service social"' in refused.text
    assert 'value=""' in field_tag(refused.text, "input", "step-2.title.nl")  # emptied, kept so
    plan = stored_gent(database).config.plan
    assert plan.text(Step.STEP_2, "title", "nl") == "Peil naar veiligheid (ons ziekenhuis)"
    assert plan.text(Step.STEP_4, "title", "nl") is None


def test_a_form_sent_from_a_tab_of_an_earlier_sign_in_says_so_and_shows_its_text_back(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: an admin who signed in again in another tab and then sent a form of
    the old tab was told a different patient was opened, to start again from the patient's
    chart, without the way to sign in, and a pasted configuration was gone."""
    old_tab = screen_sign_in(client, database, gent)
    screen_sign_in(client, database, gent)  # another tab: a new session, a new CSRF token
    before = stored_gent(database)
    pasted = export_yaml(before.config).replace("adult_age: 18", "adult_age: 16")
    ours = {"Sec-Fetch-Site": "same-origin"}

    refused = _posted_yaml(client, old_tab, pasted, ours)

    assert refused.status_code == 403
    assert "<h1>Formulier niet aanvaard</h1>" in refused.text
    assert "hoort bij een eerdere aanmelding als beheerder" in refused.text
    assert "patiënt" not in refused.text
    assert '<a href="/admin/login">Opnieuw aanmelden als beheerder</a>' in refused.text
    assert "Meld u daarna opnieuw aan als beheerder en plak het in het formulier" in refused.text
    kept = re.findall(r"<textarea [^>]*readonly>(.*?)</textarea>", refused.text, re.S)
    assert [html.unescape(text) for text in kept] == [pasted.strip()]

    french = client.post(
        "/admin/config", data={**old_tab, "yaml": pasted}, headers={**ours, **FRENCH}
    )
    assert "appartient à une connexion d'administration antérieure" in html.unescape(french.text)
    assert '<a href="/admin/login">Se reconnecter comme administrateur</a>' in french.text
    # another site's post cannot put its text on our page
    elsewhere = _posted_yaml(client, old_tab, pasted)
    assert elsewhere.status_code == 403
    assert "adult_age: 16" not in elsewhere.text
    _assert_nothing_saved(database, before)


def test_an_issuers_private_key_in_a_yaml_file_is_refused_next_to_the_text(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The screen's way to configure an issuer's keys is the YAML file: one holding the
    EHR's private key (found by review: stored and shown in every export and audit) is
    refused at the YAML text in the page's language, naming the members, not their values."""
    hidden, before = _signed_in(client, database, gent)
    assert isinstance(EHR_KEY.private_key, ec.EllipticCurvePrivateKey)
    jwk = json.loads(ECAlgorithm.to_jwk(EHR_KEY.private_key))
    issuers = [{"iss": "https://az-gent.example", "jwks": {"keys": [jwk]}}]
    text = export_yaml(before.config).replace(
        "cds_issuers: []", f"cds_issuers: {json.dumps(issuers)}"
    )

    dutch = _posted_yaml(client, hidden, text)

    assert dutch.status_code == 422
    message = assert_tied(dutch.text, "textarea", "yaml")
    assert re.fullmatch(
        r"Fout: Regel \d+, registrations\[0\]\.cds_issuers\[0\]\.jwks: keys\[0\]: Sleutel 1 van de "
        r"JWK Set bevat privésleutelmateriaal \(d\): alleen de publieke sleutels van de uitgever "
        r"horen hier\. Stuur alleen de publieke sleutel; .+",
        message,
    )
    summary = dutch.text[dutch.text.index('id="problems"') :]
    assert jwk["d"] not in summary[: summary.index("</div>")]
    french = _posted_yaml(client, hidden, text, FRENCH)
    message = assert_tied(french.text, "textarea", "yaml")
    assert "La clé 1 du JWK Set contient une clé privée (d) : seules les clés publiques" in message
    _assert_nothing_saved(database, before)


def _in_use_form(page: str) -> dict[str, str]:
    """The fields the refusal adds to the YAML box's form: the counts it showed, the box."""
    found = re.search(r'<div class="notice" id="yaml-in-use">(.*?)</div>', page, re.S)
    assert found is not None, "no question in the YAML box's form"
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', found[1]))
    assert '<input type="checkbox" name="force" value="yes" id="yaml-force">' in found[1]
    return fields


def test_a_yaml_text_removing_a_registration_something_depends_on_asks_first(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The box replaced the configuration by a text without the registration, no question
    asked, while the registration's own "Verwijderen" asks (found by review): the save
    waiting for it and the case of its server stranded. Now the text is refused, in the
    page's language and with the removal's words, nothing saved, the text kept, and a box
    to tick saves it; more depending on it by then asks again."""
    server = "https://az-gent.example/fhir"
    undelivered_save(database, gent.id, server, DeliveryState.WAITING_AUTHORISATION, "ehr")
    case_on(database, gent.id, server)
    hidden, before = _signed_in(client, database, gent)
    without = export_yaml(before.config.model_copy(update={"registrations": []}), before.version)

    refused = _posted_yaml(client, hidden, without)

    assert refused.status_code == 409
    (message,) = _messages(refused.text)
    assert message == (
        "Er werd niets opgeslagen: deze wijziging verwijdert registratie ehr "
        f"({server}), terwijl er nog opslagen of open dossiers van afhangen. Lees bij het "
        "formulier wat ervan afhangt."
    )
    assert "1 opslag die wacht op een aanmelding" in refused.text
    assert "1 open dossier op de werklijst" in refused.text
    assert "registrations: []" in refused.text  # the text kept
    fields = _in_use_form(refused.text)
    assert (fields["shown_writes"], fields["shown_cases"]) == ("1", "1")
    french = _posted_yaml(client, hidden, without, FRENCH)
    assert "1 saisie enregistrée qui attend une connexion" in french.text
    assert "Enregistrer tout de même" in french.text
    assert stored_gent(database).version == before.version
    # a save waiting since the question was shown: asked again, with the new count
    undelivered_save(database, gent.id, server, DeliveryState.PENDING, "ehr")
    confirmed = {**hidden, "yaml": without, **fields, "force": "yes"}
    again = client.post("/admin/config", data=confirmed)
    assert again.status_code == 409
    assert "1 opslag die nog aan de FHIR-server geleverd wordt" in again.text
    assert stored_gent(database).version == before.version

    confirmed = {**hidden, "yaml": without, **_in_use_form(again.text), "force": "yes"}
    saved = client.post("/admin/config", data=confirmed, follow_redirects=False)

    assert saved.status_code == 303
    assert stored_gent(database).config.registrations == []
    (event,) = [e for e in access.events(database, gent.id) if e.action.startswith("registration")]
    assert event.action == "registration-removed-anyway"
    assert event.detail["undelivered_writes"] == 2


def test_a_registration_moved_to_another_fhir_server_in_its_form_asks_first(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The registration's form saved with another FHIR server (the same id) strands the
    saves waiting for it as its removal does: refused with the same question, in the
    form, which a ticked box saves."""
    undelivered_save(
        database,
        gent.id,
        "https://az-gent.example/fhir",
        DeliveryState.WAITING_AUTHORISATION,
        "ehr",
    )
    hidden = screen_sign_in(client, database, gent)
    form = registration_form(
        hidden, id="ehr", name="EPD", fhir_base_url="https://nieuw.example/fhir",
        client_auth="client_secret_basic", client_secret="nieuw-geheim",
    )  # fmt: skip

    refused = client.post("/admin/registrations", data=form)

    assert refused.status_code == 409
    assert (
        "deze wijziging verplaatst registratie ehr van https://az-gent.example/fhir naar "
        "https://nieuw.example/fhir"
    ) in " ".join(_messages(refused.text))
    notice = re.search(r'<div class="notice" id="ehr-in-use">(.*?)</div>', refused.text, re.S)
    assert notice is not None
    assert "1 opslag die wacht op een aanmelding" in notice[1]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', notice[1]))
    assert stored_gent(database).config.registrations[0].fhir_base_url.startswith("https://az")

    saved = client.post(
        "/admin/registrations", data={**form, **fields, "force": "yes"}, follow_redirects=False
    )

    assert saved.status_code == 303
    assert (
        stored_gent(database).config.registrations[0].fhir_base_url == "https://nieuw.example/fhir"
    )
    (event,) = [e for e in access.events(database, gent.id) if e.action.startswith("registration")]
    assert event.action == "registration-moved-anyway"


def test_a_refused_form_names_each_field_by_its_label_with_a_human_message(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: the summary and the field's message named the field by its path in
    the configuration (``registrations[1].id``) and a key not in the required form by its
    regular expression. A form's field is named by the label the page shows it with, in the
    page's language, and the form a key must have said in words; the summary's link still
    goes to the field."""
    hidden, before = _signed_in(client, database, gent)
    registration = registration_form(hidden, id="Nieuw EPD")

    dutch = client.post("/admin/registrations", data=registration)
    assert dutch.status_code == 422
    assert assert_tied(dutch.text, "input", "new-id") == (
        "Fout: Sleutel (kleine letters, cijfers, -): Nieuw EPD is geen geldige sleutel: "
        "alleen kleine letters, cijfers en koppeltekens, te beginnen met een letter of "
        "cijfer, hoogstens 63 tekens."
    )
    assert _messages(dutch.text) == [
        "Sleutel (kleine letters, cijfers, -): Nieuw EPD is geen geldige sleutel: alleen "
        "kleine letters, cijfers en koppeltekens, te beginnen met een letter of cijfer, "
        "hoogstens 63 tekens."
    ]
    assert "registrations[" not in dutch.text
    assert "[a-z0-9]" not in dutch.text

    french = client.post("/admin/registrations", data=registration, headers=FRENCH)
    assert assert_tied(french.text, "input", "new-id") == (
        "Erreur : Clé (minuscules, chiffres, -) : Nieuw EPD n&#39;est pas une clé valide : "
        "uniquement des minuscules, des chiffres et des traits d&#39;union, commençant par "
        "une lettre ou un chiffre, 63 caractères au plus."
    )
    english = client.post(
        "/admin/registrations", data=registration, headers={"Accept-Language": "en"}
    )
    assert assert_tied(english.text, "input", "new-id") == (
        "Error: Key (lower case, digits, -): Nieuw EPD is not a valid key: lower-case "
        "letters, digits and hyphens only, starting with a letter or digit, 63 characters "
        "at most."
    )

    no_secret = registration_form(hidden, client_auth="client_secret_basic")
    secret = client.post("/admin/registrations", data=no_secret)
    assert assert_tied(secret.text, "input", "new-client_secret") == (
        "Fout: Clientgeheim (leeg laten = ongewijzigd): client_secret_basic heeft een client "
        "secret nodig (of kies private_key_jwt)."
    )
    assert "registrations[" not in secret.text

    # a hooks field and a line of a list typed one per line
    hooks = client.post(
        "/admin/hooks", data={**hidden, "adult_age": "zestien", "hook-patient-view": "on"},
        headers=FRENCH,
    )  # fmt: skip
    assert assert_tied(hooks.text, "input", "adult_age") == (
        "Erreur : Adulte à partir de (ans) : Doit être un nombre entier (donné : zestien)."
    )
    origins = registration_form(hidden, frame_origins="https://epd.example\n\nhttps://x.例え.jp")
    refused = client.post("/admin/registrations", data=origins)
    assert assert_tied(refused.text, "textarea", "new-frame_origins") == (
        "Fout: Origins die de app mogen inbedden (één per lijn), regel 3: https://x.例え.jp "
        "is geen origin zoals https://epd.example.be:8443 (https, of http alleen op deze "
        "machine; geen pad, spaties, &#34;;&#34; of &#34;,&#34;). Schrijf een domeinnaam met "
        "andere dan ASCII-letters in Punycode (xn--…)."
    )
    # the configuration's text keeps its line and path: they are what the admin edits there
    wrong_id = export_yaml(before.config).replace("- id: ehr", "- id: EHR")
    text = _posted_yaml(client, hidden, wrong_id)
    assert re.fullmatch(
        r"Fout: Regel \d+, registrations\[0\]\.id: EHR is geen geldige sleutel: .+",
        assert_tied(text.text, "textarea", "yaml"),
    )
    _assert_nothing_saved(database, before)


def test_an_admin_form_sent_after_the_session_ended_never_shows_a_pasted_secret_back(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """A configuration text may carry a registration's client secret (the install guide's
    way to enter it again) or, pasted by mistake, an issuer's private key: the page shown
    after the session ended gives the text back to copy without them, says so, and names
    each text by its field."""
    hidden = screen_sign_in(client, database, gent)
    before = stored_gent(database)
    with database.session() as session, session.begin():
        session.execute(update(AdminSession).values(expires_at=utcnow()))
    document = before.config.model_dump(mode="json")
    document["registrations"][0]["client_secret"] = "geheim-uit-yaml"
    document["registrations"][0]["cds_issuers"] = [
        {"iss": "https://epd.x", "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "pub-x",
                                                    "y": "pub-y", "d": "prive-d"}]}}
    ]  # fmt: skip
    block = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    flow = json.dumps(document)  # JSON is YAML too
    ours = {"Sec-Fetch-Site": "same-origin"}

    for pasted in (block, flow):
        ended = _posted_yaml(client, hidden, pasted, ours)
        assert ended.status_code == 401
        assert "geheim-uit-yaml" not in ended.text
        assert "prive-d" not in ended.text
        assert "pub-x" in ended.text  # the rest of the text is there to copy
        assert "Client secrets en privésleutels in de tekst zijn weggelaten" in ended.text
        assert '<label for="kept-1">Importeren (YAML)</label>' in ended.text
    _assert_nothing_saved(database, before)


def test_a_text_longer_than_its_field_takes_is_refused_next_to_it_in_dutch(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The limits of the configuration's texts (``tenant_config``) on the screen: the
    catalogue's sentence with the limit, next to the field; nothing saved; a text of the
    limit is saved. A secret too long is not shown back, not even in the refusal."""
    hidden, before = _signed_in(client, database, gent)

    refused = client.post("/admin/registrations", data=registration_form(hidden, name="E" * 201))
    assert refused.status_code == 422
    message = assert_tied(refused.text, "input", "new-name")
    assert message == "Fout: Naam: Mag hoogstens 200 tekens lang zijn."
    _assert_nothing_saved(database, before)

    secret = "geheim-" + "s" * 1018  # 1025 characters
    with_secret = registration_form(hidden, client_auth="client_secret_basic", client_secret=secret)
    refused = client.post("/admin/registrations", data=with_secret)
    assert refused.status_code == 422
    said = " | ".join(_messages(refused.text))
    assert "Clientgeheim (leeg laten = ongewijzigd): Mag hoogstens 1024 tekens lang zijn." in said
    assert "geheim-" not in refused.text
    _assert_nothing_saved(database, before)

    at_the_limit = registration_form(hidden, name="E" * 200)
    saved = client.post("/admin/registrations", data=at_the_limit, follow_redirects=False)
    assert saved.status_code == 303, saved.text
    assert stored_gent(database).config.registrations[1].name == "E" * 200
