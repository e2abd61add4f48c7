"""The sandbox's FHIR server process and its seed."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
from collections.abc import Iterator
from datetime import date

import httpx
import pytest

from sandbox import codes, fhir_server
from sandbox.fhir_server import FIRST_FREE_PORT, FhirServer, free_port
from sandbox.seed import USERS, seed, ssin, years_ago

pytestmark = pytest.mark.fhirserver


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with FhirServer() as server:
        yield server


def test_server_answers_metadata_and_stops(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("sekmet-data")
    server = FhirServer(data_dir=data)
    with server:
        r = httpx.get(f"{server.base_url}/metadata")
        assert r.status_code == 200
        assert r.json()["resourceType"] == "CapabilityStatement"
        assert server.startup_seconds is not None
        assert server.running
    assert not server.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/metadata", timeout=2.0)
    assert (data / "sekmet.db").exists()  # a given data dir is kept


def test_free_ports_lie_below_the_ephemeral_range_and_are_handed_out_once() -> None:
    """A port from ``bind(0)`` lies in the kernel's ephemeral range, where any outgoing
    connection may take it before the server binds it: a server that then failed to start
    failed its test by chance. The ports handed out lie below that range, differ, and a
    server can bind each of them."""
    ephemeral_start = int(
        pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    )
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
    assert all(FIRST_FREE_PORT <= port < ephemeral_start for port in ports)
    for port in ports[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_kernel_handing_out_nearly_every_port_still_gets_a_free_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Some hosts tune the ephemeral range to start at 1024: no room is left below it, and
    the kernel is asked (the range is patched: tuning it needs root and changes the
    machine for every other process)."""
    monkeypatch.setattr(fhir_server, "_ephemeral_start", lambda: 1024)
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))


def test_seed_is_idempotent(fhir: FhirServer) -> None:
    first = seed(fhir.base_url)
    counts = {
        t: httpx.get(f"{fhir.base_url}/{t}").json()["total"]
        for t in ("Patient", "Practitioner", "Encounter", "RelatedPerson", "Flag", "Condition")
    }
    second = seed(fhir.base_url)
    assert second == first
    again = {t: httpx.get(f"{fhir.base_url}/{t}").json()["total"] for t in counts}
    assert again == counts
    assert counts["Patient"] == len(first.patients)
    assert counts["Practitioner"] == len(USERS)


def test_seeded_patients_cover_the_scenarios(fhir: FhirServer) -> None:
    result = seed(fhir.base_url, today=date.today())
    base = fhir.base_url
    minor = httpx.get(f"{base}/Patient/{result.patient('noor-vermeulen').id}").json()
    adult18 = httpx.get(f"{base}/Patient/{result.patient('milan-de-smet').id}").json()
    today = date.today()
    assert adult18["birthDate"] == years_ago(today, 18).isoformat()  # 18 today
    minor_birth = date.fromisoformat(minor["birthDate"])
    assert years_ago(today, 18) < minor_birth <= years_ago(today, 17)  # 17 years old
    ssin_ids = [i for i in minor["identifier"] if i["system"] == codes.SSIN_SYSTEM]
    assert len(ssin_ids) == 1
    assert len(ssin_ids[0]["value"]) == 11

    dv = result.patient("jan-janssens")
    enc = httpx.get(f"{base}/Encounter/{dv.arrived_encounter_id}").json()
    assert enc["class"]["code"] == "EMER"
    assert enc["status"] == "arrived"
    assert enc["reasonCode"][0]["coding"][0] == codes.trigger_coding("domestic-violence")

    intox = result.patient("lotte-claes")
    conds = httpx.get(
        f"{base}/Condition", params={"encounter": f"Encounter/{intox.arrived_encounter_id}"}
    ).json()
    assert conds["total"] == 1

    returning = result.patient("els-goossens")
    kids = httpx.get(f"{base}/RelatedPerson", params={"patient": f"Patient/{returning.id}"}).json()
    assert kids["total"] == 2
    for e in kids["entry"]:
        rp = e["resource"]
        assert rp["relationship"][0]["coding"][0]["code"] == "CHILD"
        assert rp["birthDate"]
        assert rp["name"][0]["given"]

    concern = result.patient("karim-el-amrani")
    flags = httpx.get(
        f"{base}/Flag", params={"patient": f"Patient/{concern.id}", "status": "active"}
    ).json()
    assert flags["total"] == 1

    nurse = httpx.get(f"{base}/Practitioner/{result.practitioners['nurse']}").json()
    assert nurse["identifier"][0]["system"] == codes.NIHDI_PROFESSIONAL_SYSTEM


def test_ssin_check_digits() -> None:
    # check digits: 97 - (number mod 97), with a leading 2 for births from 2000
    n = ssin(date(1984, 9, 3), 901)
    assert 97 - int(n[:9]) % 97 == int(n[9:])
    m = ssin(date(2008, 11, 23), 907)
    assert 97 - int("2" + m[:9]) % 97 == int(m[9:])


def test_seeded_children_and_concern_conform_to_the_guide(
    fhir: FhirServer, tmp_path: pathlib.Path
) -> None:
    """The returning patient's children and the open concern validate against the profiles."""
    result = seed(fhir.base_url)
    files: list[pathlib.Path] = []
    for key in ("els-goossens", "karim-el-amrani"):
        p = result.patient(key)
        for rid in p.related_person_ids:
            files.append(_dump(tmp_path, httpx.get(f"{fhir.base_url}/RelatedPerson/{rid}").json()))
        for fid in p.flag_ids:
            files.append(_dump(tmp_path, httpx.get(f"{fhir.base_url}/Flag/{fid}").json()))
    assert len(files) == 4
    for f in files:
        assert json.loads(f.read_text())["meta"]["profile"], f"{f.name} claims no profile"
    guide = pathlib.Path(__file__).resolve().parents[2] / "fhir_profiles"
    proc = subprocess.run(
        ["node", "scripts/validate.mjs", *map(str, files)],
        cwd=guide,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _dump(directory: pathlib.Path, resource: dict[str, object]) -> pathlib.Path:
    path = directory / f"{resource['resourceType']}-{resource['id']}.json"
    path.write_text(json.dumps(resource))
    return path
