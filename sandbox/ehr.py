"""The sandbox EHR: one FastAPI app with the EHR pages, the SMART authorization server, the
FHIR facade and the CDS Hooks client.

URLs (``E`` = the EHR base, e.g. ``http://127.0.0.1:8095``):

* ``E/`` — the EHR: pick a user and a patient, start a triage encounter (``encounter-start``),
  open the chart (``patient-view``), see cards, override them, launch a card's SMART link in
  an iframe;
* ``E/fhir`` — the FHIR facade (the ``iss`` of launches, the ``fhirServer`` of hook calls),
  ``E/fhir/.well-known/smart-configuration``;
* ``E/authorize``, ``E/token``, ``E/.well-known/jwks.json``,
  ``E/.well-known/openid-configuration`` — the authorization server (issuer ``E``);
* ``E/healthz``, ``E/favicon.ico``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from . import codes
from .auth import PAGE_CSP, AuthServer, Grant, build_auth_router
from .cds_client import CdsCall, CdsClient
from .config import SandboxConfig
from .facade import FhirFacade, build_facade_router
from .keys import SigningKey, jwks
from .seed import USERS, SeedResult, new_ed_visit

__all__ = ["EhrApp", "Visit", "origin_of"]

log = logging.getLogger("sandbox.ehr")
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: The pages' icon: a 16x16 PNG square in the orange of the SANDBOX badge. Browsers ask
#: /favicon.ico on every page; each 404 was noise in the console and the log.
FAVICON = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mNY7MVAEmIY1TCqYfhqAACjVe0B"
    "Rx1MVQAAAABJRU5ErkJggg=="
)
USER_COOKIE = "sandbox_user"


def origin_of(url: str | None) -> str | None:
    if not url:
        return None
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}" if p.scheme and p.netloc else None


_LINK = re.compile(r"\[([^\]]+)\]\((https?://[^\s)]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<!\*)\*(?!\*)(.+?)(?<!\*)\*(?!\*)")


def markdownish(text: str | None) -> Markup:
    """Card detail (GitHub-flavoured markdown) as safe HTML: paragraphs, bullets, bold, links."""
    if not text:
        return Markup("")
    out: list[str] = []
    in_list = False
    for line in str(text).splitlines():
        s = html.escape(line.strip())
        s = _LINK.sub(r'<a href="\2" target="_blank" rel="noopener">\1</a>', s)
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _ITALIC.sub(r"<em>\1</em>", s)
        if line.strip().startswith(("- ", "* ")):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{s[2:]}</li>")
            continue
        if in_list:
            out.append("</ul>")
            in_list = False
        if s.startswith("#"):
            out.append(f"<p><strong>{s.lstrip('#').strip()}</strong></p>")
        elif s:
            out.append(f"<p>{s}</p>")
    if in_list:
        out.append("</ul>")
    return Markup("".join(out))  # noqa: S704 - built from escaped text only


@dataclass
class Visit:
    """One EHR screen: a patient, maybe an encounter, the hook calls and a launched app."""

    id: str
    hook: str
    patient_id: str
    encounter_id: str | None
    user: str
    calls: list[CdsCall] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    dismissed: set[int] = field(default_factory=set)
    launch_url: str | None = None

    def cards(self) -> list[tuple[int, CdsCall, dict[str, Any]]]:
        out: list[tuple[int, CdsCall, dict[str, Any]]] = []
        for call in self.calls:
            for card in call.cards:
                out.append((len(out), call, card))
        return out


class EhrApp:
    """Builds and holds the sandbox EHR's state; ``app`` is the ASGI application."""

    def __init__(
        self, config: SandboxConfig, *, ehr_base: str, upstream_fhir: str, seed: SeedResult | None
    ) -> None:
        self.config = config
        self.base = ehr_base.rstrip("/")
        self.fhir_base = f"{self.base}/fhir"
        self.jwks_url = f"{self.base}/.well-known/jwks.json"
        self.seed = seed
        self.id_token_key = SigningKey.generate("sandbox-id-token-rs256", "RS256")
        self.cds_key = SigningKey.generate(
            f"sandbox-cds-{config.cds_jwt_alg.lower()}", config.cds_jwt_alg
        )
        self.http = httpx.AsyncClient(timeout=30.0)
        self.auth = AuthServer(
            config,
            self.base,
            self.fhir_base,
            self.id_token_key,
            dict(seed.practitioners) if seed else {},
            http=self.http,
        )
        self.facade = FhirFacade(upstream_fhir.rstrip("/"), self.fhir_base, self.auth, self.http)
        self.cds = CdsClient(
            self.base,
            self.jwks_url,
            self.cds_key,
            jwt_lifetime=config.cds_jwt_lifetime,
            timeout=config.cds_timeout,
            clock=config.clock,
        )
        self.visits: dict[str, Visit] = {}
        self.hook_calls: list[CdsCall] = []
        self._lock = threading.Lock()
        self._patient_names: dict[str, str] = {}
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["markdownish"] = markdownish
        self.app = self._build()

    # -- helpers --------------------------------------------------------------------------------
    def frame_origins(self, extra: str | None = None) -> list[str]:
        found = [
            *self.config.frame_origins,
            origin_of(self.config.cds_base_url),
            origin_of(self.config.app_launch_url),
            origin_of(extra),
        ]
        for c in self.auth.clients.values():
            found += [origin_of(u) for u in c.redirect_uris]
        out: list[str] = []
        for o in found:
            if o and o not in out:
                out.append(o)
        return out

    def csp(self, extra: str | None = None) -> str:
        frames = " ".join(["'self'", *self.frame_origins(extra)])
        return (
            f"default-src 'self'; frame-src {frames}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: https:; form-action 'self'; frame-ancestors 'self'"
        )

    def render(
        self, template: str, *, status: int = 200, csp: str | None = None, **ctx: Any
    ) -> HTMLResponse:
        body = self.env.get_template(template).render(sandbox=self, **ctx)
        return HTMLResponse(
            body,
            status_code=status,
            headers={
                "Content-Security-Policy": csp or PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store",
            },
        )

    def user_of(self, request: Request) -> str:
        key = request.cookies.get(USER_COOKIE, "nurse")
        return key if any(u.key == key for u in USERS) else "nurse"

    def practitioner_ref(self, user: str) -> str:
        return f"Practitioner/{self.auth.practitioners[user]}"

    def patient_names(self) -> dict[str, str]:
        return dict(self._patient_names)

    async def patients(self) -> list[dict[str, Any]]:
        bundle = await self.facade.fetch("Patient?_count=200")
        out = [e["resource"] for e in (bundle or {}).get("entry", []) if "resource" in e]
        out.sort(
            key=lambda p: (
                p.get("name", [{}])[0].get("family", ""),
                p.get("name", [{}])[0].get("given", [""])[0],
            )
        )
        with self._lock:
            for p in out:
                self._patient_names[p["id"]] = _name(p)
        return out

    async def _upstream_json(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, f"{self.facade.upstream}/{path}", **kw)

    # -- EHR actions ----------------------------------------------------------------------------
    async def _waiting_encounters(self, patient_id: str) -> list[dict[str, Any]]:
        r = await self._upstream_json(
            "GET",
            "Encounter",
            params={"patient": f"Patient/{patient_id}", "status": "arrived", "_count": "50"},
        )
        r.raise_for_status()
        return [
            e["resource"]
            for e in r.json().get("entry", [])
            if e.get("resource", {}).get("class", {}).get("code") == "EMER"
        ]

    async def start_triage(self, patient_id: str, user: str, reason: str | None = None) -> str:
        """Put the patient's waiting ED encounter in progress (or create one); its id.

        A seeded patient whose waiting visit was triaged before presents again with the same
        problem (a demo run twice); ``reason`` forces a new visit with that Hague trigger.
        """
        waiting = await self._waiting_encounters(patient_id)
        seeded = next(
            (p for p in (self.seed.patients.values() if self.seed else []) if p.id == patient_id),
            None,
        )
        if not waiting and not reason and seeded is not None:
            await run_in_threadpool(
                new_ed_visit,
                self.facade.upstream,
                seeded.key,
                status="arrived",
                practitioner_id=self.auth.practitioners.get(user),
            )
            waiting = await self._waiting_encounters(patient_id)
        participant = [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "PPRF",
                                "display": "primary performer",
                            }
                        ]
                    }
                ],
                "individual": {"reference": self.practitioner_ref(user)},
            }
        ]
        if waiting and not reason:
            enc = waiting[0]
            enc["status"] = "in-progress"
            enc["statusHistory"] = [
                *enc.get("statusHistory", []),
                {"status": "arrived", "period": enc.get("period", {})},
            ]
            enc["participant"] = participant
            u = await self._upstream_json(
                "PUT",
                f"Encounter/{enc['id']}",
                json=enc,
                headers={
                    "If-Match": f'W/"{enc["meta"]["versionId"]}"',
                    "Content-Type": "application/fhir+json",
                },
            )
            u.raise_for_status()
            return str(enc["id"])
        now = datetime.now(UTC).isoformat()
        reason_cc: dict[str, Any] = {"text": "Aanmelding spoedgevallen"}
        if reason in ("domestic-violence", "substance", "self-harm"):
            coding = codes.trigger_coding(reason)  # type: ignore[arg-type]
            reason_cc = {"coding": [coding], "text": (coding or {}).get("display", reason)}
        enc = {
            "resourceType": "Encounter",
            "identifier": [
                {"system": codes.VISIT_NUMBER_SYSTEM, "value": f"V{secrets.token_hex(6)}"}
            ],
            "status": "in-progress",
            "class": {"system": codes.V3_ACT, "code": "EMER", "display": "emergency"},
            "subject": {"reference": f"Patient/{patient_id}"},
            "participant": participant,
            "period": {"start": now},
            "reasonCode": [reason_cc],
        }
        if self.seed:
            enc["serviceProvider"] = {"reference": f"Organization/{self.seed.organization_id}"}
        c = await self._upstream_json(
            "POST", "Encounter", json=enc, headers={"Content-Type": "application/fhir+json"}
        )
        c.raise_for_status()
        return str(c.json()["id"])

    async def current_encounter(self, patient_id: str) -> str | None:
        r = await self._upstream_json(
            "GET",
            "Encounter",
            params={"patient": f"Patient/{patient_id}", "status": "in-progress", "_count": "50"},
        )
        if r.status_code != 200:
            return None
        entries = [e["resource"] for e in r.json().get("entry", []) if "resource" in e]
        entries.sort(key=lambda e: e.get("period", {}).get("start", ""), reverse=True)
        return str(entries[0]["id"]) if entries else None

    def fhir_authorization(
        self, user: str, patient_id: str, encounter_id: str | None
    ) -> dict[str, Any]:
        scope = self.config.cds_fhir_scope
        token, expires_in = self.auth.issue_access_token(
            Grant(
                client_id=self.config.cds_client_id,
                scope=scope,
                user=user,
                patient=patient_id,
                encounter=encounter_id,
                kind="cds",
            ),
            lifetime=min(self.config.access_token_lifetime, 300),
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
            "subject": self.config.cds_client_id,
            "patient": patient_id,
        }

    async def run_hook(
        self, hook: str, patient_id: str, encounter_id: str | None, user: str
    ) -> Visit:
        visit = Visit(secrets.token_urlsafe(8), hook, patient_id, encounter_id, user)
        with self._lock:
            self.visits[visit.id] = visit
        cds_base = self.config.cds_base_url
        if not cds_base:
            visit.messages.append("Geen CDS-dienst ingesteld (cds_base_url): geen hook opgeroepen.")
            return visit
        try:
            services = await self.cds.discover(self.http, cds_base)
        except (httpx.HTTPError, ValueError) as exc:
            visit.messages.append(f"CDS-discovery op {cds_base}/cds-services mislukt: {exc}")
            return visit
        matching = [s for s in services if s.get("hook") == hook and s.get("id")]
        if not matching:
            visit.messages.append(f"De CDS-dienst biedt geen service voor {hook}.")
        context: dict[str, Any] = {"userId": self.practitioner_ref(user), "patientId": patient_id}
        if encounter_id:
            context["encounterId"] = encounter_id
        for service in matching:
            call = await self.cds.call(
                self.http,
                cds_base,
                service,
                context=context,
                fetch=self.facade.fetch,
                fhir_server=self.fhir_base,
                fhir_authorization=self.fhir_authorization(user, patient_id, encounter_id),
            )
            visit.calls.append(call)
            with self._lock:
                self.hook_calls.append(call)
            if call.error:
                visit.messages.append(f"{service['id']}: {call.error}")
        return visit

    def launch(self, visit: Visit, url: str, app_context: str | None) -> str:
        lid = self.auth.create_launch(
            patient=visit.patient_id,
            encounter=visit.encounter_id,
            user=visit.user,
            app_context=app_context,
        )
        sep = "&" if "?" in url else "?"
        visit.launch_url = f"{url}{sep}{urlencode({'iss': self.fhir_base, 'launch': lid})}"
        return visit.launch_url

    async def feedback(self, visit: Visit, index: int, item: dict[str, Any]) -> None:
        found = next(((c, card) for i, c, card in visit.cards() if i == index), None)
        if found is None or not self.config.cds_base_url:
            visit.messages.append("Onbekende kaart.")
            return
        call, card = found
        item = {
            "card": card.get("uuid", ""),
            "outcomeTimestamp": datetime.now(UTC).isoformat(),
            **item,
        }
        try:
            r = await self.cds.feedback(
                self.http, self.config.cds_base_url, call.service_id, [item]
            )
            visit.messages.append(f"Feedback '{item['outcome']}' verstuurd: HTTP {r.status_code}")
        except httpx.HTTPError as exc:
            visit.messages.append(f"Feedback mislukt: {exc}")

    # -- the ASGI app -----------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            yield
            await self.http.aclose()

        app = FastAPI(
            title="Kindreflex sandbox EHR",
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
            lifespan=lifespan,
        )
        app.include_router(build_auth_router(self.auth, self.render, self.patient_names))
        app.include_router(build_facade_router(self.facade))

        @app.get("/healthz")
        async def healthz() -> JSONResponse:
            return JSONResponse({"status": "ok"})

        @app.get("/favicon.ico")
        async def favicon() -> Response:
            return Response(FAVICON, media_type="image/png")

        @app.get("/.well-known/jwks.json")
        async def jwks_endpoint() -> JSONResponse:
            return JSONResponse(jwks(self.id_token_key, self.cds_key))

        @app.get("/", response_class=HTMLResponse)
        async def index(request: Request) -> Response:
            patients = await self.patients()
            seeded = {p.id: p for p in (self.seed.patients.values() if self.seed else [])}
            return self.render(
                "index.html",
                csp=self.csp(),
                patients=patients,
                seeded=seeded,
                user=self.user_of(request),
                users=USERS,
                age=_age,
                name=_name,
                ssin=_ssin,
            )

        @app.post("/user")
        async def set_user(request: Request) -> Response:
            form = await request.form()
            user = str(form.get("user", "nurse"))
            back = str(form.get("back", "/"))
            resp = RedirectResponse(back if back.startswith("/") else "/", status_code=303)
            if any(u.key == user for u in USERS):
                resp.set_cookie(USER_COOKIE, user, httponly=True, samesite="lax")
            return resp

        @app.post("/patients/{patient_id}/triage")
        async def triage(request: Request, patient_id: str) -> Response:
            form = await request.form()
            user = self.user_of(request)
            reason = str(form.get("reason", "")) or None
            encounter = await self.start_triage(patient_id, user, reason)
            visit = await self.run_hook("encounter-start", patient_id, encounter, user)
            return RedirectResponse(f"/visits/{visit.id}", status_code=303)

        @app.post("/patients/{patient_id}/view")
        async def view(request: Request, patient_id: str) -> Response:
            user = self.user_of(request)
            encounter = await self.current_encounter(patient_id)
            visit = await self.run_hook("patient-view", patient_id, encounter, user)
            return RedirectResponse(f"/visits/{visit.id}", status_code=303)

        @app.post("/patients/{patient_id}/launch-app")
        async def launch_app(request: Request, patient_id: str) -> Response:
            user = self.user_of(request)
            encounter = await self.current_encounter(patient_id)
            visit = Visit(secrets.token_urlsafe(8), "direct launch", patient_id, encounter, user)
            with self._lock:
                self.visits[visit.id] = visit
            if self.config.app_launch_url:
                self.launch(visit, self.config.app_launch_url, None)
            else:
                visit.messages.append("Geen app_launch_url ingesteld.")
            return RedirectResponse(f"/visits/{visit.id}", status_code=303)

        @app.post("/worklist")
        async def worklist(request: Request) -> Response:
            """The social service's way in: the app launched without a patient (its worklist)."""
            if not self.config.app_launch_url:
                return RedirectResponse("/", status_code=303)
            lid = self.auth.create_launch(patient=None, user=self.user_of(request))
            query = urlencode({"iss": self.fhir_base, "launch": lid})
            url = f"{self.config.app_launch_url}?{query}"
            title = "Werklijst sociale dienst"
            return self.render("app.html", csp=self.csp(url), title=title, launch_url=url)

        @app.get("/visits/{visit_id}", response_class=HTMLResponse)
        async def visit_page(visit_id: str) -> Response:
            visit = self.visits.get(visit_id)
            if visit is None:
                return self.render(
                    "message.html",
                    status=404,
                    title="Onbekend EPD-scherm",
                    message="Dit EPD-scherm bestaat niet (meer).",
                )
            patient = await self.facade.fetch(f"Patient/{visit.patient_id}") or {}
            encounter = (
                await self.facade.fetch(f"Encounter/{visit.encounter_id}")
                if visit.encounter_id
                else None
            )
            return self.render(
                "visit.html",
                csp=self.csp(visit.launch_url),
                visit=visit,
                patient=patient,
                encounter=encounter,
                name=_name,
                ssin=_ssin,
                age=_age,
                users={u.key: u for u in USERS},
            )

        @app.post("/visits/{visit_id}/cards/{index}/links/{link}")
        async def launch_link(visit_id: str, index: int, link: int) -> Response:
            visit = self.visits.get(visit_id)
            if visit is None:
                return RedirectResponse("/", status_code=303)
            card = next((c for i, _, c in visit.cards() if i == index), None)
            links = (card or {}).get("links") or []
            if card is None or not 0 <= link < len(links):
                visit.messages.append("Onbekende link.")
            else:
                target = links[link]
                app_context = target.get("appContext")
                if target.get("type") == "smart":
                    self.launch(
                        visit,
                        str(target["url"]),
                        app_context if isinstance(app_context, str) else None,
                    )
                else:
                    visit.launch_url = str(target["url"])
            return RedirectResponse(f"/visits/{visit_id}#app", status_code=303)

        @app.post("/visits/{visit_id}/cards/{index}/override")
        async def override(request: Request, visit_id: str, index: int) -> Response:
            visit = self.visits.get(visit_id)
            if visit is None:
                return RedirectResponse("/", status_code=303)
            form = await request.form()
            card = next((c for i, _, c in visit.cards() if i == index), None)
            reasons = (card or {}).get("overrideReasons") or []
            item: dict[str, Any] = {"outcome": "overridden"}
            raw = str(form.get("reason", ""))
            override: dict[str, Any] = {}
            if raw.isdigit() and int(raw) < len(reasons):
                override["reason"] = reasons[int(raw)]
            comment = str(form.get("comment", "")).strip()
            if comment:
                override["userComment"] = comment
            if override:
                item["overrideReason"] = override
            await self.feedback(visit, index, item)
            visit.dismissed.add(index)
            return RedirectResponse(f"/visits/{visit_id}", status_code=303)

        @app.post("/visits/{visit_id}/cards/{index}/suggestions/{sidx}")
        async def accept(visit_id: str, index: int, sidx: int) -> Response:
            visit = self.visits.get(visit_id)
            if visit is None:
                return RedirectResponse("/", status_code=303)
            card = next((c for i, _, c in visit.cards() if i == index), None)
            suggestions = (card or {}).get("suggestions") or []
            if 0 <= sidx < len(suggestions) and suggestions[sidx].get("uuid"):
                await self.feedback(
                    visit,
                    index,
                    {
                        "outcome": "accepted",
                        "acceptedSuggestions": [{"id": suggestions[sidx]["uuid"]}],
                    },
                )
            else:
                visit.messages.append("Dit voorstel heeft geen uuid: geen feedback mogelijk.")
            return RedirectResponse(f"/visits/{visit_id}", status_code=303)

        return app


def _name(resource: dict[str, Any]) -> str:
    names = resource.get("name") or [{}]
    n = names[0]
    if n.get("text"):
        return str(n["text"])
    return " ".join([*n.get("given", []), n.get("family", "")]).strip() or resource.get("id", "?")


def _ssin(resource: dict[str, Any]) -> str:
    for i in resource.get("identifier", []) or []:
        if i.get("system") == codes.SSIN_SYSTEM:
            return str(i.get("value", ""))
    return ""


def _age(birth: str | None) -> int | None:
    if not birth:
        return None
    try:
        b = date.fromisoformat(birth[:10])
    except ValueError:
        return None
    t = date.today()
    return t.year - b.year - ((t.month, t.day) < (b.month, b.day))
