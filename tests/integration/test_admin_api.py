"""The admin JSON API and screen: who may enter, CSRF, tenant isolation, changes, audit.

The real app (``create_app``) on SQLite and PostgreSQL; admins sign in with real
bootstrap tokens; nothing is mocked.
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm
from pydantic import SecretStr
from sqlalchemy import select, text, update

from service.admin import access
from service.admin.config import export_yaml
from service.db.base import Database, utcnow
from service.db.models import OutboxEntry, TenantConfigVersion
from service.outbox import DeliveryState
from service.protocol import Step
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import DEFAULT_SCOPES, TenantConfiguration
from smart_app.admin import ADMIN_COOKIE, CSRF_HEADER, router
from smart_app.session import LAUNCH_PARAM, SESSION_COOKIE, AppUser, NewSession, Role
from tests.support.admin import (
    DEPLOYMENT_KEY,
    Hospital,
    admin_app,
    bearer,
    case_on,
    client,
    gent,
    hospital,
    post_sign_in,
    screen_sign_in,
    stored_gent,
    undelivered_save,
)
from tests.support.sessions import launched_under

__all__ = ["client", "gent"]  # the admin tests' fixtures


@pytest.fixture
def brugge(database: Database) -> Hospital:
    return hospital(database, "az-brugge", "/t/az-brugge")


def admin_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the admin router that needs an admin."""
    public = {("POST", "/admin/api/session"), ("GET", "/admin/login"), ("POST", "/admin/login")}
    found = [
        (method, route.path)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    ]
    return [r for r in found if r not in public]


def concrete(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "ehr", path)


def test_every_admin_endpoint_refuses_anonymous_callers(client: TestClient, gent: Hospital) -> None:
    routes = admin_routes()
    assert len(routes) >= 20
    for method, path in routes:
        response = client.request(method, concrete(path), follow_redirects=False)
        if path.startswith("/admin/api"):
            assert response.status_code == 401, (method, path, response.text)
        elif method == "GET" or path == "/admin/logout":  # to the sign-in page
            assert response.status_code == 303, (method, path)
            assert response.headers["location"] == "/admin/login"
        else:  # a form sent: the refusal page links to it (and shows the form's text back)
            assert response.status_code == 401, (method, path)
            assert '<a href="/admin/login">' in response.text


def test_every_admin_endpoint_refuses_another_hospitals_admin(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    headers = bearer(database, brugge.id)
    for method, path in admin_routes():
        response = client.request(method, concrete(path), headers=headers, follow_redirects=False)
        assert response.status_code == 403, (method, path, response.text)
    # …while the same session works at its own hospital
    assert client.get("/t/az-brugge/admin/api/config", headers=headers).status_code == 200


def test_ended_or_unknown_sessions_are_refused(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    assert client.get("/admin/api/config", headers=headers).status_code == 200
    assert client.delete("/admin/api/session", headers=headers).status_code == 204
    assert client.get("/admin/api/config", headers=headers).status_code == 401
    garbage = {"Authorization": "Bearer not-a-session"}
    assert client.get("/admin/api/config", headers=garbage).status_code == 401


def test_an_admin_sees_and_changes_only_their_own_hospital(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    headers = bearer(database, gent.id)
    config = client.get("/admin/api/config", headers=headers).json()["configuration"]
    assert config["name"] == "AZ-GENT"
    assert "az-brugge" not in str(config)

    response = client.put("/admin/api/hooks", headers=headers, json={"adult_age": 16})
    assert response.status_code == 200, response.text

    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    assert tenants.get("az-gent").config.hooks.adult_age == 16
    assert tenants.get("az-brugge").config.hooks.adult_age == 18
    audit = client.get("/admin/api/audit", headers=headers).json()
    assert all("az-brugge" not in str(change) for change in audit["changes"])


def test_client_secret_is_write_only_and_masked_in_the_audit(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id, name="Els Peeters")
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    assert registration["client_secret"] == "***"

    # Saving the registration as read back keeps the secret; a new secret replaces it.
    registration["name"] = "EPD spoed"
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=registration).is_success
    kept = stored_gent(database).config
    assert kept.registrations[0].client_secret == SecretStr("secret-of-az-gent")

    registration["client_secret"] = "a-brand-new-secret"
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=registration).is_success

    audit = client.get("/admin/api/audit", headers=headers)
    assert "a-brand-new-secret" not in audit.text
    assert "secret-of-az-gent" not in audit.text
    newest, previous = audit.json()["changes"][:2]
    assert newest["actor"] == "Els Peeters (bootstrap token #1)"
    assert newest["changes"] == [
        {"path": "registrations[ehr].client_secret", "old": "***", "new": "***"}
    ]
    assert previous["changes"] == [
        {"path": "registrations[ehr].name", "old": "EPD", "new": "EPD spoed"}
    ]


@pytest.mark.parametrize(
    ("field", "elsewhere"),
    [("fhir_base_url", "https://attacker.example/fhir"), ("client_id", "someone-else")],
)
def test_a_stored_secret_does_not_follow_the_registration_to_another_ehr_or_client(
    client: TestClient, database: Database, gent: Hospital, field: str, elsewhere: str
) -> None:
    """The secret is sent (HTTP Basic) to the token endpoint of fhir_base_url: were it kept
    for a repointed registration, an admin could have it sent to their own server."""
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    moved = {**registration, field: elsewhere}  # client_secret "***": the stored one

    refused = client.put("/admin/api/registrations/ehr", headers=headers, json=moved)
    assert refused.status_code == 422
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["registrations[0].client_secret"]
    assert "enter the client secret again" in issue["diagnostics"]
    exported = client.get("/admin/api/config.yaml", headers=headers).text
    yaml_moved = exported.replace(f"{field}: {registration[field]}", f"{field}: {elsewhere}")
    assert yaml_moved != exported
    imported = client.put("/admin/api/config.yaml", headers=headers, content=yaml_moved.encode())
    assert imported.status_code == 422
    assert "enter the client secret again" in imported.text
    assert client.get("/admin/api/config", headers=headers).json() == before

    moved["client_secret"] = "secret-of-the-new-client"
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=moved).is_success
    stored = stored_gent(database).config
    assert stored.registrations[0].client_secret == SecretStr("secret-of-the-new-client")


def test_a_stored_secret_stays_with_the_same_ehr_written_another_way(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Its host in capitals is the same server: the secret was asked for again."""
    headers = bearer(database, gent.id)
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    scheme, _, rest = registration["fhir_base_url"].partition("://")
    host, _, path = rest.partition("/")
    written = {**registration, "fhir_base_url": f"{scheme}://{host.upper()}/{path}"}

    saved = client.put("/admin/api/registrations/ehr", headers=headers, json=written)

    assert saved.status_code == 200, saved.text
    stored = stored_gent(database).config
    assert stored.registrations[0].client_secret == SecretStr("secret-of-az-gent")


def test_a_registration_that_stops_using_its_secret_drops_it(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    keys = {**registration, "client_auth": "private_key_jwt"}
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=keys).is_success
    stored = stored_gent(database).config
    assert stored.registrations[0].client_secret is None
    # …so going back to client_secret_basic needs the secret again
    back = {**keys, "client_auth": "client_secret_basic"}
    refused = client.put("/admin/api/registrations/ehr", headers=headers, json=back)
    assert refused.status_code == 422
    assert "client_secret_basic needs a client_secret" in refused.text


@pytest.mark.parametrize(
    ("name", "reason"),
    [("E" * 201, "longer than 200"), ("E" * 501, "longer than 200"),
     ("Els\x00", "control characters"), ("Els\nadmin-signed-in", "control characters")],
    ids=["201 characters", "501 characters", "NUL", "line break"],
)  # fmt: skip
def test_a_sign_in_name_the_audit_cannot_hold_is_refused_before_the_token_is_spent(
    client: TestClient, database: Database, gent: Hospital, name: str, reason: str
) -> None:
    token, _ = access.issue_bootstrap_token(database, gent.id)
    recorded = len(access.events(database, gent.id))
    for attempt in ({"token": token, "name": name}, {"token": "unknown", "name": name}):
        refused = client.post("/admin/api/session", json=attempt)
        assert refused.status_code == 422, refused.text
        assert reason in refused.json()["detail"]
    form = post_sign_in(client, {"token": token, "name": name})
    assert form.status_code == 422
    assert 'id="login-bad-name"' in form.text  # the sign-in page again, with the reason
    assert re.search(
        r'<input id="name"[^>]* aria-describedby="login-bad-name" aria-invalid', form.text
    )
    assert "Het token is niet gebruikt." in form.text
    assert len(access.events(database, gent.id)) == recorded  # nothing written

    signed_in = client.post("/admin/api/session", json={"token": token, "name": " Els Peeters "})
    assert signed_in.status_code == 201, signed_in.text
    assert signed_in.json()["actor"].startswith("Els Peeters (bootstrap token #")


def test_a_bad_change_is_refused_with_the_reason_and_changes_nothing(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()

    too_young = client.put("/admin/api/hooks", headers=headers, json={"adult_age": 9})
    assert too_young.status_code == 422
    issue = too_young.json()["issue"][0]
    assert issue["expression"] == ["hooks.adult_age"]
    assert "greater than or equal to 12" in issue["diagnostics"]

    no_secret = {"name": "X", "fhir_base_url": "https://x/fhir", "client_id": "k",
                 "client_auth": "client_secret_basic"}  # fmt: skip
    refused = client.put("/admin/api/registrations/other", headers=headers, json=no_secret)
    assert refused.status_code == 422
    assert "client_secret_basic needs a client_secret" in refused.text

    not_json = client.put("/admin/api/plan", headers=headers, content=b"{nope")
    assert not_json.status_code == 400
    assert client.get("/admin/api/config", headers=headers).json() == before


#: A card source link that is no absolute web URL (review: tests/review/test_card_source_url).
NOT_ABSOLUTE = ["kindreflex.be", "/over-kindreflex", "javascript:alert(document.domain)"]


@pytest.mark.parametrize("url", NOT_ABSOLUTE)
def test_the_admin_api_refuses_a_source_url_that_is_not_an_absolute_web_url(
    client: TestClient, database: Database, gent: Hospital, url: str
) -> None:
    """CDS Hooks 2.0, Card > Source: ``url`` is "an optional absolute URL to load (via
    GET, in a browser context) when a user clicks on this link"; its Security and Safety
    names "links to dangerous apps in Cards". ``HookSettings.source_url`` was any text:
    the API saved these three, and every card's ``source.url`` carried it (review)."""
    headers = bearer(database, gent.id)
    before = stored_gent(database)
    response = client.put("/admin/api/hooks", headers=headers, json={"source_url": url})
    assert response.status_code == 422, (
        f"source_url {url!r} was saved ({response.status_code}); every card's source.url "
        "would carry it, and CDS Hooks 2.0 wants an absolute URL there"
    )
    (issue,) = response.json()["issue"]
    assert issue["expression"] == ["hooks.source_url"]
    assert "is not an absolute https URL" in issue["diagnostics"]
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)
    # an https one, or none at all (the card's source then has no link), is saved
    for good in ("https://www.az-gent.be/kindreflex", ""):
        saved = client.put("/admin/api/hooks", headers=headers, json={"source_url": good})
        assert saved.status_code == 200, saved.text
        assert stored_gent(database).config.hooks.source_url == good


def test_a_yaml_file_that_leaves_out_a_part_is_refused_not_taken_as_its_default(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """PUT config.yaml replaces the whole configuration: a file of the name and the hooks
    alone deleted the registrations (and their client secrets), reset the partners and
    dropped the plan's wording (found by review). Now refused, naming the parts; a part
    written empty is emptied."""
    headers = bearer(database, gent.id)
    before = stored_gent(database)
    partial = b"name: AZ Gent\nhooks:\n  adult_age: 17\n"

    refused = client.put("/admin/api/config.yaml", headers=headers, content=partial)

    assert refused.status_code == 422
    (issue,) = refused.json()["issue"]
    assert issue["diagnostics"].startswith(
        "the file leaves out registrations, partners, plan: an import replaces the whole"
    )
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)
    exported = client.get("/admin/api/config.yaml", headers=headers).text
    emptied = exported[: exported.index("registrations:\n")] + "registrations: []\n"
    emptied += exported[exported.index("hooks:\n") :]
    taken = client.put("/admin/api/config.yaml", headers=headers, content=emptied.encode())
    assert taken.status_code == 200, taken.text
    assert stored_gent(database).config == before.config.model_copy(update={"registrations": []})


def test_a_yaml_export_names_its_version_and_an_import_of_it_after_another_change_is_refused(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The file names the version it was read from, as its ETag does: PUT back after
    another change (even without If-Match) it would undo that change, and is refused; a
    file without the line (one kept as the source of truth) is applied."""
    headers = bearer(database, gent.id)
    read = client.get("/admin/api/config.yaml", headers=headers)
    version = stored_gent(database).version
    assert read.headers["etag"] == f'"{version}"'
    assert f"\nversion: {version}\nname: " in read.text
    changed = client.put("/admin/api/hooks", headers=headers, json={"adult_age": 17})
    assert changed.status_code == 200
    edited = read.text.replace("adult_age: 18", "adult_age: 19")

    refused = client.put("/admin/api/config.yaml", headers=headers, content=edited.encode())

    assert refused.status_code == 409
    (issue,) = refused.json()["issue"]
    assert issue["diagnostics"].startswith(
        f"the file was exported from version {version}, and version {version + 1} is in force "
        "now: importing it would undo what was changed since; nothing was saved"
    )
    assert stored_gent(database).config.hooks.adult_age == 17
    own = edited.replace(f"version: {version}\n", "")
    taken = client.put("/admin/api/config.yaml", headers=headers, content=own.encode())
    assert taken.status_code == 200, taken.text
    assert stored_gent(database).config.hooks.adult_age == 19


def test_on_https_only_the_admin_cookie_for_this_host_signs_in(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """``__Host-``, as the app session's: another app of the hospital's domain planted a
    ``kindreflex_admin`` with ``Domain=`` that the browser sent beside ours, and every
    launched admin was refused the admin screen and the figures (found by review)."""
    app = admin_app(database, database_url, public_url="https://kindreflex.example")
    with TestClient(app, base_url="https://testserver") as client:
        token, _ = access.issue_bootstrap_token(database, gent.id)
        post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)
        (session,) = [v for k, v in client.cookies.items() if k == f"__Host-{ADMIN_COOKIE}"]
        client.cookies.set(ADMIN_COOKIE, "planted-by-a-neighbour")
        assert client.get("/admin", follow_redirects=False).status_code == 200
        client.cookies.clear()
        client.cookies.set(ADMIN_COOKIE, session)  # the secret, under the plain name
        assert client.get("/admin", follow_redirects=False).status_code == 303  # sign in


def test_the_screen_after_a_save_shows_what_was_saved_on_any_instance(
    client: TestClient, database: Database, database_url: str, gent: Hospital
) -> None:
    """Post/redirect/get: the screen after a save may be served by another replica, which
    held the configuration from before it (``REFRESH_SECONDS``): it said "saved" over the
    old values, and the next save from it was refused as stale (found by review)."""
    hidden = screen_sign_in(client, database, gent)
    with TestClient(admin_app(database, database_url)) as other:
        other.cookies.update(client.cookies)
        assert 'max="25" value="18"' in other.get("/admin").text  # the other holds version 1
        form = {**hidden, "adult_age": "17", "hook-encounter-start": "on"}
        saved = client.post("/admin/hooks", data=form, follow_redirects=False)
        assert saved.status_code == 303
        after = other.get(saved.headers["location"])
    assert 'id="saved"' in after.text
    assert 'max="25" value="17"' in after.text


def test_the_screen_needs_the_csrf_token_of_the_session(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    token, _ = access.issue_bootstrap_token(database, gent.id)
    signed_in = post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)
    assert signed_in.status_code == 303
    assert ADMIN_COOKIE in signed_in.cookies

    page = client.get("/admin")
    assert page.status_code == 200
    assert "frame-ancestors" in page.headers["content-security-policy"]
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert csrf is not None

    form = {"adult_age": "17", "hook-encounter-start": "on", "once_per_encounter": "on"}
    forged = client.post("/admin/hooks", data=form, headers={"Accept-Language": "fr"})
    assert forged.status_code == 403
    # a page in the screen's language, not the API's English JSON (found by review)
    assert forged.headers["content-type"].startswith("text/html")
    assert '<html lang="fr"' in forged.text
    assert "Formulaire refusé" in forged.text
    version = re.search(r'name="version" value="(\d+)"', page.text)
    assert version is not None
    hidden = {"csrf_token": csrf.group(1), "version": version.group(1)}
    saved = client.post("/admin/hooks", data={**form, **hidden})
    assert saved.status_code == 200
    # the same page's form again: based on a version no longer in force
    stale = client.post("/admin/hooks", data={**form, **hidden, "adult_age": "16"})
    assert stale.status_code == 409
    # the screen speaks the admin's language (the API's text was English on a Dutch page)
    assert "intussen gewijzigd" in stale.text
    assert "changed meanwhile" not in stale.text
    french = client.post(
        "/admin/hooks", data={**form, **hidden}, headers={"Accept-Language": "fr-BE"}
    )
    assert french.status_code == 409
    assert '<html lang="fr">' in french.text
    assert "modifiée entre-temps" in french.text
    no_file = client.post("/admin/partners", data=hidden, files={"file": ("", b"")})
    assert no_file.status_code == 400
    assert "Kies een CSV-bestand" in no_file.text
    hooks = stored_gent(database).config.hooks
    assert (hooks.adult_age, hooks.enabled) == (17, ["encounter-start"])


def test_the_screens_audit_writes_when_as_the_other_screens_do(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    # Before, "2026-05-17 22:30": ISO, and the UTC clock, where the nurse's and the social
    # worker's screens write dd/mm/jjjj and Belgian time; the API keeps ISO.
    late_evening = datetime(2026, 5, 17, 22, 30, tzinfo=UTC)  # after midnight in Belgium
    with database.session() as session:
        (first,) = session.scalars(select(TenantConfigVersion).filter_by(tenant_id=gent.id))
        first.created_at = late_evening
    token, _ = access.issue_bootstrap_token(database, gent.id)
    post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)

    page = client.get("/admin").text

    audit = page[page.index('<section id="audit">') :]
    audit = audit[: audit.index("</section>")]
    assert '<time datetime="2026-05-17T22:30:00+00:00">18/05/2026 00:30</time> (v1)' in audit
    assert not re.search(r"\d{4}-\d{2}-\d{2}", re.sub(r"<[^>]+>", "", audit))
    headers = bearer(database, gent.id)
    changes = client.get("/admin/api/audit", headers=headers).json()["changes"]
    assert changes[-1]["at"] == "2026-05-17T22:30:00+00:00"


def test_a_new_registration_is_offered_the_scopes_a_launch_needs(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The screen's form for a new EHR starts with the default scopes, as the API and a
    configuration file do. Before, it offered scopes without a refresh token and without
    the updates of a child or the concern Flag: saves made so waited for a sign-in."""
    token, _ = access.issue_bootstrap_token(database, gent.id)
    post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)
    page = client.get("/admin").text
    assert f'<input id="new-scopes" name="scopes" value="{DEFAULT_SCOPES}"' in page


def test_a_refused_registration_keeps_what_the_admin_typed(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Before, the form came back with the stored values (for a new one: empty) and, for a
    registration already saved, folded shut: everything typed had to be typed again."""
    token, _ = access.issue_bootstrap_token(database, gent.id)
    post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)
    page = client.get("/admin")
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    version = re.search(r'name="version" value="(\d+)"', page.text)
    assert csrf is not None
    assert version is not None
    typed = {
        "csrf_token": csrf.group(1),
        "version": version.group(1),
        "id": "nieuw",
        "name": "Nieuw EPD",
        "fhir_base_url": "https://epd.example/fhir",
        "client_id": "kindreflex-nieuw",
        "client_auth": "client_secret_basic",  # without a secret: refused
        "scopes": "launch openid",
        "frame_origins": "https://epd.example",
        "cds_issuers": "",
        "default_language": "fr",
    }
    refused = client.post("/admin/registrations", data=typed)
    assert refused.status_code == 422
    assert 'id="problems"' in refused.text
    form = refused.text[refused.text.index('id="registration-new"') :]
    form = form[: form.index("</details>")]
    for value in ("nieuw", "Nieuw EPD", "https://epd.example/fhir", "kindreflex-nieuw"):
        assert f'value="{value}"' in form
    assert 'value="launch openid"' in form
    assert '<option value="client_secret_basic" selected>' in form
    assert '<option value="fr" lang="fr" selected>' in form
    assert "https://epd.example</textarea>" in form


def test_a_used_or_wrong_bootstrap_token_shows_the_refusal(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    token, _ = access.issue_bootstrap_token(database, gent.id)
    first = post_sign_in(client, {"token": token}, follow_redirects=False)
    assert first.status_code == 303
    again = post_sign_in(client, {"token": token}, follow_redirects=False)
    assert again.status_code == 401
    assert 'id="login-refused"' in again.text
    assert re.search(
        r'<input id="token"[^>]* aria-describedby="login-refused" aria-invalid', again.text
    )
    api = client.post("/admin/api/session", json={"token": token})
    assert api.status_code == 401


def test_partner_csv_with_bad_rows_changes_nothing_and_names_every_row(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    exported = client.get("/admin/api/partners?format=csv", headers=headers).text
    lines = exported.splitlines()
    bad = [
        lines[0],
        lines[1],
        lines[2].replace(",ocj,", ",ministry,"),
        lines[3].replace("parket,parket,", "parket,parket,,", 1),
        lines[1],
    ]
    response = client.put(
        "/admin/api/partners", headers={**headers, "Content-Type": "text/csv"},
        content="\n".join(bad).encode(),
    )  # fmt: skip
    assert response.status_code == 422
    issues = [issue["diagnostics"] for issue in response.json()["issue"]]
    assert issues[0].startswith("row 3: type: ")
    assert issues[1].startswith("row 4: ")
    assert issues[2] == "row 5: the id 'vk-oost-vlaanderen' is used twice"
    after = client.get("/admin/api/partners?format=csv", headers=headers).text
    assert after == exported


def test_partner_import_as_csv_and_bundle_replaces_the_directory(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    csv_text = (
        "id,type,name,phones,website,region\n"
        'vk-west,vk,VK West-Vlaanderen,"050 40 56 60 (Brugge)",https://vk.example,west\n'
        "politie-brugge,police,Politie Brugge,,,west\n"
    )
    imported = client.put(
        "/admin/api/partners", headers={**headers, "Content-Type": "text/csv"},
        content=csv_text.encode(),
    )  # fmt: skip
    assert imported.status_code == 200, imported.text
    bundle = client.get("/admin/api/partners?format=bundle", headers=headers).json()
    kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert kinds == ["Organization", "HealthcareService"] * 2
    organisation = bundle["entry"][0]["resource"]
    assert organisation["contact"][0]["name"]["text"] == "Brugge"

    organisation["name"] = "Vertrouwenscentrum Kindermishandeling West-Vlaanderen"
    again = client.put(
        "/admin/api/partners", headers={**headers, "Content-Type": "application/fhir+json"},
        json=bundle,
    )  # fmt: skip
    assert again.status_code == 200, again.text
    partners = stored_gent(database).config.partners
    assert partners.region == "west"  # the first entry's region is the directory's
    assert [e.id for e in partners.entries] == ["vk-west", "politie-brugge"]
    assert partners.entries[0].name.endswith("West-Vlaanderen")


def test_plan_wording_changes_raise_the_plan_revision(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    assert client.get("/admin/api/plan", headers=headers).json()["revision"] == 1
    plan = {
        "steps": {"step-2": {"title": {"nl": "Peil naar veiligheid (ons ziekenhuis)"}}},
        "choices": {"safety-assessment/niet-pluis": {"help": {"nl": "Bel de sociale dienst"}}},
    }
    assert client.put("/admin/api/plan", headers=headers, json=plan).json()["plan_revision"] == 2
    # a change elsewhere keeps the plan revision; the same wording again changes nothing
    assert client.put("/admin/api/hooks", headers=headers, json={"adult_age": 17}).is_success
    same = client.put("/admin/api/plan", headers=headers, json=plan).json()
    assert same["plan_revision"] == 2
    unknown = {"choices": {"safety-assessment/maybe": {"title": {"nl": "?"}}}}
    assert client.put("/admin/api/plan", headers=headers, json=unknown).status_code == 422
    context = stored_gent(database)
    assert context.config.plan.text(Step.STEP_2, "title", "nl") == (
        "Peil naar veiligheid (ons ziekenhuis)"
    )
    assert context.config.plan.text(Step.STEP_2, "title", "fr") is None


def app_session(client: TestClient, hospital: Hospital, *roles: Role) -> tuple[str, str]:
    """The session a completed SMART launch creates (the launch itself is tested in
    test_smart_launch.py); returns the cookie secret and the session's CSRF token."""
    store = client.app.state.sessions  # type: ignore[attr-defined]
    tenant = client.app.state.tenants.get(hospital.slug)  # type: ignore[attr-defined]
    _, secret = store.create(
        NewSession(
            tenant_id=hospital.id, registration_id="ehr", path_prefix=hospital.prefix,
            registration_fingerprint=launched_under(tenant, "ehr"),
            fhir_base_url=f"https://{hospital.slug}.example/fhir",
            token_endpoint="https://ehr.example/token",
            user=AppUser("Practitioner/1", "An Janssens", frozenset({"nurse", *roles})),
            language="nl", patient_id="p1", encounter_id="e1", app_context=None,
            launch_details={}, scope="launch openid fhirUser", access_token="at",
            refresh_token=None, access_expires_at=utcnow() + timedelta(minutes=5),
        )
    )  # fmt: skip
    return secret, store.of_browser(secret, None).csrf_token


def test_nurses_and_social_workers_launched_from_the_ehr_are_not_admins(
    client: TestClient, gent: Hospital
) -> None:
    not_admins: list[tuple[Role, ...]] = [(), ("social-worker",)]
    for roles in not_admins:
        cookie, _ = app_session(client, gent, *roles)
        client.cookies.set(SESSION_COOKIE, cookie)
        for method, path in admin_routes():
            response = client.request(method, concrete(path), follow_redirects=False)
            assert response.status_code == 403, (roles, method, path, response.text)


def test_an_ehr_user_with_the_admin_role_administers_their_own_hospital(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    cookie, csrf = app_session(client, gent, "admin")
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get("/admin/api/config").status_code == 200
    assert client.put("/admin/api/hooks", json={"adult_age": 19}).status_code == 403  # no CSRF
    changed = client.put("/admin/api/hooks", json={"adult_age": 19}, headers={CSRF_HEADER: csrf})
    assert changed.status_code == 200
    newest = client.get("/admin/api/audit").json()["changes"][0]
    assert newest["actor"] == "An Janssens <https://az-gent.example/fhir/Practitioner/1>"
    # the launch belongs to az-gent: at az-brugge it is no session at all
    assert client.get("/t/az-brugge/admin/api/config").status_code == 401


@pytest.mark.parametrize("how", ["screen", "api"])
def test_an_ehr_admin_who_signs_out_is_signed_out_of_the_app(
    client: TestClient, database: Database, gent: Hospital, how: str
) -> None:
    """Afmelden (and DELETE /admin/api/session) ended only a bootstrap token's session:
    an administrator who came through the EHR saw the sign-in page, while her session
    still opened the admin screen, the worklist and the figures (found by review)."""
    cookie, csrf = app_session(client, gent, "admin", "social-worker")
    client.cookies.set(SESSION_COOKIE, cookie)
    assert client.get("/admin/api/config").status_code == 200
    launch = client.app.state.sessions.of_browser(cookie, None).id  # type: ignore[attr-defined]
    pinned = {LAUNCH_PARAM: launch}  # the app's own links name their launch
    assert client.get("/api/cases", params=pinned).status_code == 200
    headers = {CSRF_HEADER: csrf}

    if how == "screen":
        out = client.post("/admin/logout", headers=headers, follow_redirects=False)
        assert out.status_code == 303
    else:
        out = client.delete("/admin/api/session", headers=headers)
        assert out.status_code == 204
    assert any(
        line.startswith(f"{SESSION_COOKIE}=;") and "Partitioned" in line
        for line in out.headers.get_list("set-cookie")
    )

    client.cookies.set(SESSION_COOKIE, cookie)  # a browser that kept it
    assert client.get("/admin/api/config").status_code == 401
    assert client.get("/api/cases").status_code == 401
    # the page a link of the app named by its launch too (found by review: untested)
    assert client.get("/api/cases", params=pinned).status_code == 401
    client.cookies.clear()
    events = client.get("/admin/api/audit", headers=bearer(database, gent.id)).json()["events"]
    signed_out = [e for e in events if e["action"] == "admin-signed-out"]
    assert [e["actor"] for e in signed_out] == [
        "An Janssens <https://az-gent.example/fhir/Practitioner/1>"
    ]


def _refuse_admin_events(database: Database) -> None:
    """The audit's table refuses every write: a fault in the real database (a trigger)."""
    if database.engine.dialect.name == "sqlite":
        ddl = [
            "CREATE TRIGGER refuse_events BEFORE INSERT ON admin_events "
            "BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END"
        ]
    else:
        ddl = [
            "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit unavailable'; END $$",
            "CREATE TRIGGER refuse_events BEFORE INSERT ON admin_events "
            "FOR EACH ROW EXECUTE FUNCTION refuse_events()",
        ]
    with database.session() as session:
        for statement in ddl:
            session.execute(text(statement))


def test_a_sign_out_the_audit_cannot_record_is_not_half_done(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The EHR admin's sign-out ended her launches and then wrote its audit event, in two
    transactions: with the audit failing she was signed out unaudited. Now both or neither:
    she is told it failed and is still signed in (found by review)."""
    cookie, csrf = app_session(client, gent, "admin")
    _refuse_admin_events(database)
    browser = TestClient(client.app, raise_server_exceptions=False)
    browser.cookies.set(SESSION_COOKIE, cookie)

    out = browser.delete("/admin/api/session", headers={CSRF_HEADER: csrf})

    assert out.status_code == 500
    assert not any(
        line.startswith(f"{SESSION_COOKIE}=;") for line in out.headers.get_list("set-cookie")
    )
    assert browser.get("/admin/api/config").status_code == 200


def test_a_change_based_on_an_older_version_is_refused_not_lost(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    headers = bearer(database, gent.id)
    read = client.get("/admin/api/config", headers=headers)
    etag = read.headers["etag"]
    first = client.put("/admin/api/hooks", headers={**headers, "If-Match": etag},
                       json={"adult_age": 17})  # fmt: skip
    assert first.status_code == 200
    assert first.headers["etag"] != etag
    late = client.put("/admin/api/hooks", headers={**headers, "If-Match": etag},
                      json={"adult_age": 16})  # fmt: skip
    assert late.status_code == 412
    assert "changed meanwhile" in late.json()["issue"][0]["diagnostics"]
    hooks = stored_gent(database).config.hooks
    assert hooks.adult_age == 17


@pytest.mark.parametrize(
    "part",
    ["config", "config.yaml", "registrations", "hooks", "partners", "partners?format=csv",
     "partners?format=bundle", "plan"],
)  # fmt: skip
def test_every_part_read_carries_the_version_a_change_of_it_is_based_on(
    client: TestClient, database: Database, gent: Hospital, part: str
) -> None:
    """The guide says: send If-Match with the ETag of your GET. Only the whole
    configuration's GET had one; a script reading the hooks or the partners had no version
    to send, and its change could silently undo another's."""
    headers = bearer(database, gent.id)
    version = stored_gent(database).version
    read = client.get(f"/admin/api/{part}", headers=headers)
    assert read.status_code == 200
    assert read.headers["etag"] == f'"{version}"'


def test_a_change_based_on_the_version_another_instance_just_gave_is_taken(
    client: TestClient, database: Database, database_url: str, gent: Hospital
) -> None:
    """Two instances behind a load balancer (two pods): a script's second change, sent with
    the ETag the first change returned from instance A, landed on B, whose copy of the
    configuration was a moment older. B refused it as stale, "now version 2" of a version 3
    the script had just been given, and a reload on B gave "2" again (found by review)."""
    headers = bearer(database, gent.id)
    with TestClient(admin_app(database, database_url)) as other_instance:
        base = other_instance.get("/admin/api/hooks", headers=headers)  # B holds this version
        first = client.put("/admin/api/hooks", json={"adult_age": 19},
                           headers={**headers, "If-Match": base.headers["etag"]})  # fmt: skip
        assert first.status_code == 200

        read_on_b = other_instance.get("/admin/api/hooks", headers=headers)
        assert read_on_b.headers["etag"] == first.headers["etag"]
        on_first = {**headers, "If-Match": first.headers["etag"]}
        second = other_instance.put("/admin/api/hooks", json={"adult_age": 20}, headers=on_first)
        assert second.status_code == 200
        without_if_match = client.put("/admin/api/hooks", json={"adult_age": 21}, headers=headers)
        assert without_if_match.status_code == 200
    assert stored_gent(database).config.hooks.adult_age == 21


def test_an_if_match_that_is_no_version_number_is_a_400_not_a_500(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    # "²" passed str.isdigit() and 5000 digits too; int() refused both: a 500
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    for forged in ('"²"', '"' + "7" * 5000 + '"', '"7a"', '"-1"'):
        if_match = {"If-Match": forged.encode("latin-1")}  # as a header's bytes arrive
        refused = client.put("/admin/api/hooks", headers={**headers, **if_match},
                             json={"adult_age": 17})  # fmt: skip
        assert refused.status_code == 400
        assert refused.json() == {"detail": 'If-Match must be a configuration version such as "7"'}
    assert client.get("/admin/api/config", headers=headers).json() == before


def test_a_frame_origin_that_is_no_ascii_origin_is_refused_by_the_api(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    # before: saved as typed, then every page of the hospital was a 500 (a Unicode domain),
    # or its header carried other directives (";") or lines (CR/LF)
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    for origin in ("https://ziekenhuis.例え.jp", "https://a; script-src 'unsafe-inline' *",
                   "https://a\r\nX-Injected: 1"):  # fmt: skip
        body = {"name": "EPD", "fhir_base_url": "https://x/fhir", "client_id": "k",
                "frame_origins": ["https://epd.example", origin]}  # fmt: skip
        refused = client.put("/admin/api/registrations/other", headers=headers, json=body)
        assert refused.status_code == 422
        issue = refused.json()["issue"][0]
        assert issue["expression"] == ["registrations[1].frame_origins"]
        assert "Punycode" in issue["diagnostics"]
    assert client.get("/admin/api/config", headers=headers).json() == before


def _refused_registration(
    client: TestClient, headers: dict[str, str], registration_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT ``body`` as a registration, refused (422) and nothing stored: its one issue."""
    before = client.get("/admin/api/config", headers=headers).json()
    refused = client.put(f"/admin/api/registrations/{registration_id}", headers=headers, json=body)
    assert refused.status_code == 422, refused.text
    assert client.get("/admin/api/config", headers=headers).json() == before
    (issue,) = refused.json()["issue"]
    return dict(issue)


def test_another_hospitals_ehr_client_cannot_be_registered_here(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    # Our signing key is the deployment's: a sign-in started at AZ Gent with AZ Brugge's
    # client would be accepted by Brugge's EHR, and what a Brugge clinician then records
    # would land on Gent's worklist (found by review). Brugge is not named in the refusal.
    headers = bearer(database, gent.id)
    theirs = {"name": "EPD", "fhir_base_url": "https://az-brugge.example/fhir",
              "client_id": "kindreflex"}  # fmt: skip
    issue = _refused_registration(client, headers, "brugge-ehr", theirs)
    assert issue["expression"] == ["registrations[1].client_id"]
    assert "registered by another hospital" in issue["diagnostics"]
    assert "brugge" not in issue["diagnostics"].replace("az-brugge.example", "")

    own = {**theirs, "client_id": "kindreflex-gent"}  # the same EHR, a client of Gent's own
    saved = client.put("/admin/api/registrations/brugge-ehr", headers=headers, json=own)
    assert saved.status_code == 200, saved.text


@pytest.mark.parametrize(
    "written",
    [
        "https://AZ-Brugge.example/fhir",
        "https://az-brugge.example:443/fhir",
        "https://az-brugge.example./fhir/",
        "https://az-brugge.example/%66hir",  # %66 is "f" (RFC 3986 6.2.2.2)
        "https://az-brugge.example/%66%68%69%72",
    ],
)
def test_another_hospitals_ehr_client_written_another_way_is_refused_too(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital, written: str
) -> None:
    """The same FHIR base in another spelling (capitals, the default port, the host's
    trailing dot, a letter of the path percent-encoded) is the same EHR: compared as
    written, it passed (found by review)."""
    headers = bearer(database, gent.id)
    theirs = {"name": "EPD", "fhir_base_url": written, "client_id": "kindreflex"}
    issue = _refused_registration(client, headers, "brugge-ehr", theirs)
    assert "registered by another hospital" in issue["diagnostics"]


def test_a_fhir_base_url_with_a_user_name_or_password_is_refused(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    """``https://gent@az-brugge.example/fhir`` is AZ Brugge's server, and with it AZ Gent's
    admin registered Brugge's EHR client (found by review). A FHIR base has no user-info:
    refused as such, whoever's client it names, and the password is not shown back."""
    headers = bearer(database, gent.id)
    for written in ("https://gent@az-brugge.example/fhir",
                    "https://kindreflex:s3cr3t@az-gent-epd.example/fhir"):  # fmt: skip
        body = {"name": "EPD", "fhir_base_url": written, "client_id": "kindreflex"}
        issue = _refused_registration(client, headers, "epd", body)
        assert issue["expression"] == ["registrations[1].fhir_base_url"]
        assert "user name or password" in issue["diagnostics"]
        assert "s3cr3t" not in issue["diagnostics"]


def test_another_hospitals_client_stored_with_user_info_is_refused_here_too(
    client: TestClient, database: Database, gent: Hospital, brugge: Hospital
) -> None:
    """AZ Brugge's registration saved with a name before its host, before such a base was
    refused, is still its EHR client: Gent registering it without the name is refused."""
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    current = tenants.get("az-brugge")
    written = "https://brugge@az-brugge.example/fhir"
    registration = current.config.registrations[0].model_copy(update={"fhir_base_url": written})
    tenants.save("az-brugge", current.config.model_copy(update={"registrations": [registration]}),
                 actor="stored before the check")  # fmt: skip
    headers = bearer(database, gent.id)
    theirs = {"name": "EPD", "fhir_base_url": "https://az-brugge.example/fhir",
              "client_id": "kindreflex"}  # fmt: skip
    issue = _refused_registration(client, headers, "brugge-ehr", theirs)
    assert "registered by another hospital" in issue["diagnostics"]


def test_a_fhir_base_url_in_clear_off_this_machine_is_refused_by_the_api(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    # The EHR's tokens go to it (SMART, and the CDS call's fhirAuthorization): RFC 6750
    # sends them over TLS only. Before, http://… was saved and the CDS fallback used it.
    headers = bearer(database, gent.id)
    body = {"name": "EPD", "fhir_base_url": "http://epd.example/fhir", "client_id": "k"}
    issue = _refused_registration(client, headers, "other", body)
    assert issue["expression"] == ["registrations[1].fhir_base_url"]
    assert "not an https URL" in issue["diagnostics"]

    on_this_machine = {**body, "fhir_base_url": "http://127.0.0.1:8080/fhir"}
    saved = client.put("/admin/api/registrations/other", headers=headers, json=on_this_machine)
    assert saved.status_code == 200, saved.text


def test_a_stored_bad_frame_origin_is_left_out_of_the_pages_headers_not_a_500(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """A version stored before origins were checked still serves every page: the bad
    origin is left out of frame-ancestors, and the admin can correct it on the screen."""
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    current = stored_gent(database)
    origins = ["https://ziekenhuis.例え.jp", "https://b; script-src *", "https://epd.example"]
    registration = current.config.registrations[0].model_copy(update={"frame_origins": origins})
    tenants.save("az-gent", current.config.model_copy(update={"registrations": [registration]}),
                 actor="stored before the check")  # fmt: skip
    screen_sign_in(client, database, gent)
    page = client.get("/admin")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].endswith("frame-ancestors https://epd.example")
    error_page = client.get("/launch")  # a nurse's error page, before a launch
    assert error_page.status_code == 400
    assert "script-src *" not in error_page.headers["content-security-policy"]


def test_a_second_registration_of_the_same_ehr_is_refused_as_never_used(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Found by review: a launch takes the first registration of its FHIR base, so a
    second one was saved, listed, and its client, roles and frames never used."""
    headers = bearer(database, gent.id)
    (first,) = client.get("/admin/api/registrations", headers=headers).json()
    again = {"name": "EPD 2", "fhir_base_url": first["fhir_base_url"] + "/",
             "client_id": "kindreflex-2"}  # fmt: skip
    issue = _refused_registration(client, headers, "ehr2", again)
    assert issue["expression"] == ["registrations[1].fhir_base_url"]
    assert "always takes the first" in issue["diagnostics"]
    # nor two registrations of one id, in a whole configuration sent
    before = client.get("/admin/api/config", headers=headers).json()
    twice = {**before["configuration"]}
    twice["registrations"] = [first, {**first, "fhir_base_url": "https://other.example/fhir"}]
    refused = client.put("/admin/api/config", headers=headers, json=twice)
    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["registrations[1].id"]
    assert "is used twice" in issue["diagnostics"]
    # one stored before the check still loads: the hospital is not taken off the air
    stored = stored_gent(database).config.model_dump(mode="json")
    stored["registrations"] *= 2
    loaded = TenantConfiguration.model_validate(stored)
    assert loaded.registration_for_iss(first["fhir_base_url"]) == loaded.registrations[0]


@pytest.mark.parametrize("name", ["AZ " + "Gent" * 50, "AZ\x00Gent", "AZ\nGent", ""])
def test_a_hospital_name_the_database_cannot_hold_is_refused_not_a_500(
    client: TestClient, database: Database, gent: Hospital, name: str
) -> None:
    """Found by review: a name over the column's 200 characters, or with a NUL, was a 500
    on PostgreSQL (a line break would forge a line of the audit read as text)."""
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    changed = {**before["configuration"], "name": name}
    refused = client.put("/admin/api/config", headers=headers, json=changed)
    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["name"]
    assert client.get("/admin/api/config", headers=headers).json() == before


# --- Removing a registration something depends on ---------------------------------------


def _undelivered_save(
    database: Database, hospital: Hospital, state: DeliveryState, registration: str = "ehr"
) -> int:
    """A nurse's triage save through ``registration``, undelivered in ``state``."""
    server = f"https://{hospital.slug}.example/fhir"
    return undelivered_save(database, hospital.id, server, state, registration)


def _case(database: Database, hospital: Hospital, server: str, status: str = "open") -> None:
    case_on(database, hospital.id, server, status)


def test_removing_a_registration_with_undelivered_saves_is_refused_by_the_api_unless_forced(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """A save waiting for a sign-in is sent only by a later launch through the same
    registration (``Outbox.adopt_session``): DELETE removed it all the same and said
    nothing, the save stranded and ``kindreflex outbox waiting`` still advising to open
    Kindreflex from the chart (found by review). Now a 409 counts what depends on it
    (pending or waiting writes, open cases of its server), and ``?force=true`` removes it,
    the admin events recording what it left."""
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _undelivered_save(database, gent, DeliveryState.PENDING)
    _undelivered_save(database, gent, DeliveryState.DELIVERED)  # in the record: no matter
    _undelivered_save(database, gent, DeliveryState.FAILED)  # refused for good: no matter
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION, "other")
    _case(database, gent, "https://az-gent.example/fhir")
    _case(database, gent, "https://AZ-Gent.example/fhir/")  # the same server, written so
    _case(database, gent, "https://az-gent.example/fhir", status="closed")
    _case(database, gent, "https://elsewhere.example/fhir")
    headers = bearer(database, gent.id)

    refused = client.delete("/admin/api/registrations/ehr", headers=headers)

    assert refused.status_code == 409, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["code"] == "conflict"
    said = issue["diagnostics"]
    assert "3 undelivered writes through it (1 pending, 2 waiting for a sign-in)" in said
    assert "2 open cases on the worklist depend on it" in said
    assert "?force=true" in said
    assert [r.id for r in stored_gent(database).config.registrations] == ["ehr"]

    removed = client.delete("/admin/api/registrations/ehr?force=true", headers=headers)

    assert removed.status_code == 200, removed.text
    assert stored_gent(database).config.registrations == []
    event = client.get("/admin/api/audit", headers=headers).json()["events"][0]
    assert event["action"] == "registration-removed-anyway"
    assert event["detail"] == {
        "registration": "ehr", "undelivered_writes": 3, "pending": 1,
        "waiting_for_sign_in": 2, "open_cases": 2,
    }  # fmt: skip


def test_a_registration_nothing_depends_on_is_removed_by_the_api_at_once(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Delivered or refused saves, closed cases, a case another registration of the same
    server still opens: none of them needs this registration."""
    _undelivered_save(database, gent, DeliveryState.DELIVERED)
    _undelivered_save(database, gent, DeliveryState.CONFLICT)
    _case(database, gent, "https://az-gent.example/fhir", status="closed")
    headers = bearer(database, gent.id)

    removed = client.delete("/admin/api/registrations/ehr", headers=headers)

    assert removed.status_code == 200, removed.text
    assert stored_gent(database).config.registrations == []
    assert client.delete("/admin/api/registrations/ehr", headers=headers).status_code == 404
    events = client.get("/admin/api/audit", headers=headers).json()["events"]
    assert "registration-removed-anyway" not in [e["action"] for e in events]


def test_the_api_documents_how_to_remove_a_registration_anyway(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][
        "/admin/api/registrations/{registration_id}"
    ]
    removal = operation["delete"]
    (force,) = [p for p in removal["parameters"] if p["name"] == "force"]
    assert force["in"] == "query"
    assert force["schema"]["default"] is False
    assert "undelivered" in force["description"]
    assert "?force=true" in removal["responses"]["409"]["description"].replace("`", "")
    # and so do the changes that may remove or move a registration along with the rest
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/admin/api/config",
        "/admin/api/config.yaml",
        "/admin/api/registrations/{registration_id}",
    ):
        put = paths[path]["put"]
        assert [p["name"] for p in put["parameters"] if p["in"] == "query"] == ["force"], path
        assert "?force=true" in put["responses"]["409"]["description"].replace("`", ""), path


def _events_of_registrations(client: TestClient, headers: dict[str, str]) -> list[Any]:
    events = client.get("/admin/api/audit", headers=headers).json()["events"]
    return [e for e in events if e["action"].startswith("registration")]


def test_a_whole_configuration_that_removes_a_registration_something_depends_on_is_refused(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Only DELETE of the registration asked: the JSON PUT of the whole configuration
    without it, or a YAML file without it, removed it in silence, stranding the save
    waiting for it and the open case of its server (found by review). Now both refuse it
    as DELETE does (409, the same counts and words), nothing changed, unless ?force=true,
    which the admin events record."""
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _undelivered_save(database, gent, DeliveryState.PENDING)
    _case(database, gent, "https://az-gent.example/fhir")
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    without = {**before["configuration"], "registrations": []}
    file = export_yaml(stored_gent(database).config.model_copy(update={"registrations": []}))

    for refused in (
        client.put("/admin/api/config", headers=headers, json=without),
        client.put("/admin/api/config.yaml", headers=headers, content=file.encode()),
    ):
        assert refused.status_code == 409, refused.text
        (issue,) = refused.json()["issue"]
        assert issue["code"] == "conflict"
        said = issue["diagnostics"]
        assert "registration 'ehr' (https://az-gent.example/fhir) was not removed" in said
        assert "2 undelivered writes through it (1 pending, 1 waiting for a sign-in)" in said
        assert "1 open case on the worklist depend on it" in said
        assert "or send ?force=true to remove it anyway" in said
    assert client.get("/admin/api/config", headers=headers).json() == before
    assert _events_of_registrations(client, headers) == []

    forced = client.put("/admin/api/config.yaml?force=true", headers=headers, content=file.encode())

    assert forced.status_code == 200, forced.text
    assert stored_gent(database).config.registrations == []
    (event,) = _events_of_registrations(client, headers)
    assert event["action"] == "registration-removed-anyway"
    assert event["detail"] == {
        "registration": "ehr", "undelivered_writes": 2, "pending": 1,
        "waiting_for_sign_in": 1, "open_cases": 1,
    }  # fmt: skip


def test_a_registration_moved_to_another_fhir_server_is_refused_like_its_removal(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The same id naming another FHIR server strands the old server's saves and cases as
    its removal does: a launch takes over only the saves of its own id and server. Refused
    through the registration's PUT and the whole configuration, unless ?force=true."""
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _case(database, gent, "https://az-gent.example/fhir")
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    (registration,) = before["configuration"]["registrations"]
    moved = {**registration, "fhir_base_url": "https://new.example/fhir", "client_secret": "s"}
    whole = {**before["configuration"], "registrations": [moved]}

    for refused in (
        client.put("/admin/api/registrations/ehr", headers=headers, json=moved),
        client.put("/admin/api/config", headers=headers, json=whole),
    ):
        assert refused.status_code == 409, refused.text
        (issue,) = refused.json()["issue"]
        said = issue["diagnostics"]
        assert (
            "registration 'ehr' (https://az-gent.example/fhir) was not moved to "
            "https://new.example/fhir: 1 undelivered write through it (0 pending, 1 waiting "
            "for a sign-in) and 1 open case on the worklist depend on it"
        ) in said
        assert "or send ?force=true to move it anyway" in said
    assert client.get("/admin/api/config", headers=headers).json() == before
    # the same server written another way moves the saves waiting for it just the same: a
    # launch takes over the saves queued with the base as written
    same = {**registration, "fhir_base_url": "https://AZ-Gent.example/fhir"}
    respelled = client.put("/admin/api/registrations/ehr", headers=headers, json=same)
    assert respelled.status_code == 409, respelled.text
    # a trailing slash is no other spelling: the base is stored without it
    slashed = {**registration, "fhir_base_url": "https://az-gent.example/fhir/"}
    assert (
        client.put("/admin/api/registrations/ehr", headers=headers, json=slashed).status_code == 200
    )

    forced = client.put("/admin/api/registrations/ehr?force=true", headers=headers, json=moved)

    assert forced.status_code == 200, forced.text
    (stored,) = stored_gent(database).config.registrations
    assert stored.fhir_base_url == "https://new.example/fhir"
    (event,) = _events_of_registrations(client, headers)
    assert event["action"] == "registration-moved-anyway"
    assert event["detail"]["moved_to"] == "https://new.example/fhir"
    assert event["detail"]["open_cases"] == 1


def test_a_configuration_replacing_a_registration_by_another_of_its_server_counts_the_new_one(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """A file removing registration ``ehr`` and adding ``epd-2`` of the same FHIR server:
    its open cases are still worked from launches of ``epd-2``, but a save waiting for a
    sign-in through ``ehr`` is not taken over by them. The count is made against the new
    configuration: the cases do not count, the save does; with the save delivered the
    file is taken at once."""
    entry = _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _case(database, gent, "https://az-gent.example/fhir")
    headers = bearer(database, gent.id)
    before = client.get("/admin/api/config", headers=headers).json()
    (registration,) = before["configuration"]["registrations"]
    replaced = {**registration, "id": "epd-2", "client_id": "kindreflex-2", "client_secret": "s"}
    whole = {**before["configuration"], "registrations": [replaced]}

    refused = client.put("/admin/api/config", headers=headers, json=whole)

    assert refused.status_code == 409, refused.text
    (issue,) = refused.json()["issue"]
    assert (
        "1 undelivered write through it (0 pending, 1 waiting for a sign-in) and 0 open cases "
        "on the worklist depend on it"
    ) in issue["diagnostics"]
    with database.session() as session:
        session.execute(
            update(OutboxEntry).where(OutboxEntry.id == entry).values(state=DeliveryState.DELIVERED)
        )

    taken = client.put("/admin/api/config", headers=headers, json=whole)

    assert taken.status_code == 200, taken.text
    assert [r.id for r in stored_gent(database).config.registrations] == ["epd-2"]
    assert _events_of_registrations(client, headers) == []


def _removal_page(client: TestClient) -> tuple[str, dict[str, str]]:
    """The screen's question before removing ``ehr``, and its form's fields."""
    page = client.get("/admin/registrations/ehr/delete")
    assert page.status_code == 200, page.text
    form = re.search(
        r'<form method="post" action="/admin/registrations/ehr/delete">(.*?)</form>',
        page.text,
        re.S,
    )
    assert form is not None
    fields = dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(1))
    )
    return page.text, fields


def test_removing_a_registration_on_the_screen_asks_first_and_says_what_depends_on_it(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """One click on "Verwijderen" removed the registration, no question asked, nothing said
    of the save waiting for it (found by review). The button leads to a question that
    counts what depends on it; "Toch verwijderen" removes it, "Annuleren" goes back."""
    _undelivered_save(database, gent, DeliveryState.WAITING_AUTHORISATION)
    _case(database, gent, "https://az-gent.example/fhir")
    hidden = screen_sign_in(client, database, gent)
    overview = client.get("/admin").text
    assert (
        '<a href="/admin/registrations/ehr/delete" class="button secondary" id="delete-ehr">'
        in overview
    )

    # a form of the screen of before (one click, no confirmation): the question, not removed
    asked = client.post("/admin/registrations/ehr/delete", data=hidden)
    assert asked.status_code == 200
    assert 'id="remove-confirm"' in asked.text
    assert 'id="registration-ehr"' in client.get("/admin").text

    page, fields = _removal_page(client)
    assert (
        '<h1 id="remove-title" tabindex="-1" data-focus-on-load>Registratie EPD verwijderen?</h1>'
        in page
    )
    assert "1 opslag die wacht op een aanmelding" in page
    assert "1 open dossier op de werklijst" in page
    assert 'id="remove-pending"' not in page
    assert ">Toch verwijderen</button>" in page
    cancel = '<a href="/admin#registration-ehr" class="button secondary" id="remove-cancel">'
    assert f"{cancel}Annuleren</a>" in page
    assert fields["confirmed"] == "yes"
    assert (fields["shown_writes"], fields["shown_cases"]) == ("1", "1")
    french = client.get("/admin/registrations/ehr/delete", headers={"Accept-Language": "fr"})
    assert "1 saisie enregistrée qui attend une connexion" in french.text
    assert ">Supprimer tout de même</button>" in french.text

    # the form without its CSRF token is refused, as every form of the screen
    forged = client.post("/admin/registrations/ehr/delete", data={**fields, "csrf_token": "0"})
    assert forged.status_code == 403
    # a save waiting since the page was shown: asked again, with the new count
    _undelivered_save(database, gent, DeliveryState.PENDING)
    again = client.post("/admin/registrations/ehr/delete", data=fields)
    assert again.status_code == 409
    assert 'role="alert" id="remove-grown"' in again.text
    assert "1 opslag die nog aan de FHIR-server geleverd wordt" in again.text
    assert 'id="registration-ehr"' in client.get("/admin").text

    _, fields = _removal_page(client)
    removed = client.post("/admin/registrations/ehr/delete", data=fields, follow_redirects=False)

    assert removed.status_code == 303
    assert stored_gent(database).config.registrations == []
    assert 'id="registration-ehr"' not in client.get(removed.headers["location"]).text
    (event,) = [e for e in access.events(database, gent.id) if e.action.startswith("registration")]
    assert event.detail["undelivered_writes"] == 2
    # the question of a registration removed meanwhile says so, and changes nothing
    gone = client.get("/admin/registrations/ehr/delete")
    assert gone.status_code == 404
    assert "Er is geen registratie <code>ehr</code> (meer)" in gone.text


def test_a_registration_nothing_depends_on_is_still_removed_only_once_confirmed(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """Decision: the screen asks also when nothing depends on the registration; its client
    secret, roles and issuers go with it, and the button sits beside "Test the connection"."""
    screen_sign_in(client, database, gent)
    page, fields = _removal_page(client)
    assert "Er hangt niets van deze registratie af" in page
    assert 'id="remove-depending"' not in page
    assert ">Verwijderen</button>" in page
    assert (fields["shown_writes"], fields["shown_cases"]) == ("0", "0")

    removed = client.post("/admin/registrations/ehr/delete", data=fields, follow_redirects=False)

    assert removed.status_code == 303
    assert stored_gent(database).config.registrations == []
    assert not [e for e in access.events(database, gent.id) if e.action.startswith("registration")]


# --- A CDS issuer's configured keys: public ones only ----------------------------------


def _private_jwk(kid: str = "epd-cds-1") -> dict[str, Any]:
    """The EHR's RSA signing key as a JWK, private members and all."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**json.loads(RSAAlgorithm.to_jwk(private)), "kid": kid, "alg": "RS384"}


def test_an_issuers_key_set_holding_a_private_key_is_refused_not_stored_and_shown(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The EHR's private signing key, pasted as the issuer's keys, was accepted, stored and
    shown in every export, the screen's YAML box and every admin's audit, in every version
    kept: anyone who read it could sign CDS calls as the EHR (found by review). A set with
    a private member (RSA's d, p, q, dp, dq, qi, oth; EC's d; a symmetric k) is refused
    when saved, by the registration, the whole configuration or a YAML file, the reason
    naming the members and the key's place, never their values."""
    jwk = _private_jwk()
    public = {m: v for m, v in jwk.items() if m in ("kty", "n", "e", "kid", "alg")}
    headers = bearer(database, gent.id)
    registration = client.get("/admin/api/registrations", headers=headers).json()[0]
    before = stored_gent(database)

    issuers = [{"iss": "https://az-gent.example", "jwks": {"keys": [public, jwk]}}]
    refused = client.put(
        "/admin/api/registrations/ehr",
        headers=headers,
        json={**registration, "cds_issuers": issuers},
    )

    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == ["registrations[0].cds_issuers[0].jwks"]
    assert issue["diagnostics"].startswith(
        "registrations[0].cds_issuers[0].jwks: key 2 of the JWK Set holds private key material "
        "(d, dp, dq, p, q, qi): an issuer's public keys are wanted. Send the public key only"
    )
    for secret in (jwk["d"], jwk["p"], jwk["q"], jwk["dp"], jwk["dq"], jwk["qi"]):
        assert secret not in refused.text
    symmetric = {"kty": "oct", "k": "c2VjcmV0LW9mLXRoZS1laHI", "kid": "hmac"}
    for key in (symmetric, {**public, "oth": []}):
        one = [{"iss": "https://az-gent.example", "jwks": {"keys": [public, key]}}]
        changed = {**registration, "cds_issuers": one}
        refused = client.put("/admin/api/registrations/ehr", headers=headers, json=changed)
        assert refused.status_code == 422, refused.text
        assert "c2VjcmV0" not in refused.text
    config = client.get("/admin/api/config", headers=headers).json()["configuration"]
    config["registrations"][0]["cds_issuers"] = issuers
    assert client.put("/admin/api/config", headers=headers, json=config).status_code == 422
    text = export_yaml(before.config).replace(
        "cds_issuers: []", f"cds_issuers: {json.dumps(issuers)}"
    )
    assert "cds_issuers: [{" in text
    as_yaml = client.put("/admin/api/config.yaml", headers=headers, content=text)
    assert as_yaml.status_code == 422, as_yaml.text
    assert jwk["d"] not in as_yaml.text
    assert "holds private key material" in as_yaml.text

    assert stored_gent(database).version == before.version
    assert jwk["d"] not in client.get("/admin/api/audit", headers=headers).text
    # the public key alone is taken
    issuers = [{"iss": "https://az-gent.example", "jwks": {"keys": [public]}}]
    changed = {**registration, "cds_issuers": issuers}
    assert client.put("/admin/api/registrations/ehr", headers=headers, json=changed).is_success


# --- How long a text of the configuration may be ----------------------------------------


def _url_of(length: int) -> str:
    """An https URL of exactly ``length`` characters."""
    base = "https://www.az-gent.be/"
    return base + "a" * (length - len(base))


#: A text of the configuration, as a part's PUT takes it: (the path, the body with the text
#: ``value`` in place given the part as read, where the refusal names it, the limit, the
#: text of that length).
LONG_TEXTS: dict[str, tuple[str, Any, str, int, Any]] = {
    "a registration's name": (
        "/admin/api/registrations/ehr",
        lambda part, value: {**part, "name": value},
        "registrations[0].name",
        200,
        lambda length: "E" * length,
    ),
    "a client id": (
        "/admin/api/registrations/ehr",
        # another client: its secret with it
        lambda part, value: {**part, "client_id": value, "client_secret": "nieuw-geheim"},
        "registrations[0].client_id",
        255,
        lambda length: "k" * length,
    ),
    "a CDS client id (sub)": (
        "/admin/api/registrations/ehr",
        lambda part, value: {
            **part,
            "cds_issuers": [
                {"iss": "https://az-gent.example", "jku": [_url_of(40)], "subjects": [value]}
            ],
        },
        "registrations[0].cds_issuers[0].subjects[0]",
        255,
        lambda length: "s" * length,
    ),
    "a card's source URL": (
        "/admin/api/hooks",
        lambda part, value: {**part, "source_url": value},
        "hooks.source_url",
        2048,
        _url_of,
    ),
    "a local trigger code": (
        "/admin/api/hooks",
        lambda part, value: {
            **part,
            "local_trigger_codes": [
                {"trigger": "domestic-violence", "system": _url_of(40), "code": value}
            ],
        },
        "hooks.local_trigger_codes[0].code",
        255,
        lambda length: "T" * length,
    ),
    "a step's help": (
        "/admin/api/plan",
        lambda part, value: {**part, "steps": {"step-2": {"help": {"nl": value}}}},
        "plan.steps.step-2.help.nl",
        4000,
        lambda length: "h" * length,
    ),
    "the partners' region": (
        "/admin/api/partners",
        lambda part, value: {**part, "region": value},
        "partners.region",
        200,
        lambda length: "r" * length,
    ),
}


@pytest.mark.parametrize("case", list(LONG_TEXTS))
def test_a_text_longer_than_its_field_takes_is_refused_and_one_at_the_limit_saved(
    client: TestClient, database: Database, gent: Hospital, case: str
) -> None:
    """A text of the configuration had no bound but the body's 4 MiB: a name of megabytes
    was saved, and went into every page, export and audit. Each kind of text has its limit
    (``tenant_config``), checked when saved: one character more is refused (422, where and
    the limit), nothing saved; a text of the limit is saved."""
    path, body_with, where, limit, text_of = LONG_TEXTS[case]
    headers = bearer(database, gent.id)
    read = client.get(path.removesuffix("/ehr"), headers=headers).json()
    part = read[0] if path.endswith("/ehr") else read  # the registrations: the first
    before = stored_gent(database)

    refused = client.put(path, headers=headers, json=body_with(part, text_of(limit + 1)))

    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["expression"] == [where]
    assert f"at most {limit} characters ({limit + 1} given)" in issue["diagnostics"]
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)
    saved = client.put(path, headers=headers, json=body_with(part, text_of(limit)))
    assert saved.status_code == 200, saved.text
    assert stored_gent(database).version == before.version + 1


def test_a_partner_file_with_a_text_too_long_is_refused_naming_its_row(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """A CSV file or FHIR Bundle of partners is checked as the JSON is: it was saved as read."""
    headers = bearer(database, gent.id)
    lines = client.get("/admin/api/partners?format=csv", headers=headers).text.splitlines()
    name = lines[0].split(",").index("name")
    before = stored_gent(database)

    def with_name(length: int) -> bytes:
        row = next(csv.reader([lines[1]]))
        row[name] = "N" * length
        return "\n".join([lines[0], ",".join(f'"{cell}"' for cell in row)]).encode()

    csv_headers = {**headers, "Content-Type": "text/csv"}
    refused = client.put("/admin/api/partners", headers=csv_headers, content=with_name(201))
    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issue"]
    assert issue["diagnostics"] == "row 2: name: at most 200 characters (201 given)"
    after = stored_gent(database)
    assert (after.version, after.config) == (before.version, before.config)
    saved = client.put("/admin/api/partners", headers=csv_headers, content=with_name(200))
    assert saved.status_code == 200, saved.text
    assert stored_gent(database).config.partners.entries[0].name == "N" * 200


def test_a_configuration_stored_with_texts_longer_than_today_still_loads_and_works(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    """The limits are checked when saved: a version stored before them loads, its pages
    and API answer, and a change of another part saves."""
    stored = stored_gent(database).config
    long_name = stored.registrations[0].model_copy(update={"name": "E" * 5000})
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    tenants.save("az-gent", stored.model_copy(update={"registrations": [long_name]}), "test")
    headers = bearer(database, gent.id)

    read = client.get("/admin/api/config", headers=headers)
    assert read.status_code == 200, read.text
    assert read.json()["configuration"]["registrations"][0]["name"] == "E" * 5000
    hooks = client.put("/admin/api/hooks", headers=headers, json={"adult_age": 18})
    assert hooks.status_code == 200, hooks.text
