"""``kindreflex demo``: the service on localhost with the embedded defaults.

Everything lives in ``.demo/`` of the working directory, so a demo never touches a
production database.
"""

from __future__ import annotations

from pathlib import Path

import uvicorn

from service.app import create_app
from service.db import migrate
from service.db.base import Database
from service.settings import load_settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import TenantConfiguration

DEMO_DIR = Path(".demo")


def run_demo(port: int) -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    settings = load_settings(
        environment="demo",
        database_url=f"sqlite:///{DEMO_DIR / 'kindreflex.db'}",
        public_url=f"http://localhost:{port}",
        port=port,
    )
    migrate.upgrade(settings.database_url)
    database = Database(settings.database_url)
    tenants = TenantDirectory(database, SecretBox(settings.secret_key))
    if settings.default_tenant not in tenants.slugs():
        tenants.save(
            settings.default_tenant, TenantConfiguration(name="Demo-ziekenhuis"), actor="demo"
        )
    print(f"Kindreflex-ED demo: {settings.public_url}/healthz", flush=True)
    uvicorn.run(create_app(settings, database), host="127.0.0.1", port=port, log_config=None)
    return 0
