"""A small, synchronous FHIR R4 REST client for the hospital's FHIR server.

Synchronous on purpose: the use cases run in FastAPI's thread pool and in the outbox
worker thread, like the database sessions. The client never retries: a failed write is
the outbox's business (it retries with backoff), a failed read is shown to the user.
Every failure is one of three typed errors, so callers decide without parsing HTTP:

* :class:`FhirUnavailable` — network error, timeout, 5xx: try again later (its
  :class:`FhirUnreadable` — an answer that is not FHIR, too large to read, or whose
  compression cannot be decoded; its :class:`FhirThrottled` — 429, 408 or 425, the server
  asking to be asked later, with its ``Retry-After``; its :class:`FhirUnanswered` — a
  request that reached the server, or may have, and got no answer from it: a write may
  still be applied after the error);
* :class:`FhirConflict` — 409/412: someone else changed the resource (If-Match);
* :class:`FhirRejected` — any other 4xx, with the server's OperationOutcome: retrying
  the same request cannot help.

Of the 4xx, 429 (Too Many Requests), 408 (Request Timeout) and 425 (Too Early) refuse the
moment, not the request (RFC 6585, RFC 9110, RFC 8470): the same request later is
answered. They were :class:`FhirRejected`, so a save met by a throttling server (or its
gateway) was ``failed`` for good and a social worker's change undone.

Each request is bounded as a whole (:mod:`service.bounded_fetch`), not only each network
operation: connecting, sending and the whole answer end within the client's ``timeout``
(``KINDREFLEX_FHIR_TIMEOUT_SECONDS``), else :class:`FhirUnavailable`; and an answer (asked
for gzip-compressed) is read no further than :data:`MAX_ANSWER_BYTES` decoded, else
:class:`FhirUnreadable`, as is one whose compression cannot be decoded. Before, a server
(or a proxy in front of it) trickling its answer a byte every few seconds held the
nurse's chart, the social worker's case page or an outbox delivery as long as it liked,
and a huge answer was read whole into memory.

A client made for one screen (:meth:`FhirClient.for_screen`: one page view, such as the
nurse's triage chart or the social worker's case page) also bounds all its requests
together: they end within :data:`SCREEN_BUDGET_TIMEOUTS` timeouts in all, each request's
deadline being the per-request timeout or what is left of that budget, whichever is less;
a request once the budget is spent is not sent: :class:`FhirUnavailable`, so the screen
says the server could not be read now. Before, a case page's several searches of up to
ten pages each, each answered just within the timeout, held the social worker for
minutes. On a screen a search's further pages are optional: they are read within the
budget less :data:`SCREEN_PAGES_SPARE_TIMEOUTS` timeout (kept for the screen's reads after
the search, such as the case page's next search), and once that is spent the search
returns the pages read, incomplete (:class:`SearchPages`), and the screen says its history
is incomplete. Before, a long case on a server slow on every request (a second a
request, some 25 requests) always ended in "the server does not answer": its first
search's pages spent the budget and the page showed nothing.

The reads before a change of a case (:meth:`FhirClient.for_change`) need every page:
a change ruled on part of the case's history could be wrong. They have a larger budget,
:data:`CHANGE_BUDGET_TIMEOUTS` timeouts, and a page not read within it is
:class:`FhirUnavailable` like any request (nothing is changed; the user may try again):
the user asked to save and is told it is being saved, and within the flat screen budget
a long case on a slow server could never be changed.

The outbox worker's deliveries keep only the per-request bound: nobody waits on
the worker, and a delivery's transaction is its last request, so a budget spent on the
reads before it would keep a large delivery to a slow server from ever being sent. The
saving request's own attempt, which the user waits for (:meth:`FhirClient.for_save`,
``Outbox.deliver``), has a budget as large as the screen's: the worker sends what it could
not.

Each budget is named in the errors it causes (``not sent, the change's 60 s are spent``,
``no whole answer within the save's 9 s``): an operator reading the outbox's
``last_error`` or the logs knows which bound ended the work, and which setting it follows.

An error's message names the server, the interaction and the resource type (``search
Observation, page 2 at https://fhir.example/fhir: server error 503``), never the URL asked:
its query names the patient (``subject=Patient/123``) and a read's path is the resource's
id (a Patient's is the patient's). The messages go to the outbox's ``last_error`` and to
the logs.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import SplitResult, quote, unquote, urljoin, urlsplit

import httpx

from service.bounded_fetch import BlockingClient, Bounds, UnreadableBodyError
from service.text import LONE_SURROGATE

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

Resource = dict[str, Any]
#: Search parameters: a mapping, or pairs when a parameter repeats (``_revinclude``).
SearchParams = Mapping[str, str] | Sequence[tuple[str, str]]

#: The 4xx that say "not now" rather than "not this" (:class:`FhirThrottled`): Too Many
#: Requests, Request Timeout, Too Early.
THROTTLED_STATUSES = frozenset({429, 408, 425})

#: What a gateway (a reverse proxy, a load balancer) answers for a server that did not
#: answer it: Bad Gateway (the connection to the server failed or was cut, perhaps after the
#: request reached it), Gateway Timeout (the gateway stopped waiting; the server goes on).
#: A 500 or 503 is the server's own answer: what it answered is what it did.
GATEWAY_STATUSES = frozenset({502, 504})

#: httpx's errors raised before a request is sent: nothing reached the server.
_NOT_SENT = (
    httpx.ConnectError,  # the outbound policy's refusal too (OutboundRefusedError)
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
)

#: The largest answer read from a FHIR server. The largest we ask for are a case's search
#: page (500 step findings, about 1 MiB), the triage chart (a patient with up to 100
#: children and Flags) and a transaction's response: a few MiB at most, even pretty-printed
#: with narratives. 32 MiB leaves ten times that and more, while a few answers at once
#: (one per thread of the pool, and the outbox worker) cannot exhaust the memory. A larger
#: answer is not FHIR we can use: :class:`FhirUnreadable`, for the EHR's administrators.
MAX_ANSWER_BYTES = 32 * 1024 * 1024

#: A screen's reads end within this many per-request timeouts in all (15 s with the default
#: 5 s). A case page asks for a Flag, the chart, the findings and the referrals (about five
#: requests, well under a second each from a server in good health), at most about 25 with
#: every search at its page cap: three timeouts let a slow server's ordinary answers
#: through, and end the page in as long as a user still waits for it.
SCREEN_BUDGET_TIMEOUTS = 3

#: A screen's search reads its further pages within its budget less this many timeouts:
#: one timeout is kept for the screen's reads after the search (the case page's findings
#: are followed by the referrals' first page, without which it shows nothing), so a slow
#: server's long history is shown in part rather than not at all.
SCREEN_PAGES_SPARE_TIMEOUTS = 1

#: The reads before a change of a case end within this many per-request timeouts in all
#: (a minute with the default 5 s). A step or a closing reads the Flag, the chart and up to
#: ten pages of findings (``casework.MAX_SEARCH_PAGES``): twelve requests, so each may take
#: its whole timeout; a referral's new status also reads up to ten pages of referrals, which
#: fit when its 22 requests average up to 12/22 of the timeout (2.7 s of 5 s). Bounded still:
#: the user waits for the save, and past it is told the server does not answer now.
CHANGE_BUDGET_TIMEOUTS = 12
#: ... and within this many seconds whatever the timeout (a minute and a half): with the
#: save's own delivery attempt after them (``service.outbox.Outbox.deliver``, 9 s at most)
#: the request stays within the ingress's read timeout (``deploy/kubernetes/ingress.yaml``,
#: 120 s; ingress-nginx's default of 60 s would show the social worker its bare 504 page
#: for a save that went on and landed). A longer timeout setting would hold a route thread
#: for up to an hour.
CHANGE_BUDGET_MAX_SECONDS = 90.0


class ReauthorisationRequired(Exception):  # noqa: N818 - name agreed between the engineers
    """No valid access token can be obtained for a session without the user signing in again.

    Raised by the token source (``SessionTokens.access_token``); defined here because the
    outbox worker in ``service`` must recognise it without importing ``smart_app``.
    """


class FhirError(Exception):
    """Base class of the client's errors."""


class FhirUnavailable(FhirError):  # noqa: N818 - name agreed between the engineers
    """The server could not be reached, timed out or answered 5xx; the request may be retried."""


class FhirUnreadable(FhirUnavailable):
    """The server answered with what FHIR does not allow (a page that is not JSON, such as a
    proxy's sign-in page; a search answered by something other than a Bundle; a
    RelatedPerson born on 30 February). Nothing is read from such an
    answer; like an outage it may pass (a proxy's page, a server being fixed)."""


class FhirUnanswered(FhirUnavailable):
    """A request sent, or perhaps sent, that the server did not answer: its deadline passed
    (connecting too: which step it was is not known), the connection was lost after it was
    made, or a gateway in front of the server answered in its place that the server gave
    it no answer (:data:`GATEWAY_STATUSES`). A server does not stop working on a request
    whose client went away: a write (a transaction) may be applied after this error, even
    seconds later. Not raised when nothing can have been sent (a connection refused, an
    address the outbound policy refuses, a budget spent before the request)."""


class _BudgetSpentError(FhirUnavailable):
    """A budgeted client's request not sent, or cut short, because its budget was spent (a
    screen's search then ends at the pages it read: :meth:`FhirClient.search_pages`)."""


class FhirThrottled(FhirUnavailable):
    """The server answered 429, 408 or 425 (:data:`THROTTLED_STATUSES`): not now, later.
    ``retry_after``: the seconds its ``Retry-After`` asks to wait (None: it said nothing
    readable), counted from the answer; the caller bounds it."""

    def __init__(self, where: str, status: int, retry_after: float | None) -> None:
        wait = "" if retry_after is None else f", retry after {retry_after:g} s"
        super().__init__(f"{where}: throttled {status}{wait}")
        self.status = status
        self.retry_after = retry_after


class FhirRejected(FhirError):  # noqa: N818 - name agreed between the engineers
    """The server refused the request (4xx other than 409/412). ``outcome`` is its explanation."""

    def __init__(self, status: int, outcome: Resource) -> None:
        super().__init__(f"FHIR server answered {status}: {summarise(outcome)}")
        self.status = status
        self.outcome = outcome

    @property
    def needs_authorisation(self) -> bool:
        """401/403: the token was refused, not the content."""
        return self.status in (401, 403)


class FhirConflict(FhirRejected):
    """409 or 412: the resource changed since it was read (optimistic locking)."""


def summarise(outcome: Resource) -> str:
    """A one-line summary of an OperationOutcome (diagnostics only: no resource content)."""
    issues = outcome.get("issue") or []
    parts = [
        f"{issue.get('severity', '?')}/{issue.get('code', '?')}: {issue.get('diagnostics', '')}"
        for issue in issues
        if isinstance(issue, dict)
    ]
    return "; ".join(parts)[:500] or "no OperationOutcome"


@dataclass(frozen=True)
class SearchPages:
    """A search read page by page (:meth:`FhirClient.search_pages`): ``bundle`` is the first
    page's Bundle with the entries of every page read (matches and included resources, in
    the server's order; no ``link``); ``complete`` is False when the server offered a next
    page that was not read (the cap was reached, its link left the FHIR server, or a screen's
    budget for further pages was spent: :meth:`FhirClient.for_screen`)."""

    bundle: Resource
    complete: bool


@dataclass(frozen=True)
class Budget:
    """A bound on all of a client's requests together: ``seconds`` from the client's making;
    ``pages_spare`` (None: every page is needed) makes a search's further pages optional,
    read only within the budget less these seconds. ``whose`` names it in the errors it
    causes (``the screen's 15 s``), so that they say which bound ended the work."""

    whose: str
    seconds: float
    pages_spare: float | None = None

    def __str__(self) -> str:
        return f"the {self.whose}'s {self.seconds:g} s"


class FhirClient:
    """FHIR R4 JSON over HTTP with a bearer token from ``token`` (called for every request).

    ``timeout`` bounds each request whole; ``budget`` (None: no bound) all its requests
    together, on the scale of ``clock`` (monotonic seconds; a test's may be moved on): see
    the module's description. Each client has an event loop and a connection pool of its
    own (:class:`BlockingClient`, with the trust store of ``service.tls`` and the outbound
    policy): close it (``with``), in the thread that uses it.
    """

    def __init__(
        self,
        base_url: str,
        token: Callable[[], str],
        timeout: float,
        *,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._budget = budget
        self._clock = clock
        self._ends = None if budget is None else clock() + budget.seconds
        self._http = BlockingClient(Bounds(timeout, MAX_ANSWER_BYTES), timeout)

    @classmethod
    def for_screen(
        cls,
        base_url: str,
        token: Callable[[], str],
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> FhirClient:
        """A client for one screen's reads: made when the page view starts reading, its
        requests end within :data:`SCREEN_BUDGET_TIMEOUTS` ``timeout`` in all; a search's
        further pages are read while more than :data:`SCREEN_PAGES_SPARE_TIMEOUTS`
        ``timeout`` of it is left, else the search is incomplete."""
        seconds = SCREEN_BUDGET_TIMEOUTS * timeout
        budget = Budget("screen", seconds, pages_spare=SCREEN_PAGES_SPARE_TIMEOUTS * timeout)
        return cls(base_url, token, timeout, budget=budget, clock=clock)

    @classmethod
    def for_change(
        cls,
        base_url: str,
        token: Callable[[], str],
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> FhirClient:
        """A client for the reads before a change (of a case): every page of a search is
        needed, and all requests end within :data:`CHANGE_BUDGET_TIMEOUTS` ``timeout``
        (:data:`CHANGE_BUDGET_MAX_SECONDS` at most)."""
        seconds = min(CHANGE_BUDGET_TIMEOUTS * timeout, CHANGE_BUDGET_MAX_SECONDS)
        return cls(base_url, token, timeout, budget=Budget("change", seconds), clock=clock)

    @classmethod
    def for_save(
        cls,
        base_url: str,
        token: Callable[[], str],
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> FhirClient:
        """A client for the saving request's own delivery attempt (``Outbox.deliver``), which
        the user waits for as for a screen: its reads (every page needed) and its transaction
        end within :data:`SCREEN_BUDGET_TIMEOUTS` ``timeout`` in all; what it cannot send in
        time the outbox worker sends."""
        seconds = SCREEN_BUDGET_TIMEOUTS * timeout
        return cls(base_url, token, timeout, budget=Budget("save", seconds), clock=clock)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self, resource_type: str, resource_id: str) -> Resource:
        return self._send("GET", f"{resource_type}/{resource_id}", f"read {resource_type}")

    def search(self, resource_type: str, params: SearchParams) -> Resource:
        """A search; returns the searchset Bundle (first page), its entries objects."""
        call = f"search {resource_type}"
        bundle = self._send("GET", resource_type, call, params=params)
        return _searchset(bundle, self._where(call))

    def search_pages(
        self, resource_type: str, params: SearchParams, *, max_pages: int
    ) -> SearchPages:
        """A search with its further pages: the Bundle's ``next`` links are followed, at most
        ``max_pages`` pages in all (a bound on the work one read makes). A ``next`` link
        outside this FHIR server's base URL is not followed (the access token goes to this
        server only): the read is then incomplete, as when the cap is reached. So is a
        screen's search whose further pages its budget leaves no time for (``pages_spare``);
        the first page is needed all the same: its failure raises, nothing is shown."""
        bundle = self.search(resource_type, params)
        entries = list(bundle.get("entry", []))
        following = _next_link(bundle)
        pages = 1
        spare = None if self._budget is None else self._budget.pages_spare
        while following is not None and pages < max_pages:
            url = urljoin(f"{self.base_url}/", following)
            if not self._is_ours(url):
                # else an operator sees only cases "read in part": a proxy in front of the
                # server that writes its inside address is the usual cause. The origin only:
                # the link's path and query name the patient.
                there = urlsplit(url)
                log.warning(
                    "a search's next page lies outside the FHIR server: not followed",
                    extra={
                        "fields": {
                            "fhir_base_url": self.base_url,
                            "next_origin": f"{there.scheme}://{there.netloc}",
                        }
                    },
                )
                break
            call = f"search {resource_type}, page {pages + 1}"
            try:
                answer = self._request("GET", url, call, spare=spare or 0.0)
            except _BudgetSpentError:
                if spare is None:  # every page is needed
                    raise
                break  # optional, and no time left for it: the pages read, incomplete
            pages += 1
            page = _searchset(answer, self._where(call))
            entries += page.get("entry", [])
            following = _next_link(page)
        merged = {key: value for key, value in bundle.items() if key != "link"}
        return SearchPages({**merged, "entry": entries}, complete=following is None)

    def _is_ours(self, url: str) -> bool:
        """Whether ``url`` lies under this client's base URL (same scheme, host and port, as
        URLs compare them: a host in any case, a default port written out or left out)."""
        base, there = urlsplit(self.base_url), urlsplit(url)
        origin = _origin(there)
        return (
            origin is not None
            and origin == _origin(base)
            and (there.path.rstrip("/") + "/").startswith(base.path.rstrip("/") + "/")
        )

    def transaction(self, bundle: Resource) -> Resource:
        """POST a transaction Bundle; returns the transaction-response Bundle."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("transaction() needs a Bundle of type 'transaction'")
        response = self._send("POST", "", "transaction", json=bundle)
        where = self._where("transaction")
        if response.get("type") != "transaction-response":
            raise FhirUnreadable(f"{where}: the answer is not a transaction-response Bundle")
        _each_entry_applied(where, len(bundle.get("entry", [])), response)
        return response

    def _send(
        self,
        method: str,
        path: str,
        call: str,
        *,
        params: SearchParams | None = None,
        json: Resource | None = None,
    ) -> Resource:
        url = f"{self.base_url}/{path}" if path else self.base_url
        return self._request(method, url, call, params=params, json=json)

    def _request(
        self,
        method: str,
        url: str,
        call: str,
        *,
        params: SearchParams | None = None,
        json: Resource | None = None,
        spare: float = 0.0,
    ) -> Resource:
        """``call`` names the request in errors (``read Patient``), in place of ``url``;
        ``spare``: seconds of the budget the request must leave unspent."""
        where = self._where(call)
        headers = {"Accept": FHIR_JSON, "Authorization": f"Bearer {self._token()}"}
        if json is not None:
            headers["Content-Type"] = FHIR_JSON
        # after the token, which may have been refreshed; a write gets its whole timeout
        seconds = self._deadline(where, spare, whole=json is not None)
        try:
            query = tuple(params) if isinstance(params, Sequence) else params
            bounds = Bounds(seconds, MAX_ANSWER_BYTES)
            response = self._http.request(
                method, url, params=query, json=json, headers=headers, bounds=bounds
            )
        except TimeoutError as error:
            by_budget = seconds < self._timeout and self._budget is not None
            late = str(self._budget) if by_budget else f"{seconds:g} s"
            kind: type[FhirUnavailable] = _BudgetSpentError if by_budget else FhirUnanswered
            raise kind(f"{where}: no whole answer within {late} (TimeoutError)") from error
        except UnreadableBodyError as error:  # too large, or its compression undecodable
            raise FhirUnreadable(f"{where}: {error}") from error
        except httpx.HTTPError as error:
            kind = FhirUnavailable if isinstance(error, _NOT_SENT) else FhirUnanswered
            raise kind(f"{where}: {type(error).__name__}") from error
        return _body_or_error(where, response)

    def _where(self, call: str) -> str:
        """A request as its errors name it: the interaction, the resource type and the server."""
        return f"{call} at {self.base_url}"

    def _deadline(self, where: str, spare: float, *, whole: bool = False) -> float:
        """How long the next request may take: the timeout, or what is left of the budget
        (less ``spare``) when less. A request is not sent once that is spent, nor a
        ``whole`` one (a write) with less than its timeout left: cut off by the budget, a
        transaction the server applies would be taken for undelivered (safe, the outbox's
        witness finds it, but the user is told "pending" for a save that landed)."""
        if self._ends is None:
            return self._timeout
        left = self._ends - spare - self._clock()
        if left <= 0 or (whole and left < self._timeout):
            raise _BudgetSpentError(f"{where}: not sent, {self._budget} are spent")
        return min(self._timeout, left)


def _each_entry_applied(where: str, sent: int, response: Resource) -> None:
    """Raises unless the transaction-response answers each of the ``sent`` entries with a
    2xx status. A transaction is all or nothing, but a server (or a facade in front of
    one) processing it as a batch answered 200 with refused entries, or with none: taken
    as applied, the save was "delivered" and on no server (found by review). A refused
    entry is refused like the request (:func:`_body_or_error`); an answer that does not
    say, unreadable: the outbox's witness then asks whether the save landed."""
    entries = response.get("entry", [])
    if not isinstance(entries, list) or len(entries) != sent:
        raise FhirUnreadable(f"{where}: the answer does not answer each of the {sent} entries")
    for entry in entries:
        answer = entry.get("response") if isinstance(entry, dict) else None
        said = answer.get("status") if isinstance(answer, dict) else None
        status = _STATUS.match(said) if isinstance(said, str) else None
        if answer is None or status is None:
            raise FhirUnreadable(f"{where}: an entry of the answer has no status")
        code = int(status.group(1))
        if code >= 300:
            outcome = answer.get("outcome")
            _refused(where, code, outcome if isinstance(outcome, dict) else None, None)


#: A transaction-response entry's ``response.status``: the HTTP status code, then maybe text.
_STATUS = re.compile(r"\s*([1-5]\d\d)(?:\s|$)")


def _searchset(bundle: Resource, where: str) -> Resource:
    """``bundle`` when it is a Bundle whose entries are objects (a search's answer)."""
    entries = bundle.get("entry", [])
    if (
        bundle.get("resourceType") != "Bundle"
        or not isinstance(entries, list)
        or not all(isinstance(e, dict) and isinstance(e.get("resource", {}), dict) for e in entries)
    ):
        raise FhirUnreadable(f"{where}: the answer to a search is not a Bundle")
    return bundle


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: SplitResult) -> tuple[str, str, int | None, str | None] | None:
    """A URL's scheme, host, port (the scheme's default when none is written) and user
    info; None for a URL whose port is not a number."""
    try:
        port = url.port
    except ValueError:
        return None
    scheme = url.scheme.lower()
    return scheme, url.hostname or "", port or _DEFAULT_PORTS.get(scheme), url.username


def _next_link(bundle: Resource) -> str | None:
    """The URL of a search Bundle's next page (None: the last page)."""
    links = bundle.get("link", [])
    found = (
        link.get("url")
        for link in (links if isinstance(links, list) else [])
        if isinstance(link, dict) and link.get("relation") == "next"
    )
    url = next(found, None)
    return url if isinstance(url, str) and url else None


def _body_or_error(where: str, response: httpx.Response) -> Resource:
    status = response.status_code
    body = _json_or_none(response)
    if status >= 400:
        _refused(where, status, body, response.headers.get("Retry-After"))
    if body is None:
        raise FhirUnreadable(f"{where}: answer {status} is not FHIR JSON")
    return body


def _refused(
    where: str, status: int, body: Resource | None, retry_after_header: str | None
) -> NoReturn:
    """Raises the error of an answer ``status`` (4xx or 5xx; a transaction entry's 3xx too)."""
    if status in GATEWAY_STATUSES:
        raise FhirUnanswered(f"{where}: server error {status}")
    if status >= 500:
        raise FhirUnavailable(f"{where}: server error {status}")
    if status in THROTTLED_STATUSES:
        raise FhirThrottled(where, status, retry_after(retry_after_header))
    outcome = body if body and body.get("resourceType") == "OperationOutcome" else {}
    error_type = FhirConflict if status in (409, 412) else FhirRejected
    raise error_type(status, outcome)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait: a number of seconds, or an
    HTTP-date (RFC 9110 §10.2.3) less ``now`` (the answer's arrival; a date past is 0).
    None for a header absent or unreadable: the caller's own backoff applies."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a malformed one without a zone, too
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json_or_none(response: httpx.Response) -> Resource | None:
    try:
        body = response.json()
    except (ValueError, RecursionError):  # nested too deep: a 500 for the page (review)
        return None
    if not isinstance(body, dict):
        return None
    return _without_lone_surrogates(body) if _SURROGATE_ESCAPE.search(response.content) else body


#: Where a surrogate can come from: an escape (UTF-8 has no bytes for one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _without_lone_surrogates(value: Any) -> Any:
    """``value`` with each lone UTF-16 surrogate in its text made U+FFFD.

    JSON may write one (``"\\ud800"``: a name cut in the middle of an emoji by an EHR's
    length limit), and Python's parser keeps it; UTF-8 cannot encode it, so the page, the
    database row or the FHIR write that held it failed. A pair is one character by now:
    only a lone one is replaced."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    return value


def search_query(params: Mapping[str, str]) -> str:
    """``params`` as a search URL's query (``identifier=…&patient=…``), as our transactions'
    ``ifNoneExist`` and the outbox's witnesses write it: each value percent-encoded, a
    token's ``|`` too (not legal raw in a URI), and what would end or change a value as
    the server reads it (``&``, ``=``, ``#``, ``+``, ``%``, a space). ``:`` and ``/``,
    legal in a query, are kept so that a system URL stays readable in the audit."""
    return "&".join(f"{name}={quote(value, safe=':/')}" for name, value in params.items())


def identifier_search(resource_type: str, system: str, value: str) -> str:
    """The search ``Type?identifier=system|value``, as :func:`search_query` writes it."""
    return f"{resource_type}?{search_query({'identifier': identifier_token(system, value)})}"


#: What a FHIR search reads in a parameter's value (R4 search.html#escaping): ``,`` between
#: values, ``|`` between a token's system and code, ``$`` between a composite's parts, and
#: the backslash escaping them.
_SEARCH_SPECIAL = re.compile(r"([\\|,$])")
#: A token's system (escapes read pairwise), the first ``|`` not escaped, its value.
_TOKEN = re.compile(r"((?:[^\\|]|\\.)*)\|(.*)", re.DOTALL)
_ESCAPED = re.compile(r"\\([\\|,$])")


def search_escaped(text: str) -> str:
    r"""``text`` with each ``\``, ``|``, ``,`` and ``$`` escaped by a ``\``, as a FHIR search
    parameter's value must write them."""
    return _SEARCH_SPECIAL.sub(r"\\\1", text)


def identifier_token(system: str, value: str) -> str:
    """``system|value`` as an ``identifier`` search's value, each escaped: a hospital's
    identifier holding ``|`` or ``,`` was read by the server as another system, or as two
    identifiers, none of them ours (a conditional create sent again created twice).
    Escaped before :func:`search_query` percent-encodes it."""
    return f"{search_escaped(system)}|{search_escaped(value)}"


def identifier_of_token(token: str) -> tuple[str, str]:
    r"""The (system, value) an :func:`identifier_token` names; ("", token) without a ``|``.
    A token queued before the escaping reads as written, split at its first ``|`` (a system
    is a URI, which holds none raw), unless it holds a ``\`` before one of ``\|,$``: that
    reads as an escape (a ``\`` before anything else stays)."""
    parts = _TOKEN.fullmatch(token)
    system, value = parts.groups() if parts else ("", token)
    return _ESCAPED.sub(r"\1", system), _ESCAPED.sub(r"\1", value)


def search_params(query: str) -> dict[str, str]:
    """The parameters of a :func:`search_query`, decoded. A ``+`` is kept, not read as a
    space: a query written before the encoding (still queued) kept a time zone's ``+``."""
    pairs = (part.split("=", 1) for part in query.split("&") if "=" in part)
    return {name: unquote(value) for name, value in pairs}
