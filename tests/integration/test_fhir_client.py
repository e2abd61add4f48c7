"""The FHIR client against a real FHIR server process, and against a failing HTTP server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from sandbox.fhir_server import FhirServer, free_port
from service.bounded_fetch import Bounds
from service.fhir.client import (
    MAX_ANSWER_BYTES,
    SCREEN_BUDGET_TIMEOUTS,
    FhirClient,
    FhirConflict,
    FhirRejected,
    FhirUnanswered,
    FhirUnavailable,
    FhirUnreadable,
    SearchPages,
)
from service.outbox import TransactionBuilder
from tests.support.served import ServedJson, Trickled

pytestmark = pytest.mark.fhirserver

SYSTEM = "urn:test:fhir-client"


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with FhirServer(log_traffic=True) as server:
        yield server


def _person() -> dict[str, Any]:
    return {
        "resourceType": "RelatedPerson",
        "identifier": [{"system": SYSTEM, "value": str(uuid.uuid4())}],
        "patient": {"reference": "Patient/p1"},
    }


def test_transaction_read_and_search(fhir: FhirServer) -> None:
    person = _person()
    tx = TransactionBuilder()
    tx.create(person, person["identifier"][0])
    with FhirClient(fhir.base_url, lambda: "secret-token", 5.0) as client:
        answer = client.transaction(tx.bundle())
        assert answer["type"] == "transaction-response"
        location = answer["entry"][0]["response"]["location"]
        person_id = location.split("RelatedPerson/")[1].split("/")[0]
        assert client.read("RelatedPerson", person_id)["patient"] == person["patient"]
        found = client.search(
            "RelatedPerson", {"identifier": f"{SYSTEM}|{person['identifier'][0]['value']}"}
        )
        assert found["type"] == "searchset"
        assert [e["resource"]["id"] for e in found["entry"]] == [person_id]
    assert _last_authorization(fhir) == "Bearer ***redacted***"  # sent, and never logged


def test_a_caller_whose_thread_runs_an_event_loop_still_reads(fhir: FhirServer) -> None:
    """The client is blocking, but a caller's thread may run an event loop of its own
    (Playwright's synchronous API does, where the browser tests seed and read the FHIR
    server): the client's own loop cannot run inside it, so it runs beside it."""
    person = _person()
    tx = TransactionBuilder()
    tx.create(person, person["identifier"][0])

    async def inside_a_loop() -> dict[str, Any]:
        with FhirClient(fhir.base_url, lambda: "secret-token", 5.0) as client:
            answer = client.transaction(tx.bundle())
            location = answer["entry"][0]["response"]["location"]
            return client.read("RelatedPerson", location.split("RelatedPerson/")[1].split("/")[0])

    assert asyncio.run(inside_a_loop())["identifier"] == person["identifier"]


def _last_authorization(fhir: FhirServer) -> str:
    assert fhir.data_dir is not None
    with sqlite3.connect(fhir.data_dir / "sekmet.db") as db:
        (headers,) = db.execute(
            "SELECT req_headers FROM traffic WHERE direction = 'inbound' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return str({k.lower(): v for k, v in json.loads(headers).items()}["authorization"])


def test_a_missing_resource_is_rejected_with_the_servers_outcome(fhir: FhirServer) -> None:
    client = FhirClient(fhir.base_url, lambda: "t", 5.0)
    with client, pytest.raises(FhirRejected) as raised:
        client.read("RelatedPerson", "does-not-exist")
    assert raised.value.status == 404
    assert raised.value.outcome["resourceType"] == "OperationOutcome"
    assert not isinstance(raised.value, FhirConflict)


def test_a_stale_if_match_is_a_conflict(fhir: FhirServer) -> None:
    person = _person()
    with FhirClient(fhir.base_url, lambda: "t", 5.0) as client:
        tx = TransactionBuilder()
        tx.create(person, person["identifier"][0])
        location = client.transaction(tx.bundle())["entry"][0]["response"]["location"]
        current = client.read("RelatedPerson", location.split("RelatedPerson/")[1].split("/")[0])
        stale = TransactionBuilder()
        stale.update(current, "999")
        with pytest.raises(FhirConflict) as raised:
            client.transaction(stale.bundle())
    assert raised.value.status in (409, 412)


def test_only_a_transaction_bundle_is_sent(fhir: FhirServer) -> None:
    with (
        FhirClient(fhir.base_url, lambda: "t", 5.0) as client,
        pytest.raises(ValueError, match="transaction"),
    ):
        client.transaction({"resourceType": "Bundle", "type": "batch", "entry": []})


def _entry_answered(status: str | None, issue: str = "invalid") -> dict[str, Any]:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": issue}]}
    return {"response": {"outcome": outcome} | ({} if status is None else {"status": status})}


@pytest.mark.parametrize(
    ("entries", "error", "said"),
    [
        ([_entry_answered("201 Created"), _entry_answered("400 Bad Request")], FhirRejected, "400"),
        ([_entry_answered("201"), _entry_answered("412", "conflict")], FhirConflict, "412"),
        ([_entry_answered("201"), _entry_answered("503 Busy")], FhirUnavailable, "503"),
        ([], FhirUnreadable, "each of the 2 entries"),
        ([_entry_answered("201 Created")], FhirUnreadable, "each of the 2 entries"),
        ([_entry_answered("201"), _entry_answered(None)], FhirUnreadable, "no status"),
        ([_entry_answered("201"), _entry_answered("Created")], FhirUnreadable, "no status"),
    ],
)
def test_a_transaction_answered_200_with_entries_not_applied_is_not_taken_for_applied(
    entries: list[dict[str, Any]], error: type[Exception], said: str
) -> None:
    """A server processing a transaction as a batch (or a facade in front of one) answered
    200 with refused entries, or none: taken for applied, the outbox marked a save that
    is on no server "delivered" (found by review). A refused entry is that refusal; an
    answer that does not say, unreadable (the outbox's witness then asks)."""
    answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    tx = TransactionBuilder()
    for _ in range(2):
        person = _person()
        tx.create(person, person["identifier"][0])
    with (
        ServedJson(json.dumps(answer).encode(), path="/fhir") as server,
        FhirClient(server.url, lambda: "t", 5.0) as client,
        pytest.raises(error, match=said),
    ):
        client.transaction(tx.bundle())


def test_no_server_is_unavailable() -> None:
    client = FhirClient(f"http://127.0.0.1:{free_port()}/fhir", lambda: "t", 1.0)
    with client, pytest.raises(FhirUnavailable, match="ConnectError"):
        client.read("Patient", "1")


class _Broken(BaseHTTPRequestHandler):
    """A real HTTP server that fails the way overloaded gateways do (sekmet does not)."""

    def do_GET(self) -> None:
        if self.path.endswith("/slow"):
            self.server.release.wait(10)  # type: ignore[attr-defined]
        if self.path.endswith("/cut"):  # the connection closed, the request unanswered
            self.close_connection = True
            return
        statuses = [code for code in (502, 503, 504) if str(code) in self.path]
        status, body = (statuses[0], b"busy") if statuses else (200, b"<html>login</html>")
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def broken() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_5xx_timeouts_and_non_fhir_answers_are_unavailable(broken: str) -> None:
    # Unreadable answers are unavailable too (retried), but named apart for the user. The
    # answers that come are read with time to spare (a loaded machine's), the held one not.
    with FhirClient(broken, lambda: "t", 10.0) as client:
        with pytest.raises(FhirUnavailable, match="503"):
            client.read("Patient", "503")
        with pytest.raises(FhirUnreadable, match="not FHIR JSON"):
            client.read("Patient", "html")
    with (
        FhirClient(broken, lambda: "t", 0.5) as client,
        pytest.raises(FhirUnavailable, match="Timeout"),
    ):
        client.read("Patient", "slow")


def test_a_request_left_unanswered_is_told_from_one_never_sent_and_from_a_servers_5xx(
    broken: str,
) -> None:
    """A request that reached the server, or may have, and got no answer from it is
    ``FhirUnanswered``: its deadline passed, the connection was cut, or a gateway said the
    server gave it none (502, 504). A transaction so left may be applied afterwards, and
    the outbox lets it settle before asking whether it landed (``service.outbox``). One
    that reached no server (the connection refused), or the server's own 5xx (503), is
    another outage: what it answered is what it did."""
    with FhirClient(broken, lambda: "t", 10.0) as client:
        for status in ("502", "504"):
            with pytest.raises(FhirUnanswered, match=f"server error {status}"):
                client.read("Patient", status)
        with pytest.raises(FhirUnanswered, match="RemoteProtocolError"):
            client.read("Patient", "cut")
        with pytest.raises(FhirUnavailable, match="503") as busy:
            client.read("Patient", "503")
        assert not isinstance(busy.value, FhirUnanswered)
    with (
        FhirClient(broken, lambda: "t", 0.5) as client,
        pytest.raises(FhirUnanswered, match="no whole answer within"),
    ):
        client.read("Patient", "slow")
    nowhere = FhirClient(f"http://127.0.0.1:{free_port()}/fhir", lambda: "t", 1.0)
    with nowhere, pytest.raises(FhirUnavailable, match="ConnectError") as refused:
        nowhere.read("Patient", "1")
    assert not isinstance(refused.value, FhirUnanswered)


def test_an_answer_trickled_past_the_deadline_is_unavailable_in_time() -> None:
    """A server (or a proxy) sending a byte every 0.1 s: each read comes well within the
    per-operation timeout, the whole answer would take a minute. Before, the client waited
    for all of it; now the request ends at the deadline, its message naming no patient."""
    padded = {"resourceType": "Bundle", "type": "searchset", "entry": [], "id": "x" * 600}
    answer = json.dumps(padded).encode()
    deadline = 1.0
    with (
        Trickled(answer, pause=0.1, path="/fhir") as slow,
        FhirClient(slow.url, lambda: "t", deadline) as client,
    ):
        started = time.monotonic()
        with pytest.raises(FhirUnavailable) as raised:
            client.search("RelatedPerson", {"patient": "Patient/p-secret"})
        elapsed = time.monotonic() - started

    assert elapsed < deadline + 5  # the trickle would take 60 s
    assert not isinstance(raised.value, FhirUnreadable)  # an outage: try again later
    assert str(raised.value) == (
        f"search RelatedPerson at {slow.url}: no whole answer within 1 s (TimeoutError)"
    )


def test_a_name_lookup_hanging_past_the_deadline_does_not_hold_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The system resolver cannot be interrupted: a lookup hanging (a DNS server that does
    not answer: retries for many seconds) outlives the request that hit its deadline. Before,
    it ran on the client's own event loop's executor, and closing the client (the end of
    the nurse's page, of an outbox delivery) waited for it, past the deadline. A hanging
    resolver cannot be made here otherwise: ``socket.getaddrinfo`` is replaced for one name,
    blocking until the test lets it go."""
    real = socket.getaddrinfo
    let_go = threading.Event()

    def hanging(host: str | bytes | None, *args: Any, **kwargs: Any) -> Any:
        if host in ("dns-hangs.example", b"dns-hangs.example"):
            let_go.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        client = FhirClient("http://dns-hangs.example/fhir", lambda: "t", 0.5)
        with pytest.raises(FhirUnavailable):
            client.read("Patient", "p1")
        closing = threading.Thread(target=client.close)
        closing.start()
        closing.join(timeout=10)  # the lookup is let go only below: a bound, not a sleep
        assert not closing.is_alive()
    finally:
        let_go.set()


def test_a_failed_read_names_the_resource_type_not_the_id(broken: str) -> None:
    """A read's path is the resource's id, a Patient's the patient's: the message (the
    outbox's ``last_error``, the logs) names the interaction, the type and the server.
    Before: ``GET http://…/fhir/Patient/p-secret-503: server error 503``."""
    with FhirClient(broken, lambda: "t", 10.0) as client:
        with pytest.raises(FhirUnavailable) as down:
            client.read("Patient", "p-secret-503")
        with pytest.raises(FhirUnreadable) as garbled:
            client.read("Patient", "p-secret-html")

    assert str(down.value) == f"read Patient at {broken}: server error 503"
    assert str(garbled.value) == f"read Patient at {broken}: answer 200 is not FHIR JSON"


class _ThenGarbled(ServedJson):
    """Answers its body once, then a proxy's sign-in page."""

    def current(self) -> bytes:
        answer, self.body = self.body, b"<html>sign in</html>"
        return answer


def test_a_failed_next_page_names_the_search_not_its_query() -> None:
    """A next page's URL carries the search's query, which names the patient: the message
    names the search and the page. Before: ``GET http://…/fhir/Observation?subject=…``."""
    first = _page("Observation?subject=Patient/p-secret&_page=2")
    with (
        _ThenGarbled(json.dumps(first).encode(), path="/fhir") as served,
        FhirClient(served.url, lambda: "t", 5.0) as client,
        pytest.raises(FhirUnreadable) as raised,
    ):
        client.search_pages("Observation", {"subject": "Patient/p-secret"}, max_pages=3)

    assert str(raised.value) == (
        f"search Observation, page 2 at {served.url}: answer 200 is not FHIR JSON"
    )


def _page(following: str) -> dict[str, Any]:
    """A search's page with one Observation and ``following`` as its next page."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": "o1"}}],
        "link": [{"relation": "next", "url": following}],
    }


def test_a_screens_search_over_a_server_slow_on_every_page_returns_the_pages_read_in_time() -> None:
    """Every page comes in 0.6 of the timeout (a byte at a time: the trickling server), each
    within it; ten pages would take six timeouts. Before, the search ran into the budget and
    raised: the case page said the server does not answer and showed nothing of a long case.
    Now its further pages are read within the budget less one timeout, then the search
    returns the pages read, incomplete, and the screen's next read still comes within the
    budget. A first page the budget cuts still raises (nothing to show)."""
    timeout = 2.0
    answer = json.dumps(_page("Observation?subject=Patient/p-secret&_page=2")).encode()
    with Trickled(answer, pause=0.6 * timeout / len(answer), path="/fhir") as slow:
        started = time.monotonic()
        client = FhirClient.for_screen(slow.url, lambda: "t", timeout)
        with client:
            read = client.search_pages("Observation", {"subject": "Patient/p"}, max_pages=10)
            spare_in_time = time.monotonic() - started
            after = client.read("Bundle", "next-search")  # the screen's next read: in time
            with pytest.raises(FhirUnavailable) as raised:  # the budget is spent by now
                client.search_pages("Observation", {"subject": "Patient/p"}, max_pages=10)
        elapsed = time.monotonic() - started

    budget = SCREEN_BUDGET_TIMEOUTS * timeout
    assert read.complete is False
    assert 1 <= len(read.bundle["entry"]) < 10  # the pages read, one entry each
    assert "link" not in read.bundle
    assert spare_in_time <= budget - timeout + 0.5  # one timeout left for what follows
    assert after["resourceType"] == "Bundle"
    assert not isinstance(raised.value, FhirUnreadable)  # an outage: try again later
    message = str(raised.value)
    assert re.fullmatch(
        rf"search Observation at {re.escape(slow.url)}: "
        rf"(no whole answer within the screen's 6 s \(TimeoutError\)"
        rf"|not sent, the screen's 6 s are spent)",
        message,
    ), message
    assert elapsed < budget + 1


class Seconds:
    """A client's clock that moves when the test moves it, instead of waiting out a budget."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_spent_budget_is_named_and_a_changes_budget_ends_at_90_s(fhir: FhirServer) -> None:
    """Each budget names itself when spent (an operator reading the outbox's last_error or
    the log knows which bound ended the work; before, every one was "the screen's"). A
    change's budget ends at 90 s whatever the timeout (300 s, the setting's maximum, would
    give twelve of them, an hour): a read with 2 s of it left is sent, none at 90 s."""
    seconds = Seconds()
    made = {
        "screen": FhirClient.for_screen(fhir.base_url, lambda: "t", 5.0, clock=seconds),
        "save": FhirClient.for_save(fhir.base_url, lambda: "t", 5.0, clock=seconds),
        "change": FhirClient.for_change(fhir.base_url, lambda: "t", 300.0, clock=seconds),
    }
    refused: dict[str, str] = {}
    try:
        seconds.now = 88.0
        sent = made["change"].search("Patient", {"_count": "1"})
        seconds.now = 90.0
        for whose, client in made.items():
            with pytest.raises(FhirUnavailable) as raised:
                client.search("Patient", {"_count": "1"})
            refused[whose] = str(raised.value)
    finally:
        for client in made.values():
            client.close()

    assert sent["type"] == "searchset"
    where = f"search Patient at {fhir.base_url}: not sent"
    assert refused == {
        "screen": f"{where}, the screen's 15 s are spent",
        "save": f"{where}, the save's 15 s are spent",
        "change": f"{where}, the change's 90 s are spent",
    }


def test_an_answer_larger_than_the_cap_is_unreadable() -> None:
    """A FHIR-shaped answer one byte past the cap: refused as unreadable (for the EHR's
    administrators, like a proxy's page), not read whole into memory."""
    head, tail = b'{"resourceType": "Patient", "id": "p1", "text": "', b'"}'
    huge = head + b"x" * (MAX_ANSWER_BYTES + 1 - len(head) - len(tail)) + tail
    with ServedJson(huge, path="/fhir") as flood, FhirClient(flood.url, lambda: "t", 30) as client:
        with pytest.raises(FhirUnreadable) as raised:
            client.read("Patient", "p1")
        flood.body = huge[: len(head)] + tail  # the same server, a Patient within the cap
        assert client.read("Patient", "p1")["id"] == "p1"
    assert str(raised.value) == (
        f"read Patient at {flood.url}: the answer is larger than {MAX_ANSWER_BYTES} bytes"
    )


def test_an_answer_nested_deeper_than_the_parser_goes_is_unreadable() -> None:
    """Within the cap, a RecursionError: a 500 for the page that read it (found by review)."""
    deep = b'{"resourceType":"Patient","extension":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with ServedJson(deep, path="/fhir") as nested:
        client = FhirClient(nested.url, lambda: "t", 30)
        with client, pytest.raises(FhirUnreadable):
            client.read("Patient", "p1")


def test_a_search_is_read_page_by_page_up_to_its_cap(fhir: FhirServer) -> None:
    # Before, only a search's first page was read. The real server's next links here.
    patient = f"Patient/{uuid.uuid4()}"
    tx = TransactionBuilder()
    for _ in range(5):
        person = {**_person(), "patient": {"reference": patient}}
        tx.create(person, person["identifier"][0])
    with FhirClient(fhir.base_url, lambda: "secret-token", 5.0) as client:
        client.transaction(tx.bundle())
        params = {"patient": patient, "_count": "2"}

        whole = client.search_pages("RelatedPerson", params, max_pages=10)
        capped = client.search_pages("RelatedPerson", params, max_pages=2)

    ids = [e["resource"]["id"] for e in whole.bundle["entry"]]
    assert (len(set(ids)), whole.complete) == (5, True)
    assert "link" not in whole.bundle
    assert (len(capped.bundle["entry"]), capped.complete) == (4, False)


def _paged(links: Mapping[int, str]) -> tuple[SearchPages, list[str]]:
    """A search on https://fhir.hospital.example/fhir whose page N links to ``links[N]``:
    what was read, and the URLs asked. (A MockTransport: a loopback server cannot be made to
    write links to other hosts or to its own host written another way.)"""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        page = int(request.url.params.get("page", "1"))
        following = links.get(page)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Observation", "id": str(page)}}],
            "link": [{"relation": "next", "url": following}] if following else [],
        }
        return httpx.Response(200, json=bundle)

    with FhirClient("https://fhir.hospital.example/fhir", lambda: "t", 1.0) as client:
        client._http.close()
        client._http = _Unbounded(transport=httpx.MockTransport(answer))  # type: ignore[assignment]
        return client.search_pages("Observation", {"code": "x"}, max_pages=10), asked


class _Unbounded(httpx.Client):
    """An httpx.Client with the bounded client's request() and close(): its bounds are not
    what the tests of next links are about."""

    def request(  # type: ignore[override]
        self, method: str, url: str, *, bounds: Bounds, **options: Any
    ) -> httpx.Response:
        return super().request(method, url, **options)


def test_a_next_link_away_from_the_fhir_server_is_not_followed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The access token goes to the hospital's FHIR server only: a next page elsewhere is
    # not asked for, the read says it is incomplete, and the operator is told why.
    pages, asked = _paged(
        {
            1: "Observation?page=2",  # relative to the base: followed
            2: "https://elsewhere.example/fhir/Observation?patient=Patient/p-1&page=3",
        }
    )

    assert [e["resource"]["id"] for e in pages.bundle["entry"]] == ["1", "2"]
    assert pages.complete is False
    assert asked == [
        "https://fhir.hospital.example/fhir/Observation?code=x",
        "https://fhir.hospital.example/fhir/Observation?page=2",
    ]
    (warning,) = [r for r in caplog.records if r.name == "service.fhir.client"]
    fields = getattr(warning, "fields", {})
    assert fields["next_origin"] == "https://elsewhere.example"
    assert "p-1" not in str(fields)


def test_a_next_link_to_the_same_server_written_another_way_is_followed() -> None:
    # A server (or the proxy in front of it) may write its own host in capitals or name the
    # default port: the same server, followed. Before, such a link was refused as another
    # server's and every case longer than a page read as incomplete. Another port is not.
    pages, asked = _paged(
        {
            1: "https://FHIR.Hospital.example:443/fhir/Observation?page=2",
            2: "https://fhir.hospital.example/fhir/Observation?page=3",
            3: "https://fhir.hospital.example:8443/fhir/Observation?page=4",
        }
    )

    assert [e["resource"]["id"] for e in pages.bundle["entry"]] == ["1", "2", "3"]
    assert pages.complete is False  # page 4 is on another port: not asked for
    assert len(asked) == 3
    assert all(urlsplit(url).port in (None, 443) for url in asked)
