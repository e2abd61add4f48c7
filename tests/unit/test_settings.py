"""Settings come from KINDREFLEX_* variables, refuse unsafe production switches, hide secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

from service.db.base import CONNECT_TIMEOUT_SECONDS, Database, make_engine
from service.keys import Sealer
from service.settings import MIN_SECRET_KEY_LENGTH, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the shell running pytest exported."""
    import os

    for name in [n for n in os.environ if n.startswith("KINDREFLEX_")]:
        monkeypatch.delenv(name)


def test_environment_variables_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDREFLEX_PORT", "9123")
    monkeypatch.setenv("KINDREFLEX_PUBLIC_URL", "https://kr.hospital.be/")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.public_url == "https://kr.hospital.be"


def test_the_settings_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    file = tmp_path / "kindreflex.env"
    file.write_text("KINDREFLEX_PORT=9000\nKINDREFLEX_DEFAULT_TENANT=az-gent\n")
    monkeypatch.setenv("KINDREFLEX_SETTINGS_FILE", str(file))
    monkeypatch.setenv("KINDREFLEX_PORT", "9001")
    settings = load_settings()
    assert (settings.port, settings.default_tenant) == (9001, "az-gent")


def test_kubernetes_service_link_in_the_port_is_named_not_said_not_an_integer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Service named kindreflex gives every pod KINDREFLEX_PORT=tcp://<ip>:80."""
    monkeypatch.setenv("KINDREFLEX_PORT", "tcp://10.96.12.7:80")
    with pytest.raises(ValidationError, match="enableServiceLinks: false"):
        load_settings()


def test_a_missing_settings_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDREFLEX_SETTINGS_FILE", "/nonexistent/kindreflex.env")
    with pytest.raises(FileNotFoundError, match="missing file"):
        load_settings()


def test_production_refuses_unsigned_cds_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDREFLEX_CDS_JWT_REQUIRED", "false")
    with pytest.raises(ValidationError, match="only allowed"):
        load_settings()
    monkeypatch.setenv("KINDREFLEX_ENVIRONMENT", "demo")
    assert load_settings().cds_jwt_required is False


def test_the_loggable_summary_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", "very-secret, and long enough for production")
    monkeypatch.setenv("KINDREFLEX_DATABASE_URL", "postgresql+psycopg://kr:pw123@db/kr")
    summary = load_settings().safe_summary()
    assert "very-secret" not in str(summary)
    assert "pw123" not in str(summary)
    assert repr(load_settings().secret_key) == "SecretStr('**********')"


@pytest.mark.parametrize("environment", ["production", "demo", "test"])
def test_an_empty_secret_key_is_refused_not_taken_for_a_key(
    monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    """`"$(openssl rand -base64 32)"` on a machine without openssl gives an empty value:
    everything was sealed under a key anyone can derive, and nothing said so."""
    monkeypatch.setenv("KINDREFLEX_ENVIRONMENT", environment)
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", "  ")
    with pytest.raises(ValidationError, match="secret_key") as refused:
        load_settings()
    assert "openssl rand" in str(refused.value)


def test_the_secret_key_opens_what_it_sealed_whether_it_came_with_a_newline_or_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A key kept in a file (``openssl rand -base64 32 > key``) reaches the pod with its
    newline through a Secret made ``--from-file``, and without it through ``--from-literal``
    or the settings file. The key was taken with the newline: the same key given the other
    way, at a restore into a new cluster, opened none of the EHR client secrets, signing
    keys and tokens it had sealed, as if it had been changed (found by an operations
    review). Surrounding whitespace is no part of the key."""
    key = "mR3tq0bQ9v0x3b7Jm2HcVf1s8o4nC5yZkWq6eT2uA1E="
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", f"{key}\n")  # kubectl … --from-file=…=key
    sealed = Sealer(load_settings().secret_key, "client-secret").seal("the EHR's secret")
    monkeypatch.delenv("KINDREFLEX_SECRET_KEY")
    settings_file = tmp_path / "kindreflex.env"
    settings_file.write_text(f"KINDREFLEX_SECRET_KEY={key}\n")
    monkeypatch.setenv("KINDREFLEX_SETTINGS_FILE", str(settings_file))
    opened = Sealer(load_settings().secret_key, "client-secret").open(sealed, sealed=True)
    assert opened == "the EHR's secret"


def test_production_refuses_a_short_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", "x" * (MIN_SECRET_KEY_LENGTH - 1))
    with pytest.raises(ValidationError, match="shorter than 32 characters"):
        load_settings()
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", "x" * MIN_SECRET_KEY_LENGTH)
    assert load_settings().secret_key is not None
    monkeypatch.setenv("KINDREFLEX_SECRET_KEY", "short")
    monkeypatch.setenv("KINDREFLEX_ENVIRONMENT", "test")
    assert load_settings().secret_key is not None  # a developer's machine


def test_a_password_with_an_unescaped_at_sign_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rest of such a password became the host name, shown in every error after."""
    monkeypatch.setenv("KINDREFLEX_DATABASE_URL", "postgresql+psycopg://kr:p@ss/w:rd@db:5432/kr")
    with pytest.raises(ValidationError, match="%40") as refused:
        load_settings()
    assert "ss/w" not in str(refused.value)
    monkeypatch.setenv("KINDREFLEX_DATABASE_URL", "postgresql+psycopg://kr:p%40ss@db:5432/kr")
    assert load_settings().database_url.endswith("@db:5432/kr")


class _NoConnectionError(Exception):
    """Raised where the engine would connect: what it connects with is captured."""


@pytest.mark.parametrize(
    ("query", "seconds"),
    [
        ("?connect_timeout=2", "2"),
        ("?connect_timeout=30", "30"),
        ("", str(CONNECT_TIMEOUT_SECONDS)),
    ],
)
def test_the_connect_timeout_the_database_url_names_is_the_one_the_engine_uses(
    monkeypatch: pytest.MonkeyPatch, query: str, seconds: str
) -> None:
    """README: any libpq parameter goes after the '?', and the settings check that a
    connect_timeout there is a whole number; yet the engine's own 5 s replaced it, without
    a word (found by review). 5 s stays the default when the URL names none."""
    url = f"postgresql+psycopg://kindreflex@db.hospital.example/kindreflex{query}"
    monkeypatch.setenv("KINDREFLEX_DATABASE_URL", url)
    engine = make_engine(load_settings().database_url)
    used: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        used.update(kwargs)
        raise _NoConnectionError

    with pytest.raises(_NoConnectionError):
        engine.connect()
    engine.dispose()
    assert str(used["connect_timeout"]) == seconds


@pytest.mark.parametrize("slug", ["AZ-Gent", "az gent", "-az", ""])
def test_a_default_tenant_that_is_no_slug_is_refused_in_words(slug: str) -> None:
    """It answered with the slug's regular expression, which told the administrator nothing
    (review of the administrator's journey)."""
    with pytest.raises(ValidationError) as refused:
        load_settings(default_tenant=slug)
    assert "a hospital's slug is lowercase letters, digits and '-'" in str(refused.value)
    assert "[a-z0-9]" not in str(refused.value)


def test_the_pool_settings_default_to_the_pool_the_service_always_had() -> None:
    """10 kept and 20 more under load: what README's sizing of max_connections counts."""
    settings = load_settings(database_url="postgresql+psycopg://kindreflex@db/kindreflex")
    database = Database.of(settings)
    pool = database.engine.pool
    assert isinstance(pool, QueuePool)
    assert (settings.database_pool_size, settings.database_max_overflow) == (10, 20)
    assert (pool.size(), database.pool_in_use()) == (10, (0, 30))
    database.dispose()


def test_the_pool_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KINDREFLEX_DATABASE_URL", "postgresql+psycopg://kindreflex@db/kindreflex")
    monkeypatch.setenv("KINDREFLEX_DATABASE_POOL_SIZE", "4")
    monkeypatch.setenv("KINDREFLEX_DATABASE_MAX_OVERFLOW", "0")
    database = Database.of(load_settings())
    assert (database.engine.pool.size(), database.pool_in_use()) == (4, (0, 4))  # type: ignore[attr-defined]
    database.dispose()


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        # SQLAlchemy takes a pool of 0 and an overflow of -1 for "no limit": refused, as
        # each instance would open connections past PostgreSQL's max_connections
        ("DATABASE_POOL_SIZE", "0", "greater than or equal to 1"),
        ("DATABASE_POOL_SIZE", "-5", "greater than or equal to 1"),
        ("DATABASE_POOL_SIZE", "1001", "less than or equal to 1000"),
        ("DATABASE_POOL_SIZE", "ten", "should be a valid integer"),
        ("DATABASE_POOL_SIZE", "2.5", "should be a valid integer"),
        ("DATABASE_MAX_OVERFLOW", "-1", "greater than or equal to 0"),
        ("DATABASE_MAX_OVERFLOW", "", "should be a valid integer"),
        ("DATABASE_MAX_OVERFLOW", "1001", "less than or equal to 1000"),
    ],
)
def test_a_pool_setting_out_of_range_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, setting: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(f"KINDREFLEX_{setting}", value)
    with pytest.raises(ValidationError) as refused:
        load_settings()
    (problem,) = refused.value.errors()
    assert problem["loc"] == (setting.lower(),)
    assert reason in problem["msg"]


def test_the_session_idle_limit_defaults_to_an_hour_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().session_idle_minutes == 60
    monkeypatch.setenv("KINDREFLEX_SESSION_IDLE_MINUTES", "15")
    assert load_settings().session_idle_minutes == 15


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        # a minute or two ended a nurse's session while she read the chart beside the form
        ("4", "greater than or equal to 5"),
        ("0", "greater than or equal to 5"),
        # past every session's 8 hours it would change nothing
        ("481", "less than or equal to 480"),
        ("1h", "should be a valid integer"),
        ("", "should be a valid integer"),
    ],
)
def test_a_session_idle_limit_out_of_range_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("KINDREFLEX_SESSION_IDLE_MINUTES", value)
    with pytest.raises(ValidationError) as refused:
        load_settings()
    (problem,) = refused.value.errors()
    assert problem["loc"] == ("session_idle_minutes",)
    assert reason in problem["msg"]
