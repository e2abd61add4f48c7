"""Reading EHRs' SMART configurations for launches (``smart_app.oauth.AuthServers``), over
real HTTP from loopback servers that count what they are asked: launches that miss
together wait for one fetch, a failure is given for a few seconds, then the EHR is asked
again while the other launches get the last outcome, each FHIR base URL and client
authentication has its own, and one no launch asks for in ten minutes is forgotten.

Time moves through the clock ``AuthServers`` takes; nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from service.tenant_config import ClientAuth, EhrRegistration
from smart_app import oauth
from smart_app.oauth import (
    DISCOVERY_FORGOTTEN_SECONDS,
    DISCOVERY_SECONDS,
    FAILED_DISCOVERY_SECONDS,
    AuthServer,
    AuthServers,
    OAuthError,
)
from tests.support.served import Counted

TIMEOUT = 5.0
#: Bounds a test's waits on the other threads, so that a broken build fails, never hangs.
GIVE_UP_SECONDS = 30.0


def smart_configuration(base: str) -> bytes:
    """What this app needs of a SMART configuration; only private_key_jwt offered."""
    return json.dumps(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }
    ).encode()


class CountedEhr(Counted):
    """Answers every GET with ``body`` and counts them; holds each answer while ``release``
    is clear."""

    def __init__(self, body: bytes = b"{}") -> None:
        super().__init__(body, path="/fhir")
        self.asked = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def current(self) -> bytes:
        answer = super().current()
        self.asked.set()
        self.release.wait(GIVE_UP_SECONDS)
        return answer


@contextmanager
def held_answers(ehr: CountedEhr) -> Iterator[None]:
    """The EHR holds its answers until the block ends; ``asked`` tells a request came."""
    ehr.asked.clear()
    ehr.release.clear()
    try:
        yield
    finally:
        ehr.release.set()


class Clock:
    """Seconds that move when the test moves them; counts its reads, so that a test knows
    when launches have looked a configuration up (each lookup reads it once)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self._read = threading.Condition()

    def __call__(self) -> float:
        with self._read:
            self.reads += 1
            self._read.notify_all()
        return self.now

    def wait_for_reads(self, count: int) -> None:
        with self._read:
            assert self._read.wait_for(lambda: self.reads >= count, GIVE_UP_SECONDS)


def registration(
    fhir_base_url: str, client_auth: ClientAuth = "private_key_jwt"
) -> EhrRegistration:
    return EhrRegistration(
        id="ehr",
        name="EHR",
        fhir_base_url=fhir_base_url,
        client_id="kindreflex",
        client_auth=client_auth,
    )


def test_launches_that_miss_together_wait_for_one_fetch() -> None:
    """Before, each launch arriving while the EHR had not yet answered read it again, each
    holding a thread of the pool meanwhile."""
    clock = Clock()
    servers = AuthServers(clock)
    with CountedEhr() as ehr, ThreadPoolExecutor(5) as pool:
        ehr.body = smart_configuration(ehr.url)
        launch = registration(ehr.url)
        with held_answers(ehr):
            first = pool.submit(servers.discover, launch, TIMEOUT)
            assert ehr.asked.wait(GIVE_UP_SECONDS)
            others = [pool.submit(servers.discover, launch, TIMEOUT) for _ in range(4)]
            clock.wait_for_reads(5)  # each has looked it up while the EHR had not answered
        answers = [launched.result() for launched in (first, *others)]

    assert ehr.requests == 1
    assert all(answer == answers[0] for answer in answers)
    assert answers[0].token_endpoint == f"{ehr.url}/token"


def test_a_failure_is_given_for_a_few_seconds_then_the_ehr_is_asked_again() -> None:
    clock = Clock()
    servers = AuthServers(clock)
    with CountedEhr(b'{"issuer": "unusable"}') as ehr:
        launch = registration(ehr.url)
        for _ in range(3):
            with pytest.raises(OAuthError) as refused:
                servers.discover(launch, TIMEOUT)
            assert refused.value.kind == "ehr_unsupported"
            assert "authorization_endpoint" in refused.value.detail
        assert ehr.requests == 1  # the page at once, no thread waiting on the EHR

        ehr.body = smart_configuration(ehr.url)  # the EHR is fixed
        clock.now += FAILED_DISCOVERY_SECONDS - 0.5
        with pytest.raises(OAuthError):
            servers.discover(launch, TIMEOUT)
        assert ehr.requests == 1

        clock.now += 0.5
        assert servers.discover(launch, TIMEOUT).token_endpoint == f"{ehr.url}/token"
        assert ehr.requests == 2
        clock.now += DISCOVERY_SECONDS - 1  # a usable one is kept for minutes
        servers.discover(launch, TIMEOUT)
        assert ehr.requests == 2


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("authorization_endpoint", "https://[::1/authorize"),
        ("authorization_endpoint", "https://ehr.example:99999/authorize"),
        ("token_endpoint", "https:///token"),
        ("token_endpoint", "https://[::1]x/token"),
        ("token_endpoint", "https://ehr\x7f.example/token"),
        ("jwks_uri", "https://ehr.example:port/jwks"),
    ],
)
def test_an_endpoint_that_is_no_url_is_the_ehrs_to_mend(name: str, url: str) -> None:
    """Said on the page for the EHR's administrator, as any other unusable configuration:
    it was a bare 500 for the nurse, then "the EHR does not answer" (found by review)."""
    with CountedEhr() as ehr:
        ehr.body = json.dumps({**json.loads(smart_configuration(ehr.url)), name: url}).encode()
        with pytest.raises(OAuthError) as refused:
            AuthServers(Clock()).discover(registration(ehr.url), TIMEOUT)
    assert refused.value.kind == "ehr_unsupported"
    assert f"{name} is not a usable URL" in refused.value.detail


def test_while_an_ehr_is_read_again_the_other_launches_get_the_last_outcome_at_once() -> None:
    """Only the launch reading it waits for the EHR: a flood against an EHR that stays
    down holds one thread every few seconds, not one per launch for up to ten seconds.
    The EHR holds each answer here until the other launch has had its own."""
    clock = Clock()
    servers = AuthServers(clock)
    with CountedEhr(b"{}") as ehr, ThreadPoolExecutor(1) as pool:
        launch = registration(ehr.url)
        with pytest.raises(OAuthError):
            servers.discover(launch, TIMEOUT)
        ehr.body = smart_configuration(ehr.url)

        clock.now += FAILED_DISCOVERY_SECONDS
        with held_answers(ehr):
            reading = pool.submit(servers.discover, launch, TIMEOUT)
            assert ehr.asked.wait(GIVE_UP_SECONDS)
            with pytest.raises(OAuthError):
                servers.discover(launch, TIMEOUT)  # the last failure
        configuration = reading.result()

        clock.now += DISCOVERY_SECONDS
        with held_answers(ehr):
            reading = pool.submit(servers.discover, launch, TIMEOUT)
            assert ehr.asked.wait(GIVE_UP_SECONDS)
            assert servers.discover(launch, TIMEOUT) == configuration  # read minutes ago
        assert reading.result() == configuration
    assert ehr.requests == 3


def test_each_base_url_and_client_authentication_is_read_on_its_own() -> None:
    """What discover checks depends on both (the client authentication against the methods
    the EHR offers), and one EHR's failure is not another's."""
    servers = AuthServers(Clock())
    with CountedEhr() as ehr, CountedEhr() as broken:
        ehr.body = smart_configuration(ehr.url)
        assert servers.discover(registration(ehr.url), TIMEOUT).issuer == ehr.url
        with pytest.raises(OAuthError) as refused:
            servers.discover(registration(ehr.url, "client_secret_basic"), TIMEOUT)
        assert "token_endpoint_auth_methods_supported" in refused.value.detail
        with pytest.raises(OAuthError):
            servers.discover(registration(broken.url), TIMEOUT)

        assert servers.discover(registration(ehr.url), TIMEOUT).issuer == ehr.url
        assert (ehr.requests, broken.requests) == (2, 1)


def test_a_configuration_no_launch_asked_for_in_ten_minutes_is_no_longer_held() -> None:
    """Each EHR's configuration was kept for good: launches from ever other FHIR base URLs
    (registrations changed or removed, many hospitals) grew the process without bound. The
    next lookup, of any EHR, now drops those not asked for in DISCOVERY_FORGOTTEN_SECONDS;
    one asked for meanwhile is kept (expired, it still answers while it is read again).
    Held or not is seen through weak references to what the launches were given."""
    clock = Clock()
    servers = AuthServers(clock)
    with CountedEhr() as ehr:
        ehr.body = smart_configuration(ehr.url)
        given = {
            name: weakref.ref(servers.discover(registration(f"{ehr.url}/{name}"), TIMEOUT))
            for name in ("gent", "brugge", "asked-again")
        }
        clock.now += DISCOVERY_SECONDS - 1
        assert (
            servers.discover(registration(f"{ehr.url}/asked-again"), TIMEOUT)
            is given["asked-again"]()
        )  # the one kept, not read again
        clock.now = DISCOVERY_FORGOTTEN_SECONDS - 1  # since the first launches
        servers.discover(registration(f"{ehr.url}/another"), TIMEOUT)
        held_before = {name: ref() is not None for name, ref in given.items()}
        clock.now = DISCOVERY_FORGOTTEN_SECONDS
        servers.discover(registration(f"{ehr.url}/another"), TIMEOUT)

    assert held_before == {"gent": True, "brugge": True, "asked-again": True}
    assert {name: ref() is not None for name, ref in given.items()} == {
        "gent": False,
        "brugge": False,
        "asked-again": True,
    }
    assert ehr.requests == 4  # each read once: none of them was asked for again


def test_a_launch_waiting_on_a_read_that_never_ends_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read is bounded, but closing its client may wait on a DNS lookup that is not: a
    launch waiting for it waited without end, holding a thread every hospital's pages
    share. It now gives up a little after the read's bound, as if the EHR did not answer.
    (A read that never ends cannot be caused here: the discovery is left unfinished.)"""
    monkeypatch.setattr(oauth, "EHR_FETCH_SECONDS", 0.0)
    with pytest.raises(OAuthError) as waited:
        oauth._Discovery().outcome()
    assert waited.value.kind == "ehr_unreachable"


def test_a_launch_state_of_another_version_of_the_service_loads() -> None:
    """A launch begun on an instance of a newer version and answered at one of the older
    during a rolling update: the server as stored names a field the older does not know
    (found by review: a 500 at the callback). One stored before a field existed loads too."""
    stored = {
        "authorization_endpoint": "https://ehr.example/authorize",
        "token_endpoint": "https://ehr.example/token",
        "issuer": "https://ehr.example",
        "jwks_uri": None,
    }
    older = AuthServer.from_json(stored)
    newer = AuthServer.from_json({**older.to_json(), "a_later_field": True})

    assert newer == older
    assert older.names_itself is False  # an answer without iss is taken at the state's word
