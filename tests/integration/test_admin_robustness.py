"""Whatever a client sends to the admin API, the answer is a 2xx or a 4xx — never a 500 —
and a refused request changes nothing (property-based, on the real app and database)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from service.admin import access
from service.admin.partners_io import export_bundle
from service.app import create_app
from service.db.base import Database
from service.settings import load_settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import TenantConfiguration, default_partners

KEY = "robustness-key"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def mutated_bundles() -> st.SearchStrategy[Any]:
    """The exported Bundle with one value somewhere replaced by arbitrary JSON."""
    bundle = export_bundle(default_partners())

    def mutate(draw: st.DrawFn) -> Any:
        copy = json.loads(json.dumps(bundle))
        entry = draw(st.integers(0, len(copy["entry"]) - 1))
        resource = copy["entry"][entry]["resource"]
        key = draw(st.sampled_from(sorted(resource)))
        resource[key] = draw(json_values)
        return copy

    return st.composite(mutate)()


@pytest.fixture
def admin_client(
    database: Database, database_url: str
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = load_settings(database_url=database_url, environment="test", secret_key=KEY)
    tenants = TenantDirectory(database, SecretBox(SecretStr(KEY)))
    context = tenants.save(settings.default_tenant, TenantConfiguration(name="AZ"), actor="set-up")
    token, _ = access.issue_bootstrap_token(database, context.id)
    session = access.redeem_bootstrap_token(database, context.id, token, "fuzz")
    with TestClient(create_app(settings, database)) as client:
        yield client, {"Authorization": f"Bearer {session.token}"}


ENDPOINTS = ["/admin/api/config", "/admin/api/hooks", "/admin/api/plan", "/admin/api/partners",
             "/admin/api/registrations/ehr"]  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values, endpoint=st.sampled_from(ENDPOINTS))
def test_arbitrary_json_is_answered_with_a_reason_and_changes_nothing_when_refused(
    admin_client: tuple[TestClient, dict[str, str]], body: Any, endpoint: str
) -> None:
    client, headers = admin_client
    before = client.get("/admin/api/config", headers=headers).json()
    response = client.put(endpoint, headers=headers, json=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert client.get("/admin/api/config", headers=headers).json() == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bundle=mutated_bundles())
def test_a_damaged_partner_bundle_is_answered_with_a_reason(
    admin_client: tuple[TestClient, dict[str, str]], bundle: Any
) -> None:
    client, headers = admin_client
    response = client.put(
        "/admin/api/partners", headers={**headers, "Content-Type": "application/fhir+json"},
        content=json.dumps(bundle).encode(),
    )  # fmt: skip
    assert response.status_code in (200, 422), response.text


def unchanged_after(
    client: TestClient, headers: dict[str, str], request: Callable[[], Response]
) -> Response:
    """The answer to ``request``, checked to have changed nothing."""
    before = client.get("/admin/api/config", headers=headers).json()
    response = request()
    assert client.get("/admin/api/config", headers=headers).json() == before
    return response


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_json_nested_a_hundred_thousand_deep_is_refused_as_not_json(
    admin_client: tuple[TestClient, dict[str, str]], endpoint: str
) -> None:
    client, headers = admin_client
    deep = b"[" * 100_000 + b"]" * 100_000
    sent = {**headers, "Content-Type": "application/json"}
    response = unchanged_after(
        client, headers, lambda: client.put(endpoint, headers=sent, content=deep)
    )
    assert response.status_code in (400, 422), response.text
    assert "not JSON: depth limit exceeded" in response.text


@pytest.mark.parametrize("registrations", [5, "ehr", {"id": "ehr"}, True])
def test_registrations_that_are_not_a_list_are_refused_with_the_path(
    admin_client: tuple[TestClient, dict[str, str]], registrations: Any
) -> None:
    client, headers = admin_client
    body = {"name": "AZ", "registrations": registrations}
    response = unchanged_after(
        client, headers, lambda: client.put("/admin/api/config", headers=headers, json=body)
    )
    assert response.status_code == 422, response.text
    (issue,) = response.json()["issue"]
    assert issue["expression"] == ["registrations"]
    assert "valid list" in issue["diagnostics"]


@pytest.mark.parametrize("wording", ["{reasons.x}", "{reasons[x]}", "{reasons.upper}"])
def test_card_wording_with_another_placeholder_is_refused_by_the_api_and_the_screen(
    admin_client: tuple[TestClient, dict[str, str]], wording: str
) -> None:
    client, headers = admin_client
    hooks = {"card_wording": {"nl": {"warning_summary": wording}}}
    api = unchanged_after(
        client, headers, lambda: client.put("/admin/api/hooks", headers=headers, json=hooks)
    )
    assert api.status_code == 422, api.text
    (issue,) = api.json()["issue"]
    assert issue["expression"] == ["hooks.card_wording"]
    assert (
        f"only the placeholder {{reasons}} may be used (unknown placeholder {wording})"
        in (issue["diagnostics"])
    )
    yaml_text = f"name: AZ\nhooks:\n  card_wording:\n    nl:\n      warning_summary: '{wording}'\n"
    screen = unchanged_after(
        client,
        headers,
        lambda: client.post("/admin/config", headers=headers, data={"yaml": yaml_text}),
    )
    assert screen.status_code == 422
    assert (
        f"Alleen de placeholder <code>{{reasons}}</code> mag gebruikt worden, "
        f"niet <code>{wording}</code>." in screen.text
    )
    assert "only the placeholder" not in screen.text


def test_a_yaml_file_with_an_impossible_date_is_refused_with_its_line(
    admin_client: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = admin_client
    text = b"name: AZ\nplan:\n  revision: 2025-02-30\n"
    response = unchanged_after(
        client, headers, lambda: client.put("/admin/api/config.yaml", headers=headers, content=text)
    )
    assert response.status_code == 422, response.text
    (issue,) = response.json()["issue"]
    assert issue["diagnostics"] == (
        "line 3: not valid YAML: the value '2025-02-30' cannot be read "
        "(day is out of range for month)"
    )


@pytest.mark.parametrize(
    ("path", "content_type", "text"),
    [
        ("/admin/api/config.yaml", "application/yaml", b"name: AZ Sint-Jan \xff\xfe\n"),
        ("/admin/api/partners", "text/csv", b"id,type,name,phone\nvk,vk,VK \xe9 Brugge,09\n"),
    ],
    ids=["yaml", "csv"],
)
def test_an_upload_that_is_not_utf8_is_refused_not_saved_with_replacement_characters(
    admin_client: tuple[TestClient, dict[str, str]], path: str, content_type: str, text: bytes
) -> None:
    client, headers = admin_client
    upload = {**headers, "Content-Type": content_type}
    response = unchanged_after(
        client, headers, lambda: client.put(path, headers=upload, content=text)
    )
    assert response.status_code == 422, response.text
    assert "not UTF-8" in response.json()["issue"][0]["diagnostics"]
