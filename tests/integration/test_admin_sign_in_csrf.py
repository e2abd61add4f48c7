"""The admin's sign-in form and login CSRF: a page of another site must not sign the
browser into an admin session of the attacker's (OWASP "Login CSRF").

The form has no session yet, so its CSRF token is a pre-session one: the sign-in page sets
a random nonce in a short-lived cookie (``SameSite=Strict``, ``__Host-`` on https) and an
HMAC of it in the form's hidden ``csrf_token``. The real app on SQLite and PostgreSQL,
real bootstrap tokens; the browser is a TestClient whose cookie jar is the browser's.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.admin import access
from service.db.base import Database
from service.db.models import AdminEvent, AdminSession
from smart_app.admin import ADMIN_COOKIE
from tests.support.admin import (
    Hospital,
    admin_app,
    client,
    gent,
    hospital,
    login_csrf,
    post_sign_in,
)

__all__ = ["client", "gent"]  # the admin tests' fixtures

REFUSED = "Deze aanmelding is geweigerd"
#: The sign-in page's CSRF cookie, and how long it lasts (an hour).
LOGIN_COOKIE = "kindreflex_admin_login"
LOGIN_FORM_SECONDS = 3600


def _rows(database: Database) -> tuple[int, int]:
    """How many admin sessions and admin events there are."""
    with database.session() as session:
        sessions = session.scalar(select(func.count()).select_from(AdminSession))
        events = session.scalar(select(func.count()).select_from(AdminEvent))
        return int(sessions or 0), int(events or 0)


def assert_refused(response: httpx.Response, database: Database, before: tuple[int, int]) -> None:
    """The sign-in page again saying why, no admin cookie, nothing written."""
    assert response.status_code == 403, response.text
    assert '<p class="error" role="alert" id="login-csrf">' in response.text
    assert REFUSED in response.text
    # the page again, with a form that can be sent: its field and its cookie
    assert re.search(r'name="csrf_token" value="[0-9a-f]{64}"', response.text)
    assert LOGIN_COOKIE in response.cookies
    set_cookies = response.headers.get_list("set-cookie")
    assert not any(re.match(rf"(__Host-)?{ADMIN_COOKIE}=", c) for c in set_cookies)
    assert _rows(database) == before


def assert_signs_in(browser: TestClient, token: str, prefix: str = "") -> None:
    """The token is still good: the sign-in page's form spends it."""
    signed = post_sign_in(browser, {"token": token, "name": "Els"}, prefix, follow_redirects=False)
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == f"{prefix}/admin"
    assert browser.get(f"{prefix}/admin", follow_redirects=False).status_code == 200


def test_a_sign_in_without_the_pages_cookie_or_field_is_refused_and_the_token_stays_good(
    client: TestClient, database: Database, gent: Hospital
) -> None:
    token, _ = access.issue_bootstrap_token(database, gent.id)
    before = _rows(database)
    # neither: a form another site made (before, this signed the browser in)
    assert_refused(client.post("/admin/login", data={"token": token}), database, before)
    # the field but no cookie (blocked, or expired while the page stayed open)
    field = login_csrf(client)
    client.cookies.clear()
    sent = {"token": token, "name": "Els", "csrf_token": field}
    assert_refused(client.post("/admin/login", data=sent), database, before)
    # the cookie but no field
    login_csrf(client)
    assert_refused(client.post("/admin/login", data={"token": token}), database, before)
    assert_signs_in(client, token)


def test_a_sign_in_whose_cookie_and_field_do_not_match_is_refused(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """The field of another browser's page (the attacker's own visit), a cookie the
    attacker planted with the field it would be in a plain double submit, a field of
    another hospital's page: each refused, the token not spent."""
    token, _ = access.issue_bootstrap_token(database, gent.id)
    brugge = hospital(database, "az-brugge", "/t/az-brugge")
    app = admin_app(database, database_url)
    with TestClient(app) as victim, TestClient(app) as attacker:
        before = _rows(database)
        login_csrf(victim)  # the victim has a sign-in cookie of her own
        theirs = {"token": token, "name": "Mallory", "csrf_token": login_csrf(attacker)}
        assert_refused(victim.post("/admin/login", data=theirs), database, before)
        # a cookie planted by a neighbour (another port of localhost on http): its value is
        # no field, nor is anything computed from it without the app's key
        nonce = "n" * 43
        victim.cookies.clear()
        victim.cookies.set(LOGIN_COOKIE, nonce)
        for planted in (nonce, "0" * 64):
            sent = {"token": token, "csrf_token": planted}
            assert_refused(victim.post("/admin/login", data=sent), database, before)
        # AZ Brugge's sign-in page's field is no field of AZ Gent's sign-in
        brugge_field = login_csrf(victim, brugge.prefix)
        sent = {"token": token, "csrf_token": brugge_field}
        assert_refused(victim.post("/admin/login", data=sent), database, before)
        assert_signs_in(victim, token)


def test_a_cross_site_post_of_an_attackers_token_is_refused_and_the_token_stays_good(
    database: Database,
    database_url: str,
    gent: Hospital,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The login CSRF itself: the attacker's bootstrap token, posted by another site's page
    in the victim's browser, at the default hospital's and a prefixed hospital's address.
    A browser says ``Sec-Fetch-Site: cross-site``: refused, even with the cookie and field
    of a sign-in page she has open. One that does not say it (an older browser) sends no
    ``SameSite=Strict`` cookie with another site's form: refused for that."""
    caplog.set_level(logging.INFO, "smart_app.errors")
    brugge = hospital(database, "az-brugge", "/t/az-brugge")
    app = admin_app(database, database_url)
    cross_site = {"Sec-Fetch-Site": "cross-site", "Origin": "https://attacker.example"}
    with TestClient(app) as victim, TestClient(app) as attacker:
        for place in (gent, brugge):
            token, _ = access.issue_bootstrap_token(database, place.id)
            before = _rows(database)
            forged = {"token": token, "name": "Mallory", "csrf_token": login_csrf(attacker)}
            url = f"{place.prefix}/admin/login"
            field = login_csrf(victim, place.prefix)  # her own sign-in page, open
            for sent in (forged, forged | {"csrf_token": field}):
                refused = victim.post(url, data=sent, headers=cross_site)
                assert_refused(refused, database, before)
            with TestClient(app) as older:  # its Strict cookie is not sent cross-site
                refused = older.post(url, data=forged, headers={"Origin": cross_site["Origin"]})
                assert_refused(refused, database, before)
            # she is not signed in; the attacker's token is still the attacker's
            assert victim.get(f"{place.prefix}/admin", follow_redirects=False).status_code == 303
            assert_signs_in(attacker, token, place.prefix)
    logged = [r for r in caplog.records if r.getMessage() == "app request refused"]
    fields: list[dict[str, Any]] = [r.fields for r in logged]  # type: ignore[attr-defined]
    said = [(f["status"], f["problem"], f["tenant"], f["reason"]) for f in fields]
    assert said == [
        (403, "admin_login_csrf_failed", slug, reason)
        for slug in ("az-gent", "az-brugge")
        for reason in ("sent from another site", "sent from another site", "no sign-in cookie")
    ]
    assert not any(token in repr(f) for f in fields)  # never the token


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("fr-BE", "Cette connexion a été refusée"),
        ("en", "This sign-in was refused"),
        ("nl-BE", REFUSED),
    ],
)
def test_the_refusal_is_said_in_the_admins_language(
    client: TestClient, database: Database, gent: Hospital, language: str, said: str
) -> None:
    token, _ = access.issue_bootstrap_token(database, gent.id)
    refused = client.post(
        "/admin/login", data={"token": token}, headers={"Accept-Language": language}
    )
    assert refused.status_code == 403
    assert said in refused.text
    assert_signs_in(client, token)


def test_the_sign_in_cookie_is_set_as_the_admin_cookie_is(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """On https: ``__Host-``, Secure, HttpOnly, SameSite=Strict, on ``/``, for an hour; on
    plain http on this machine (the demo) the plain name without Secure, which browsers
    would refuse there. The sign-in works on both."""
    for public_url, base_url, name, secure in (
        ("https://kindreflex.example", "https://testserver", f"__Host-{LOGIN_COOKIE}", True),
        ("http://localhost:8000", "http://testserver", LOGIN_COOKIE, False),
    ):
        app = admin_app(database, database_url, public_url=public_url)
        with TestClient(app, base_url=base_url) as browser:
            page = browser.get("/admin/login")
            (cookie,) = [c for c in page.headers.get_list("set-cookie") if c.startswith(name)]
            attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
            assert {"httponly", "path=/", "samesite=strict"} <= attributes, cookie
            assert f"max-age={LOGIN_FORM_SECONDS}" in attributes
            assert ("secure" in attributes) is secure, cookie
            token, _ = access.issue_bootstrap_token(database, gent.id)
            assert_signs_in(browser, token)
