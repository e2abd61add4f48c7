"""The SMART on FHIR app: launch, browser sessions, and the nurse's and social worker's screens."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.api.deps import for_each_hospital
from service.settings import Settings
from smart_app import launch
from smart_app.errors import PageError, handle_database_error, handle_page_error
from smart_app.oauth import AuthServers
from smart_app.session import SessionStore, SessionTokens

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Wire the SMART launch and sessions into the app (needs ``app.state.keys``)."""
    settings: Settings = app.state.settings
    app.state.sessions = SessionStore(app.state.database, settings)
    app.state.auth_servers = AuthServers()
    app.state.session_tokens = SessionTokens(
        app.state.database,
        settings,
        keys=app.state.keys,
        tenants=app.state.tenants,
        auth_servers=app.state.auth_servers,
    )
    app.add_exception_handler(PageError, handle_page_error)
    for failed in (DBAPIError, PoolTimeoutError):  # a database error no code handled
        app.add_exception_handler(failed, handle_database_error)
    for_each_hospital(app, launch.router)
    app.include_router(launch.callback_router)
    if settings.secret_key is None and settings.environment == "production":
        log.warning(
            "KINDREFLEX_SECRET_KEY is not set: EHR tokens and our private signing keys are "
            "stored unencrypted in the database"
        )
