"""Page headers, CSRF comparison, iframe cookies and role mapping (pure functions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import smart_app
from service.tenancy import TenantContext
from service.tenant_config import EhrRegistration, RoleMapping, TenantConfiguration
from smart_app.errors import FREE_TEXT
from smart_app.launch import roles_from_claims
from smart_app.security import (
    ANY_FRAME,
    content_security_policy,
    iframe_cookie,
    page_headers,
    tokens_match,
)
from smart_app.session import AppUser, LaunchContext, security_headers

EHR = "https://ehr.az-example.be"


def _registration(**changes: object) -> EhrRegistration:
    base = EhrRegistration(
        id="epd", name="EPD", fhir_base_url="https://fhir.example/r4", client_id="kindreflex"
    )
    return base.model_copy(update=changes)


def _context(registration: EhrRegistration, registration_id: str = "epd") -> LaunchContext:
    tenant = TenantContext(
        id=1, slug="default", version=1,
        config=TenantConfiguration(name="AZ", registrations=[registration]),
    )  # fmt: skip
    return LaunchContext(
        session_id="s",
        tenant=tenant,
        registration_id=registration_id,
        fhir_base_url=registration.fhir_base_url,
        patient_id="p",
        encounter_id=None,
        user=AppUser("Practitioner/1", "Sofie Maes", frozenset({"nurse"})),
        language="nl",
        app_context=None,
    )


def test_csp_allows_framing_only_by_the_registered_ehr_and_no_inline_code() -> None:
    policy = content_security_policy([EHR])
    assert f"frame-ancestors {EHR}" in policy
    assert "default-src 'self'" in policy
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert content_security_policy([]).endswith("frame-ancestors 'none'")


def test_every_page_gets_nosniff_no_referrer_and_no_store() -> None:
    headers = page_headers([EHR])
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"


def test_security_headers_follow_the_launch_registration() -> None:
    registration = _registration(frame_origins=[EHR, "https://other.example"])
    policy = security_headers(_context(registration))["Content-Security-Policy"]
    assert f"frame-ancestors {EHR} https://other.example" in policy
    # A registration removed since the launch: nobody may frame the page any more.
    gone = security_headers(_context(registration, registration_id="removed"))
    assert gone["Content-Security-Policy"].endswith("frame-ancestors 'none'")


@pytest.mark.parametrize(
    ("presented", "expected", "match"),
    [("abc", "abc", True), ("abd", "abc", False), (None, "abc", False), ("", "", False)],
)
def test_tokens_match(presented: str | None, expected: str, match: bool) -> None:
    assert tokens_match(presented, expected) is match


def test_iframe_cookie_has_every_attribute_an_ehr_iframe_needs() -> None:
    line = iframe_cookie("kindreflex_session", "s3cr3t-_", 600)
    name_value, *attributes = [part.strip() for part in line.split(";")]
    assert name_value == "kindreflex_session=s3cr3t-_"
    assert set(attributes) == {
        "Max-Age=600", "Path=/", "Secure", "HttpOnly", "SameSite=None", "Partitioned",
    }  # fmt: skip


@pytest.mark.parametrize("value", ["a;b", "a b", "a=b", "é"])
def test_iframe_cookie_refuses_values_that_could_inject_attributes(value: str) -> None:
    with pytest.raises(ValueError, match="unsafe cookie"):
        iframe_cookie("kindreflex_session", value, 60)


def test_every_launched_clinician_is_a_nurse_other_roles_only_by_mapping() -> None:
    default = _registration()
    assert roles_from_claims(default, {}) == {"nurse"}
    assert roles_from_claims(default, {"roles": ["physician"]}) == {"nurse"}
    assert roles_from_claims(default, {"roles": ["social-worker"]}) == {"nurse", "social-worker"}
    assert roles_from_claims(default, {"roles": "admin social-worker"}) == {
        "nurse", "social-worker", "admin",
    }  # fmt: skip

    mapped = _registration(
        roles=RoleMapping(claim="groups", social_worker=["MSW", "SOC"], admin=["EPD-ADMIN"])
    )
    assert roles_from_claims(mapped, {"groups": ["SOC"]}) == {"nurse", "social-worker"}
    assert roles_from_claims(mapped, {"roles": ["social-worker"]}) == {"nurse"}
    assert roles_from_claims(mapped, {"groups": ["EPD-ADMIN"]}) == {"nurse", "admin"}


def test_a_stored_frame_origin_that_is_no_origin_is_left_out_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registration stored before origins were checked: its bad origins are left out of
    the header (before: a Unicode domain was a 500 on every page, ``;`` added directives)."""
    # origins of this test only: each is logged once per process
    stored = ["https://ziekenhuis.例え.test-security.jp", "https://test-security; img-src *", EHR]
    with caplog.at_level("WARNING", logger="smart_app.security"):
        policy = page_headers(stored)["Content-Security-Policy"]
        assert page_headers(stored)["Content-Security-Policy"] == policy
    policy.encode("latin-1")  # what the server does with a header
    assert policy.endswith(f"frame-ancestors {EHR}")
    assert policy.count(";") == 7
    assert len(caplog.records) == 2  # each bad origin once, not on every page
    assert content_security_policy(stored[:2]).endswith("frame-ancestors 'none'")
    assert content_security_policy(ANY_FRAME).endswith("frame-ancestors *")


@pytest.mark.parametrize("template", ["triage.html", "social/case.html"])
def test_every_text_a_user_types_on_a_form_is_shown_back_when_her_session_ended(
    template: str,
) -> None:
    """``FREE_TEXT`` names the forms' text fields by hand: a text area added to a form and
    not to it would be lost again."""
    source = (Path(smart_app.__file__).parent / "templates" / template).read_text()
    if template == "triage.html":  # its text fields are drawn by the macros, a child's too
        source += (Path(smart_app.__file__).parent / "templates" / "_fields.html").read_text()
    fields = re.findall(r'<textarea[^>]*\sname="([^"]+)"', source)
    fields += re.findall(r'<input[^>]*type="text"[^>]*\sname="([^"]+)"', source)
    fields += re.findall(r'text_input\(("[^)]*?),', source)  # the macro's calls: its id
    names = [
        re.sub(r'\{\{[^}]*\}\}|" ~ \w+ ~ "', "1", name).strip('"')
        for name in fields
        if "{{ id }}" not in name  # the macro's own tag
    ]

    assert len(names) >= 2
    assert [name for name in names if not FREE_TEXT.fullmatch(name)] == []
