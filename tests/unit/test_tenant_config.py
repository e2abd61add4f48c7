"""What a submitted tenant configuration may hold: card wording and an issuer's JWK Set."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sandbox.keys import SigningKey
from service.admin.partners_io import export_bundle, import_bundle
from service.tenant_config import (
    DEFAULT_SCOPES,
    EARLIER_DEFAULT_SCOPES,
    SUBMITTED,
    CdsIssuer,
    EhrRegistration,
    HookSettings,
    PartnerSettings,
    TenantConfiguration,
    base_url_key,
    default_partners,
    jwk_set,
)

KEY = SigningKey.generate("ehr-key-1", "ES384")


@pytest.mark.parametrize(
    "wording",
    ["{reasons.x}", "{reasons[x]}", "{reasons[0]}", "{reasons.upper}", "{0}", "{}",
     "{reasons:>{width}}", "{reasons!z}", "Let op: {reasons"],
)  # fmt: skip
def test_wording_with_another_placeholder_than_reasons_is_refused(wording: str) -> None:
    with pytest.raises(ValidationError, match=r"only the placeholder \{reasons\} may be used"):
        HookSettings.model_validate({"card_wording": {"nl": {"warning_summary": wording}}})


@pytest.mark.parametrize("name", ["info_summary", "info_detail"])
def test_an_info_card_has_no_reasons_to_name(name: str) -> None:
    """An info card is rendered without reasons: ``{reasons}`` there would fail every card."""
    with pytest.raises(ValidationError, match="no placeholder may be used"):
        HookSettings.model_validate({"card_wording": {"nl": {name: "Doe het ({reasons})"}}})


def test_wording_with_reasons_and_escaped_braces_is_accepted() -> None:
    wording = {"warning_summary": "Let op ({{AZ}}): {reasons}", "info_detail": "Vraag {{naar}}"}
    hooks = HookSettings.model_validate({"card_wording": {"nl": wording}})
    assert hooks.card_wording["nl"]["warning_summary"].format(reasons="x") == "Let op ({AZ}): x"


UNUSABLE: dict[str, Any] = {
    "a list": [],
    "null": None,
    "a string": "x",
    "no keys member": {},
    "keys not a list": {"keys": "x"},
    "no keys": {"keys": []},
    "keys not objects": {"keys": [1, None, "k"]},
    "alg a list": {"keys": [{**KEY.public_jwk(), "alg": ["ES384"]}]},
    "kid a list": {"keys": [{**KEY.public_jwk(), "kid": ["ehr-key-1"]}]},
    "not a point on the curve": {"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}]},
    "only a symmetric key": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
}


@pytest.mark.parametrize("document", list(UNUSABLE.values()), ids=list(UNUSABLE))
def test_an_unusable_jwk_set_is_a_value_error_with_the_reason(document: Any) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        jwk_set(document)


def test_malformed_keys_next_to_a_usable_one_are_ignored() -> None:
    """RFC 7517 section 5: keys an implementation cannot use are ignored, not fatal."""
    document = {"keys": [1, {**KEY.public_jwk(), "kid": ["x"]}, KEY.public_jwk()]}
    assert [key.key_id for key in jwk_set(document).keys] == ["ehr-key-1"]


def issuer_document(jwks: Any) -> dict[str, Any]:
    issuer = {"iss": "https://epd.example", "jwks": jwks}
    registration = {"id": "epd", "name": "EPD", "fhir_base_url": "https://epd.example/fhir",
                    "client_id": "k", "cds_issuers": [issuer]}  # fmt: skip
    return {"name": "AZ", "registrations": [registration]}


def test_a_submitted_configuration_with_an_unusable_jwk_set_is_refused_where_it_is() -> None:
    with pytest.raises(ValidationError) as refused:
        TenantConfiguration.model_validate(
            issuer_document(UNUSABLE["alg a list"]), context=SUBMITTED
        )
    (error,) = refused.value.errors()
    assert error["loc"] == ("registrations", 0, "cds_issuers", 0, "jwks")
    assert "no usable RSA or EC public key" in error["msg"]


def test_a_stored_configuration_with_an_unusable_jwk_set_still_loads() -> None:
    """A version stored before the check must not take the hospital down on load; its
    issuer's calls are refused (401) until an admin corrects it."""
    stored = TenantConfiguration.model_validate(issuer_document(UNUSABLE["alg a list"]))
    assert stored.registrations[0].cds_issuers[0].jwks == UNUSABLE["alg a list"]
    usable = {"keys": [KEY.public_jwk()]}
    submitted = CdsIssuer.model_validate({"iss": "x", "jwks": usable}, context=SUBMITTED)
    assert submitted.jwks == usable


ORIGINS_REFUSED = [
    "https://ziekenhuis.例え.jp",  # not Latin-1: every page's header failed, a 500
    "https://a; script-src 'unsafe-inline' *",  # a directive of its own
    "https://a\r\nX-Injected: 1",  # reached the header through the JSON API
    "https://a, https://b", "https://epd.example/launch", "https://epd.example?x",
    "https://epd.example#f", "epd.example", "http://epd.example", "*", "https://a.",
]  # fmt: skip
ORIGINS_ACCEPTED = [
    "https://epd.az-example.be", "https://epd.example:8443", "https://xn--r8jz45g.jp",
    "http://localhost:8080", "http://127.0.0.1:9000", "http://[::1]:8080",
]  # fmt: skip


def registration_document(*origins: str) -> dict[str, Any]:
    registration = {"id": "epd", "name": "EPD", "fhir_base_url": "https://x/fhir",
                    "client_id": "k", "frame_origins": list(origins)}  # fmt: skip
    return {"name": "AZ", "registrations": [registration]}


@pytest.mark.parametrize("origin", ORIGINS_REFUSED)
def test_a_frame_origin_that_is_not_an_ascii_origin_is_refused_where_it_is(origin: str) -> None:
    with pytest.raises(ValidationError) as refused:
        TenantConfiguration.model_validate(
            registration_document(ORIGINS_ACCEPTED[0], origin), context=SUBMITTED
        )
    (error,) = refused.value.errors()
    assert error["loc"] == ("registrations", 0, "frame_origins")
    assert error["ctx"]["error"].loc == (1,)
    assert "is not an origin such as https://epd.example.be:8443" in error["msg"]
    assert "Punycode (xn--…)" in error["msg"]


def test_ascii_origins_are_accepted_and_a_stored_bad_one_still_loads() -> None:
    """http only on this machine (the demo EHR), as the other URLs. A version stored
    before the check loads; the page headers leave its bad origin out."""
    document = registration_document(*ORIGINS_ACCEPTED)
    submitted = TenantConfiguration.model_validate(document, context=SUBMITTED)
    assert submitted.registrations[0].frame_origins == ORIGINS_ACCEPTED
    stored = TenantConfiguration.model_validate(registration_document(*ORIGINS_REFUSED))
    assert stored.registrations[0].frame_origins == ORIGINS_REFUSED


@pytest.mark.parametrize("stored", sorted(EARLIER_DEFAULT_SCOPES))
def test_a_registration_stored_with_an_earlier_default_asks_for_todays_scopes(stored: str) -> None:
    """Every configuration saved before stores the default of its day as text (the admin
    screen offered the first). Read as it was, an existing hospital never got the scopes a
    case now needs: a referral's status change was refused by an EHR enforcing scopes and
    waited for a sign-in for good. A hospital's own choice stays as it chose."""
    document = {"id": "ehr", "name": "EPD", "fhir_base_url": "https://e.example/fhir"}
    document["client_id"] = "kindreflex"
    stored_so = EhrRegistration.model_validate({**document, "scopes": stored})
    own = EhrRegistration.model_validate({**document, "scopes": "launch openid user/*.cruds"})
    assert stored_so.scopes == DEFAULT_SCOPES
    assert own.scopes == "launch openid user/*.cruds"


@pytest.mark.parametrize(
    ("scopes", "missing"),
    [
        ("launch openid fhirUser patient/*.rs", "patient/*.c patient/RelatedPerson.u "
         "patient/ServiceRequest.u patient/Flag.u user/Organization.c"),
        ("launch, openid, fhirUser, user/*.cruds", "launch openid fhirUser"),
        ("openid fhirUser user/*.cruds", "launch"),
    ],
)  # fmt: skip
def test_scopes_that_could_not_launch_or_write_are_refused_when_saved(
    scopes: str, missing: str
) -> None:
    """Narrowed to an EHR's reading policy, or written with commas, the scopes launched the
    app, and each save waited in the outbox for a right no sign-in brought (review)."""
    document = {"id": "ehr", "name": "EPD", "fhir_base_url": "https://e.example/fhir",
                "client_id": "kindreflex", "scopes": scopes}  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        EhrRegistration.model_validate(document, context=SUBMITTED)
    (error,) = refused.value.errors()
    assert error["loc"] == ("scopes",)
    assert error["ctx"]["error"].params == {"missing": missing}
    assert EhrRegistration.model_validate(document).scopes == scopes  # stored: still loads
    enough = {**document, "scopes": "launch openid fhirUser user/*.cruds"}
    assert EhrRegistration.model_validate(enough, context=SUBMITTED).scopes == enough["scopes"]


@pytest.mark.parametrize(
    ("issuer", "code"),
    [
        ({"iss": "https://epd.example"}, "cds-issuer-no-keys"),
        ({"iss": "https://epd.example", "jku": ["http://epd.example/jwks"]}, "cds-issuer-jku"),
        ({"iss": "https://epd.example", "jku": ["jwks.json"]}, "cds-issuer-jku"),
        ({"iss": " ", "jku": ["https://epd.example/jwks"]}, "cds-issuer-iss"),
        ({"iss": "https://epd.example ", "jku": ["https://epd.example/jwks"]}, "cds-issuer-iss"),
    ],
)
def test_an_issuer_whose_calls_could_never_be_verified_is_refused_when_saved(
    issuer: dict[str, Any], code: str
) -> None:
    """Saved, each of these had every hook call of that EHR refused (401) until someone
    read the service's log (review)."""
    with pytest.raises(ValidationError) as refused:
        CdsIssuer.model_validate(issuer, context=SUBMITTED)
    (error,) = refused.value.errors()
    assert error["ctx"]["error"].code == code
    assert CdsIssuer.model_validate(issuer).iss == issuer["iss"]  # stored: still loads


def test_an_issuer_with_keys_or_a_jwks_url_over_tls_is_accepted() -> None:
    local = {"iss": "demo", "jku": ["http://127.0.0.1:8001/jwks"]}
    assert CdsIssuer.model_validate(local, context=SUBMITTED).jku == local["jku"]
    keys = {"iss": "https://epd.example", "jwks": {"keys": [KEY.public_jwk()]}}
    assert CdsIssuer.model_validate(keys, context=SUBMITTED).jwks == keys["jwks"]


@pytest.mark.parametrize(
    "url",
    ["kindreflex.be", "/over-kindreflex", "javascript:alert(document.domain)",
     "http://kindreflex.be/", "https:///over", "https://[::1", " https://kindreflex.be/",
     "https://kindreflex.be/over ons", "data:text/html,<script>alert(1)</script>"],
)  # fmt: skip
def test_a_card_source_url_that_is_no_absolute_https_url_is_refused_when_saved(
    url: str,
) -> None:
    """CDS Hooks 2.0: a card's ``source.url`` is "an optional absolute URL to load (via
    GET, in a browser context)"; any text was saved and put in every card (review)."""
    with pytest.raises(ValidationError) as refused:
        HookSettings.model_validate({"source_url": url}, context=SUBMITTED)
    (error,) = refused.value.errors()
    assert (error["loc"], error["ctx"]["error"].code) == (("source_url",), "source-url")
    assert HookSettings.model_validate({"source_url": url}).source_url == url  # stored: loads


@pytest.mark.parametrize(
    "url",
    [
        "https://kindreflex.be/",
        "https://www.az-gent.be/kindreflex?taal=nl",
        "http://localhost:8000/over",
        "",
    ],
)
def test_a_card_source_url_over_https_or_on_this_machine_or_none_is_accepted(url: str) -> None:
    assert HookSettings.model_validate({"source_url": url}, context=SUBMITTED).source_url == url


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"client_id": " "}, "client-id"),
        ({"client_id": "kindreflex "}, "client-id"),
        ({"fhir_base_url": "https:///fhir"}, "fhir-base-url-form"),
        ({"fhir_base_url": "https://e.example/fhir?x=1"}, "fhir-base-url-form"),
        ({"fhir_base_url": "https://gent@e.example/fhir"}, "fhir-base-url-userinfo"),
        ({"fhir_base_url": "http://gent:pw@127.0.0.1:8080/fhir"}, "fhir-base-url-userinfo"),
        (
            {"cds_issuers": [{"iss": "https://e.example", "jku": ["https://e.example/a"]},
                             {"iss": "https://e.example", "jku": ["https://e.example/b"]}]},
            "cds-issuer-twice",
        ),
    ],
)  # fmt: skip
def test_a_registration_no_launch_or_call_could_use_is_refused_when_saved(
    changes: dict[str, Any], code: str
) -> None:
    """Each was saved, and failed at a nurse's launch or the EHR's calls: a client id the EHR
    did not know, a base no `iss` could match, an issuer's second JWKS never read (review)."""
    document = {"id": "ehr", "name": "EPD", "fhir_base_url": "https://e.example/fhir",
                "client_id": "kindreflex", **changes}  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        EhrRegistration.model_validate(document, context=SUBMITTED)
    (error,) = refused.value.errors()
    assert error["ctx"]["error"].code == code
    assert EhrRegistration.model_validate(document).id == "ehr"  # stored: still loads


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://EHR.Example.be/fhir", "https://ehr.example.be/fhir/"),
        ("https://ehr.example.be:443/fhir", "https://ehr.example.be./fhir"),
        ("http://LocalHost:80/R4", "http://localhost/R4"),
        ("HTTPS://[::1]:443/fhir", "https://[::1]/fhir"),
        ("http://[0:0:0:0:0:0:0:1]:8080/fhir", "http://[::1]:8080/fhir"),  # as pydantic has it
        ("https://ehr.example.be/r4/../fhir", "https://ehr.example.be/fhir"),
        ("https://ziekenhuis-ä.be/fhir", "https://xn--ziekenhuis--v8a.be/fhir"),
        # an unreserved character percent-encoded is the character (RFC 3986 6.2.2.2)
        ("https://ehr.example.be/%66hir", "https://ehr.example.be/fhir"),
        ("https://ehr.example.be/%66%68%69%72/", "https://ehr.example.be/fhir"),
        ("https://ehr.example.be/%7Eepd%2Dr4%2e%5f", "https://ehr.example.be/~epd-r4._"),
        ("https://ehr.example.be/r4/%2E%2E/fhir", "https://ehr.example.be/fhir"),
        # the hex of what stays encoded has no case (RFC 3986 6.2.2.1)
        ("https://ehr.example.be/f%c3%a9", "https://ehr.example.be/f%C3%A9"),
        ("https://ehr.example.be/fé", "https://ehr.example.be/f%c3%a9"),
        ("https://ehr.example.be/a%2fb", "https://ehr.example.be/a%2Fb"),
        # user-info names no other server
        ("https://gent@ehr.example.be/fhir", "https://ehr.example.be/fhir"),
        ("https://gent:secret@EHR.example.be:443/fhir", "https://ehr.example.be/fhir"),
        ("https://@ehr.example.be/fhir", "https://ehr.example.be/fhir"),
    ],
)
def test_two_spellings_of_one_fhir_base_are_one_key(one: str, other: str) -> None:
    assert base_url_key(one) == base_url_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://ehr.example.be/fhir", "https://ehr.example.be/FHIR"),  # a path has case
        ("https://ehr.example.be/fhir", "https://ehr.example.be:8443/fhir"),
        ("https://ehr.example.be/fhir", "http://ehr.example.be/fhir"),
        ("https://ehr.example.be/fhir", "https://ehr.example.be/fhir/r4"),
        ("https://ehr.example.be/fhir", "https://ehr.example.be/%46hir"),  # %46 is "F"
        ("https://ehr.example.be/a/b", "https://ehr.example.be/a%2Fb"),  # "/" is reserved
        ("https://ehr.example.be/fhir", "https://ehr.example.be/fhir%2F"),
        ("https://ehr.example.be/fhir", "https://ehr.example.be/fhir%20"),
    ],
)
def test_two_fhir_bases_are_two_keys(one: str, other: str) -> None:
    assert base_url_key(one) != base_url_key(other)


@pytest.mark.parametrize(
    "other", ["https://EHR.example.be:443/fhir", "https://ehr.example.be/%66hir"]
)
def test_one_fhir_base_registered_twice_in_another_spelling_is_refused(other: str) -> None:
    """A launch from it would always take the first registration: the second is a mistake."""
    registrations = [
        EhrRegistration(id=f"ehr-{n}", name="EPD", fhir_base_url=url, client_id=f"k{n}")
        for n, url in enumerate(["https://ehr.example.be/fhir", other])
    ]
    with pytest.raises(ValidationError, match="another registration has the FHIR base"):
        TenantConfiguration.model_validate(
            {"name": "AZ", "registrations": [r.model_dump() for r in registrations]},
            context=SUBMITTED,
        )


def test_a_fhir_base_with_a_password_is_refused_without_showing_it() -> None:
    """The refusal goes to the API's answer and the admin's screen: it names the base
    without what was written before its host. One stored before the check still loads."""
    document = {"id": "ehr", "name": "EPD", "client_id": "kindreflex",
                "fhir_base_url": "https://kindreflex:s3cr3t@ehr.example.be/fhir/"}  # fmt: skip
    with pytest.raises(ValidationError) as refused:
        EhrRegistration.model_validate(document, context=SUBMITTED)
    (error,) = refused.value.errors(include_input=False)
    assert error["ctx"]["error"].params == {"url": "https://ehr.example.be/fhir"}
    assert "s3cr3t" not in str(error["ctx"]["error"])
    stored = EhrRegistration.model_validate(document)
    assert base_url_key(stored.fhir_base_url) == base_url_key("https://ehr.example.be/fhir")


def test_a_partner_id_is_read_without_spaces_around_it_from_every_input() -> None:
    """The JSON API, a FHIR Bundle and quoted YAML gave an entry ``"vk-oost-vlaanderen "``,
    which the directory reads stripped: the entry and the directory name the same id."""
    partners = default_partners().model_dump(mode="json", exclude_none=True)
    spaced = [
        {**e, "id": f" {e['id']} "} if e["id"] == "vk-oost-vlaanderen" else e
        for e in partners["entries"]
    ]
    submitted = PartnerSettings.model_validate({**partners, "entries": spaced}, context=SUBMITTED)
    bundle = export_bundle(default_partners())
    for entry in bundle["entry"]:
        for identifier in entry["resource"].get("identifier", []):
            if identifier["value"] == "vk-oost-vlaanderen":
                identifier["value"] += " "
    for settings in (submitted, import_bundle(bundle)):
        assert settings.directory().get("vk-oost-vlaanderen") is not None
        assert "vk-oost-vlaanderen" in [e.id for e in settings.entries]


def test_texts_over_their_limits_are_refused_when_submitted_and_load_when_stored() -> None:
    """The limits (``tenant_config``: a name 200 characters, a client id 255, a URL 2048, a
    wording 4000) are checked when an administrator submits a configuration; a version
    stored before them loads as it is (it can be corrected, the hospital keeps working)."""
    document = issuer_document({"keys": [KEY.public_jwk()]})
    registration = document["registrations"][0]
    registration["name"] = "E" * 201
    registration["client_id"] = "k" * 256
    registration["cds_issuers"][0]["subjects"] = ["s" * 256]
    document["plan"] = {"steps": {"step-2": {"help": {"fr": "h" * 4001}}}}
    document["hooks"] = {"source_url": "https://kindreflex.be/" + "a" * 2027}

    stored = TenantConfiguration.model_validate(document)
    assert stored.registrations[0].name == "E" * 201
    with pytest.raises(ValidationError) as refused:
        TenantConfiguration.model_validate(document, context=SUBMITTED)
    said = {(".".join(map(str, e["loc"])), e["msg"]) for e in refused.value.errors()}
    assert said == {
        ("registrations.0.name", "Value error, at most 200 characters (201 given)"),
        ("registrations.0.client_id", "Value error, at most 255 characters (256 given)"),
        ("registrations.0.cds_issuers.0.subjects.0",
         "Value error, at most 255 characters (256 given)"),
        ("hooks.source_url", "Value error, at most 2048 characters (2049 given)"),
        ("plan.steps.step-2.help.fr", "Value error, at most 4000 characters (4001 given)"),
    }  # fmt: skip
