"""The social service's worklist screen (``/social``): who sees it, what it shows, claiming
a case from it (CSRF, post/redirect/get, the conflict in Dutch), its security headers."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from sandbox.fhir_server import FhirServer
from service.db.base import Database, utcnow
from service.i18n import Language
from service.local_time import LOCAL_ZONE, local_today
from service.tenancy import TenantContext
from smart_app.session import LAUNCH_PARAM, SESSION_COOKIE, Role
from tests.support.casework import (
    COLLEAGUE,
    SOCIAL_WORKER,
    assignment_of,
    index_case,
    listed_cases,
    save_triage,
    triaged_case,
)
from tests.support.sessions import UNUSED_FHIR as FHIR
from tests.support.sessions import make_app, signed_in
from tests.support.write_path import (
    fhir_server,  # noqa: F401 - the module's FHIR server fixture
    make_tenant,
)

#: The social worker as the worklist names its assignee: on her EHR (audit.actor_url).
MINE = f"{FHIR}/{SOCIAL_WORKER}"


def _claim_forms(html: str) -> dict[str, tuple[str, str]]:
    """Per claim form: its action's path → (csrf_token, row_version). Each action names
    the page's launch (``?s=``), so that a claim is made by the launch the page was
    shown for, whatever another tab launched since."""
    forms = re.findall(
        r'<form method="post" action="([^"?]+)\?s=[0-9a-f]{32}">\s*'
        r'<input type="hidden" name="csrf_token" value="([^"]+)">\s*'
        r'<input type="hidden" name="row_version" value="(\d+)">',
        html,
    )
    return {action: (csrf, version) for action, csrf, version in forms}


def _page(location: str) -> str:
    """A redirect's page, without the launch it names (``s``, exactly one)."""
    url = urlsplit(location)
    query = parse_qsl(url.query)
    (launch,) = [value for name, value in query if name == LAUNCH_PARAM]
    assert re.fullmatch(r"[0-9a-f]{32}", launch), location
    rest = urlencode([(name, value) for name, value in query if name != LAUNCH_PARAM])
    return f"{url.path}?{rest}" if rest else url.path


def _signed_in_worker(
    database_url: str, database: Database, hospital: TenantContext, **session: Any
) -> tuple[TestClient, dict[str, str]]:
    """The app on the hospital's cases: a browser and the request headers of the social
    worker signed in (``session``: :func:`signed_in`'s options, e.g. ``language``)."""
    app = make_app(database_url, database)
    worker = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", **session)
    return TestClient(app), worker.headers


def test_the_worklist_screen_shows_the_cases_in_dutch_with_the_security_headers(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    mine = index_case(database, hospital, "Patient/1", utcnow() - timedelta(days=4), MINE)
    free = index_case(database, hospital, "Patient/2", utcnow() - timedelta(days=1))
    app = make_app(database_url, database)
    client = TestClient(app)

    assert client.get("/social").status_code == 401
    nurse = signed_in(app, hospital, "Practitioner/nurse-1", "nurse").headers
    assert client.get("/social", headers=nurse).status_code == 403
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    page = client.get("/social", headers={"Cookie": me["Cookie"]})

    assert page.status_code == 200
    assert '<html lang="nl">' in page.text
    assert "Werklijst sociale dienst" in page.text
    assert "Ikzelf" in page.text
    assert "niemand" in page.text
    assert "frame-ancestors" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # Only the unassigned case offers "take it on".
    assert set(_claim_forms(page.text)) == {f"/social/cases/{free}/claim"}
    assert 'id="cannot-claim"' not in page.text  # a Practitioner may take cases on
    assert f'data-case="{mine}"' in page.text
    # Each row's button names its patient for a screen reader's list of buttons.
    assert re.search(
        r'<button type="submit">Neem op mij<span class="visually-hidden">: Patient/2</span>',
        page.text,
    )

    oldest = client.get("/social", headers=me, params={"view": "mine", "older_than_days": "2"})
    assert f'data-case="{mine}"' in oldest.text
    assert f'data-case="{free}"' not in oldest.text


def test_the_french_worklist_names_the_open_concerns_as_the_french_card_does(
    database_url: str, database: Database
) -> None:
    """The caption read "Inquiétudes Réflexe Enfant ouvertes": the product's name
    capitalised as nowhere else, and not the card's "préoccupation Kindreflex ouverte"."""
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/1", utcnow() - timedelta(days=1))
    client, me = _signed_in_worker(database_url, database, hospital, language="fr")

    page = client.get("/social", headers=me)

    assert '<html lang="fr">' in page.text
    caption = "Préoccupations Kindreflex ouvertes (1 sur cette page)"
    assert f'<caption id="worklist-caption">{caption}</caption>' in page.text


@pytest.mark.parametrize(
    ("language", "caption", "view_all"),
    [
        ("nl", "Afgesloten Kindreflex-zorgen (1 op deze pagina)", "Alle dossiers"),
        ("fr", "Préoccupations Kindreflex clôturées (1 sur cette page)", "Tous les dossiers"),
        ("en", "Closed Kindreflex concerns (1 on this page)", "All cases"),
    ],
)
def test_the_closed_cases_are_captioned_as_closed_not_as_open_concerns(
    database_url: str, database: Database, language: Language, caption: str, view_all: str
) -> None:
    """The list of closed cases (``?status=closed``) was captioned "Open Kindreflex-zorgen",
    and its view offered "all open cases": a screen reader user (the caption names the
    table) was told she read the open ones (found by review)."""
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/1", utcnow() - timedelta(days=3), status="closed")
    client, me = _signed_in_worker(database_url, database, hospital, language=language)

    page = html.unescape(client.get("/social", headers=me, params={"status": "closed"}).text)

    assert f'<caption id="worklist-caption">{caption}</caption>' in page
    assert f'<option value="all" selected>{view_all}</option>' in page


def test_the_worklist_and_the_pages_it_leads_to_stay_with_its_launch(
    database_url: str, database: Database
) -> None:
    """The worklist named no launch, nor did its links: a case opened from it, or its next
    page, took the browser's newest launch, which may be another EHR's (a hospital with
    two), whose case page then says the case is another EHR's (found by review)."""
    hospital = make_tenant(database, "default", FHIR)
    for days in range(3):
        index_case(database, hospital, f"Patient/{days}", utcnow() - timedelta(days=days))
    app = make_app(database_url, database)
    first = signed_in(app, hospital, SOCIAL_WORKER, "social-worker")
    second = signed_in(app, hospital, SOCIAL_WORKER, "social-worker")
    secrets = [u.headers["Cookie"].removeprefix(f"{SESSION_COOKIE}=") for u in (second, first)]
    client = TestClient(app, headers={"Cookie": f"{SESSION_COOKIE}={'.'.join(secrets)}"})

    page = client.get("/social", params={LAUNCH_PARAM: first.session_id, "limit": "2"}).text

    named = set(re.findall(r'(?:href|action)="[^"]*[?&](?:amp;)?s=([0-9a-f]{32})', page))
    assert named == {first.session_id}  # the cases, the next page, the claim forms
    assert f'name="{LAUNCH_PARAM}" value="{first.session_id}"' in page  # the filter form
    assert len(listed_cases(page)) == 2
    assert 'rel="next"' in page


def test_an_altered_next_page_link_shows_the_first_page_saying_so(
    database_url: str, database: Database
) -> None:
    """A cursor the worklist did not hand out was answered as English JSON on the Dutch
    screen (found by review)."""
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    client, me = _signed_in_worker(database_url, database, hospital)

    page = client.get("/social", headers=me, params={"cursor": "garbage"})

    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert "Deze pagina van de werklijst bestaat niet (meer)" in page.text
    assert listed_cases(page.text) == [case_id]


def test_the_worklist_writes_dates_as_the_nurses_page_does(
    database_url: str, database: Database
) -> None:
    # Before, the flag's and the follow-up's dates were ISO (2026-05-17) where the nurse's
    # page writes dd/mm/jjjj; the <time> element keeps the ISO form for machines.
    hospital = make_tenant(database, "default", FHIR)
    flagged = datetime(2026, 5, 17, 14, 58, tzinfo=UTC)  # 16:58 in Brussels
    follow_up = date(2026, 5, 24)
    index_case(database, hospital, "Patient/1", flagged, follow_up_due=follow_up)
    client, me = _signed_in_worker(database_url, database, hospital)

    page = client.get("/social", headers=me).text

    assert re.search(r'<time datetime="2026-05-17T14:58:00[^"]*">17/05/2026</time>', page)
    assert '<time datetime="2026-05-24">24/05/2026</time>' in page


def test_the_worklist_screen_marks_and_filters_overdue_follow_ups(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    today = local_today()
    late = index_case(
        database, hospital, "Patient/1", utcnow(), follow_up_due=today - timedelta(days=2)
    )
    due = index_case(database, hospital, "Patient/2", utcnow(), follow_up_due=today)
    client, me = _signed_in_worker(database_url, database, hospital)

    page = client.get("/social", headers=me)
    assert "Volgende opvolging" in page.text
    assert page.text.count('<strong class="overdue">over tijd</strong>') == 1
    assert f'datetime="{today.isoformat()}"' in page.text
    overdue = client.get("/social", headers=me, params={"overdue": "true"})
    assert f'data-case="{late}"' in overdue.text
    assert f'data-case="{due}"' not in overdue.text
    assert 'id="overdue" name="overdue" type="checkbox" value="true" checked' in overdue.text


def test_the_closed_worklist_offers_no_overdue_filter_and_ignores_one_asked(
    database_url: str, database: Database
) -> None:
    # A closed case has no follow-up due (closing clears its date): the closed list offered
    # the overdue filter all the same, and ticked it listed no closed case at all. Now only
    # the open list offers it; the closed list asked with it lists its cases as without.
    hospital = make_tenant(database, "default", FHIR)
    closed = index_case(database, hospital, "Patient/1", utcnow(), status="closed")
    late = local_today() - timedelta(days=2)
    index_case(database, hospital, "Patient/2", utcnow(), follow_up_due=late)
    client, me = _signed_in_worker(database_url, database, hospital)

    assert 'id="overdue"' in client.get("/social", headers=me).text
    closed_list = client.get("/social", headers=me, params={"status": "closed"}).text
    assert 'id="overdue"' not in closed_list
    assert 'for="overdue"' not in closed_list
    asked = client.get("/social", headers=me, params={"status": "closed", "overdue": "true"})
    assert listed_cases(asked.text) == [closed]
    assert 'id="overdue"' not in asked.text


def test_claiming_from_the_screen_redirects_and_a_stale_claim_says_who_has_the_case(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)
    me = {"Cookie": signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers["Cookie"]}
    other = {"Cookie": signed_in(app, hospital, COLLEAGUE, "social-worker").headers["Cookie"]}
    (mine_csrf, version) = _claim_forms(client.get("/social", headers=me).text)[
        f"/social/cases/{case_id}/claim"
    ]
    (other_csrf, other_version) = _claim_forms(client.get("/social", headers=other).text)[
        f"/social/cases/{case_id}/claim"
    ]
    action = f"/social/cases/{case_id}/claim"

    forged = client.post(action, headers=me, data={"csrf_token": "x", "row_version": version})
    assert forged.status_code == 403
    done = client.post(action, headers=me, data={"csrf_token": mine_csrf, "row_version": version})
    assert done.status_code == 303
    assert _page(done.headers["location"]) == f"/social?view=mine&claimed={case_id}"
    # the page says so, and takes the focus to say it (found by review: it said nothing)
    confirmed = client.get(done.headers["location"], headers=me).text
    said = re.search(r'<p role="status" class="notice" id="claimed"[^>]*>([^<]*)</p>', confirmed)
    assert said is not None
    assert said.group(1).startswith("U hebt het dossier van ")
    assert "data-focus-on-load" in said.group(0)
    late = client.post(
        action, headers=other, data={"csrf_token": other_csrf, "row_version": other_version}
    )

    assert late.status_code == 409
    assert "Iemand anders heeft dit dossier intussen gewijzigd" in late.text
    # said to a screen reader as a success is (nurse.js moves focus there): in a frame, an
    # alert already on the page when it loads is not read out (found by review)
    assert 'role="alert" class="error" tabindex="-1" data-focus-on-load>Iemand' in late.text
    assert SOCIAL_WORKER in late.text
    assert assignment_of(database, case_id) == (MINE, 2)
    missing = client.post(
        "/social/cases/999999/claim", headers=me, data={"csrf_token": mine_csrf, "row_version": "1"}
    )
    assert missing.status_code == 404
    assert "bestaat niet in dit ziekenhuis" in missing.text


def test_the_worklists_stylesheet_and_script_load(database_url: str, database: Database) -> None:
    """Every asset the worklist links answers 200 (a relative link once resolved to
    /static/… below /social and the screen came out unstyled), cacheable for good under
    its versioned URL; each route serves only its own files."""
    hospital = make_tenant(database, "default", FHIR)
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    for page in ("/social", "/social?view=mine"):
        html = client.get(page, headers=me).text
        assets = re.findall(r'(?:href|src)="(/[^"]+\.(?:css|js)(?:\?v=[0-9a-f]+)?)"', html)
        assert any("/nurse.css?v=" in asset for asset in assets)
        for asset in assets:
            versioned = client.get(asset)
            assert versioned.status_code == 200, asset
            assert "immutable" in versioned.headers["cache-control"]  # the URL names the content
            old_page = client.get(asset.split("?")[0])  # as a page from before an upgrade links it
            assert old_page.content == versioned.content
            assert old_page.headers["cache-control"] == "no-cache"
    for unknown in ("/social/static/nurse.js", "/app/static/casefile.css", "/app/static/x.js"):
        assert client.get(unknown).status_code == 404, unknown


def test_the_apps_pages_link_their_icon_and_favicon_ico_is_served(
    database_url: str, database: Database
) -> None:
    """The pages opened outside the EHR's frame (the worklist, the admin's sign-in, an
    error page) had no icon: a blank tab, and each load a 404 for /favicon.ico in the log.
    Each links the app's SVG, same origin as the CSP's img-src 'self' allows, under its
    versioned URL kept a year; /favicon.ico answers the same icon, kept a day."""
    hospital = make_tenant(database, "default", FHIR)
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    pages = {
        "/social": client.get("/social", headers=me),
        "/admin/login": client.get("/admin/login"),
        "/social without a session": client.get("/social"),
    }
    assert pages["/social without a session"].status_code == 401  # the app's error page
    icons = set()
    for name, page in pages.items():
        assert "text/html" in page.headers["content-type"], name
        assert "img-src 'self' data:;" in page.headers["content-security-policy"], name
        linked = re.findall(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', page.text)
        assert [url.split("?v=")[0] for url in linked] == ["/app/static/favicon.svg"], name
        icons.add(linked[0])
    (icon_url,) = icons
    icon = client.get(icon_url)
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert icon.content.startswith(b"<svg ")
    unlinked = client.get("/favicon.ico")
    assert unlinked.status_code == 200
    assert unlinked.headers["content-type"] == "image/svg+xml"
    assert unlinked.headers["cache-control"] == "public, max-age=86400"
    assert unlinked.content == icon.content


def test_the_filter_form_sent_with_its_number_field_left_empty_filters(
    database_url: str, database: Database
) -> None:
    # The browser sends an empty number field as "older_than_days=": before, every use of
    # the filter form without a number of days answered a 422 in JSON instead of the list.
    hospital = make_tenant(database, "default", FHIR)
    mine = index_case(database, hospital, "Patient/1", utcnow(), MINE)
    free = index_case(database, hospital, "Patient/2", utcnow())
    client, me = _signed_in_worker(database_url, database, hospital)

    sent = {"view": "mine", "older_than_days": "", "sort": "acute-first"}
    page = client.get("/social", headers=me, params=sent)

    assert page.status_code == 200
    assert f'data-case="{mine}"' in page.text
    assert f'data-case="{free}"' not in page.text
    assert 'id="older_than_days" name="older_than_days"' in page.text


def test_a_concern_flagged_after_midnight_in_belgium_counts_belgian_days(
    database_url: str, database: Database
) -> None:
    # Flagged yesterday at 00:30 in Brussels, which is the day before in UTC: before, the
    # worklist showed the UTC date, counted one day too many and "older than 1 day" found it.
    hospital = make_tenant(database, "default", FHIR)
    yesterday = local_today() - timedelta(days=1)
    flagged = datetime.combine(yesterday, time(0, 30), LOCAL_ZONE).astimezone(UTC)
    case_id = index_case(database, hospital, "Patient/1", flagged)
    client, me = _signed_in_worker(database_url, database, hospital)

    (item,) = client.get("/api/cases", headers=me).json()["items"]
    page = client.get("/social", headers=me).text
    older = client.get("/social", headers=me, params={"older_than_days": "1"}).text

    assert item["days_open"] == 1
    assert f">{yesterday:%d/%m/%Y}</time>" in page
    assert f'data-case="{case_id}"' not in older


def test_a_launch_from_a_patients_chart_opens_that_patients_case(
    database_url: str, database: Database
) -> None:
    """The patient's open case, else the latest closed one; never the case of the same id
    on another EHR's FHIR server (someone else); without a case, the worklist says so."""
    hospital = make_tenant(database, "default", FHIR)
    now = utcnow()
    index_case(database, hospital, "Patient/7", now - timedelta(days=30), status="closed")
    is_open = index_case(database, hospital, "Patient/7", now - timedelta(days=3))
    index_case(database, hospital, "Patient/7", now, fhir_base_url="https://other-ehr.example/fhir")
    closed_only = index_case(database, hospital, "Patient/8", now, status="closed")
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)

    def opened(patient_id: str, *roles: Role) -> httpx.Response:
        user = signed_in(app, hospital, SOCIAL_WORKER, *roles, patient_id=patient_id)
        answer: httpx.Response = client.get("/social/patient", headers=user.headers)
        return answer

    assert _page(opened("7", "nurse", "social-worker").headers["location"]) == (
        f"/social/cases/{is_open}"
    )
    assert _page(opened("8", "nurse", "social-worker").headers["location"]) == (
        f"/social/cases/{closed_only}"
    )
    without = opened("9", "nurse", "social-worker")
    assert without.status_code == 200
    assert "Deze patiënt heeft geen Kindreflex-dossier in dit ziekenhuis." in without.text
    assert "Werklijst sociale dienst" in without.text
    assert opened("7", "nurse").status_code == 403


def test_a_launch_during_a_visit_opens_the_open_case_else_the_triage(
    database_url: str, database: Database
) -> None:
    """The EHR sends the visit's encounter with a launch from the chart during a visit: it
    opened the triage even for a patient with an open case, whose case then had no way in
    from the chart (found by review). Only an open case: with a closed one or none, a
    social worker in the ED does the Kindreflex as anyone."""
    hospital = make_tenant(database, "default", FHIR)
    now = utcnow()
    is_open = index_case(database, hospital, "Patient/7", now - timedelta(days=3))
    index_case(database, hospital, "Patient/8", now, status="closed")
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)

    def opened(patient_id: str) -> str:
        user = signed_in(
            app, hospital, SOCIAL_WORKER, "nurse", "social-worker",
            patient_id=patient_id, encounter_id="visit-1",
        )  # fmt: skip
        answer = client.get("/social/patient", headers=user.headers)
        assert answer.status_code == 303
        return _page(answer.headers["location"])

    assert opened("7") == f"/social/cases/{is_open}"
    assert opened("8") == "/app/triage"
    assert opened("9") == "/app/triage"


def test_take_it_on_pressed_twice_takes_the_case_once_without_a_false_conflict(
    database_url: str, database: Database
) -> None:
    # Before, the second press said someone else had changed the case, naming the user
    # herself as the one who has it now.
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)
    me = {"Cookie": signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers["Cookie"]}
    action = f"/social/cases/{case_id}/claim"
    (csrf, version) = _claim_forms(client.get("/social", headers=me).text)[action]

    first = client.post(action, headers=me, data={"csrf_token": csrf, "row_version": version})
    second = client.post(action, headers=me, data={"csrf_token": csrf, "row_version": version})

    assert (first.status_code, second.status_code) == (303, 303)
    assert _page(second.headers["location"]) == f"/social?view=mine&claimed={case_id}"
    assert assignment_of(database, case_id) == (MINE, 2)


def test_a_case_page_takes_the_case_with_the_launch_it_was_shown_for(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    """The social worker reads a case in one tab and opens another patient's chart in a
    second: the browser's newest launch is the second. The first tab's form was checked
    against that launch's CSRF token and refused, her input lost (found by review). It
    names its own launch now, which the browser still holds."""
    base_url = fhir_server.base_url
    case = triaged_case(database_url, database, base_url)
    client, case_id = case.client, case.id
    page = client.get(f"/social/cases/{case_id}").text
    action = f"/social/cases/{case_id}/claim"
    (csrf, version) = _claim_forms(page)[action]
    launch = re.search(rf'action="{action}\?s=([0-9a-f]{{32}})"', page)
    assert launch is not None
    second = signed_in(
        case.app, case.tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=base_url
    )
    first_secret = client.headers["Cookie"].removeprefix(f"{SESSION_COOKIE}=")
    second_secret = second.headers["Cookie"].removeprefix(f"{SESSION_COOKIE}=")
    client.headers["Cookie"] = f"{SESSION_COOKIE}={second_secret}.{first_secret}"

    form = {"csrf_token": csrf, "row_version": version, "return_to": "case"}
    claimed = client.post(f"{action}?s={launch.group(1)}", data=form)

    assert claimed.status_code == 303, claimed.text
    assert assignment_of(database, case_id) == (f"{base_url}/{SOCIAL_WORKER}", 2)
    assert claimed.headers["location"].endswith(f"?s={launch.group(1)}")


def test_take_it_on_from_the_case_page_returns_to_that_case(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    # Before, the case page's button landed on the worklist: the social worker had to find
    # the case she was reading again. The worklist's button still returns to the worklist.
    base_url = fhir_server.base_url
    case = triaged_case(database_url, database, base_url)
    client, case_id = case.client, case.id
    worklist = client.get("/social").text
    assert 'name="return_to" value="worklist"' in worklist
    page = client.get(f"/social/cases/{case_id}").text
    action = f"/social/cases/{case_id}/claim"
    (csrf, version) = _claim_forms(page)[action]
    assert 'name="return_to" value="case"' in page

    claimed = client.post(
        action, data={"csrf_token": csrf, "row_version": version, "return_to": "case"}
    )

    assert claimed.status_code == 303
    assert _page(claimed.headers["location"]) == f"/social/cases/{case_id}"
    assert assignment_of(database, case_id) == (f"{base_url}/{SOCIAL_WORKER}", 2)
    shown = client.get(claimed.headers["location"]).text
    assert "Ikzelf" in shown
    assert action not in shown  # taken: no button any more


def test_take_it_on_from_the_case_page_refused_shows_that_case_with_who_has_it(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
) -> None:
    # Before, the refusal landed on the worklist: the social worker lost the case she was
    # reading, to learn there that a colleague had taken it on meanwhile.
    base_url = fhir_server.base_url
    case = triaged_case(database_url, database, base_url)
    app, client, case_id = case.app, case.client, case.id
    colleague = signed_in(
        app, case.tenant, COLLEAGUE, "social-worker", fhir_base_url=base_url, name="Els Peeters"
    )
    action = f"/social/cases/{case_id}/claim"
    (csrf, version) = _claim_forms(client.get(f"/social/cases/{case_id}").text)[action]
    theirs = TestClient(
        app, follow_redirects=False, headers={"Cookie": colleague.headers["Cookie"]}
    )
    (their_csrf, _) = _claim_forms(theirs.get("/social").text)[action]
    taken = theirs.post(action, data={"csrf_token": their_csrf, "row_version": version})
    assert taken.status_code == 303

    late = client.post(
        action, data={"csrf_token": csrf, "row_version": version, "return_to": "case"}
    )

    assert late.status_code == 409
    assert "Iemand anders heeft dit dossier intussen gewijzigd" in late.text
    assert "nu toegewezen aan Els Peeters" in late.text
    assert 'role="alert" class="error" tabindex="-1" data-focus-on-load>Iemand' in late.text
    assert 'id="about-heading"' in late.text  # the case page, not the worklist
    assert "Werklijst sociale dienst</h1>" not in late.text
    assert assignment_of(database, case_id) == (f"{base_url}/{COLLEAGUE}", 2)


@pytest.mark.parametrize("return_to", ["worklist", "case"])
def test_take_it_on_by_a_user_who_is_no_practitioner_is_refused_and_says_why(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,  # noqa: F811
    return_to: str,
) -> None:
    """SMART allows a ``fhirUser`` that is a Person or a RelatedPerson; a case is assigned
    to a Practitioner or PractitionerRole only. The screens offer such a user no "take it
    on" button but say why; a claim posted all the same (an old page, a forged form) is
    refused with a 400 on the screen it came from (it was a 500)."""
    base_url = fhir_server.base_url
    tenant = make_tenant(database, "default", base_url)
    app = make_app(database_url, database)
    save_triage(app, tenant, base_url)
    person = signed_in(app, tenant, "Person/sw-7", "social-worker", fhir_base_url=base_url)
    client = TestClient(app, follow_redirects=False, headers={"Cookie": person.headers["Cookie"]})
    (case_id,) = listed_cases(client.get("/social").text)
    action = f"/social/cases/{case_id}/claim"
    screen = client.get("/social" if return_to == "worklist" else f"/social/cases/{case_id}")
    assert _claim_forms(screen.text) == {}
    assert "u kunt dossiers bekijken, maar geen dossier op u nemen" in screen.text
    csrf = re.findall(
        r'name="csrf_token" value="([^"]+)"', client.get(f"/social/cases/{case_id}").text
    )[0]

    refused = client.post(
        action, data={"csrf_token": csrf, "row_version": "1", "return_to": return_to}
    )

    assert refused.status_code == 400
    assert "noemt u niet als zorgverlener" in refused.text
    assert "Er is niets gewijzigd" in refused.text
    shown = {"worklist": "Werklijst sociale dienst</h1>", "case": 'id="about-heading"'}
    assert shown[return_to] in refused.text  # the screen the button was on
    assert assignment_of(database, case_id) == (None, 1)


def test_the_next_page_of_closed_cases_lists_closed_cases(
    database_url: str, database: Database
) -> None:
    # Before, the "next" link dropped the status: page 2 of the closed cases listed open ones.
    hospital = make_tenant(database, "default", FHIR)
    closed = [
        index_case(database, hospital, f"Patient/{i}", utcnow(), status="closed") for i in (1, 2)
    ]
    still_open = index_case(database, hospital, "Patient/3", utcnow() - timedelta(days=1))
    client, me = _signed_in_worker(database_url, database, hospital)

    first = client.get("/social", headers=me, params={"status": "closed", "limit": "1"}).text
    (link,) = re.findall(r'<a rel="next" href="([^"]+)"', first)
    second = client.get(link.replace("&amp;", "&"), headers=me).text

    assert f'data-case="{closed[0]}"' in second or f'data-case="{closed[1]}"' in second
    assert f'data-case="{still_open}"' not in second


def test_the_filter_form_lists_closed_cases_and_keeps_the_status_and_the_page_size(
    database_url: str, database: Database
) -> None:
    """The worklist shows how long a closed case was followed up and its "next page" keeps
    ``status=closed``, yet its filter form had no status field and dropped ``limit``: no way
    to list the closed cases from the screen, and another sort or "mine" applied on
    ``?status=closed`` silently listed the open cases again (found by review)."""
    hospital = make_tenant(database, "default", FHIR)
    closed = [
        index_case(
            database, hospital, f"Patient/{i}", utcnow() - timedelta(days=i), status="closed"
        )
        for i in (1, 2)
    ]
    still_open = index_case(database, hospital, "Patient/3", utcnow())
    client, me = _signed_in_worker(database_url, database, hospital)

    page = client.get("/social", headers=me, params={"status": "closed", "limit": "1"}).text
    form = page[page.index('<form method="get"') : page.index("</form>")]
    assert '<label for="status">Dossiers</label>' in form
    assert '<option value="closed" selected>Afgesloten</option>' in form
    assert '<input type="hidden" name="limit" value="1">' in form
    (link,) = re.findall(r'<a rel="next" href="([^"]+)"', page)
    assert "limit=1" in link

    # the form sent again with another sort: the closed cases still, a page of one
    sent = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form))
    resorted = client.get(
        "/social", headers=me, params={**sent, "status": "closed", "sort": "oldest"}
    ).text
    assert f'data-case="{closed[1]}"' in resorted
    assert f'data-case="{closed[0]}"' not in resorted
    assert f'data-case="{still_open}"' not in resorted
    opened = client.get("/social", headers=me, params={**sent, "status": "open"}).text
    assert f'data-case="{still_open}"' in opened


def test_the_worklist_names_who_has_the_case_and_a_colleague_assigned_by_reference_keeps_it(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app, follow_redirects=False)
    an = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", name="An Peeters").headers
    other = {"Cookie": signed_in(app, hospital, COLLEAGUE, "social-worker").headers["Cookie"]}
    (other_csrf, version) = _claim_forms(client.get("/social", headers=other).text)[
        f"/social/cases/{case_id}/claim"
    ]

    claimed = client.post(f"/api/cases/{case_id}/claim", headers=an, json={"row_version": 1})
    assert claimed.status_code == 200, claimed.text
    worklist = client.get("/social", headers=other).text
    assert "An Peeters" in worklist
    assert SOCIAL_WORKER not in worklist
    (listed,) = client.get("/api/cases", headers=an).json()["items"]
    assert (listed["assigned_to"], listed["assigned_to_display"]) == (MINE, "An Peeters")
    late = client.post(
        f"/social/cases/{case_id}/claim",
        headers=other,
        data={"csrf_token": other_csrf, "row_version": version},
    )
    assert late.status_code == 409
    assert "An Peeters" in late.text  # who has the case now, by name

    # Handed on to a colleague: only her reference is known here (no name is sent for her).
    handed_on = client.put(
        f"/api/cases/{case_id}/assignment",
        headers=an,
        json={"assignee": COLLEAGUE, "row_version": 2},
    )
    assert handed_on.status_code == 200, handed_on.text
    (listed,) = client.get("/api/cases", headers=an).json()["items"]
    colleague = f"{FHIR}/{COLLEAGUE}"  # of the assigning user's EHR
    assert (listed["assigned_to"], listed["assigned_to_display"]) == (colleague, None)
    assert colleague in client.get("/social", headers={"Cookie": an["Cookie"]}).text


@pytest.mark.parametrize(
    ("language", "ages"),
    [
        ("nl", "< 1 maand, 1 maand, 5 maanden, 1 jaar, 3 jaar"),
        ("fr", "< 1 mois, 1 mois, 5 mois, 1 an, 3 ans"),
        ("en", "< 1 month, 1 month, 5 months, 1 year, 3 years"),
    ],
)
def test_the_worklist_gives_a_babys_age_in_months_not_0_years(
    database_url: str, database: Database, language: Language, ages: str
) -> None:
    """A newborn's age read "0 jaar": under a year the age is now in months, under a month
    "< 1 maand", with the singular and plural of each language."""
    hospital = make_tenant(database, "default", FHIR)
    today = local_today()
    born = (
        today - timedelta(days=10),  # < 1 month
        today - timedelta(days=45),  # 1 month (a month has at most 31 days, two at least 59)
        today - timedelta(days=160),  # 5 months (five months at most 153 days, six at least 181)
        today - timedelta(days=400),  # 1 year and a month
        today - timedelta(days=1130),  # 3 years and a month
    )
    index_case(database, hospital, "Patient/1", utcnow(), children_born=tuple(sorted(born)))
    client, me = _signed_in_worker(database_url, database, hospital, language=language)

    page = client.get("/social", headers=me).text

    oldest_first = ", ".join(reversed(ages.split(", ")))
    assert f"<td>{oldest_first}</td>" in html.unescape(page)


@pytest.mark.parametrize(
    ("language", "title"),
    [
        ("nl", "Adres niet begrepen"),
        ("fr", "Adresse non comprise"),
        ("en", "Address not understood"),
    ],
)
@pytest.mark.parametrize(
    ("address", "status"),
    [
        ("/social?older_than_days=-5", 400),
        ("/social?older_than_days=abc", 400),
        ("/social/cases/abc", 404),
        ("/social/cases/abc/referral", 404),
    ],
)
def test_an_address_the_screens_cannot_read_answers_with_a_page_in_the_users_language(
    database_url: str, database: Database, language: Language, title: str, address: str, status: int
) -> None:
    """A negative or non-numeric "older than" or a case id that is no number answered with
    FastAPI's raw JSON 422, in English; it is the app's own page now, 400 or 404."""
    hospital = make_tenant(database, "default", FHIR)
    app = make_app(database_url, database)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker", language=language).headers

    page = TestClient(app).get(address, headers=me)

    assert page.status_code == status
    assert page.headers["content-type"].startswith("text/html")
    assert f'<html lang="{language}">' in page.text
    if status == 400:
        assert f"<h1>{title}</h1>" in page.text
        # the way on: the same screen without the value (it was "go back": found by review)
        assert '<p><a href="/social">' in page.text
    assert "frame-ancestors" in page.headers["content-security-policy"]


@pytest.mark.parametrize(("language", "colon"), [("nl", ": "), ("fr", "\u00a0: "), ("en", ": ")])
def test_a_label_and_its_value_are_joined_by_the_languages_colon(
    database_url: str, database: Database, language: Language, colon: str
) -> None:
    """The screens joined a label and its value with ": " in every language; French writes
    a non-breaking space before the colon (here the hidden words of "take it on" that name
    the patient for a screen reader)."""
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/1", utcnow())
    client, me = _signed_in_worker(database_url, database, hospital, language=language)

    page = client.get("/social", headers=me).text

    assert f'<span class="visually-hidden">{colon}Patient/1</span>' in html.unescape(page)


@pytest.mark.parametrize(
    ("language", "unknown"), [("nl", "onbekend"), ("fr", "inconnu"), ("en", "unknown")]
)
def test_the_worklist_names_no_raw_reference_for_who_flagged_a_concern(
    database_url: str, database: Database, language: Language, unknown: str
) -> None:
    """A concern whose nurse the worklist knows only by reference (the demo's seeded one,
    until someone opens the case) read "door Practitioner/7a61…"; it reads "onbekend"
    now, without a FHIR request per row (this worklist has no FHIR server to ask)."""
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/1", utcnow())
    client, me = _signed_in_worker(database_url, database, hospital, language=language)

    page = client.get("/social", headers=me).text

    assert re.search(rf"</time> · {unknown}</td>", page)
    assert "Practitioner/nurse-1" not in page


def test_a_launch_of_the_same_relative_fhir_user_in_another_hospital_drops_the_earlier_one(
    database_url: str, database: Database
) -> None:
    # A shared workstation: a social worker of hospital A is Practitioner/5 on A's EHR; a
    # nurse of hospital B, Practitioner/5 on B's EHR, launches next in the same browser.
    # Before, the equal fhirUser text kept A's launch in the cookie: the nurse's tab could
    # open A's worklist as the social worker (found by review).
    a_fhir = "http://127.0.0.1:9/fhir-a"
    a = make_tenant(database, "a", a_fhir)
    b = make_tenant(database, "b", "http://127.0.0.1:9/fhir-b")
    case_id = index_case(database, a, "Patient/a1", utcnow(), fhir_base_url=a_fhir)
    app = make_app(database_url, database)
    sessions = app.state.sessions
    social_worker = signed_in(app, a, "Practitioner/5", "social-worker")
    earlier = social_worker.headers["Cookie"].split("=", 1)[1]
    own = TestClient(app, headers=social_worker.headers).get("/t/a/social")
    assert listed_cases(own.text) == [case_id]

    nurse = signed_in(app, b, "Practitioner/5", "nurse", patient_id="p", encounter_id="e")
    cookie = sessions.with_launch(earlier, nurse.headers["Cookie"].split("=", 1)[1])
    browser = TestClient(app, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    page = browser.get(f"/t/a/social?{LAUNCH_PARAM}={social_worker.session_id}")
    assert page.status_code == 401
    assert listed_cases(page.text) == []

    again = signed_in(app, a, "Practitioner/5", "social-worker")  # the same person, relaunching
    kept = sessions.with_launch(earlier, again.headers["Cookie"].split("=", 1)[1])
    assert earlier in kept.split(".")
