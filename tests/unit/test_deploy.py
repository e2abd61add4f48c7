"""The deployment files agree with the code: probes exist, settings are real, no secrets;
and so do the README and the guides: every command and setting they name exists.

What the probes answer when a FHIR server takes no writes, or the database is down, is
in ``tests/integration/test_readiness_and_logs.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.app import create_app
from service.cds.router import MAX_BODY_BYTES
from service.cli import build_parser
from service.db.base import Database
from service.fhir.client import CHANGE_BUDGET_MAX_SECONDS, SCREEN_BUDGET_TIMEOUTS
from service.outbox import IMMEDIATE_TIMEOUT_SECONDS, STOP_TIMEOUT_SECONDS
from service.settings import Settings, load_settings
from service.tenant_config import DEFAULT_SCOPES, SUBMITTED, EhrRegistration
from tests.support.served import ServedJson

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Variables the docs name that are not settings of the service.
NOT_SETTINGS = {"KINDREFLEX_SETTINGS_FILE", "KINDREFLEX_TEST_POSTGRES_URL"}


def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def ingresses() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Ingress"}


def setting_names() -> set[str]:
    return {f"KINDREFLEX_{name.upper()}" for name in Settings.model_fields}


def test_every_configured_variable_is_a_setting_of_the_service() -> None:
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    dockerfile_vars = set(re.findall(r"(KINDREFLEX_[A-Z_]+)=", (DEPLOY / "Dockerfile").read_text()))
    unknown = (set(configmap["data"]) | dockerfile_vars) - setting_names()
    assert not unknown, f"not settings of the service: {unknown}"


def test_the_configmap_holds_no_secret() -> None:
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    assert not {"KINDREFLEX_DATABASE_URL", "KINDREFLEX_SECRET_KEY"} & set(configmap["data"])
    assert not [d for d in manifests() if d["kind"] == "Secret"], "its values would be in git"


def test_every_setting_the_docs_name_exists_and_every_setting_is_in_the_readme() -> None:
    named = {
        variable
        for path in [*DOCS, *KUBERNETES.glob("*.yaml"), DEPLOY / "Dockerfile"]
        for variable in re.findall(r"KINDREFLEX_[A-Z_]*[A-Z]", path.read_text())
    }
    assert named - NOT_SETTINGS - setting_names() == set()
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## What the app serves")]
    missing = {v for v in setting_names() if f"`{v}`" not in table}
    assert missing == set(), "settings the README's Configuration table leaves out"


def test_the_configmap_sizes_the_database_pool_as_the_service_and_readme_do() -> None:
    """The pool was fixed in code; an operator sizes it in the ConfigMap for PostgreSQL's
    max_connections (README, *On PostgreSQL*). The example gives the service's defaults,
    which the README's table states, and the settings accept every value it holds (one
    refused stops every pod)."""
    data = next(d for d in manifests() if d["kind"] == "ConfigMap")["data"]
    given = {name.removeprefix("KINDREFLEX_").lower(): value for name, value in data.items()}
    settings = Settings(_env_file=None, **given)
    readme = (ROOT / "README.md").read_text()
    for name in ("database_pool_size", "database_max_overflow"):
        default = Settings.model_fields[name].default
        assert f"KINDREFLEX_{name.upper()}" in data
        assert getattr(settings, name) == default
        assert f"| `KINDREFLEX_{name.upper()}` | `{default}` |" in readme


def test_probes_point_at_routes_the_app_serves(tmp_path: Path) -> None:
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'kr.db'}")
    app = create_app(settings, Database(settings.database_url))
    routes = set(app.openapi()["paths"])
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert urlsplit(container[probe]["httpGet"]["path"]).path in routes
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in routes
    healthcheck = re.search(r"^HEALTHCHECK .*'http://127\.0\.0\.1:%s(/\w+)'", DOCKERFILE, re.M)
    assert healthcheck, "the image's HEALTHCHECK asks no path"
    assert healthcheck[1] in routes


def test_the_image_and_guide_health_checks_ask_the_pod_itself_past_a_proxy() -> None:
    """A platform that sets ``HTTP_PROXY`` in every container (README, *Operations*) sent
    the image's HEALTHCHECK and the guide's readiness check to the proxy: the container
    read unhealthy, and the check an operator types failed (found by review). Run here as
    written, with a proxy that refuses every connection."""
    image = re.search(r'^HEALTHCHECK .* CMD python -c "(.+)"$', DOCKERFILE, re.M)
    guide = (ROOT / "docs" / "install-in-your-hospital.md").read_text()
    typed = re.search(r'exec deploy/kindreflex -- python -c "([^"]+)"', guide)
    assert image is not None
    assert typed is not None
    unset = {"NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}
    with ServedJson(b"{}") as pod:
        port = str(urlsplit(pod.url).port)
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env |= {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
        for code in (image[1], typed[1].replace(":8000/", f":{port}/")):
            run = subprocess.run(
                [sys.executable, "-c", code],
                env=env | {"KINDREFLEX_PORT": port},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert run.returncode == 0, f"{code}: {run.stderr[-300:]}"


def test_every_address_the_guides_give_an_ehr_administrator_is_served(tmp_path: Path) -> None:
    """``{BASE}/x`` is the default hospital's ``/x`` and every other one's ``/t/{tenant}/x``;
    ``KINDREFLEX_PUBLIC_URL/x`` is one address for all hospitals."""
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'kr.db'}")
    app = create_app(settings, Database(settings.database_url))
    routes = [
        re.compile(re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(path)) + "$")
        for path in app.openapi()["paths"]
    ]

    def served(path: str) -> bool:
        return any(route.match(path) for route in routes)

    addresses = set()
    for doc in DOCS:
        found = re.findall(r"(\{BASE\}|\{?KINDREFLEX_PUBLIC_URL\}?)(/[^\s`)\"]*)", doc.read_text())
        addresses |= {(base.strip("{}"), re.sub(r"<\w+>", "x", rest)) for base, rest in found}
    assert len(addresses) > 10
    for base, path in addresses:
        if base == "BASE":
            assert served(path), f"{{BASE}}{path}"
            assert served(f"/t/az-brugge{path}"), f"{{BASE}}{path} of another hospital"
        elif not path.startswith("/t/"):
            assert served(path), f"KINDREFLEX_PUBLIC_URL{path}"


def test_the_scopes_the_guide_gives_an_ehr_administrator_are_those_a_launch_asks() -> None:
    """Before, the guide gave scopes without ``offline_access`` and the two updates a save
    needs, and one that is no SMART 2 scope (``encounter/*.rs``): an EHR configured so let
    a saved child's edit or the concern Flag wait for a sign-in for good."""
    guide = (ROOT / "docs" / "install-in-your-hospital.md").read_text()
    (given,) = re.findall(r"^\| scopes \| `([^`]+)`", guide, flags=re.MULTILINE)
    assert given == DEFAULT_SCOPES


def test_the_probes_and_the_scrape_ask_on_the_port_the_service_listens_on() -> None:
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    service = next(d for d in manifests() if d["kind"] == "Service")
    policy = next(d for d in manifests() if d["kind"] == "NetworkPolicy" and _selects_service(d))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = re.search(r"KINDREFLEX_PORT=(\d+)", DOCKERFILE)
    assert port
    assert re.search(rf"^EXPOSE {port[1]}$", DOCKERFILE, flags=re.MULTILINE)
    assert container["ports"] == [{"name": "http", "containerPort": int(port[1])}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port[1]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert all(rule["ports"] == [{"port": int(port[1])}] for rule in policy["spec"]["ingress"])


def test_the_ingress_serves_the_public_url_over_tls() -> None:
    """An EHR signs its CDS calls for KINDREFLEX_PUBLIC_URL (the JWT's aud): the Ingresses
    must answer at exactly that host, with TLS (the app's cookies are Secure)."""
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    public = urlsplit(configmap["data"]["KINDREFLEX_PUBLIC_URL"])
    assert public.scheme == "https"
    assert len(ingresses()) == 3
    for ingress in ingresses().values():
        assert [rule["host"] for rule in ingress["spec"]["rules"]] == [public.hostname]
        assert ingress["spec"]["tls"][0]["hosts"] == [public.hostname]


#: The routes anyone may call without a session or a signed JWT; each hospital's under
#: ``/t/{tenant}`` too, except the one redirect URI.
SIGN_IN_ROUTES = {
    "/launch",
    "/callback",
    "/callback/{hospital}/{registration_id}",  # a registration's own redirect URI
    "/admin/login",
    "/admin/api/session",  # the admin API's sign-in with a bootstrap token
    "/t/{tenant}/launch",
    "/t/{tenant}/admin/login",
    "/t/{tenant}/admin/api/session",
}


def routed_by(ingress: str, path: str) -> bool:
    """Whether ``ingress`` routes ``path``, as ingress-nginx's use-regex matches:
    ``location ~* "^<path>"``, case-insensitive, the first of its paths that matches."""
    rules = ingresses()[ingress]["spec"]["rules"]
    patterns = [entry["path"] for rule in rules for entry in rule["http"]["paths"]]
    return any(re.match(f"^{pattern}", path, re.IGNORECASE) for pattern in patterns)


def limited_path(path: str) -> bool:
    """Whether the second Ingress, the per-client limit, routes ``path``."""
    return routed_by("kindreflex-sign-in", path)


def test_the_ingress_limits_per_client_ip_the_paths_anyone_may_call() -> None:
    """A launch writes a launch state, a callback spends one, a refused admin sign-in is
    recorded: without a session or a signed JWT. The second Ingress limits these, of every
    hospital without naming one, the default's under its prefix too (``/t/default/launch``
    counts against its cap), and not the pages under or beside them."""
    limited = ingresses()["kindreflex-sign-in"]
    annotations = limited["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rpm"]) > 0
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    paths = [path for rule in limited["spec"]["rules"] for path in rule["http"]["paths"]]
    assert {path["pathType"] for path in paths} == {"ImplementationSpecific"}
    for path in ("/launch", "/callback", "/callback/az-brugge/epd", "/admin/login"):
        assert limited_path(path), path
    for path in ("/t/az-brugge/launch", "/t/default/launch", "/t/default/admin/login"):
        assert limited_path(path), path
    for path in ("/app/triage", "/cds-services/kindreflex", "/t/x/social", "/admin/logout"):
        assert not limited_path(path), path
    for path in ("/launchpad", "/t/az-brugge/launch/x", "/t/a/b/launch", "/callback/a/b/c"):
        assert not limited_path(path), path
    assert "limit-rpm" not in str(ingresses()["kindreflex"]["metadata"]["annotations"])


def test_the_ingress_limits_exactly_the_sign_in_routes_the_app_serves(tmp_path: Path) -> None:
    """Each route of the app, its parameters filled in: limited if and only if anyone may
    call it. A renamed sign-in route would be left unlimited, a new page limited."""
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'kr.db'}")
    routes = set(create_app(settings, Database(settings.database_url)).openapi()["paths"])
    assert routes >= SIGN_IN_ROUTES
    for route in routes:
        path = re.sub(r"\{\w+\}", "az-brugge", route)
        assert limited_path(path) == (route in SIGN_IN_ROUTES), route


#: The operations endpoints only Prometheus and the probes ask, from inside the cluster.
INTERNAL_ROUTES = {"/metrics", "/readyz"}


def test_the_ingress_refuses_the_outside_the_operations_endpoints_and_nothing_else(
    tmp_path: Path,
) -> None:
    """/metrics and /readyz say how the service and the FHIR server are doing, to anyone
    who asked. The third Ingress admits no client address to exactly those routes."""
    internal = ingresses()["kindreflex-internal"]
    annotations = internal["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/allowlist-source-range"] == "127.0.0.1/32"
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'kr.db'}")
    routes = set(create_app(settings, Database(settings.database_url)).openapi()["paths"])
    assert routes >= INTERNAL_ROUTES
    for route in routes:
        path = re.sub(r"\{\w+\}", "az-brugge", route)
        assert routed_by("kindreflex-internal", path) == (route in INTERNAL_ROUTES), route
    assert not routed_by("kindreflex-internal", "/healthz")  # alive: says nothing


def test_the_ingress_lets_through_the_largest_cds_call_the_service_accepts() -> None:
    ingress = ingresses()["kindreflex"]
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    found = re.fullmatch(r"(\d+)([km]?)", size)
    assert found, size
    assert int(found[1]) * {"": 1, "k": 2**10, "m": 2**20}[found[2]] > MAX_BODY_BYTES


def test_the_ingress_waits_for_the_longest_request_the_service_makes() -> None:
    """A change of a case reads within its budget, then its save tries to deliver: nginx's
    default 60 s answered the social worker 504 for a save that went on and landed."""
    annotations = ingresses()["kindreflex"]["metadata"]["annotations"]
    longest = CHANGE_BUDGET_MAX_SECONDS + SCREEN_BUDGET_TIMEOUTS * IMMEDIATE_TIMEOUT_SECONDS
    screen = SCREEN_BUDGET_TIMEOUTS * Settings.model_fields["fhir_timeout_seconds"].default
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        seconds = int(annotations[f"nginx.ingress.kubernetes.io/{name}"])
        assert seconds > max(longest, screen) + 5, name


def pod_templates() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest, its pod template) of the Deployment, the Job and the CronJob."""
    found = []
    for document in manifests():
        if document["kind"] in ("Deployment", "Job"):
            found.append((document, document["spec"]["template"]))
        elif document["kind"] == "CronJob":
            found.append((document, document["spec"]["jobTemplate"]["spec"]["template"]))
    return found


def pods() -> list[dict[str, Any]]:
    """The pod specs of the Deployment, the Job and the CronJob."""
    return [template["spec"] for _, template in pod_templates()]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container a pod runs, its init containers first."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_a_new_pod_waits_for_the_migration_job_instead_of_crash_looping() -> None:
    """At an upgrade the new pods started with the migration Job: `serve` refused the
    outdated schema, and the pods crash-looped into the restart back-off, red in `rollout
    status` at every upgrade and minutes late after the Job (found by an operations
    review). An init container runs `kindreflex db wait` as serve runs, as long as the Job
    may run, and the rollout is not called stuck while it waits."""
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    job = next(d for d in manifests() if d["kind"] == "Job")
    pod = deployment["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    (serve,) = pod["containers"]
    waited = build_parser().parse_args(wait["args"])
    assert (waited.command, waited.db_command) == ("db", "wait")
    for same in ("image", "envFrom", "securityContext", "volumeMounts"):
        assert wait[same] == serve[same], same
    assert waited.timeout >= job["spec"]["activeDeadlineSeconds"]
    assert deployment["spec"]["progressDeadlineSeconds"] > waited.timeout


def test_the_docs_wait_for_the_migration_jobs_end_failed_or_complete() -> None:
    """`kubectl wait --for=condition=complete` sat out its whole timeout on a failed Job
    (found by an operations review): the docs wait for either condition."""
    for doc in DOCS:
        assert "--for=condition=complete job/" not in doc.read_text(), doc.name
    readme = (ROOT / "README.md").read_text()
    assert "| grep -Eow 'Complete|Failed')" in readme


def test_a_pod_ended_at_a_rollout_finishes_the_longest_request_the_ingress_waits_for() -> None:
    """Kubernetes' default 30 s cut a save on a slow FHIR server short (found by review);
    after the requests, the outbox worker's batch in progress is waited for too. serve
    waits for the requests no longer than the ingress waits for them, and the grace period
    leaves it that, then the outbox's stop: a request that outlasts it is ended, and the
    instance's shutdown still runs before Kubernetes kills the process."""
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    annotations = ingresses()["kindreflex"]["metadata"]["annotations"]
    longest = int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    requests = build_parser().parse_args(container["args"]).timeout_graceful_shutdown
    assert requests >= longest
    assert pod["terminationGracePeriodSeconds"] > pre_stop + requests + STOP_TIMEOUT_SECONDS


def test_every_pod_runs_unprivileged_as_the_image_user() -> None:
    image_uid = re.search(r"USER (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert image_uid is not None
    assert len(pods()) == 3  # the service, the migration, the daily purge
    namespace = next(d for d in manifests() if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in pods():
        assert pod["securityContext"]["runAsUser"] == int(image_uid.group(1)) != 0
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False  # no pod calls the cluster's API
        # Kubernetes' variables for the Service "kindreflex" are named KINDREFLEX_*: its
        # KINDREFLEX_PORT=tcp://… stopped every start (found by review)
        assert pod["enableServiceLinks"] is False
        for container in containers(pod):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert "memory" in container["resources"]["limits"]
            assert {"secretRef": {"name": "kindreflex-secrets"}} in container["envFrom"]
            assert "env" not in container  # no value inlined into a manifest


def test_every_pod_has_a_network_policy_and_only_the_services_pods_take_requests() -> None:
    """The migration Job's and the purge's pods matched no NetworkPolicy: under a default
    deny they could not reach the database, and otherwise anything (found by review).
    Nor may they carry the Service's label: it would send them the EHR's requests."""
    policies = [d for d in manifests() if d["kind"] == "NetworkPolicy"]
    (service,) = (d for d in manifests() if d["kind"] == "Service")
    for document, template in pod_templates():
        labels = template["metadata"]["labels"].items()
        selected = [p for p in policies if _selector(p).items() <= labels]
        assert len(selected) == 1, document["metadata"]["name"]
        serves = service["spec"]["selector"].items() <= labels
        assert serves is (document["kind"] == "Deployment"), document["metadata"]["name"]
        if not serves:  # a job: the database and DNS, nothing else, and nothing in
            (policy,) = selected
            assert "ingress" not in policy["spec"]
            assert "Ingress" in policy["spec"]["policyTypes"]
            ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
            assert ports == {53, 5432}


def _selects_service(policy: dict[str, Any]) -> bool:
    return _selector(policy) == {"app.kubernetes.io/name": "kindreflex"}


def _selector(policy: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = policy["spec"]["podSelector"]["matchLabels"]
    return labels


def test_the_image_points_psycopgs_openssl_at_debians_ca_bundle() -> None:
    """psycopg's wheel brings an OpenSSL whose trust store Debian does not have: without
    ``SSL_CERT_FILE`` the guide's ``sslrootcert=system`` trusted no CA in the image (found
    by review; that it follows ``SSL_CERT_FILE``: tests/integration/test_database_tls.py)."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^\s+SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\b", runtime, re.M)
    assert re.search(r"^\s+SSL_CERT_DIR=/etc/ssl/certs\b", runtime, re.M)


def dockerfile_exec_form(instruction: str) -> list[str]:
    line = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert line, f"the Dockerfile has no {instruction} in exec form"
    words: list[str] = yaml.safe_load(line[1])
    return words


def test_every_container_runs_a_command_of_the_cli() -> None:
    """A renamed command or option would otherwise fail only in the hospital's cluster."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert dockerfile_exec_form("ENTRYPOINT") == ["kindreflex"]
    assert "kindreflex" in scripts
    for pod in pods():
        for container in containers(pod):
            assert "command" not in container  # the image's ENTRYPOINT: kindreflex
            build_parser().parse_args(container["args"])  # exits on an unknown argument
    # one worker per process: each has its own Prometheus registry (README, "Operations")
    assert build_parser().parse_args(dockerfile_exec_form("CMD")).workers == 1
    assert build_parser().parse_args(pods()[0]["containers"][0]["args"]).workers == 1


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    """The context is sent to the builder whole: without the allow-list it was the
    repository with .venv and node_modules (some 700 MB) and any unreadable .dev/postgres."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    copied = {
        source
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE)
        for source in line.split()
    }
    assert copied == allowed


def documented_commands() -> list[str]:
    """Every ``kindreflex …`` command line in the README's and the guides' code."""
    found = []
    for path in DOCS:
        text = path.read_text()
        code = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^ *(kindreflex .+)$", text, re.M)
        for span in code:
            for match in re.finditer(
                r"\bkindreflex ((?:serve|demo|db|keys|config|admin|audit|outbox)\b[^`#<>|\n]*)",
                span,
            ):
                found.append(match[1].strip())
    return sorted(set(found))


def test_every_kindreflex_command_the_docs_show_is_accepted_by_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    placeholders = {"N": "30", "W": "1", "H": "localhost", "T": "az-brugge", "IPS": "*", "S": "75"}
    placeholders |= {"REF": "Patient/1", "URL": "https://ehr.example/fhir", "D": "2026-12-01"}
    commands = documented_commands()
    assert "db upgrade" in commands
    assert {"audit", "outbox waiting", "outbox refused"} <= set(commands)
    assert len(commands) > 10

    def accepted(words: list[str]) -> bool:
        try:
            build_parser().parse_args(words)
        except SystemExit:
            return False
        return True

    for command in commands:
        words = [placeholders.get(w, w) for w in shlex.split(re.sub(r"[][]", " ", command))]
        named_only = len(words) <= 2 and not any(w.startswith("-") for w in words)
        if named_only:  # a command only named in a sentence (`kindreflex config import`)
            with pytest.raises(SystemExit) as helped:
                build_parser().parse_args([*words, "--help"])
            assert helped.value.code == 0, f"the docs name `kindreflex {command}`, which is none"
        else:  # or an option named in a sentence (`kindreflex audit --actor`), given a value
            shown = accepted(words) or (words[-1].startswith("--") and accepted([*words, "x"]))
            assert shown, f"the docs show `kindreflex {command}`, which the command refuses"
    capsys.readouterr()  # the help texts


def cli_commands(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Every command line the CLI runs (``db wait``, ``config import``, ``audit``, …)."""
    actions = (parser or build_parser())._actions
    found = []
    for action in actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [f"{name} {rest}".strip() for rest in cli_commands(sub) or [""]]
    return found


def test_every_command_of_the_cli_is_in_the_readmes_command_table() -> None:
    """`kindreflex db wait`, which the Kubernetes pods run, was not in the table an operator
    looks a command up in (found by a walk of the docs)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## The `kindreflex` command") : readme.index("## Configuration")]
    rows = set(re.findall(r"^\| `kindreflex ([a-z ]+?)(?: \[|`| [A-Z])", table, re.MULTILINE))
    assert len(rows) > 10
    assert set(cli_commands()) == rows


def test_the_first_install_sets_every_example_value_of_the_configmap() -> None:
    """The ConfigMap's `KINDREFLEX_OUTBOUND_ALLOW` is an example that refuses every EHR until
    replaced, and the first-install steps of the README and the guide named only the public
    URL and the default hospital to set there (found by a walk of the docs): every value
    naming the example host is named where the operator is told what to set."""
    configmap = next(d for d in manifests() if d["kind"] == "ConfigMap")
    examples = {k for k, v in configmap["data"].items() if "hospital.example" in v}
    assert examples >= {"KINDREFLEX_PUBLIC_URL", "KINDREFLEX_OUTBOUND_ALLOW"}
    readme = (ROOT / "README.md").read_text()
    (readme_steps,) = re.findall(r"^# set (KINDREFLEX_.+?) in configmap\.yaml", readme, re.M | re.S)
    guide = (ROOT / "docs" / "install-in-your-hospital.md").read_text()
    (guide_steps,) = re.findall(r"\), set (`KINDREFLEX_.+?) in that ConfigMap", guide, re.S)
    for steps in (readme_steps, guide_steps):
        assert examples <= set(re.findall(r"KINDREFLEX_[A-Z_]*[A-Z]", steps)), steps


def test_the_registration_examples_the_guide_gives_are_accepted_when_saved() -> None:
    """The guide's floor for narrowed scopes left out the reads a save's delivery makes:
    an administrator who narrowed to it had the registration refused, "the scopes do not
    ask for patient/*.r patient/*.s" (found by a walk of the docs). Its floor, its wider
    grant and its role mapping, as an administrator saves them."""
    guide = (ROOT / "docs" / "install-in-your-hospital.md").read_text()
    floor = re.search(
        r"not below `(launch openid fhirUser)` and the default's [a-z, ]+\(`([^`]+)`, "
        r"or a wider grant such as `([^`]+)`\)",
        guide,
    )
    assert floor, "the guide's floor for narrowed scopes"
    (roles,) = re.findall(r"`(roles: \{[^`]+\})`", guide)
    base = {
        "id": "epd",
        "name": "EPD spoed",
        "fhir_base_url": "https://ehr.hospital.example/fhir",
        "client_id": "kindreflex",
    } | yaml.safe_load(roles)
    for scopes in (f"{floor[1]} {floor[2]}", f"{floor[1]} {floor[3]}"):
        registration = EhrRegistration.model_validate(base | {"scopes": scopes}, context=SUBMITTED)
        assert registration.scopes == scopes
    assert registration.roles.admin == ["EHR_ADMIN"]


def test_retention_is_scheduled_daily_and_never_twice_at_once() -> None:
    cronjob = next(d for d in manifests() if d["kind"] == "CronJob")
    args = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["db", "purge"]
    minute, hour, *every_day = cronjob["spec"]["schedule"].split()
    assert minute.isdigit()
    assert hour.isdigit()
    assert every_day == ["*", "*", "*"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_kustomize_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
