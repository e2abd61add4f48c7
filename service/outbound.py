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
service connects (:func:`async_transport`, :func:`transport`): the host is resolved, every
address checked, and the connection made to a checked address — so a name that resolves
to a denied address, or is changed to after the save (DNS rebinding), is still refused.
That resolution is the one connecting needs anyway (the socket is then opened to the
address, not the name), so it adds no DNS lookup; a kept-alive connection needs none. A
refusal is an ``httpx.ConnectError`` (:class:`OutboundRefusedError`), which every caller
already handles as a server it cannot reach, and is logged once, with the host and
address (never a path, query or token).

The transports connect directly: proxies named by ``HTTP(S)_PROXY`` are not used (a
proxy would resolve the name, out of the policy's sight).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

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
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry))
                except ValueError:
                    raise ValueError(f"{raw!r} is not a CIDR range (e.g. 10.20.0.0/16)") from None
                continue
            address = ip_literal(entry)
            if address is not None:
                hosts.add(str(address))
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
            return str(address) in self.hosts or any(plain in n for n in self.networks)
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


_lock = threading.Lock()
_configured: OutboundPolicy | None = None


def configure(entries: Iterable[str]) -> OutboundPolicy:
    """Make ``entries`` (``Settings.outbound_allow``) the process's policy (at app start)."""
    global _configured
    policy = OutboundPolicy.parse(entries)
    with _lock:
        _configured = policy
    return policy


def policy() -> OutboundPolicy:
    """The process's policy: the one configured, else the environment's setting."""
    global _configured
    with _lock:
        if _configured is None:
            from service.settings import get_settings  # settings import this module

            _configured = OutboundPolicy.parse(get_settings().outbound_allow)
        return _configured


def url_refusal(url: str, resolve: Callable[[str], list[Address]] | None = None) -> Refusal | None:
    """Why a URL an administrator saves may not be used, or None: by its host as written.

    A name is resolved only when the allow-list has ranges and does not name it (then the
    ranges decide); otherwise a name's addresses are checked when connecting.
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
    """``host``'s addresses, as the system resolver gives them (in its order)."""
    return _addresses(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


async def resolve_async(host: str, port: int = 443) -> list[Address]:
    return _addresses(await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM))


def _checked(host: str, addresses: list[Address], current: OutboundPolicy) -> list[Address]:
    reason = current.refusal(host, addresses)
    if reason is not None:
        shown = ", ".join(str(a) for a in addresses[:4])
        log.warning(
            "outbound connection to %s refused: %s",
            host,
            reason,
            extra={"fields": {"host": host, "addresses": shown, "reason": reason.kind}},
        )
        raise OutboundRefusedError(host, reason)
    return addresses


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


class GuardedBackend(httpcore.NetworkBackend):
    """:class:`GuardedAsyncBackend` for blocking clients (the FHIR client)."""

    def __init__(
        self,
        resolve: Callable[[str, int], list[Address]] = resolve_blocking,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        self._resolve = resolve
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._resolve(host, port)
        except (OSError, UnicodeError) as error:  # UnicodeError: a name IDNA cannot encode
            raise httpcore.ConnectError(str(error)) from error
        failure: Exception | None = None
        for address in _checked(host, addresses, policy()):
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        raise failure or httpcore.ConnectError(f"{host} has no address")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for outgoing requests")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


#: httpx's own defaults (``httpx.Limits()``), which a transport built here keeps.
_LIMITS = httpx.Limits()


def _pool_options(
    backend: httpcore.NetworkBackend | httpcore.AsyncNetworkBackend,
) -> dict[str, Any]:
    """The pool httpx builds by default (its trust store ours), with ``backend``."""
    return {
        "ssl_context": tls.context(),
        "max_connections": _LIMITS.max_connections,
        "max_keepalive_connections": _LIMITS.max_keepalive_connections,
        "keepalive_expiry": _LIMITS.keepalive_expiry,
        "network_backend": backend,
    }


def async_transport(
    backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncBaseTransport:
    """The transport of every ``httpx.AsyncClient`` the service sends with: the trust store
    of :mod:`service.tls`, httpx's defaults, and the policy checked at each connection."""
    transport = httpx.AsyncHTTPTransport(verify=tls.context(), trust_env=False)
    # httpx 0.28 has no parameter for the network backend: its pool is replaced by the same
    # pool (httpx's defaults) with ours. tests/integration/test_outbound.py fails if not used.
    transport._pool = httpcore.AsyncConnectionPool(
        **_pool_options(backend or GuardedAsyncBackend())
    )
    return transport


def transport(backend: httpcore.NetworkBackend | None = None) -> httpx.BaseTransport:
    """:func:`async_transport` for a blocking ``httpx.Client``."""
    sync = httpx.HTTPTransport(verify=tls.context(), trust_env=False)
    sync._pool = httpcore.ConnectionPool(**_pool_options(backend or GuardedBackend()))
    return sync
