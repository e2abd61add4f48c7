"""Start the whole sandbox on localhost: sekmet + seed + the EHR app (uvicorn in a thread).

>>> app = "http://127.0.0.1:8000"
>>> client = SmartClient("kindreflex", (f"{app}/callback",),
...                      jwks_uri=f"{app}/.well-known/jwks.json")
>>> with Sandbox.start(cds_base_url=app, clients=(client,)) as sb:  # doctest: +SKIP
...     print(sb.ehr_url, sb.fhir_base_url)

``run_sandbox(config)`` does the same and blocks until Ctrl-C (or SIGTERM), then stops
everything it started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from .auth import AuthServer
from .cds_client import CdsCall
from .config import SandboxConfig, SmartClient
from .ehr import EhrApp
from .facade import FacadeRequest
from .fhir_server import FhirServer, free_port
from .seed import USERS, SandboxUser, SeedResult, seed

__all__ = ["Sandbox", "SandboxError", "run_sandbox"]


class SandboxError(RuntimeError):
    pass


class Sandbox:
    """A running sandbox. Create it with ``Sandbox.start(...)`` (a context manager)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.fhir_server = FhirServer(
            host=config.host,
            port=config.fhir_port,
            data_dir=config.data_dir,
            startup_timeout=config.fhir_startup_timeout,
        )
        self.seed_result: SeedResult | None = None
        self.ehr: EhrApp | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.startup_seconds: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def start(cls, config: SandboxConfig | None = None, **overrides: Any) -> Iterator[Sandbox]:
        """Start sekmet, seed it, serve the EHR; stop all of it when the block ends."""
        cfg = dataclasses.replace(config or SandboxConfig(), **overrides)
        sb = cls(cfg)
        try:
            sb._start()
            yield sb
        finally:
            sb.stop()

    def _start(self) -> None:
        t0 = time.monotonic()
        self.fhir_server.start()
        if self.config.seed:
            self.seed_result = seed(self.fhir_server.base_url)
        self.port = self.config.ehr_port or free_port(self.config.host)
        host = self.config.public_host or self.config.host
        self.ehr = EhrApp(
            self.config,
            ehr_base=f"http://{host}:{self.port}",
            upstream_fhir=self.fhir_server.base_url,
            seed=self.seed_result,
        )
        uv = uvicorn.Config(
            self.ehr.app,
            host=self.config.host,
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self._server = uvicorn.Server(uv)
        self._thread = threading.Thread(target=self._server.run, name="sandbox-ehr", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15.0
        while not self._server.started:  # readiness probe with a deadline
            if not self._thread.is_alive():
                raise SandboxError(f"the sandbox EHR could not listen on port {self.port}")
            if time.monotonic() > deadline:
                raise SandboxError("the sandbox EHR did not start within 15 s")
            time.sleep(0.01)
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        """Stop the EHR server thread and the FHIR server process (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        self._server = None
        self.fhir_server.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it exposes ------------------------------------------------------------------------
    @property
    def _app(self) -> EhrApp:
        if self.ehr is None:
            raise SandboxError("the sandbox is not running")
        return self.ehr

    @property
    def ehr_url(self) -> str:
        """The EHR page, and the issuer of id_tokens and of CDS Hooks JWTs."""
        return self._app.base

    @property
    def issuer(self) -> str:
        return self._app.base

    @property
    def fhir_base_url(self) -> str:
        """The FHIR facade: ``iss`` of launches, ``fhirServer`` of hook calls."""
        return self._app.fhir_base

    @property
    def upstream_fhir_base_url(self) -> str:
        """sekmet itself (no authentication): for test set-up and assertions only."""
        return self.fhir_server.base_url

    @property
    def jwks_url(self) -> str:
        """The sandbox's public keys: id_token (RS256) and CDS Hooks JWT (ES384/RS384) keys."""
        return self._app.jwks_url

    @property
    def smart_configuration_url(self) -> str:
        return f"{self.fhir_base_url}/.well-known/smart-configuration"

    @property
    def authorize_url(self) -> str:
        return self._app.auth.authorize_url

    @property
    def token_url(self) -> str:
        return self._app.auth.token_url

    @property
    def auth(self) -> AuthServer:
        return self._app.auth

    @property
    def users(self) -> tuple[SandboxUser, ...]:
        return USERS

    @property
    def seeded(self) -> SeedResult:
        if self.seed_result is None:
            raise SandboxError("the sandbox was started with seed=False")
        return self.seed_result

    @property
    def fhir_requests(self) -> list[FacadeRequest]:
        """Every request the FHIR facade answered (method, path, query, status, client_id)."""
        return list(self._app.facade.log)

    @property
    def hook_calls(self) -> list[CdsCall]:
        """Every CDS hook call the EHR made (request body, JWT, response, cards)."""
        return list(self._app.hook_calls)

    def practitioner_id(self, user: str = "nurse") -> str:
        return self._app.auth.practitioners[user]

    def fhir_user(self, user: str = "nurse") -> str:
        return self._app.auth.fhir_user(user)

    # -- wiring after start ---------------------------------------------------------------------
    def register_client(self, client: SmartClient) -> None:
        self._app.auth.register_client(client)

    def set_cds_base_url(self, url: str | None) -> None:
        self.config.cds_base_url = url

    def set_relative_fhir_user(self, relative: bool) -> None:
        self.config.relative_fhir_user = relative

    def set_app_launch_url(self, url: str | None) -> None:
        self.config.app_launch_url = url

    # -- shortcuts for integration tests --------------------------------------------------------
    def create_launch(
        self,
        *,
        patient: str,
        encounter: str | None = None,
        user: str = "nurse",
        app_context: str | None = None,
    ) -> str:
        """An EHR launch context (patient id, encounter id, user key); the ``launch`` value."""
        return self._app.auth.create_launch(
            patient=patient, encounter=encounter, user=user, app_context=app_context
        )

    def launch_url(
        self,
        app_launch_url: str,
        *,
        patient: str,
        encounter: str | None = None,
        user: str = "nurse",
        app_context: str | None = None,
    ) -> str:
        """``{app_launch_url}?iss={fhir_base}&launch={id}`` as the EHR would open it."""
        from urllib.parse import urlencode

        lid = self.create_launch(
            patient=patient, encounter=encounter, user=user, app_context=app_context
        )
        sep = "&" if "?" in app_launch_url else "?"
        return f"{app_launch_url}{sep}{urlencode({'iss': self.fhir_base_url, 'launch': lid})}"

    def issue_token(
        self,
        *,
        client_id: str = "test",
        scope: str = "user/*.cruds",
        user: str | None = "nurse",
        patient: str | None = None,
        encounter: str | None = None,
        lifetime: int | None = None,
    ) -> str:
        """An access token for the facade without the OAuth dance (test set-up only)."""
        from .auth import Grant

        token, _ = self._app.auth.issue_access_token(
            Grant(
                client_id=client_id, scope=scope, user=user, patient=patient, encounter=encounter
            ),
            lifetime=lifetime,
        )
        return token


def run_sandbox(
    config: SandboxConfig | None = None,
    *,
    on_ready: Callable[[Sandbox], None] | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Run the sandbox until Ctrl-C/SIGTERM (or ``stop_event``), printing nothing itself."""
    stop = stop_event or threading.Event()
    previous: Any = None
    if threading.current_thread() is threading.main_thread():

        def _terminate(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with Sandbox.start(config) as sb:
            if on_ready is not None:
                on_ready(sb)
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
