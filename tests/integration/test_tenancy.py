"""Tenant configuration: versions, secrets sealed at rest, tenants kept apart."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import event, select

from service import tenancy
from service.admin.config import TenantAdmin
from service.db.base import Database
from service.db.models import Tenant, TenantConfigVersion
from service.tenancy import (
    SecretBox,
    SecretsUnavailableError,
    TenantContext,
    TenantDirectory,
    UnknownTenantError,
)
from service.tenant_config import EhrRegistration, HookSettings, TenantConfiguration

KEY = SecretStr("test-deployment-key")


def registration(secret: str | None = None) -> EhrRegistration:
    return EhrRegistration(
        id="ehr",
        name="Sandbox EHR",
        fhir_base_url="https://ehr.example/fhir/",
        client_id="kindreflex",
        client_auth="client_secret_basic" if secret else "private_key_jwt",
        client_secret=SecretStr(secret) if secret else None,
    )


def test_each_save_is_a_new_version_and_the_newest_is_served(database: Database) -> None:
    tenants = TenantDirectory(database, SecretBox(KEY))
    tenants.save("az-gent", TenantConfiguration(name="AZ Gent"), actor="admin@test")
    second = TenantConfiguration(name="AZ Gent", hooks=HookSettings(adult_age=16))
    tenants.save("az-gent", second, actor="admin@test")

    current = TenantDirectory(database, SecretBox(KEY)).get("az-gent")
    assert current.version == 2
    assert current.config.hooks.adult_age == 16


def test_client_secret_is_encrypted_at_rest_and_readable_again(database: Database) -> None:
    tenants = TenantDirectory(database, SecretBox(KEY))
    config = TenantConfiguration(name="AZ Gent", registrations=[registration("s3cr3t-value")])
    tenants.save("az-gent", config, actor="admin@test")

    with database.session() as session:
        stored = session.scalars(select(TenantConfigVersion)).one().document
    assert "s3cr3t-value" not in str(stored)

    loaded = TenantDirectory(database, SecretBox(KEY)).get("az-gent").config
    secret = loaded.registrations[0].client_secret
    assert secret is not None
    assert secret.get_secret_value() == "s3cr3t-value"
    assert loaded.registration_for_iss("https://ehr.example/fhir") is not None


def test_opening_the_secrets_leaves_the_sealed_document_as_it_was(database: Database) -> None:
    """The document opened is a database row's: a secret written into it in the clear
    would stay in the session's identity map, next to whatever flushes it."""
    tenants = TenantDirectory(database, SecretBox(KEY))
    config = TenantConfiguration(name="AZ Gent", registrations=[registration("s3cr3t-value")])
    tenants.save("az-gent", config, actor="admin@test")
    with database.session() as session:
        row = session.scalars(select(TenantConfigVersion)).one()
        sealed = copy.deepcopy(row.document)

        opened, unreadable = SecretBox(KEY).open(row.document)

        assert row.document == sealed
        assert "s3cr3t-value" not in str(row.document)
    assert opened["registrations"][0]["client_secret"] == "s3cr3t-value"
    assert unreadable == ()


@pytest.mark.parametrize("now", [SecretStr("a-new-deployment-key"), None])
def test_a_secret_the_deployment_key_cannot_open_is_left_out_and_the_hospital_keeps_working(
    database: Database, caplog: pytest.LogCaptureFixture, now: SecretStr | None
) -> None:
    """KINDREFLEX_SECRET_KEY changed (or was unset) after an EHR's client secret was
    stored. Before, reading the hospital's configuration raised: every page, CDS call,
    admin sign-in and command of that hospital was a 500 or a traceback, and the secret
    entered again could not be saved either. Now that one secret is left out (a launch
    through that EHR is refused saying why), logged at ERROR without it, and the
    administrator stores it again."""
    other = EhrRegistration(
        id="other", name="EPD", fhir_base_url="https://epd.example/fhir", client_id="kr"
    )
    config = TenantConfiguration(name="AZ Gent", registrations=[registration("s3cr3t"), other])
    TenantDirectory(database, SecretBox(KEY)).save("az-gent", config, actor="set-up")

    tenants = TenantDirectory(database, SecretBox(now))
    with caplog.at_level(logging.ERROR, "service.tenancy"):
        loaded = tenants.get("az-gent")
    assert loaded.config.registrations[0].client_secret is None
    assert loaded.config.registrations[1] == other
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.fields == {"tenant": "az-gent", "registrations": ["ehr"]}  # type: ignore[attr-defined]
    assert "s3cr3t" not in caplog.text

    if now is None:
        return  # storing a secret needs the key: the test above
    again = config.model_copy(update={"registrations": [registration("n3w"), other]})
    TenantAdmin(tenants).save("az-gent", again, actor="admin", based_on=loaded.version)
    stored = TenantDirectory(database, SecretBox(now)).get("az-gent").config.registrations[0]
    assert stored.client_secret is not None
    assert stored.client_secret.get_secret_value() == "n3w"


def test_a_client_secret_cannot_be_stored_without_the_deployment_key(database: Database) -> None:
    tenants = TenantDirectory(database, SecretBox(None))
    config = TenantConfiguration(name="AZ Gent", registrations=[registration("s3cr3t")])
    with pytest.raises(SecretsUnavailableError, match="KINDREFLEX_SECRET_KEY"):
        tenants.save("az-gent", config, actor="admin@test")


def test_tenants_never_see_each_others_configuration(database: Database) -> None:
    tenants = TenantDirectory(database, SecretBox(KEY))
    tenants.save("hospital-a", TenantConfiguration(name="A", registrations=[registration()]), "x")
    tenants.save("hospital-b", TenantConfiguration(name="B"), "x")

    assert tenants.get("hospital-b").config.registrations == []
    assert tenants.get("hospital-a").config.name == "A"
    with pytest.raises(UnknownTenantError):
        tenants.get("hospital-c")


def test_a_hospital_without_configuration_is_told_as_one_that_does_not_exist(
    database: Database,
) -> None:
    """Anyone may ask for ``/t/<slug>/…`` (the JSON API, CDS discovery, the pages): the
    answer said "has no configuration yet" for a hospital created but not set up, so a
    caller learned which hospitals exist. The message is now one; the reason is for the log."""
    with database.session() as session:
        session.add(Tenant(slug="az-nieuw", name="AZ Nieuw"))
    tenants = TenantDirectory(database, SecretBox(None))
    with pytest.raises(UnknownTenantError) as not_set_up:
        tenants.get("az-nieuw")
    with pytest.raises(UnknownTenantError) as absent:
        tenants.get("az-nergens")

    assert str(not_set_up.value) == str(absent.value).replace("az-nergens", "az-nieuw")
    assert (not_set_up.value.reason, absent.value.reason) == (
        "the hospital has no configuration yet",
        "no such hospital",
    )


def test_calls_on_the_event_loop_that_find_the_configuration_due_share_one_read(
    database: Database,
) -> None:
    TenantDirectory(database, SecretBox(None)).save("az", TenantConfiguration(name="AZ"), "t")
    directory = TenantDirectory(database, SecretBox(None))  # another instance: nothing cached
    reads: list[str] = []

    def note_tenant_reads(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM tenants" in statement:
            reads.append(statement)

    async def calls() -> list[TenantContext]:
        return await asyncio.gather(*(directory.current("az") for _ in range(20)))

    event.listen(database.engine, "before_cursor_execute", note_tenant_reads)
    try:
        contexts = asyncio.run(calls())
    finally:
        event.remove(database.engine, "before_cursor_execute", note_tenant_reads)
    assert {context.config.name for context in contexts} == {"AZ"}
    assert len(reads) == 1


def test_a_call_just_after_the_refresh_is_due_gets_the_version_it_had_and_the_next_the_new(
    database: Database,
) -> None:
    """On the event loop, a routine refresh never holds calls up: within the grace after it
    is due the known version is served while one read runs in a thread; past the grace a
    call waits for the read."""
    admin = TenantDirectory(database, SecretBox(None))  # another instance saves the change
    admin.save("az", TenantConfiguration(name="AZ v1"), "t")
    clock = [1000.0]
    directory = TenantDirectory(database, SecretBox(None), clock=lambda: clock[0])

    async def scenario() -> list[str]:
        names = [(await directory.current("az")).config.name]
        admin.save("az", TenantConfiguration(name="AZ v2"), "t")
        clock[0] += tenancy.REFRESH_SECONDS + tenancy.STALE_GRACE_SECONDS / 2
        names.append((await directory.current("az")).config.name)  # served at once
        await asyncio.sleep(0)
        clock[0] += tenancy.STALE_GRACE_SECONDS  # past the grace: waits for the read
        names.append((await directory.current("az")).config.name)
        return names

    assert asyncio.run(scenario()) == ["AZ v1", "AZ v1", "AZ v2"]


def test_the_configuration_last_read_is_at_hand_without_the_database(database: Database) -> None:
    """What an error page after a database failure is framed by (``smart_app.errors``):
    nothing before this instance read the hospital; then the version it read, however old,
    and never a statement sent for it."""
    TenantDirectory(database, SecretBox(None)).save("az", TenantConfiguration(name="AZ"), "t")
    clock = [1000.0]
    directory = TenantDirectory(database, SecretBox(None), clock=lambda: clock[0])
    assert directory.last_read("az") is None
    read = directory.get("az")
    clock[0] += 10 * tenancy.REFRESH_SECONDS  # long due: get would read it again
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", note)
    try:
        assert directory.last_read("az") is read
        assert directory.last_read("az-nergens") is None
    finally:
        event.remove(database.engine, "before_cursor_execute", note)
    assert statements == []
