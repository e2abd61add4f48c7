"""FastAPI dependencies shared by the routers: settings, database, the request's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request

from service.db.base import Database
from service.settings import Settings
from service.tenancy import TenantContext, TenantDirectory, UnknownTenantError


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def tenants_of(request: Request) -> TenantDirectory:
    tenants: TenantDirectory = request.app.state.tenants
    return tenants


def tenant_slug(request: Request) -> str:
    """The tenant named by the ``/t/{tenant}`` prefix, else the deployment's default."""
    slug = request.path_params.get("tenant")
    return str(slug) if slug else settings_of(request).default_tenant


def current_tenant(request: Request) -> TenantContext:
    try:
        return tenants_of(request).get(tenant_slug(request))
    except UnknownTenantError as error:
        raise HTTPException(status_code=404, detail=str(error)) from error


SettingsDep = Annotated[Settings, Depends(settings_of)]
DatabaseDep = Annotated[Database, Depends(database_of)]
TenantDep = Annotated[TenantContext, Depends(current_tenant)]


async def _hospital_in_path(
    tenant: Annotated[
        str, Path(description="The hospital (tenant) slug; without the prefix, the default one.")
    ],
) -> None:
    """Declares the ``/t/{tenant}`` prefix's parameter in the OpenAPI document, where every
    path parameter must be declared (a generated client refused the document). The
    handlers read it from the path themselves (:func:`tenant_slug`); async:
    no thread hop."""


def for_each_hospital(app: FastAPI, router: APIRouter) -> None:
    """Serve ``router`` at the root, for the deployment's default hospital, and under
    ``/t/{tenant}`` for each hospital by name."""
    app.include_router(router)
    app.include_router(router, prefix="/t/{tenant}", dependencies=[Depends(_hospital_in_path)])
