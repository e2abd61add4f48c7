"""The OpenAPI document an EHR integrator generates a client from."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db.base import Database
from service.settings import Environment, Settings
from tests.support.sessions import make_app

_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def test_every_path_parameter_is_declared_once_in_each_operation(
    database_url: str, database: Database
) -> None:
    """OpenAPI 3 requires each ``{name}`` of a path to be declared as a path parameter; the
    ``/t/{tenant}`` prefix's was not, so schema tools refused 48 operations."""
    document = TestClient(make_app(database_url, database)).get("/openapi.json").json()
    undeclared = []
    for path, item in document["paths"].items():
        wanted = sorted(re.findall(r"{([^}]+)}", path))
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            declared = sorted(
                p["name"] for p in operation.get("parameters", []) if p["in"] == "path"
            )
            if declared != wanted:
                undeclared.append(f"{method.upper()} {path}: {declared}")
    assert undeclared == []
    assert any(path.startswith("/t/{tenant}/") for path in document["paths"])


@pytest.mark.parametrize(("environment", "pages"), [("production", 404), ("demo", 200)])
def test_the_api_pages_for_people_are_not_served_in_production(
    database_url: str, database: Database, environment: Environment, pages: int
) -> None:
    """Swagger UI and ReDoc load their script from a public CDN at a moving version: on the
    service's origin, beside the users' sessions, that is someone else's code. Production
    serves the document alone."""
    settings = Settings(environment=environment, database_url=database_url, secret_key="k" * 32)
    client = TestClient(create_app(settings, database))

    assert [client.get(path).status_code for path in ("/docs", "/redoc")] == [pages, pages]
    assert client.get("/openapi.json").json()["info"]["title"] == "Kindreflex-ED"
