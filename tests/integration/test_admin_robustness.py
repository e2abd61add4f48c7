"""Whatever a client sends to the admin API, the answer is a 2xx or a 4xx — never a 500 —
and a refused request changes nothing (property-based, on the real app and database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
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
