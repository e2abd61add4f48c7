"""The social service's case API (``/api/cases``): the role matrix, filters, sort and
pages, claiming and assigning, two social workers at once, tenant isolation, audit.

Real app (``create_app``), real sessions (``SessionStore``) and CSRF tokens, SQLite and
PostgreSQL. The cases are concerns index rows as the triage save writes them; nothing
here calls the FHIR server.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.db.base import Database, utcnow
from service.db.models import AuditRecord, Concern, OutboxEntry
from service.local_time import local_today
from service.social import CaseFilter, case_summary, list_cases
from smart_app.session import CSRF_HEADER, Role
from tests.support.casework import COLLEAGUE, SOCIAL_WORKER, assignment_of, index_case
from tests.support.sessions import UNUSED_FHIR, make_app, signed_in
from tests.support.write_path import make_tenant

FHIR = UNUSED_FHIR  # never called: cases are served from our index
#: A valid body of every step endpoint (without `row_version`).
STEP_BODIES: dict[str, dict[str, object]] = {
    "step-4": {"decision": "acute-danger"},
    "step-5": {"progress": "improving"},
    "step-6": {
        "partner_id": "vk-oost-vlaanderen",
        "with_cooperation": True,
        "patient_informed": True,
    },
    "close": {"reason": "referred"},
}


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [((), None), (("nurse",), False), (("admin",), False), (("social-worker",), True)],
    ids=["anonymous", "nurse", "admin", "social-worker"],
)
def test_every_case_endpoint_admits_only_social_workers(
    database_url: str, database: Database, roles: tuple[Role, ...], allowed: bool | None
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    headers = signed_in(app, hospital, SOCIAL_WORKER, *roles).headers if allowed is not None else {}

    answers = [
        client.get("/api/cases", headers=headers),
        *_every_change(client, case_id, headers, (1, 2, 3)),
        client.get(f"/api/cases/{case_id}", headers=headers),
    ]

    expected = {None: 401, False: 403, True: 200}[allowed]
    assert [a.status_code for a in answers[:3]] == [expected] * 3
    # A social worker's step saves get past the role check and read the case from the FHIR
    # server, which this test does not run: 503, the answer for an unreachable server.
    steps = 503 if allowed else expected
    assert [a.status_code for a in answers[3:]] == [steps] * (len(STEP_BODIES) + 2)
    if allowed is False:  # the refusal says which role is missing, in the API's JSON
        assert "for the social service only" in answers[0].json()["detail"]
    # the colleague named as the assigning user's EHR names its users (audit.actor_url)
    assert assignment_of(database, case_id) == (
        (f"{FHIR}/{COLLEAGUE}", 3) if allowed else (None, 1)
    )


def _every_change(
    client: TestClient, case_id: int, headers: dict[str, str], versions: tuple[int, int, int]
) -> list[httpx.Response]:
    """Every change the case API offers: the claim, the assignment, each step, the referral's
    status; ``versions``: the row version the claim, the assignment and the rest send."""
    claim, assignment, rest = versions
    return [
        client.post(f"/api/cases/{case_id}/claim", headers=headers, json={"row_version": claim}),
        client.put(
            f"/api/cases/{case_id}/assignment",
            headers=headers,
            json={"assignee": COLLEAGUE, "row_version": assignment},
        ),
        *(
            client.post(
                f"/api/cases/{case_id}/{path}", headers=headers, json=body | {"row_version": rest}
            )
            for path, body in STEP_BODIES.items()
        ),
        client.put(
            f"/api/cases/{case_id}/referral",
            headers=headers,
            json={"status": "completed", "row_version": rest},
        ),
    ]


def test_changes_need_the_sessions_csrf_token(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    cookie = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers["Cookie"]

    for csrf in ({}, {CSRF_HEADER: "forged"}):
        headers = {"Cookie": cookie, **csrf}
        # every change of the API, not only the claim (found by review: a route without
        # the check passed the suite)
        answers = _every_change(client, case_id, headers, (1, 1, 1))
        assert [a.status_code for a in answers] == [403] * (len(STEP_BODIES) + 3)
    assert assignment_of(database, case_id) == (None, 1)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 0


#: Every change of a case, API and screens: (method, path, body). A page's form sends the
#: CSRF token as a field, the API as a header (``_sent``).
CASE_CHANGES: list[tuple[str, str, dict[str, object]]] = [
    ("POST", "/api/cases/{id}/claim", {"row_version": 1}),
    ("PUT", "/api/cases/{id}/assignment", {"assignee": None, "row_version": 1}),
    *(
        ("POST", f"/api/cases/{{id}}/{path}", body | {"row_version": 1})
        for path, body in STEP_BODIES.items()
    ),
    ("PUT", "/api/cases/{id}/referral", {"status": "completed", "row_version": 1}),
    ("POST", "/social/cases/{id}/claim", {"row_version": "1"}),
    ("POST", "/social/cases/{id}/close", {"row_version": "1", "reason": "other"}),
    ("POST", "/social/cases/{id}/referral-status", {"row_version": "1", "status": "completed"}),
    ("POST", "/social/cases/{id}/step-4", {"row_version": "1", "decision": "acute-danger"}),
    ("POST", "/social/cases/{id}/step-5", {"row_version": "1", "progress": "improving"}),
    ("POST", "/social/cases/{id}/step-6", {"row_version": "1", "partner_id": "vk-oost-vlaanderen"}),
]
CASE_CHANGE_IDS = [f"{method} {path.removeprefix('/')}" for method, path, _ in CASE_CHANGES]


def _sent(
    client: TestClient,
    method: str,
    path: str,
    body: dict[str, object],
    cookie: str | None,
    token: str | None,
) -> httpx.Response:
    """The change sent as its client sends it, with ``token`` (None: none) as its CSRF
    token: a page's form as a field, the API in the header; ``cookie``: the session's
    (None: no session)."""
    headers = {} if cookie is None else {"Cookie": cookie}
    answer: httpx.Response
    if path.startswith("/social/"):
        fields = {name: str(value) for name, value in body.items()}
        if token is not None:
            fields["csrf_token"] = token
        answer = client.request(method, path, headers=headers, data=fields)
    else:
        if token is not None:
            headers[CSRF_HEADER] = token
        answer = client.request(method, path, headers=headers, json=body)
    return answer


@pytest.mark.parametrize("token", [None, "forged"], ids=["missing-token", "forged-token"])
@pytest.mark.parametrize(("method", "path", "body"), CASE_CHANGES, ids=CASE_CHANGE_IDS)
def test_a_change_refused_for_its_csrf_token_is_a_failure_row_of_the_cases_patient(
    database_url: str,
    database: Database,
    method: str,
    path: str,
    body: dict[str, object],
    token: str | None,
) -> None:
    """A forged cross-site post or a stale tab is an attempt at a child's case: the
    data-protection officer answering the patient's access request must see it, as a role's
    refusal, a conflict or a wrong assignee are. It was a 403 and nothing recorded (found
    by review). The row names the case's patient on the case's server (here another EHR's
    than the session's); the answer is the 403 it was, and nothing changes."""
    hospital = make_tenant(database, "default", FHIR)
    other_ehr = "http://ehr-b.test/fhir"
    case_id = index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=other_ehr)
    app = make_app(database_url, database)
    cookie = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers["Cookie"]

    answer = _sent(TestClient(app), method, path.format(id=case_id), body, cookie, token)

    assert answer.status_code == 403
    assert _refused_for_its_token(answer)
    assert _audit_rows(database) == [
        (f"{FHIR}/{SOCIAL_WORKER}", "update", "failure", "Patient/1", other_ehr)
    ]
    assert assignment_of(database, case_id) == (None, 1)
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 0


@pytest.mark.parametrize(("method", "path", "body"), CASE_CHANGES, ids=CASE_CHANGE_IDS)
def test_a_nurses_change_with_a_forged_token_is_on_record_as_her_roles_refusal_is(
    database_url: str, database: Database, method: str, path: str, body: dict[str, object]
) -> None:
    """The CSRF check runs before the route's role check, so a nurse's forged post was the
    CSRF's 403 and never reached the audited role refusal: it left no trace (found by
    review). It is now the same row as her post with the session's token, which the role
    check refuses. Without a session nothing is recorded: no one to name (a 401)."""
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    nurse = signed_in(app, hospital, "Practitioner/nurse-1", "nurse").headers
    url = path.format(id=case_id)

    anonymous = _sent(client, method, url, body, None, "forged")
    assert anonymous.status_code == 401
    assert _audit_rows(database) == []

    forged = _sent(client, method, url, body, nurse["Cookie"], "forged")
    valid = _sent(client, method, url, body, nurse["Cookie"], nurse[CSRF_HEADER])

    assert (forged.status_code, valid.status_code) == (403, 403)
    assert _refused_for_its_token(forged)  # the answer it was: the CSRF check's
    assert not _refused_for_its_token(valid)  # the role check's
    refused = (f"{FHIR}/Practitioner/nurse-1", "update", "failure", "Patient/1", FHIR)
    assert _audit_rows(database) == [refused, refused]


def _refused_for_its_token(answer: httpx.Response) -> bool:
    """Whether the answer says the form is not the session's: the API's English JSON or
    the page's Dutch."""
    said = ("does not (or no longer) belong to your", "hoort niet (meer) bij uw")
    return any(words in answer.text for words in said)


def _audit_rows(database: Database) -> list[tuple[object, ...]]:
    """The audit trail: (actor, action, outcome, patient, server), oldest first."""
    with database.session() as session:
        rows = session.execute(
            select(
                AuditRecord.actor,
                AuditRecord.action,
                AuditRecord.outcome,
                AuditRecord.patient_ref,
                AuditRecord.fhir_base_url,
            ).order_by(AuditRecord.id)
        ).all()
    return [tuple(row) for row in rows]


def test_filters_sort_and_pages(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    now = utcnow()
    days = {"Patient/a": 20, "Patient/b": 9, "Patient/c": 3, "Patient/d": 0, "Patient/e": 12}
    # the assignees as the service stores them: on their EHR (audit.actor_url)
    owner = {"Patient/b": f"{FHIR}/{SOCIAL_WORKER}", "Patient/e": f"{FHIR}/{COLLEAGUE}"}
    for patient, age in days.items():
        index_case(database, hospital, patient, now - timedelta(days=age), owner.get(patient))
    index_case(database, hospital, "Patient/closed", now - timedelta(days=30), status="closed")
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers

    def patients(**params: str) -> list[str]:
        answer = client.get("/api/cases", headers=me, params=params)
        assert answer.status_code == 200, answer.text
        return [item["patient"] for item in answer.json()["items"]]

    assert patients() == ["Patient/d", "Patient/c", "Patient/b", "Patient/e", "Patient/a"]
    assert patients(sort="oldest") == [
        "Patient/a",
        "Patient/e",
        "Patient/b",
        "Patient/c",
        "Patient/d",
    ]
    assert patients(view="mine") == ["Patient/b"]
    assert patients(view="unassigned") == ["Patient/d", "Patient/c", "Patient/a"]
    assert patients(older_than_days="9") == ["Patient/e", "Patient/a"]
    assert patients(view="unassigned", older_than_days="2", sort="oldest") == [
        "Patient/a",
        "Patient/c",
    ]
    assert patients(status="closed") == ["Patient/closed"]

    for sort in ("newest", "oldest"):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "2", "sort": sort} | ({"cursor": cursor} if cursor else {})
            page = client.get("/api/cases", headers=me, params=params).json()
            seen += [item["patient"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == patients(sort=sort)

    newest_cursor = client.get("/api/cases", headers=me, params={"limit": "1"}).json()[
        "next_cursor"
    ]
    refused = [
        client.get("/api/cases", headers=me, params={"cursor": "not-a-cursor"}),
        client.get("/api/cases", headers=me, params={"cursor": newest_cursor, "sort": "oldest"}),
    ]
    assert [r.status_code for r in refused] == [400, 400]
    assert "sort order" in refused[1].json()["detail"]
    bad = [
        client.get("/api/cases", headers=me, params={"view": "everything"}),
        client.get("/api/cases", headers=me, params={"older_than_days": "-1"}),
        client.get("/api/cases", headers=me, params={"limit": "0"}),
    ]
    assert [r.status_code for r in bad] == [422, 422, 422]


def test_overdue_follow_ups_show_and_filter(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    now = utcnow()
    today = local_today()  # the Belgian day the list compares with (as the endpoint does)
    due = {
        "Patient/late": today - timedelta(days=3),
        "Patient/yesterday": today - timedelta(days=1),
        "Patient/today": today,
        "Patient/later": today + timedelta(days=7),
        "Patient/none": None,
    }
    for patient, day in due.items():
        index_case(database, hospital, patient, now - timedelta(days=10), follow_up_due=day)
    index_case(
        database,
        hospital,
        "Patient/closed",
        now - timedelta(days=10),
        status="closed",
        follow_up_due=today - timedelta(days=5),
    )
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers

    listed = client.get("/api/cases", headers=me, params={"sort": "oldest"}).json()["items"]
    shown = {item["patient"]: (item["follow_up_due"], item["overdue"]) for item in listed}
    assert shown == {
        patient: (day.isoformat() if day else None, day is not None and day < today)
        for patient, day in due.items()
    }
    overdue = client.get("/api/cases", headers=me, params={"overdue": "true", "sort": "oldest"})
    assert [item["patient"] for item in overdue.json()["items"]] == [
        "Patient/late",
        "Patient/yesterday",
    ]
    mine = client.get("/api/cases", headers=me, params={"overdue": "true", "view": "mine"})
    assert mine.json()["items"] == []
    closed = client.get("/api/cases", headers=me, params={"status": "closed"}).json()["items"]
    assert [(c["patient"], c["overdue"]) for c in closed] == [("Patient/closed", False)]


def test_the_closed_list_ignores_the_overdue_filter(database_url: str, database: Database) -> None:
    # A closed case has no follow-up due (closing clears its date): asked with "overdue",
    # the closed list was empty, as if no case had been closed.
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/closed", utcnow(), status="closed")
    late = local_today() - timedelta(days=2)
    index_case(database, hospital, "Patient/late", utcnow(), follow_up_due=late)
    app = make_app(database_url, database)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers

    asked = {"status": "closed", "overdue": "true"}
    closed = TestClient(app).get("/api/cases", headers=me, params=asked).json()["items"]

    assert [(c["patient"], c["overdue"]) for c in closed] == [("Patient/closed", False)]


def test_claim_and_assign_move_the_version_and_are_audited(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    # the case came from the hospital's other EHR: its patient is on that one's server
    other_ehr = "http://ehr-b.test/fhir"
    case_id = index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=other_ehr)
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers

    claimed = client.post(f"/api/cases/{case_id}/claim", headers=me, json={"row_version": 1})
    named = f"{FHIR}/{SOCIAL_WORKER}"  # by her own EHR, not the case's (audit.actor_url)
    assert claimed.json() == {"id": case_id, "assigned_to": named, "row_version": 2}
    handed_on = client.put(
        f"/api/cases/{case_id}/assignment",
        headers=me,
        json={"assignee": f"https://ehr.example/fhir/{COLLEAGUE}", "row_version": 2},
    )
    assert handed_on.json()["assigned_to"] == f"https://ehr.example/fhir/{COLLEAGUE}"
    released = client.put(
        f"/api/cases/{case_id}/assignment", headers=me, json={"assignee": None, "row_version": 3}
    )
    assert released.json() == {"id": case_id, "assigned_to": None, "row_version": 4}

    refused = [
        client.put(
            f"/api/cases/{case_id}/assignment",
            headers=me,
            json={"assignee": "Patient/1", "row_version": 4},
        ),
        client.post("/api/cases/999999/claim", headers=me, json={"row_version": 1}),
        client.post(f"/api/cases/{case_id}/claim", headers=me, json={"row_version": 0}),
        client.post(f"/api/cases/{case_id}/claim", headers=me, json={"version": 4}),
    ]
    assert [r.status_code for r in refused] == [400, 404, 422, 422]
    assert "Practitioner" in refused[0].json()["detail"]
    assert assignment_of(database, case_id) == (None, 4)

    with database.session() as session:
        changes = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "update").order_by(AuditRecord.id)
        ).all()
    worker_named = f"{FHIR}/{SOCIAL_WORKER}"  # by her own EHR, on the other EHR's patient too
    assert [(c.actor, c.outcome) for c in changes] == [(worker_named, "success")] * 3 + [
        (worker_named, "failure")  # the wrong assignee and the unknown case; 422 never ran
    ] * 2
    assert {(c.fhir_base_url, c.patient_ref) for c in changes[:3]} == {(other_ehr, "Patient/1")}
    # the refusal about the case is in its patient's trail; of no case: the worker's EHR
    assert [(c.fhir_base_url, c.patient_ref) for c in changes[3:]] == [
        (other_ehr, "Patient/1"),
        (FHIR, None),
    ]
    assert changes[0].entities[0].startswith("Flag?identifier=")


def test_numbers_beyond_the_databases_integers_are_refused_not_a_500(
    database_url: str, database: Database
) -> None:
    """PostgreSQL's INTEGER ends at 2**31 - 1, SQLite's at 2**63 - 1: a larger id or
    version failed in the query (a 500); it is refused now (the API's 422, the screens'
    own error page), and changes nothing."""
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers

    for number in (2**31, 2**63, 10**25):
        answers = [
            client.get(f"/api/cases/{number}", headers=me),
            client.post(f"/api/cases/{number}/claim", headers=me, json={"row_version": 1}),
            client.post(f"/api/cases/{case_id}/claim", headers=me, json={"row_version": number}),
            client.put(
                f"/api/cases/{case_id}/assignment",
                headers=me,
                json={"assignee": COLLEAGUE, "row_version": number},
            ),
            client.post(
                f"/api/cases/{case_id}/step-4",
                headers=me,
                json=STEP_BODIES["step-4"] | {"row_version": number},
            ),
            client.post(f"/social/cases/{number}/claim", headers=me, data={"row_version": "1"}),
            client.post(
                f"/social/cases/{case_id}/claim", headers=me, data={"row_version": str(number)}
            ),
        ]
        # the screens answer with their own page: no such case (404), a bad form (400)
        assert [a.status_code for a in answers] == [422] * 5 + [404, 400], number
    # the largest number that fits is a case and a version like any other
    assert client.get(f"/api/cases/{2**31 - 1}", headers=me).status_code == 404
    largest = client.post(
        f"/api/cases/{case_id}/claim", headers=me, json={"row_version": 2**31 - 1}
    )
    assert largest.status_code == 409
    step = STEP_BODIES["step-4"] | {"row_version": 2**31 - 1}
    assert client.post(f"/api/cases/{case_id}/step-4", headers=me, json=step).status_code == 409
    assert assignment_of(database, case_id) == (None, 1)


def test_a_cursor_this_service_did_not_write_is_a_400_not_a_500(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    me = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    forged = [
        "newest|2026-01-01T00:00:00+00:00|" + "9" * 25,  # an id beyond the database's integer
        "newest|2026-01-01T00:00:00+00:00|2147483648",
        "newest|2026-01-01T00:00:00+00:00|0",
        "newest|0001-01-01T00:00:00+14:00|1",  # no UTC value before year 1
        "newest|9999-12-31T23:59:59-14:00|1",  # nor after year 9999
        "newest|2026-01-01T00:00:00|1",  # no time zone
    ]
    for position in forged:
        cursor = base64.urlsafe_b64encode(position.encode()).decode()
        for path in ("/api/cases", "/social"):
            answer = client.get(path, headers=me, params={"cursor": cursor})
            assert answer.status_code == 400, (position, path)
    # what the service writes still pages
    written = base64.urlsafe_b64encode(b"newest|2999-12-31T23:59:59+00:00|2147483647").decode()
    page = client.get("/api/cases", headers=me, params={"cursor": written})
    assert [item["patient"] for item in page.json()["items"]] == ["Patient/1"]


def test_the_second_of_two_concurrent_changes_gets_a_conflict(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    case_id = index_case(database, hospital, "Patient/1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    first = signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    second = signed_in(app, hospital, COLLEAGUE, "social-worker").headers
    # Both opened the worklist at version 1.
    seen = client.get("/api/cases", headers=second).json()["items"][0]["row_version"]

    won = client.post(f"/api/cases/{case_id}/claim", headers=first, json={"row_version": seen})
    lost = client.post(f"/api/cases/{case_id}/claim", headers=second, json={"row_version": seen})

    assert won.status_code == 200
    assert lost.status_code == 409
    detail = lost.json()["detail"]
    assert SOCIAL_WORKER in detail["message"]
    assert "Nothing was overwritten" in detail["message"]
    assert detail["row_version"] == 2
    assert assignment_of(database, case_id) == (f"{FHIR}/{SOCIAL_WORKER}", 2)


def test_a_hospital_never_sees_or_changes_another_hospitals_cases(
    database_url: str, database: Database
) -> None:
    hospital_a = make_tenant(database, "default", FHIR)
    hospital_b = make_tenant(database, "b", FHIR)
    case_a = index_case(database, hospital_a, "Patient/a1", utcnow())
    closed_b = index_case(database, hospital_b, "Patient/b1", utcnow(), status="closed")
    app = make_app(database_url, database)
    client = TestClient(app)
    social_b = signed_in(app, hospital_b, "Practitioner/sw-b", "social-worker").headers

    assert client.get("/t/b/api/cases", headers=social_b).json()["items"] == []
    assert client.get("/api/cases", headers=social_b).status_code == 401  # A's paths
    stolen = client.post(
        f"/t/b/api/cases/{case_a}/claim", headers=social_b, json={"row_version": 1}
    )
    assert stolen.status_code == 404
    assert assignment_of(database, case_a) == (None, 1)
    closed = client.post(
        f"/t/b/api/cases/{closed_b}/claim", headers=social_b, json={"row_version": 1}
    )
    assert closed.status_code == 409
    assert "closed" in closed.json()["detail"]["message"]


def test_one_case_summary_is_the_lists_row(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    other = make_tenant(database, "other", FHIR)
    today = local_today()
    case_id = index_case(database, hospital, "Patient/1", utcnow(), follow_up_due=today)
    foreign = index_case(database, other, "Patient/2", utcnow())
    with database.session() as session:
        (listed,) = list_cases(
            session, hospital.id, SOCIAL_WORKER, CaseFilter(), limit=10, cursor=None, today=today
        ).items
        assert case_summary(session, hospital.id, case_id, today=today) == listed
        assert case_summary(session, hospital.id, foreign, today=today) is None


def _days_open_shown(client: TestClient, case_id: int) -> tuple[int, str]:
    """A closed case's days open in the API and in the closed worklist's "Dagen open"."""
    (item,) = [
        i
        for i in client.get("/api/cases", params={"status": "closed"}).json()["items"]
        if i["id"] == case_id
    ]
    worklist = client.get("/social", params={"status": "closed"}).text
    header = worklist[worklist.index("<thead>") : worklist.index("</thead>")]
    column = re.findall(r"<th[^>]*>(.*?)</th>", header, re.S).index("Dagen open")
    row = re.search(rf'<tr data-case="{case_id}">.*?</tr>', worklist, re.S)
    assert row is not None
    return item["days_open"], re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row.group(0), re.S)[column]


def test_a_closed_case_counts_its_days_open_up_to_its_closing(
    database_url: str, database: Database
) -> None:
    """A case closed ten days after its flag, a year ago, said 400 days open on the closed
    worklist and in the API (found by review). It says 10: up to its closing (``closed_at``)
    or, for one closed before that was kept, up to the row's last change; a referral's
    status updated later does not move a closing that was kept."""
    hospital = make_tenant(database, "default", FHIR)
    flagged = utcnow() - timedelta(days=400)
    earlier = index_case(database, hospital, "Patient/1", flagged, status="closed")
    kept = index_case(database, hospital, "Patient/2", flagged, status="closed")
    app = make_app(database_url, database)
    client = TestClient(
        app, headers=signed_in(app, hospital, SOCIAL_WORKER, "social-worker").headers
    )

    with database.session() as session:  # closed ten days after its flag, by an older release
        closing = update(Concern).where(Concern.id == earlier)
        session.execute(closing.values(updated_at=flagged + timedelta(days=10)))
    assert _days_open_shown(client, earlier) == (10, "10")

    with database.session() as session:  # closed then, its referral's status updated today
        closing = update(Concern).where(Concern.id == kept)
        session.execute(closing.values(closed_at=flagged + timedelta(days=10), updated_at=utcnow()))
    assert _days_open_shown(client, kept) == (10, "10")
