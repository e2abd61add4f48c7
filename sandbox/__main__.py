"""``python -m sandbox``: run the sandbox EHR on localhost until Ctrl-C."""

from __future__ import annotations

import argparse
import logging

from .config import SandboxConfig, SmartClient
from .runner import Sandbox, run_sandbox


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    p.add_argument("--cds-base-url", help="CDS service base (discovery at {base}/cds-services)")
    p.add_argument("--app-launch-url", help="the SMART app's launch URL")
    p.add_argument("--client-id", default="kindreflex", help="SMART client_id to register")
    p.add_argument("--redirect-uri", action="append", default=[], help="registered redirect URI")
    p.add_argument("--jwks-uri", help="the client's JWKS URL (private_key_jwt); omit: public")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8095, help="EHR port (0 = free port)")
    p.add_argument("--fhir-port", type=int, default=0, help="sekmet port (0 = free port)")
    p.add_argument(
        "--auto-consent", action="store_true", help="skip the consent page on EHR launch"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    clients: tuple[SmartClient, ...] = ()
    if a.redirect_uri:
        clients = (SmartClient(a.client_id, tuple(a.redirect_uri), jwks_uri=a.jwks_uri),)
    cfg = SandboxConfig(
        cds_base_url=a.cds_base_url,
        app_launch_url=a.app_launch_url,
        clients=clients,
        host=a.host,
        ehr_port=a.port,
        fhir_port=a.fhir_port,
        auto_consent=a.auto_consent,
    )

    def ready(sb: Sandbox) -> None:
        print(f"Sandbox EHR:      {sb.ehr_url}/", flush=True)
        print(f"FHIR (facade):    {sb.fhir_base_url}", flush=True)
        print(f"SMART config:     {sb.smart_configuration_url}", flush=True)
        print(f"JWKS (CDS JWTs):  {sb.jwks_url}", flush=True)
        print(f"Started in {sb.startup_seconds:.2f} s. Ctrl-C stops everything.", flush=True)

    run_sandbox(cfg, on_ready=ready)


if __name__ == "__main__":
    main()
