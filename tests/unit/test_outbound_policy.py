"""The outbound policy's decisions (``service.outbound``): which addresses are never
reached, and what an allow-list entry admits. Pure functions: no network."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from service import outbound
from service.outbound import OutboundPolicy, denied, ip_literal
from service.settings import load_settings

OPEN = OutboundPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "0.0.0.0",  # noqa: S104 - an address refused, not bound
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "fe80::1",
        "ff02::1",
        "fd00:ec2::254",  # AWS's metadata service over IPv6
        "fd00:ec2:0:0:0:0:0:254",
        "fd00:ec2::254%eth0",  # with a zone
        "100.100.100.200",  # Alibaba Cloud's metadata service
        "::ffff:169.254.169.254",  # IPv4-mapped
        "::ffff:100.100.100.200",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::6464:64c8",  # NAT64 of 100.100.100.200
    ],
)
def test_addresses_that_are_never_an_ehr_are_denied_whatever_the_allow_list(address: str) -> None:
    assert denied(ipaddress.ip_address(address))
    allowing = OutboundPolicy.parse(["0.0.0.0/0", "::/0", address])
    refusal = allowing.refusal(address, [ipaddress.ip_address(address)])
    assert refusal is not None
    assert refusal.kind == "denied"


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("100.100.100.200", "100.100.100.200"),
        ("100.100.25800", "100.100.100.200"),  # the forms a resolver reads as an address
        ("0x646464c8", "100.100.100.200"),
        ("[::ffff:100.100.100.200]", "100.100.100.200"),
        ("[64:ff9b::6464:64c8]", "100.100.100.200"),
        ("[FD00:EC2::254]", "fd00:ec2::254"),
        ("[fd00:0ec2:0000:0000:0000:0000:0000:0254]", "fd00:ec2::254"),
    ],
)
def test_the_cloud_metadata_addresses_outside_link_local_are_refused_in_any_spelling(
    written: str, shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alibaba Cloud's (100.100.100.200) and AWS's IPv6 (fd00:ec2::254) metadata services,
    as a URL an administrator saves writes them, whatever the allow-list says."""
    allowing = OutboundPolicy.parse(["0.0.0.0/0", "::/0", "100.64.0.0/10", "fd00::/8"])
    monkeypatch.setattr(outbound, "_configured", allowing)
    refusal = outbound.url_refusal(f"http://{written}/latest/meta-data/")
    assert refusal is not None
    assert (refusal.kind, refusal.message) == (
        "denied",
        f"{shown} is a cloud's metadata service address",
    )


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # carrier-grade NAT (100.64.0.0/10): Tailscale, a provider's NAT
        "100.100.100.199",
        "100.100.100.201",
        "100.127.255.254",
        "fd00:ec2::253",  # a unique local network (fd00::/8)
        "fd00:ec2::1:254",
        "fd12:3456::254",
    ],
)
def test_only_those_metadata_addresses_are_refused_not_their_ranges(address: str) -> None:
    assert not denied(ipaddress.ip_address(address))
    assert OPEN.refusal(address, [ipaddress.ip_address(address)]) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.5", "8.8.8.8"])
def test_loopback_private_and_public_addresses_are_reached_without_an_allow_list(
    address: str,
) -> None:
    assert OPEN.refusal(address, [ipaddress.ip_address(address)]) is None


@pytest.mark.parametrize(
    ("written", "address"),
    [
        ("169.254.43518", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("[::1]", "::1"),
        ("127.1", "127.0.0.1"),
    ],
)
def test_an_address_written_in_another_form_is_read_as_the_resolver_reads_it(
    written: str, address: str
) -> None:
    assert ip_literal(written) == ipaddress.ip_address(address)


def test_names_are_not_addresses() -> None:
    assert ip_literal("ehr.az-gent.be") is None
    assert ip_literal("deadbeef.example") is None


def test_an_allow_list_admits_its_names_suffixes_and_ranges_only() -> None:
    policy = OutboundPolicy.parse(["ehr.az-gent.be", "*.hospital.example", "10.20.0.0/16"])
    ten = [ipaddress.ip_address("10.20.3.4")]
    loopback = [ipaddress.ip_address("127.0.0.1")]
    assert policy.refusal("EHR.az-gent.be.", loopback) is None  # a listed name: its DNS trusted
    assert policy.refusal("fhir.hospital.example", []) is None
    assert policy.refusal("a.b.hospital.example", []) is None
    assert policy.refusal("10.20.9.9", [ipaddress.ip_address("10.20.9.9")]) is None
    assert policy.refusal("fhir.elders.example", ten) is None  # every address in a range
    for host, addresses in [
        ("hospital.example", []),  # "*." is what is under the domain, not the domain
        ("evilhospital.example", []),
        ("az-gent.be", []),
        ("localhost", loopback),
        ("mixed.example", [*ten, *loopback]),
        ("unresolved.example", []),
    ]:
        refusal = policy.refusal(host, addresses)
        assert refusal is not None, host
        assert refusal.kind == "not-allowed"


def test_an_address_entry_admits_the_address_as_written_a_range_also_names_resolving_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the README says of the two: ``10.20.3.4`` admits https://10.20.3.4/, not a name
    whose address it is; ``10.20.3.4/32`` admits both."""
    resolved = [ipaddress.ip_address("10.20.3.4")]
    address = OutboundPolicy.parse(["10.20.3.4"])
    assert address.refusal("10.20.3.4", resolved) is None
    refusal = address.refusal("fhir.az-gent.example", resolved)
    assert refusal is not None
    assert refusal.kind == "not-allowed"
    single = OutboundPolicy.parse(["10.20.3.4/32"])
    assert single.refusal("10.20.3.4", resolved) is None
    assert single.refusal("fhir.az-gent.example", resolved) is None
    # the same when saved: the name resolved only for the ranges
    monkeypatch.setattr(outbound, "_configured", address)
    assert outbound.url_refusal("https://10.20.3.4/fhir") is None
    assert outbound.url_refusal("https://fhir.az-gent.example/fhir", lambda _: resolved)
    monkeypatch.setattr(outbound, "_configured", single)
    assert outbound.url_refusal("https://fhir.az-gent.example/fhir", lambda _: resolved) is None


@pytest.mark.parametrize("written", ["10.20.3.4", "[::ffff:10.20.3.4]", "[64:ff9b::a14:304]"])
@pytest.mark.parametrize("entry", ["10.20.3.4", "::ffff:10.20.3.4"])
def test_an_address_entry_admits_its_address_in_every_spelling(entry: str, written: str) -> None:
    """An IPv4 address written inside an IPv6 one (mapped, or NAT64) is the same address:
    the ranges and the denied addresses already compared it so, an address entry refused it."""
    policy = OutboundPolicy.parse([entry])
    assert policy.refusal(written, [ipaddress.ip_address(written.strip("[]"))]) is None
    assert policy.refusal("10.20.3.5", [ipaddress.ip_address("10.20.3.5")]) is not None


@pytest.mark.parametrize("entry", ["a b", "*", "*.", "10.0.0.0/33", "http://ehr.example", "a.*.b"])
def test_an_entry_that_is_no_host_domain_address_or_range_stops_the_start(entry: str) -> None:
    with pytest.raises(ValidationError, match="outbound_allow"):
        load_settings(outbound_allow=entry)


def test_an_ehrs_url_pasted_whole_is_refused_with_its_host_to_write() -> None:
    """It said "is not a CIDR range", of a URL: nothing the administrator had in mind
    (review of the administrator's journey)."""
    with pytest.raises(ValidationError) as refused:
        load_settings(outbound_allow="https://ehr.az-gent.be/fhir")
    assert "is a URL: write its host name alone (ehr.az-gent.be)" in str(refused.value)


def test_the_setting_is_comma_separated() -> None:
    settings = load_settings(outbound_allow=" *.az-gent.be, 10.0.0.0/8 ,,localhost ")
    assert settings.outbound_allow == ["*.az-gent.be", "10.0.0.0/8", "localhost"]
    assert load_settings().outbound_allow == []


@pytest.mark.parametrize("host", ["a..b.example", f"{'a' * 64}.example"])
def test_a_name_the_resolver_cannot_encode_is_refused_when_saved_not_an_error(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges only, so the name is resolved; Python's resolver raises UnicodeError (not
    OSError) for an empty or over-long label before asking DNS: the save says not allowed."""
    monkeypatch.setattr(outbound, "_configured", OutboundPolicy.parse(["10.0.0.0/8"]))
    refusal = outbound.url_refusal(f"https://{host}/fhir")
    assert refusal is not None
    assert refusal.kind == "not-allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://proxy.az-gent.be:3128",
        "https://proxy.az-gent.be",
        "http://user:p%40ss@10.0.0.8:3128/",
        "HTTP://[fd12::8]:3128",
    ],
)
def test_an_http_or_https_proxy_url_is_the_proxy_setting(url: str) -> None:
    settings = load_settings(outbound_proxy=url, outbound_no_proxy="*.intern.be, 10.0.0.0/8")
    assert settings.outbound_proxy is not None
    assert settings.outbound_no_proxy == ["*.intern.be", "10.0.0.0/8"]
    assert "@" not in str(settings.safe_summary()["outbound_proxy"])


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("socks5://proxy.az-gent.be:1080", "an http:// or https:// URL"),
        ("proxy.az-gent.be:3128", "an http:// or https:// URL"),
        ("http://proxy.az-gent.be:99999", "valid host and port"),
        ("http://:3128", "names no host"),
        ("http://proxy.az-gent.be:3128/path", "no path, query or fragment"),
        ("http://proxy.az-gent.be:3128?x=1", "no path, query or fragment"),
    ],
)
def test_a_proxy_setting_that_is_no_proxys_url_stops_the_start_without_repeating_it(
    url: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match="outbound_proxy") as refused:
        load_settings(outbound_proxy=url.replace("://", "://kr:pw-x9@", 1))
    assert problem in str(refused.value)
    assert "pw-x9" not in str(refused.value)


def test_no_proxy_and_an_empty_proxy_setting() -> None:
    assert load_settings(outbound_proxy="").outbound_proxy is None
    with pytest.raises(ValidationError, match="outbound_no_proxy"):
        load_settings(outbound_no_proxy=".intern.be")  # "*.intern.be" is the form


def test_the_proxy_bypasses_no_proxy_hosts_as_written_and_loopback() -> None:
    through = outbound.OutboundProxy.parse(
        "http://kr:pw@proxy.az-gent.be:3128", ["*.intern.az-gent.be", "10.0.0.0/8", "fhir.be"]
    )
    assert through.shown == "http://proxy.az-gent.be:3128"
    assert "pw" not in repr(through)
    for host in [
        "localhost", "127.0.0.1", "127.1.2.3", "[::1]", "::ffff:127.0.0.1",
        "fhir.intern.az-gent.be", "10.2.3.4", "FHIR.be.",
    ]:  # fmt: skip
        assert through.bypasses(host), host
    for host in ["intern.az-gent.be", "www.fhir.be", "11.0.0.1", "ehr.az-gent.be", "::2"]:
        assert not through.bypasses(host), host


@pytest.mark.parametrize("written", ["10.20.3.4", "[::ffff:10.20.3.4]"])
def test_a_range_written_as_mapped_ipv6_is_the_ipv4_range_it_stands_for(written: str) -> None:
    """``::ffff:10.20.0.0/112`` matched nothing: an address is compared as the IPv4 it
    carries, the range was left IPv6. It now admits 10.20.0.0/16, however the URL writes it."""
    policy = OutboundPolicy.parse(["::ffff:10.20.0.0/112"])
    assert policy.refusal(written, [ipaddress.ip_address(written.strip("[]"))]) is None
    assert policy.refusal("10.21.0.1", [ipaddress.ip_address("10.21.0.1")]) is not None
