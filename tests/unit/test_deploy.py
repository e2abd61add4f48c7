"""The deployment files agree with the code: probes exist, settings are real, no secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.app import create_app
from service.cli import build_parser
from service.db.base import Database
from service.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


def manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


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


def test_probes_point_at_routes_the_app_serves(tmp_path: Path) -> None:
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'kr.db'}")
    app = create_app(settings, Database(settings.database_url))
    routes = set(app.openapi()["paths"])
    deployment = next(d for d in manifests() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes


def pods() -> list[dict[str, Any]]:
    """The pod templates of the Deployment, the Job and the CronJob."""
    found = []
    for document in manifests():
        if document["kind"] in ("Deployment", "Job"):
            found.append(document["spec"]["template"]["spec"])
        elif document["kind"] == "CronJob":
            found.append(document["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return found


def test_every_pod_runs_unprivileged_as_the_image_user() -> None:
    image_uid = re.search(r"USER (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert image_uid is not None
    assert len(pods()) == 3  # the service, the migration, the daily purge
    for pod in pods():
        assert pod["securityContext"]["runAsUser"] == int(image_uid.group(1))
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_container_runs_a_command_of_the_cli() -> None:
    """A renamed command or option would otherwise fail only in the hospital's cluster."""
    for pod in pods():
        for container in pod["containers"]:
            build_parser().parse_args(container["args"])  # exits on an unknown argument


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
