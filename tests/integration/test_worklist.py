"""``GET /api/cases``, the worklist: social workers only, this hospital only, paginated, audited.

Real app (``create_app``), real sessions (``SessionStore``), SQLite and PostgreSQL. The
concerns are index rows as the triage save writes them (``test_triage_save.py`` checks
that a niet-pluis save puts the patient on this worklist).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from service import audit
from service.db.base import Database, utcnow
from service.db.models import AuditRecord, Concern
from service.outbox import NewEntry, enqueue
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import EhrRegistration, TenantConfiguration
from tests.support.casework import index_case
from tests.support.sessions import make_app, signed_in
from tests.support.write_path import make_tenant

FHIR = "http://127.0.0.1:9/fhir"  # never called: the worklist is served from our index
SECOND_EHR = "http://127.0.0.1:9/ehr-b/fhir"  # the hospital's other EHR's server, not called


def _concern(
    database: Database, tenant: TenantContext, patient: str, at: datetime, *, acute: bool = False
) -> None:
    with database.session() as session:
        session.add(
            Concern(
                tenant_id=tenant.id,
                fhir_base_url=FHIR,
                patient_ref=patient,
                patient_display=f"Patiënt {patient}",
                flag_identifier=f"{tenant.slug}-{patient}",
                flagged_at=at,
                flagged_by="Practitioner/nurse-1",
                triggers=["domestic-violence"],
                children_birth_dates=["2019-05-01", "2024-02-29"],
                last_step="step-2",
                status="open",
                acute_danger=acute,
            )
        )


def test_only_social_workers_see_the_worklist(database_url: str, database: Database) -> None:
    hospital = make_tenant(database, "default", FHIR)
    flagged = utcnow() - timedelta(days=3)
    _concern(database, hospital, "Patient/1", flagged)
    app = make_app(database_url, database)
    client = TestClient(app)

    anonymous = client.get("/api/cases")
    assert anonymous.status_code == 401
    nurse = signed_in(app, hospital, "Practitioner/nurse-1", "nurse").headers
    refused = client.get("/api/cases", headers=nurse)
    assert refused.status_code == 403
    # in the API's own shape, not the app's HTML page (found by review)
    assert anonymous.json()["detail"].startswith("Your Kindreflex session has expired")
    assert "the social service" in refused.json()["detail"]
    unchecked = client.post(
        "/api/cases/1/claim", json={"row_version": 1}, headers={"Cookie": nurse["Cookie"]}
    )
    assert unchecked.status_code == 403
    assert "detail" in unchecked.json()
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers
    answer = client.get("/api/cases", headers=social)

    assert answer.status_code == 200
    (item,) = answer.json()["items"]
    today = utcnow().date()
    assert item["patient"] == "Patient/1"
    assert item["flagged_by"] == "Practitioner/nurse-1"
    assert item["triggers"] == ["domestic-violence"]
    assert item["days_open"] == (today - flagged.date()).days
    assert item["children_ages"] == [_age(date(2019, 5, 1), today), _age(date(2024, 2, 29), today)]
    assert item["last_step"] == "step-2"
    assert item["delivery"] is None
    assert answer.json()["next_cursor"] is None


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def test_a_hospital_never_sees_another_hospitals_concerns(
    database_url: str, database: Database
) -> None:
    hospital_a = make_tenant(database, "default", FHIR)
    hospital_b = make_tenant(database, "b", FHIR)
    _concern(database, hospital_a, "Patient/a1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    social_b = signed_in(app, hospital_b, "Practitioner/sw-b", "social-worker").headers

    assert client.get("/t/b/api/cases", headers=social_b).json()["items"] == []
    # B's session does not open A's worklist (the un-prefixed paths are hospital A's).
    assert client.get("/api/cases", headers=social_b).status_code == 401
    social_a = signed_in(app, hospital_a, "Practitioner/sw-a", "social-worker").headers
    items = client.get("/api/cases", headers=social_a).json()["items"]
    assert [i["patient"] for i in items] == ["Patient/a1"]


def test_the_list_api_takes_the_launch_a_call_names_as_the_pages_do(
    database_url: str, database: Database
) -> None:
    """Before, ``?s=`` was refused (422): a tab's script could not name its own launch, and
    the list was always the browser's newest launch's (found by review)."""
    hospital = make_tenant(database, "default", FHIR)
    _concern(database, hospital, "Patient/a1", utcnow())
    app = make_app(database_url, database)
    client = TestClient(app)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker")
    other = signed_in(app, hospital, "Practitioner/sw-1", "social-worker")

    named = client.get("/api/cases", headers=social.headers, params={"s": social.session_id})
    assert named.status_code == 200, named.text
    assert [i["patient"] for i in named.json()["items"]] == ["Patient/a1"]
    # a launch the browser does not hold is no session
    elsewhere = client.get("/api/cases", headers=social.headers, params={"s": other.session_id})
    assert elsewhere.status_code == 401


def test_a_cursor_the_api_did_not_hand_out_is_a_400_saying_so(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    for n in range(3):
        _concern(database, hospital, f"Patient/{n}", utcnow() - timedelta(hours=n))
    app = make_app(database_url, database)
    client = TestClient(app)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers
    cursor = client.get("/api/cases", headers=social, params={"limit": "1"}).json()["next_cursor"]

    forged = client.get("/api/cases", headers=social, params={"cursor": "garbage"})
    resorted = client.get("/api/cases", headers=social, params={"cursor": cursor, "sort": "oldest"})

    assert (forged.status_code, resorted.status_code) == (400, 400)
    assert forged.json() == {"detail": "the cursor is not one this endpoint handed out"}
    assert "another sort order" in resorted.json()["detail"]


def test_pages_follow_the_cursor_newest_first_and_listings_are_audited(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    start = utcnow() - timedelta(days=10)
    for n in range(7):
        _concern(database, hospital, f"Patient/{n}", start + timedelta(hours=n))
    with database.session() as session:  # a closed concern is not on the worklist
        closed = session.scalars(select(Concern).where(Concern.patient_ref == "Patient/6")).one()
        closed.status = "closed"
    app = make_app(database_url, database)
    client = TestClient(app)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/cases", headers=social, params=params).json()
        seen += [item["patient"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"Patient/{n}" for n in (5, 4, 3, 2, 1, 0)]
    assert pages == 3

    bad = client.get("/api/cases", headers=social, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400
    assert client.get("/api/cases", headers=social, params={"limit": "0"}).status_code == 422

    with database.session() as session:
        listings = session.scalars(select(AuditRecord).order_by(AuditRecord.id)).all()
    # a row per patient listed, each page once (the refused requests listed nobody)
    assert [row.patient_ref for row in listings] == seen
    assert {(row.actor, row.action, row.fhir_base_url) for row in listings} == {
        (f"{FHIR}/Practitioner/sw-1", "search-type", FHIR)
    }
    assert {row.tenant_id for row in listings} == {hospital.id}


def test_acute_danger_comes_first_on_the_screen_across_pages(
    database_url: str, database: Database
) -> None:
    # Acute cases (parket or police) must not sink below newer, less urgent ones. The pages
    # are cut inside each group and across the boundary between them.
    hospital = make_tenant(database, "default", FHIR)
    start = utcnow() - timedelta(days=10)
    acute = {1, 4}
    for n in range(6):
        _concern(database, hospital, f"Patient/{n}", start + timedelta(hours=n), acute=n in acute)
    app = make_app(database_url, database)
    client = TestClient(app)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers

    def walk(limit: int) -> list[str]:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"sort": "acute-first", "limit": str(limit)} | (
                {"cursor": cursor} if cursor else {}
            )
            page = client.get("/api/cases", headers=social, params=params).json()
            seen += [item["patient"] for item in page["items"]]
            if (cursor := page["next_cursor"]) is None:
                return seen

    expected = [f"Patient/{n}" for n in (4, 1, 5, 3, 2, 0)]
    assert walk(1) == walk(3) == walk(50) == expected
    # the API's default stays newest first; the screen opens acute first
    assert [i["patient"] for i in client.get("/api/cases", headers=social).json()["items"]] == [
        f"Patient/{n}" for n in (5, 4, 3, 2, 1, 0)
    ]
    screen = client.get("/social", headers=social).text
    positions = [screen.index(f"Patiënt Patient/{n}") for n in (4, 1, 5, 3, 2, 0)]
    assert positions == sorted(positions)
    assert '<option value="acute-first" selected>Acuut gevaar eerst</option>' in screen
    # a cursor of another order is refused, not misread
    newest = client.get("/api/cases", headers=social, params={"limit": "1"}).json()
    wrong = {"sort": "acute-first", "cursor": newest["next_cursor"]}
    assert client.get("/api/cases", headers=social, params=wrong).status_code == 400


def test_a_refused_delivery_shows_on_the_worklist_with_the_servers_outcome(
    database_url: str, database: Database
) -> None:
    hospital = make_tenant(database, "default", FHIR)
    _concern(database, hospital, "Patient/1", utcnow())
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad"}],
    }
    with database.session() as session:
        entry = enqueue(
            session,
            hospital.id,
            NewEntry("triage", "ehr", FHIR, "s1", "Practitioner/nurse-1", "Patient/1", {}),
        )
        entry.state, entry.last_error, entry.outcome = "failed", "answered 422", outcome
        session.scalars(select(Concern)).one().outbox_id = entry.id
    app = make_app(database_url, database)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers

    (item,) = TestClient(app).get("/api/cases", headers=social).json()["items"]

    assert item["delivery"] == {"state": "failed", "error": "answered 422", "outcome": outcome}


def test_a_listed_patients_own_trail_shows_who_saw_them_on_the_worklist(
    database_url: str, database: Database
) -> None:
    """The screen and the API show each patient's name, children's ages and triggers. They
    were audited as one row without a patient (the patients only among its entities), which
    ``kindreflex audit --patient`` never finds: an access request left the worklist out."""
    hospital = make_tenant(database, "default", FHIR)
    # Patient/1 on each of the hospital's two EHRs' servers: two people
    index_case(database, hospital, "Patient/1", utcnow() - timedelta(days=2), fhir_base_url=FHIR)
    index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=SECOND_EHR)
    app = make_app(database_url, database)
    client = TestClient(app)
    social = signed_in(app, hospital, "Practitioner/sw-1", "social-worker").headers

    assert client.get("/social", headers=social).status_code == 200
    assert len(client.get("/api/cases", headers=social).json()["items"]) == 2

    def trail(server: str) -> list[tuple[object, ...]]:
        query = audit.TrailQuery(hospital.id, patient_ref="Patient/1", fhir_base_url=server)
        with database.session() as session:
            rows = audit.trail(session, query)
            return [(r["actor"], r["action"], r["fhir_server"], r["outcome"]) for r in rows]

    # on either server's patient, the worker is named as her own EHR (FHIR) names her
    read = (f"{FHIR}/Practitioner/sw-1", "search-type")
    assert trail(FHIR) == [(*read, FHIR, "success")] * 2  # the screen, then the API
    assert trail(SECOND_EHR) == [(*read, SECOND_EHR, "success")] * 2


def _with_two_ehrs(database: Database) -> TenantContext:
    """A hospital whose users launch from two EHRs, on the servers FHIR and SECOND_EHR."""
    two_ehrs = TenantConfiguration(
        name="Ziekenhuis met twee EPD's",
        registrations=[
            EhrRegistration(id="a", name="EPD A", fhir_base_url=FHIR, client_id="kr"),
            EhrRegistration(id="b", name="EPD B", fhir_base_url=SECOND_EHR, client_id="kr"),
        ],
    )
    return TenantDirectory(database, SecretBox(None)).save("default", two_ehrs, actor="test")


def test_two_ehrs_users_of_one_relative_name_are_two_actors_in_the_trail(
    database_url: str, database: Database
) -> None:
    """SMART lets an EHR send ``fhirUser`` relative to its FHIR base. Two EHRs of one hospital
    may both have a ``Practitioner/5``: two people. The trail stored the name as sent, so
    ``kindreflex audit --actor Practitioner/5`` gave both people's rows as one user's, and a
    worklist row on the other EHR's patient read as that EHR's Practitioner/5."""
    hospital = _with_two_ehrs(database)
    index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=SECOND_EHR)
    app = make_app(database_url, database)
    client = TestClient(app)
    for server in (FHIR, SECOND_EHR):
        worker = signed_in(app, hospital, "Practitioner/5", "social-worker", fhir_base_url=server)
        assert client.get("/api/cases", headers=worker.headers).status_code == 200

    def rows(actor: str) -> list[tuple[object, ...]]:
        query = audit.TrailQuery(hospital.id, actor=actor)
        with database.session() as session:
            return [(r["actor"], r["fhir_server"]) for r in audit.trail(session, query)]

    # both listed the same patient of EHR B; each is named as their own EHR names them
    assert rows(f"{FHIR}/Practitioner/5") == [(f"{FHIR}/Practitioner/5", SECOND_EHR)]
    assert rows(f"{SECOND_EHR}/Practitioner/5") == [(f"{SECOND_EHR}/Practitioner/5", SECOND_EHR)]
    assert rows("Practitioner/5") == []  # the relative name alone names no one


def test_a_case_claimed_through_one_ehr_is_not_mine_for_the_same_id_of_another(
    database_url: str, database: Database
) -> None:
    """The assignee was stored as the EHR sent fhirUser: the Practitioner/5 of the other EHR
    found the case under "mine" and could act on it as theirs (review)."""
    hospital = _with_two_ehrs(database)
    case_id = index_case(database, hospital, "Patient/1", utcnow(), fhir_base_url=FHIR)
    app = make_app(database_url, database)
    client = TestClient(app)
    a, b = (
        signed_in(app, hospital, "Practitioner/5", "social-worker", fhir_base_url=server).headers
        for server in (FHIR, SECOND_EHR)
    )

    claimed = client.post(f"/api/cases/{case_id}/claim", headers=a, json={"row_version": 1})

    assert claimed.json()["assigned_to"] == f"{FHIR}/Practitioner/5"
    mine = {"view": "mine"}
    assert [i["id"] for i in client.get("/api/cases", headers=a, params=mine).json()["items"]] == [
        case_id
    ]
    assert client.get("/api/cases", headers=b, params=mine).json()["items"] == []
    # a colleague named relatively is the one of the assigning user's EHR
    given = {"assignee": "Practitioner/6", "row_version": claimed.json()["row_version"]}
    assigned = client.put(f"/api/cases/{case_id}/assignment", headers=b, json=given)
    assert assigned.json()["assigned_to"] == f"{SECOND_EHR}/Practitioner/6"
