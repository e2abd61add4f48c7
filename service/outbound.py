"""Which hosts the service may connect to: the platform operator's outbound policy.

A hospital's administrator names URLs the service then fetches (the FHIR base / SMART
``iss``, a CDS issuer's ``jku``). Unchecked, an administrator of one hospital could point
them at the platform's own insides — the cloud metadata service at 169.254.169.254,
another pod, a loopback admin port — and have the service fetch them (SSRF). So the
operator, not a hospital, decides where the service may connect:

* :data:`DENIED_NETWORKS` are refused always: link-local (169.254.0.0/16 and fe80::/10,
  where most clouds' metadata services answer), the :data:`CLOUD_METADATA` addresses
  outside it (Alibaba Cloud's 100.100.100.200, AWS's IPv6 fd00:ec2::254: those addresses
  only, not their ranges), unspecified ("this host", 0.0.0.0/8 and ::), multicast and
  broadcast. None of them is ever a hospital's EHR. An IPv6 address embedding an IPv4 one
  (``::ffff:169.254.169.254``, NAT64's ``64:ff9b::/96``) is judged by the IPv4 address.
* ``KINDREFLEX_OUTBOUND_ALLOW`` (:class:`OutboundPolicy`): exact hosts, ``*.example.org``
  (any name under example.org), IP addresses and CIDR ranges. Empty (the default), every
  other address may be reached — loopback and private ranges included, where the demo,
  the tests and many hospitals' own EHRs run. Set, a host is reached only when its name
  is listed (exactly or under a ``*.`` suffix), or when every address it resolves to lies
  in a listed range. An IP address entry is matched as a name is, by the URL's host as
  written: it admits ``https://10.20.3.4/``, not a name resolving to 10.20.3.4 (a
  ``10.20.3.4/32`` range admits both). A listed name trusts that name's DNS: list ranges
  rather than a domain whose DNS a hospital controls, if that hospital must not reach
  your own network.

The policy is checked twice. When an administrator saves a URL
(:func:`url_refusal`, see ``service.admin.config``), by its host as written. And when the
service connects (:func:`async_transport`): the host is resolved, every
address checked, and the connection made to a checked address — so a name that resolves
to a denied address, or is changed to after the save (DNS rebinding), is still refused.
That resolution is the one connecting needs anyway (the socket is then opened to the
address, not the name), so it adds no DNS lookup; a kept-alive connection needs none. A
refusal is an ``httpx.ConnectError`` (:class:`OutboundRefusedError`), which every caller
already handles as a server it cannot reach, and is logged once, with the host and
address (never a path, query or token).

Through a proxy (:class:`OutboundProxy`). A hospital or platform whose EHR is reached
only through an HTTP proxy names it in ``KINDREFLEX_OUTBOUND_PROXY`` (``http://`` or
``https://``, credentials allowed; never logged or shown). The connection to the proxy is
made as any other is by a plain client: the operator named it, so the allow-list does
not apply to it. Before a request goes to the proxy, its target host is checked as
written (:func:`url_refusal`'s check: a name against the listed names, an IP literal
against everything); the proxy then resolves the name and connects, out of the service's
sight, so a name that resolves to a refused address is the proxy's to refuse. Hosts named
in ``KINDREFLEX_OUTBOUND_NO_PROXY`` (the allow-list's syntax, matched as written), and
loopback (``localhost``, 127.0.0.0/8, ::1: the proxy's own loopback is not ours), are
connected to directly, with every check above. HTTPS targets go through a CONNECT tunnel
in which TLS is the service's with the target: the certificate is checked for the URL's
name against :mod:`service.tls`'s trust store, as without a proxy.

Without ``KINDREFLEX_OUTBOUND_PROXY`` the transports connect directly, and proxies named
by ``HTTP(S)_PROXY``/``ALL_PROXY`` are never used: a proxy is used because the operator
named it for this service, not because a variable of the machine or image says so (one
would send every hospital's requests, and the names' resolution, through a host chosen
for something else).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
import idna
from pydantic import SecretStr

from service import tls

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud metadata services that answer outside link-local: these addresses only. Their
#: neighbours are ordinary addresses: 100.64.0.0/10 is carrier-grade NAT (Tailscale's
#: addresses, say), fd00::/8 any unique local network.
CLOUD_METADATA: tuple[Network, ...] = tuple(
    ipaddress.ip_network(address)
    for address in (
        "100.100.100.200/32",  # Alibaba Cloud's instance metadata service
        "fd00:ec2::254/128",  # AWS's instance metadata service over IPv6
    )
)
#: Never a hospital's EHR, whatever the allow-list says (see the module's description).
DENIED_NETWORKS: tuple[Network, ...] = (
    *(
        ipaddress.ip_network(network)
        for network in (
            "0.0.0.0/8",  # "this host on this network"; 0.0.0.0 reaches loopback on Linux
            "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254)
            "224.0.0.0/4",  # multicast
            "255.255.255.255/32",  # broadcast
            "::/128",  # unspecified
            "fe80::/10",  # link-local
            "ff00::/8",  # multicast
        )
    ),
    *CLOUD_METADATA,
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAME = re.compile(r"^(?:\*\.)?[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?$")


def _as_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries (mapped or NAT64), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _as_ipv4_network(network: Network) -> Network:
    """The IPv4 range an IPv6 one of mapped or NAT64 addresses stands for (as addresses are
    compared: :func:`_as_ipv4`), else itself: ``::ffff:10.20.0.0/112`` is 10.20.0.0/16."""
    first = _as_ipv4(network.network_address)
    if network.version == 6 and first.version == 4 and network.prefixlen >= 96:
        return ipaddress.ip_network(f"{first}/{network.prefixlen - 96}")
    return network


def denied(address: Address) -> bool:
    """Whether ``address`` is one the service never connects to."""
    plain = _as_ipv4(address)
    return any(plain in network for network in DENIED_NETWORKS)


def _normal(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def ip_literal(host: str) -> Address | None:
    """``host`` as an address when it is one, in any form a resolver reads as one
    (``169.254.169.254``, ``[::1]``, and the old IPv4 forms ``169.254.43518``, ``0xa9fea9fe``)."""
    host = _normal(host)
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fx.]+", host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class Refusal:
    """Why a host may not be reached: ``denied`` (an address never allowed) or
    ``not-allowed`` (outside the allow-list); ``message`` says it in English (logs, API)."""

    kind: Literal["denied", "not-allowed"]
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OutboundPolicy:
    """The allow-list of ``KINDREFLEX_OUTBOUND_ALLOW``; empty: any address not denied."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # ".example.org" for "*.example.org"
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OutboundPolicy:
        """The policy of the setting's entries; ValueError names an entry that is none."""
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for raw in entries:
            entry = _normal(raw.strip())
            if not entry:
                continue
            if "://" in entry:  # an EHR's URL pasted whole: the list names hosts
                host = urlsplit(entry).hostname or "the host name"
                raise ValueError(f"{raw!r} is a URL: write its host name alone ({host})")
            if "/" in entry:
                try:
                    networks.append(_as_ipv4_network(ipaddress.ip_network(entry)))
                except ValueError:
                    raise ValueError(f"{raw!r} is not a CIDR range (e.g. 10.20.0.0/16)") from None
                continue
            address = ip_literal(entry)
            if address is not None:  # as name_allowed compares: an IPv4 in an IPv6 one as IPv4
                hosts.add(str(_as_ipv4(address)))
            elif not _NAME.match(entry) or "*" in entry[2:]:
                raise ValueError(
                    f"{raw!r} is not a host name, '*.' domain, IP address or CIDR range"
                )
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    @property
    def is_open(self) -> bool:
        """No allow-list: every address not denied may be reached."""
        return not (self.hosts or self.suffixes or self.networks)

    def name_allowed(self, host: str) -> bool:
        """Whether the allow-list names ``host`` (exactly, or under a ``*.`` suffix)."""
        host = _normal(host)
        address = ip_literal(host)
        if address is not None:
            plain = _as_ipv4(address)
            return str(plain) in self.hosts or any(plain in n for n in self.networks)
        return host in self.hosts or any(host.endswith(suffix) for suffix in self.suffixes)

    def refusal(self, host: str, addresses: Sequence[Address]) -> Refusal | None:
        """Why the service may not connect to ``host`` resolved to ``addresses``, or None."""
        for address in addresses:
            if denied(address):
                shown = _as_ipv4(address)
                if any(shown in network for network in CLOUD_METADATA):
                    return Refusal("denied", f"{shown} is a cloud's metadata service address")
                return Refusal(
                    "denied",
                    f"{shown} is a link-local, unspecified, multicast or broadcast address",
                )
        if self.is_open or self.name_allowed(host):
            return None
        in_range = [a for a in addresses if any(_as_ipv4(a) in n for n in self.networks)]
        if addresses and len(in_range) == len(addresses):
            return None
        return Refusal(
            "not-allowed", "not in the platform's allow-list (KINDREFLEX_OUTBOUND_ALLOW)"
        )


def proxy_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be ``KINDREFLEX_OUTBOUND_PROXY``, or None. The message never
    repeats the URL: it may hold the proxy's credentials."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return "not a URL with a valid host and port (e.g. http://proxy.hospital.example:3128)"
    if parts.scheme.lower() not in ("http", "https"):
        return "an http:// or https:// URL of the proxy (e.g. http://proxy.hospital.example:3128)"
    if not parts.hostname:
        return "the URL names no host (e.g. http://proxy.hospital.example:3128)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "the proxy's address only: scheme, host and port, no path, query or fragment"
    try:
        httpx.Proxy(url)
    except Exception:  # httpx's own parse (an IDNA name, a bracketed address): its message
        return "not a URL of a proxy httpx can use"  # would show the URL
    return None


@dataclass(frozen=True)
class OutboundProxy:
    """``KINDREFLEX_OUTBOUND_PROXY`` and ``KINDREFLEX_OUTBOUND_NO_PROXY``: which requests
    go through the proxy, and how to reach it. Its repr and :attr:`shown` hold no
    credentials."""

    url: httpx.URL  # without credentials
    auth: tuple[str, str] | None = field(repr=False)
    bypass: OutboundPolicy = OutboundPolicy()  # NO_PROXY's hosts, matched as written

    @classmethod
    def parse(cls, url: str, no_proxy: Iterable[str] = ()) -> OutboundProxy:
        problem = proxy_url_problem(url)
        if problem is not None:
            raise ValueError(f"KINDREFLEX_OUTBOUND_PROXY: {problem}")
        parsed = httpx.Proxy(url)  # takes the credentials out of the URL
        return cls(parsed.url, parsed.auth, OutboundPolicy.parse(no_proxy))

    @property
    def shown(self) -> str:
        """The proxy's URL as logs may show it: scheme, host and port."""
        return str(self.url).rstrip("/")

    def bypasses(self, host: str) -> bool:
        """Whether a request to ``host`` (as written) is connected to directly."""
        name = _normal(host)
        address = ip_literal(name)
        if name == "localhost" or (address is not None and _as_ipv4(address).is_loopback):
            return True
        return not self.bypass.is_open and self.bypass.name_allowed(name)

    def as_httpx(self) -> httpx.Proxy:
        # TLS to an https:// proxy with the service's trust store too (a hospital's CA)
        context = tls.context() if self.url.scheme == "https" else None
        return httpx.Proxy(self.url, auth=self.auth, ssl_context=context)


_lock = threading.Lock()
_configured: OutboundPolicy | None = None
_proxy: OutboundProxy | None = None


def configure(
    entries: Iterable[str],
    proxy: SecretStr | str | None = None,
    no_proxy: Iterable[str] = (),
) -> OutboundPolicy:
    """Make ``entries`` (``Settings.outbound_allow``) the process's policy, and ``proxy``
    (``Settings.outbound_proxy``, bypassed for ``no_proxy``) its proxy, or none (at app
    start). Transports made afterwards use them."""
    global _configured, _proxy
    policy = OutboundPolicy.parse(entries)
    if isinstance(proxy, SecretStr):
        proxy = proxy.get_secret_value()
    through = OutboundProxy.parse(proxy, no_proxy) if proxy else None
    with _lock:
        _configured, _proxy = policy, through
    return policy


def _configured_from_settings() -> None:
    global _configured, _proxy
    from service.settings import get_settings  # settings import this module

    settings = get_settings()
    _configured = OutboundPolicy.parse(settings.outbound_allow)
    proxy = settings.outbound_proxy
    _proxy = (
        None
        if proxy is None
        else OutboundProxy.parse(proxy.get_secret_value(), settings.outbound_no_proxy)
    )


def policy() -> OutboundPolicy:
    """The process's policy: the one configured, else the environment's setting."""
    with _lock:
        if _configured is None:
            _configured_from_settings()
        assert _configured is not None
        return _configured


def configured_proxy() -> OutboundProxy | None:
    """The process's proxy (None: connect directly), as :func:`policy` finds it."""
    with _lock:
        if _configured is None:
            _configured_from_settings()
        return _proxy


def url_refusal(url: str, resolve: Callable[[str], list[Address]] | None = None) -> Refusal | None:
    """Why a URL an administrator saves may not be used, or None: by its host as written.

    A name is resolved only when the allow-list has ranges and does not name it (then the
    ranges decide); otherwise a name's addresses are checked when connecting. A name the
    proxy will be asked for is never resolved here: as when connecting, the name decides.
    """
    host = urlsplit(url).hostname
    if not host:
        return None  # not a URL with a host: the field's own checks say so, not this one
    current = policy()
    address = ip_literal(host)
    if address is not None:
        return current.refusal(host, [address])
    if current.is_open or current.name_allowed(host) or not current.networks:
        return current.refusal(host, [])
    through = configured_proxy()
    if through is not None and not through.bypasses(host):
        return current.refusal(host, [])  # the proxy resolves it: the name alone decides
    try:
        addresses = (resolve or resolve_blocking)(host)
    except (OSError, UnicodeError):  # UnicodeError: a name IDNA cannot encode (a label > 63)
        addresses = []
    return current.refusal(host, addresses)


class OutboundRefusedError(httpx.ConnectError):
    """The policy refuses the connection; nothing was sent. Callers see a ConnectError."""

    def __init__(self, host: str, reason: Refusal) -> None:
        super().__init__(f"connecting to {host} is not allowed: {reason}")
        self.host = host
        self.reason = reason


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[Address]:
    seen: dict[Address, None] = {}
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), None)
    return list(seen)


def resolve_blocking(host: str, port: int = 443) -> list[Address]:
    """``host``'s addresses, as the system resolver gives them (in its order): the
    save-time check's (:func:`url_refusal`), which is not async."""
    return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


#: Where :func:`resolve_async` runs the system resolver: threads of the process, not of an
#: event loop. A lookup cannot be interrupted, so one hanging (a DNS server not answering)
#: outlives the request that hit its deadline; on a loop's own executor, closing that loop
#: (a ``BlockingClient``'s, at the end of the nurse's page or an outbox delivery) would
#: wait for it, well past the deadline.
_LOOKUPS = ThreadPoolExecutor(thread_name_prefix="outbound-lookup")


async def resolve_async(host: str, port: int = 443) -> list[Address]:
    """``host``'s addresses (an IDNA name as anyio encodes it), looked up on
    :data:`_LOOKUPS`; an awaiting request that ends stops waiting for the lookup."""
    name = host.encode("ascii") if host.isascii() else idna.encode(host, uts46=True)
    lookup = partial(socket.getaddrinfo, name, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_LOOKUPS, lookup)
    # an int address: IPv6 compiled out of Python (anyio leaves those out too)
    return _addresses(info for info in infos if not isinstance(info[4][0], int))


def _checked(
    host: str, addresses: list[Address], current: OutboundPolicy, *, via_proxy: bool = False
) -> list[Address]:
    reason = current.refusal(host, addresses)
    if reason is not None:
        shown = ", ".join(str(a) for a in addresses[:4])
        fields = {"host": host, "addresses": shown, "reason": reason.kind}
        if via_proxy:
            fields["via"] = "proxy"  # never the proxy's URL: it may hold credentials
        log.warning("outbound connection to %s refused: %s", host, reason, extra={"fields": fields})
        raise OutboundRefusedError(host, reason)
    return addresses


def _through_proxy(request: httpx.Request, through: OutboundProxy) -> bool:
    """Whether ``request`` goes through the proxy, once its host as written is allowed
    (raises :class:`OutboundRefusedError`, before anything is sent to the proxy)."""
    host = request.url.raw_host.decode("ascii")  # IDNA-encoded, as the backend sees it
    if through.bypasses(host):
        return False  # connected to directly: the guarded backend checks it after DNS
    address = ip_literal(host)
    _checked(host, [] if address is None else [address], policy(), via_proxy=True)
    return True


class GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks against the policy, then connects to a checked address."""

    def __init__(
        self,
        resolve: Callable[[str, int], Awaitable[list[Address]]] = resolve_async,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolve = resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # ``timeout`` bounds the whole connect, as httpcore's own backend does (the lookup
        # and every address tried): each address gets an equal share of what is left
        deadline = None if timeout is None else anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from error
        except (OSError, UnicodeError) as error:  # as the socket's own lookup would fail
            raise httpcore.ConnectError(str(error)) from error
        checked = _checked(host, addresses, policy())
        failure: Exception | None = None
        for index, address in enumerate(checked):
            share = None
            if deadline is not None:
                share = max(deadline - anyio.current_time(), 0.0) / (len(checked) - index)
            try:
                return await self._inner.connect_tcp(
                    str(address), port, share, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        raise failure or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outgoing requests")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


#: httpx's own defaults (``httpx.Limits()``), which a transport built here keeps.
_LIMITS = httpx.Limits()


class _AsyncRouted(httpx.AsyncBaseTransport):
    """Each request through the proxy (its host checked first) or, bypassed, directly."""

    def __init__(
        self,
        direct: httpx.AsyncBaseTransport,
        proxied: httpx.AsyncBaseTransport,
        through: OutboundProxy,
    ) -> None:
        self._direct, self._proxied, self._through = direct, proxied, through

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        via = self._proxied if _through_proxy(request, self._through) else self._direct
        return await via.handle_async_request(request)

    async def aclose(self) -> None:
        try:
            await self._proxied.aclose()
        finally:
            await self._direct.aclose()


def async_transport(
    backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncBaseTransport:
    """The transport of every ``httpx.AsyncClient`` the service sends with: the trust store
    of :mod:`service.tls`, httpx's defaults, and the policy checked at each connection;
    through the configured proxy, if any (``backend``: the direct connections')."""
    transport = httpx.AsyncHTTPTransport(verify=tls.context(), trust_env=False)
    # httpx 0.28 has no parameter for the network backend: its pool is replaced by the same
    # pool (httpx's defaults) with ours. tests/integration/test_outbound.py fails if not used.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls.context(),
        max_connections=_LIMITS.max_connections,
        max_keepalive_connections=_LIMITS.max_keepalive_connections,
        keepalive_expiry=_LIMITS.keepalive_expiry,
        network_backend=backend or GuardedAsyncBackend(),
    )
    through = configured_proxy()
    if through is None:
        return transport
    proxied = httpx.AsyncHTTPTransport(
        verify=tls.context(), trust_env=False, proxy=through.as_httpx()
    )
    return _AsyncRouted(transport, proxied, through)
