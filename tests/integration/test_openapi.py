"""The OpenAPI document an EHR integrator generates a client from."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.db.base import Database
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
