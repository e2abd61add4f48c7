"""What a hospital deploys: the Kubernetes base, the image's commands and probes, and the
settings and commands the README and the install guide name.

No cluster and no Docker engine run here, so the manifests are checked as data against
the code they point at: each probe path is asked of the real app, each container's
arguments are parsed by the real ``kindreflex`` parser, each setting the docs name is a
field of the settings class.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import audit
from service.app import create_app
from service.audit import AuditAction, AuditFact, Channel
from service.cds.router import MAX_BODY_BYTES
from service.cli import build_parser
from service.db.base import Database, utcnow
from service.db.models import OutboxEntry
from service.outbox import READY_MAX_AGE
from service.settings import Settings
from tests.support.write_path import make_tenant

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Variables the docs name that are not settings of the service.
NOT_SETTINGS = {"KINDREFLEX_SETTINGS_FILE", "KINDREFLEX_TEST_POSTGRES_URL"}
FHIR_DOWN = "http://127.0.0.1:9/fhir"  # nothing listens there


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBERNETES.glob("*.yaml"))
    }


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in manifests().values() for doc in docs if doc["kind"] == kind]


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod the base runs: the Deployment's, the migration Job's, the purge CronJob's."""
    (deployment,) = by_kind("Deployment")
    (job,) = by_kind("Job")
    (cronjob,) = by_kind("CronJob")
    return {
        "Deployment": deployment["spec"]["template"]["spec"],
        "Job": job["spec"]["template"]["spec"],
        "CronJob": cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }


def the_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_specs()["Deployment"]["containers"]
    (container,) = containers
    return container


def test_every_manifest_parses_and_the_kustomization_applies_all_of_them() -> None:
    found = manifests()
    (kustomization,) = found.pop("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(found)
    for name, docs in found.items():
        assert docs, f"{name} holds no object"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), name
            assert doc["metadata"]["name"], name
    (namespace,) = by_kind("Namespace")
    assert namespace["metadata"]["name"] == kustomization["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    images = {image["name"] for image in kustomization["images"]}
    for kind, spec in pod_specs().items():
        assert {c["image"] for c in spec["containers"]} <= images, kind


@pytest.mark.parametrize("kind", ["Deployment", "Job", "CronJob"])
def test_every_pod_is_restricted_bounded_and_reads_its_secrets_from_the_secret(kind: str) -> None:
    spec = pod_specs()[kind]
    user = int(re.search(r"^USER (\d+)", DOCKERFILE, flags=re.MULTILINE)[1])  # type: ignore[index]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == user != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert "memory" in container["resources"]["limits"]
        assert {"secretRef": {"name": "kindreflex-secrets"}} in container["envFrom"]
        assert "env" not in container  # no value inlined into a manifest


def test_the_configmap_holds_no_secret_and_only_settings_of_the_service() -> None:
    (configmap,) = by_kind("ConfigMap")
    names = set(configmap["data"])
    assert not names & {"KINDREFLEX_SECRET_KEY", "KINDREFLEX_DATABASE_URL"}
    assert names <= settings_variables()
    assert not by_kind("Secret"), "a Secret's values would be in the repository"


def dockerfile_json(instruction: str) -> list[str]:
    line = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)
    assert line, f"the Dockerfile has no {instruction} in exec form"
    parsed: list[str] = yaml.safe_load(line[1])
    return parsed


def test_every_container_runs_a_command_kindreflex_has() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert dockerfile_json("ENTRYPOINT") == ["kindreflex"]
    assert "kindreflex" in scripts
    commands = {"Dockerfile CMD": dockerfile_json("CMD")}
    for kind, spec in pod_specs().items():
        for container in spec["containers"]:
            assert "command" not in container  # the image's ENTRYPOINT: kindreflex
            commands[f"{kind} {container['name']}"] = container["args"]
    for where, args in commands.items():
        parsed = build_parser().parse_args(args)  # an unknown command exits: the test fails
        assert parsed.handler, where
    # one worker per process-wide Prometheus registry (README, "Operations")
    assert build_parser().parse_args(commands["Dockerfile CMD"]).workers == 1
    assert build_parser().parse_args(the_container()["args"]).workers == 1


def documented_commands() -> list[str]:
    """Every ``kindreflex …`` command line in the README's and the guides' code."""
    found = []
    for path in DOCS:
        text = path.read_text()
        code = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^ *(kindreflex .+)$", text, re.M)
        for span in code:
            for match in re.finditer(
                r"\bkindreflex ((?:serve|demo|db|keys|config|admin)\b[^`#<>|\n]*)", span
            ):
                found.append(match[1].strip())
    return sorted(set(found))


def test_every_kindreflex_command_the_docs_show_is_accepted_by_the_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    placeholders = {"N": "30", "W": "1", "H": "localhost", "T": "az-brugge", "IPS": "*"}
    commands = documented_commands()
    assert "db upgrade" in commands
    assert len(commands) > 10
    for command in commands:
        words = [placeholders.get(w, w) for w in shlex.split(re.sub(r"[][]", " ", command))]
        named_only = len(words) <= 2 and not any(w.startswith("-") for w in words)
        try:  # a command only named in a sentence (`kindreflex config import`) must exist
            build_parser().parse_args([*words, "--help"] if named_only else words)
        except SystemExit as refused:
            if not (named_only and refused.code == 0):
                pytest.fail(f"the docs show `kindreflex {command}`, which the command refuses")
        else:
            assert not named_only
    capsys.readouterr()  # the help texts


def settings_variables() -> set[str]:
    return {f"KINDREFLEX_{name.upper()}" for name in Settings.model_fields}


def test_every_setting_the_docs_name_exists_and_every_setting_is_in_the_readme() -> None:
    named = {
        variable
        for path in [*DOCS, *KUBERNETES.glob("*.yaml"), ROOT / "deploy" / "Dockerfile"]
        for variable in re.findall(r"KINDREFLEX_[A-Z_]*[A-Z]", path.read_text())
    }
    assert named - NOT_SETTINGS - settings_variables() == set()
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## What the app serves")]
    missing = {v for v in settings_variables() if f"`{v}`" not in table}
    assert missing == set(), "settings the README's Configuration table leaves out"


def probe_paths() -> dict[str, str]:
    container = the_container()
    (deployment,) = by_kind("Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    healthcheck = re.search(r"^HEALTHCHECK .*/(healthz)\b", DOCKERFILE, flags=re.MULTILINE)
    assert healthcheck
    return {
        "readiness": container["readinessProbe"]["httpGet"]["path"],
        "liveness": container["livenessProbe"]["httpGet"]["path"],
        "prometheus": annotations["prometheus.io/path"],
        "Docker HEALTHCHECK": f"/{healthcheck[1]}",
    }


def test_the_probes_and_the_scrape_ask_on_the_port_the_service_listens_on() -> None:
    container = the_container()
    (deployment,) = by_kind("Deployment")
    (service,) = by_kind("Service")
    port = int(re.search(r"KINDREFLEX_PORT=(\d+)", DOCKERFILE)[1])  # type: ignore[index]
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE, flags=re.MULTILINE)
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(
        port
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    (policy,) = by_kind("NetworkPolicy")
    assert all(rule["ports"] == [{"port": port}] for rule in policy["spec"]["ingress"])


def test_the_ingress_lets_through_the_largest_cds_call_the_service_accepts() -> None:
    (ingress,) = by_kind("Ingress")
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([km]?)", size).groups()  # type: ignore[union-attr]
    assert int(number) * {"": 1, "k": 2**10, "m": 2**20}[unit] > MAX_BODY_BYTES
    assert ingress["spec"]["tls"], "the app's cookies are Secure: TLS is required"


def _stale_pending_write(database: Database) -> None:
    """A pending write the hospital's FHIR server has not taken for longer than readiness
    allows (nothing listens on its port 9)."""
    tenant = make_tenant(database, "default", FHIR_DOWN)
    fact = AuditFact(
        actor="Practitioner/nurse-1",
        action=AuditAction.SEARCH,
        patient_ref="Patient/p1",
        entities=("RelatedPerson/7",),
        outcome="success",
        at=utcnow(),
    )
    with database.session() as session:
        row = audit.record_read(session, Channel(tenant.id, "ehr", FHIR_DOWN, "s1"), fact)
        session.flush()
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.id == row.outbox_id)
            .values(created_at=utcnow() - READY_MAX_AGE - timedelta(minutes=1))
        )


def test_a_fhir_server_that_takes_no_writes_fails_readyz_but_not_the_readiness_probe(
    database_url: str, database: Database
) -> None:
    """Else every pod leaves the Service at once: CDS cards and saves stop for every
    hospital while the outbox could have kept the writes."""
    _stale_pending_write(database)
    app = create_app(Settings(environment="test", database_url=database_url), database)
    client = TestClient(app)  # no lifespan: no worker delivers meanwhile
    full = client.get("/readyz")
    assert full.status_code == 503
    assert full.json()["checks"]["outbox"]["ok"] is False
    assert full.json()["checks"]["database"]["ok"] is True
    for name, path in probe_paths().items():
        assert client.get(path).status_code == 200, name
    probe = client.get(urlsplit(probe_paths()["readiness"]).path, params={"check": "database"})
    assert list(probe.json()["checks"]) == ["database"]
    unknown = client.get("/readyz", params={"check": "fhir"})
    assert unknown.status_code == 400
    assert "database, outbox" in unknown.json()["detail"]


def test_with_the_database_down_readyz_names_both_failing_checks_instead_of_a_500() -> None:
    url = "postgresql+psycopg://kindreflex@127.0.0.1:9/kindreflex"  # nothing listens there
    database = Database(url)
    try:
        app = create_app(Settings(environment="test", database_url=url), database)
        answer = TestClient(app).get("/readyz")
    finally:
        database.dispose()
    assert answer.status_code == 503
    checks = answer.json()["checks"]
    assert checks["database"]["ok"] is False
    assert checks["outbox"] == {"ok": False, "detail": "OperationalError"}
