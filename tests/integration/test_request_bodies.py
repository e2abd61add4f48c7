"""What the app does with request bodies before its routes see them: a body over
``MAX_BODY_BYTES`` is refused with 413 (by its Content-Length before the app runs, and by
counting a chunked one as it arrives), a JSON number that JSON cannot carry back
(NaN, an infinity) gets the ordinary 422, and a 422 repeats a refused value only in short
(a step's code of a megabyte; a factor or a child given twice, and a list of children
longer than a case holds, are refused naming the field).

The real app on SQLite and PostgreSQL, real sessions, CSRF tokens and bootstrap tokens.
A route that ran leaves a trace (a claimed case, an audit row, a spent token); a refused
request must leave none.
"""

from __future__ import annotations

import asyncio
import codecs
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.types import Message

from service.admin import access
from service.cds.router import MAX_BODY_BYTES
from service.db.base import Database, utcnow
from service.db.models import AuditRecord
from service.protocol import MAX_CHILDREN
from service.tenancy import TenantContext
from tests.support.casework import SOCIAL_WORKER, assignment_of, index_case
from tests.support.sessions import UNUSED_FHIR, make_app, signed_in
from tests.support.write_path import make_tenant

MIB = 2**20


def _padded(body: bytes, size: int) -> bytes:
    """``body`` (JSON) followed by whitespace up to ``size`` bytes: still valid JSON, so
    only its size can make a route refuse it."""
    return body + b" " * (size - len(body))


def _audited(database: Database) -> list[AuditRecord]:
    with database.session() as session:
        return list(session.scalars(select(AuditRecord)))


class _Hospital:
    """The app, a case on the worklist and a signed-in social worker's headers."""

    def __init__(self, database_url: str, database: Database) -> None:
        self.tenant: TenantContext = make_tenant(database, "default", UNUSED_FHIR)
        self.case_id = index_case(database, self.tenant, "Patient/1", utcnow())
        self.app: FastAPI = make_app(database_url, database)
        self.client = TestClient(self.app)
        self.headers = signed_in(self.app, self.tenant, SOCIAL_WORKER, "social-worker").headers


@pytest.fixture
def hospital(database_url: str, database: Database) -> _Hospital:
    return _Hospital(database_url, database)


async def _send_in_chunks(
    app: FastAPI, path: str, headers: dict[str, str], first: bytes, chunks: int
) -> tuple[int, bytes, int]:
    """POST a body of ``chunks`` chunks of 1 MiB (``first`` opens the first) without a
    Content-Length, as an ASGI server passes a chunked upload on. Returns the status,
    the body of the answer, and how many chunks the app had pulled when it answered."""
    pulled = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> Message:
        nonlocal pulled
        if pulled == chunks:
            return {"type": "http.disconnect"}
        pulled += 1
        body = _padded(first, MIB) if pulled == 1 else b" " * MIB
        return {"type": "http.request", "body": body, "more_body": pulled < chunks}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["pulled"] = message["status"], pulled
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    sent = {"host": "testserver", "content-type": "application/json"} | {
        name.lower(): value for name, value in headers.items()
    }
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.encode(), value.encode()) for name, value in sent.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return answer["status"], answer["body"], answer["pulled"]


def test_a_body_over_the_limit_is_refused_by_its_length_before_the_route_runs(
    hospital: _Hospital, database: Database
) -> None:
    claim = _padded(b'{"row_version": 1}', MAX_BODY_BYTES + 1)
    answer = hospital.client.post(
        f"/api/cases/{hospital.case_id}/claim",
        content=claim,
        headers=hospital.headers | {"Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.json() == {"detail": "the request body is larger than 4 MiB"}
    assert assignment_of(database, hospital.case_id) == (None, 1)
    assert _audited(database) == []  # not even a refused change reached the route


def test_a_chunked_body_is_refused_once_past_the_limit_and_not_read_further(
    hospital: _Hospital, database: Database
) -> None:
    path = f"/api/cases/{hospital.case_id}/claim"
    status, body, pulled = asyncio.run(
        _send_in_chunks(hospital.app, path, hospital.headers, b'{"row_version": 1}', chunks=200)
    )
    assert status == 413
    assert b"larger than 4 MiB" in body
    assert pulled == MAX_BODY_BYTES // MIB + 1  # 5 MiB read of the 200 sent
    assert assignment_of(database, hospital.case_id) == (None, 1)
    assert _audited(database) == []


def test_a_body_of_exactly_the_limit_is_read_with_or_without_its_length(
    hospital: _Hospital, database: Database
) -> None:
    path = f"/api/cases/{hospital.case_id}/claim"
    status, _, _ = asyncio.run(
        _send_in_chunks(hospital.app, path, hospital.headers, b'{"row_version": 1}', chunks=4)
    )
    assert status == 200
    release = _padded(b'{"assignee": null, "row_version": 2}', MAX_BODY_BYTES)
    answer = hospital.client.put(
        f"/api/cases/{hospital.case_id}/assignment",
        content=release,
        headers=hospital.headers | {"Content-Type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert assignment_of(database, hospital.case_id) == (None, 3)


def test_the_admin_api_refuses_a_large_body_before_it_spends_the_token(
    hospital: _Hospital, database: Database
) -> None:
    token, _ = access.issue_bootstrap_token(database, hospital.tenant.id)
    sign_in = f'{{"token": "{token}", "name": "admin"}}'.encode()
    json_type = {"Content-Type": "application/json"}

    by_length = hospital.client.post(
        "/admin/api/session", content=_padded(sign_in, 5 * MIB), headers=json_type
    )
    status, _, _ = asyncio.run(
        _send_in_chunks(hospital.app, "/admin/api/session", {}, sign_in, chunks=5)
    )

    assert (by_length.status_code, status) == (413, 413)
    assert "4 MiB" in by_length.json()["detail"]
    # the token is unspent: the same request at its own size signs in
    signed = hospital.client.post("/admin/api/session", content=sign_in, headers=json_type)
    assert signed.status_code == 201, signed.text


def test_a_json_body_opening_with_a_utf_8_byte_order_mark_is_read_as_without(
    hospital: _Hospital, database: Database
) -> None:
    """RFC 8259 §8.1: a parser MAY ignore a byte order mark rather than treat it as an
    error. The admin API refused a body sent with one (a file saved on Windows) with 400
    "the body is not JSON"; the social API, whose body models Python's json parses,
    read it already."""
    json_type = {"Content-Type": "application/json"}
    token, _ = access.issue_bootstrap_token(database, hospital.tenant.id)
    sign_in = f'{{"token": "{token}", "name": "admin"}}'.encode()
    signed = hospital.client.post(
        "/admin/api/session", content=codecs.BOM_UTF8 + sign_in, headers=json_type
    )
    assert signed.status_code == 201, signed.text

    claim = codecs.BOM_UTF8 + b'{"row_version": 1}'
    answer = hospital.client.post(
        f"/api/cases/{hospital.case_id}/claim", content=claim, headers=hospital.headers | json_type
    )
    assert answer.status_code == 200, answer.text


def test_a_page_gets_a_short_plain_413_in_the_apps_languages(
    hospital: _Hospital, database: Database
) -> None:
    form = f"row_version=1&pad={'x' * MAX_BODY_BYTES}".encode()
    answer = hospital.client.post(
        f"/social/cases/{hospital.case_id}/claim",
        content=form,
        headers=hospital.headers | {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "te groot (ten hoogste 4 MiB)" in answer.text
    assert "too large (at most 4 MiB)" in answer.text
    assert assignment_of(database, hospital.case_id) == (None, 1)


def test_a_form_of_more_fields_than_starlette_parses_gets_a_page_and_changes_nothing(
    hospital: _Hospital, database: Database
) -> None:
    # Only a forged post has over a thousand multipart fields (Starlette's limit). Before,
    # the answer was Starlette's English JSON ``{"detail": "Too many fields…"}``.
    fields = {f"f{n}": "x" for n in range(1001)} | {"row_version": "1"}
    answer = hospital.client.post(
        f"/social/cases/{hospital.case_id}/claim",
        files={name: (None, value) for name, value in fields.items()},
        headers=hospital.headers | {"Accept": "text/html", "Accept-Language": "fr"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert "Ce formulaire n&#x27;a pas pu être lu" in answer.text
    assert assignment_of(database, hospital.case_id) == (None, 1)


@pytest.mark.parametrize(
    ("body", "echoed"),
    [
        (b'{"row_version": NaN}', "nan"),
        (b'{"row_version": 1e400}', "inf"),
        (b'{"row_version": -Infinity}', "-inf"),
    ],
)
def test_a_number_json_cannot_carry_gets_the_usual_422(
    hospital: _Hospital, database: Database, body: bytes, echoed: str
) -> None:
    answer = hospital.client.post(
        f"/api/cases/{hospital.case_id}/claim",
        content=body,
        headers=hospital.headers | {"Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert (problem["loc"], problem["input"]) == (["body", "row_version"], echoed)
    assert assignment_of(database, hospital.case_id) == (None, 1)


@pytest.mark.parametrize(
    ("body", "content_type", "refused"),
    [
        (b'{"row_version": "\\ud800"}', "application/json", (["body", "row_version"], "\\ud800")),
        (b'{"row_version": 1, "x\\ud800": 1}', "application/json", (["body"], "x\\ud800")),
        (b"\xff\xfe{", "text/plain", (["body"], "\ufffd\ufffd{")),
    ],
    ids=["lone-surrogate", "lone-surrogate-in-a-name", "no-utf-8"],
)
def test_text_utf_8_cannot_carry_gets_the_usual_422(
    hospital: _Hospital,
    database: Database,
    body: bytes,
    content_type: str,
    refused: tuple[list[str], object],
) -> None:
    """The 422 repeats what it refused; a lone surrogate (which JSON may write, UTF-8
    cannot) and bytes that are no UTF-8 made that answer a 500 (found by review)."""
    answer = hospital.client.post(
        f"/api/cases/{hospital.case_id}/claim",
        content=body,
        headers=hospital.headers | {"Content-Type": content_type},
    )
    assert answer.status_code == 422, answer.text
    problems = [(problem["loc"], problem["input"]) for problem in answer.json()["detail"]]
    assert refused in problems, problems
    assert assignment_of(database, hospital.case_id) == (None, 1)


def _step(hospital: _Hospital, step: str, body: dict[str, Any]) -> dict[str, Any]:
    """The one problem of a step's body the API refused with 422."""
    answer = hospital.client.post(
        f"/api/cases/{hospital.case_id}/{step}", json=body, headers=hospital.headers
    )
    assert answer.status_code == 422, answer.text
    assert len(answer.content) < 1000  # whatever the body held
    (problem,) = answer.json()["detail"]
    return dict(problem)


_DECIDED = {"row_version": 1, "decision": "concerning-unwilling", "discussed_with_patient": True}
_REFERRED = {"row_version": 1, "with_cooperation": False, "patient_informed": True}


def test_a_factor_or_a_child_given_twice_is_refused_naming_the_field(
    hospital: _Hospital, database: Database
) -> None:
    factors = [{"code": "high-stress"}, {"code": "school-absence"}, {"code": "high-stress"}]
    twice = _step(hospital, "step-4", _DECIDED | {"factors": factors})
    assert twice["loc"] == ["body", "factors"]
    assert "the factor 'high-stress' is given twice" in twice["msg"]

    child = "RelatedPerson/1"
    heard = [{"child_ref": child, "consent_given": consent} for consent in (True, False)]
    twice = _step(hospital, "step-4", _DECIDED | {"children_heard": heard})
    assert twice["loc"] == ["body", "children_heard"]
    assert "the child 'RelatedPerson/1' is given twice" in twice["msg"]
    assert assignment_of(database, hospital.case_id) == (None, 1)
    assert _audited(database) == []


def test_a_code_of_a_megabyte_is_refused_and_echoed_in_short(
    hospital: _Hospital, database: Database
) -> None:
    huge = "vk-" + "x" * MIB
    partner = _step(hospital, "step-6", _REFERRED | {"partner_id": huge})
    assert (partner["loc"], partner["type"]) == (["body", "partner_id"], "string_too_long")
    assert partner["input"] == huge[:100] + "…"

    factor = _step(hospital, "step-4", _DECIDED | {"factors": [{"code": huge}]})
    assert factor["loc"] == ["body", "factors", 0, "code"]
    assert factor["input"] == huge[:100] + "…"

    unexpected = _step(hospital, "step-6", _REFERRED | {"partner_id": "parket", huge: 1})
    assert unexpected["loc"] == ["body", huge[:100] + "…"]
    assert assignment_of(database, hospital.case_id) == (None, 1)
    assert _audited(database) == []


def test_a_focus_with_a_child_twice_or_more_children_than_a_case_holds_is_refused(
    hospital: _Hospital, database: Database
) -> None:
    twice = _step(hospital, "step-6", _REFERRED | {"partner_id": "parket", "focus": ["P/1"] * 2})
    assert twice["loc"] == ["body", "focus"]
    assert "the child 'P/1' is given twice" in twice["msg"]

    many = [f"P/{number}" for number in range(MAX_CHILDREN + 1)]
    too_many = _step(hospital, "step-4", _DECIDED | {"focus": many})
    assert (too_many["loc"], too_many["type"]) == (["body", "focus"], "too_long")
    assert too_many["input"] == [*many[:10], "…"]  # echoed in short, like a long string
    heard = [{"child_ref": ref, "consent_given": True} for ref in many]
    too_many = _step(hospital, "step-4", _DECIDED | {"children_heard": heard})
    assert len(too_many["input"]) == 11
    assert assignment_of(database, hospital.case_id) == (None, 1)
    assert _audited(database) == []
