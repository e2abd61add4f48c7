"""Configuration as code through the real `kindreflex` command, bootstrap tokens, audit.

Each test runs on SQLite and on PostgreSQL (the ``database`` fixture); the command runs
as a separate process, the way an administrator or a deployment pipeline runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from service.admin import access
from service.admin.changes import history
from service.admin.config import StaleConfigurationError, TenantAdmin
from service.db.base import Database
from service.db.models import AdminBootstrapToken, TenantConfigVersion
from service.fhir import terminology
from service.outbox import DeliveryState
from service.protocol import Step
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import (
    EhrRegistration,
    HookSettings,
    PlanSettings,
    PlanText,
    TenantConfiguration,
    Wording,
)
from tests.support.admin import case_on, undelivered_save

KINDREFLEX = [sys.executable, "-m", "service.cli"]
KEY = "config-test-deployment-key, 32 characters or more"


def kindreflex(
    database_url: str, *args: str, guide_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KINDREFLEX_DATABASE_URL": database_url, "KINDREFLEX_SECRET_KEY": KEY}
    if guide_dir is not None:
        env["KINDREFLEX_GUIDE_DIR"] = str(guide_dir)
    return subprocess.run([*KINDREFLEX, *args], env=env, capture_output=True, text=True)


def tenants(database: Database) -> TenantDirectory:
    return TenantDirectory(database, SecretBox(SecretStr(KEY)))


def a_full_configuration() -> TenantConfiguration:
    """Something in every part, so that a round trip that drops anything fails."""
    return TenantConfiguration.model_validate(
        {
            "name": "AZ Sint-Jan",
            "registrations": [
                EhrRegistration(
                    id="epd",
                    name="EPD",
                    fhir_base_url="https://epd.example/fhir",
                    client_id="kindreflex",
                    frame_origins=["https://epd.example"],
                    cds_issuers=[
                        {"iss": "https://epd.example", "jku": ["https://epd.example/jwks"]}
                    ],
                    default_language="fr",
                )
            ],
            "hooks": HookSettings(enabled=["patient-view"], adult_age=16, once_per_encounter=False),
            "plan": PlanSettings(
                revision=3, steps={"step-1": PlanText(title=Wording(nl="Kinderen? (AZ)"))}
            ),
        }
    )


def version_count(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(TenantConfigVersion)) or 0


def test_export_then_import_into_an_empty_hospital_gives_the_same_configuration(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    tenants(database).save("az-sint-jan", a_full_configuration(), actor="set-up")

    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan")
    assert exported.returncode == 0, exported.stderr
    file = tmp_path / "az.yaml"
    file.write_text(exported.stdout, encoding="utf-8")
    refused = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-nieuw")
    assert refused.returncode != 0  # one EHR client belongs to one hospital
    assert "registered by another hospital" in refused.stderr
    # the hospital moves to its new name: the old one no longer registers its EHR clients
    moved = a_full_configuration().model_copy(update={"registrations": []})
    tenants(database).save("az-sint-jan", moved, actor="moved")

    imported = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-nieuw")
    assert imported.returncode == 0, imported.stderr
    assert "version 1" in imported.stderr

    copy = tenants(database).get("az-nieuw")
    assert copy.config == a_full_configuration()
    again = kindreflex(database_url, "config", "export", "--tenant", "az-nieuw")
    assert again.stdout == exported.stdout


def test_the_commands_check_a_configuration_against_the_guide_the_settings_name(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """KINDREFLEX_GUIDE_DIR names the built guide; in the container image it is the only
    one (the package's default place is empty). Before, only the web app read the setting:
    there every command reading a hospital's configuration (config export and import,
    audit, outbox, admin bootstrap) stopped with a traceback. Here the named guide has an
    override reason the repository's has not: the import is checked against the named one,
    and a guide that is missing is said so, with no traceback."""
    guide = tmp_path / "resources"
    shutil.copytree(terminology.DEFAULT_GUIDE_DIR, guide)
    reasons = guide / "CodeSystem-cds-override-reason.json"
    code_system = json.loads(reasons.read_text(encoding="utf-8"))
    code_system["concept"].append({"code": "hospital-own", "display": "Eigen reden"})
    reasons.write_text(json.dumps(code_system), encoding="utf-8")
    tenants(database).save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    file = tmp_path / "az.yaml"
    file.write_text(
        exported.replace("  override_reasons:\n", "  override_reasons:\n  - hospital-own\n")
    )

    refused = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert refused.returncode == 1
    assert "hospital-own" in refused.stderr
    imported = kindreflex(
        database_url, "config", "import", str(file), "--tenant", "az-sint-jan", guide_dir=guide
    )
    assert imported.returncode == 0, imported.stderr
    again = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan", guide_dir=guide)
    assert "  override_reasons:\n  - hospital-own\n" in again.stdout

    missing = tmp_path / "no-guide"
    export = kindreflex(
        database_url, "config", "export", "--tenant", "az-sint-jan", guide_dir=missing
    )
    assert export.returncode == 2
    assert "Traceback" not in export.stderr
    assert export.stderr.strip().splitlines()[-1] == (
        f"kindreflex: the built FHIR guide cannot be used: the built guide is missing: "
        f"{missing} (run fhir_profiles/build.sh)"
    )


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("adult_age: 16", "adult_age: [16"), r"line \d+: not valid YAML"),
        (
            ("  client_id: kindreflex", "  client_id: kindreflex\n  clientid: x"),
            r"line \d+: registrations\[0\].clientid: unknown field",
        ),
        (
            ("adult_age: 16", "adult_age: zestien"),
            r"line \d+: hooks.adult_age: Input should be a valid integer",
        ),
        (
            ("adult_age: 16", "adult_age: 2025-02-30"),
            r"line \d+: not valid YAML: the value '2025-02-30' cannot be read",
        ),
        (
            ("card_wording: {}", "card_wording: {nl: {warning_summary: '{reasons.x}'}}"),
            r"line \d+: hooks.card_wording: .*unknown placeholder \{reasons.x\}",
        ),
        (
            ("source_url: https://kindreflex.be/", "source_url: javascript:alert(1)"),
            r"line \d+: hooks.source_url: .*'javascript:alert\(1\)' is not an absolute https URL",
        ),
    ],
    ids=[
        "syntax",
        "unknown-field",
        "wrong-type",
        "impossible-date",
        "wording-placeholder",
        "card-source-url",
    ],
)
def test_a_bad_file_changes_nothing_and_names_the_line(
    database: Database,
    database_url: str,
    tmp_path: Path,
    mutation: tuple[str, str],
    expected: str,
) -> None:
    tenants(database).save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    old, new = mutation
    assert old in exported
    bad = exported.replace(old, new, 1)
    file = tmp_path / "bad.yaml"
    file.write_text(bad, encoding="utf-8")

    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr
    line = re.search(expected, result.stderr)
    assert line is not None, result.stderr
    number = int(line.group(0).split()[1].rstrip(":"))
    assert new.split("\n")[-1].strip() in bad.splitlines()[number - 1]
    assert version_count(database) == 1
    assert tenants(database).get("az-sint-jan").config == a_full_configuration()


def test_a_key_written_twice_is_refused_with_its_line_not_the_last_one_taken(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """An administrator adds a second EHR as a new `registrations:` block at the end of the
    exported file (or writes `adult_age:` twice). YAML forbids a key twice in a mapping;
    PyYAML's SafeLoader silently keeps the last value, so the first registration (EPD,
    with its client and issuers) was dropped without a word, and the command said the new
    version was in force (found by review). Now the file is refused, both lines named."""
    tenants(database).save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    second = (
        "registrations:\n"
        "- id: epd-test\n"
        "  name: EPD test\n"
        "  fhir_base_url: https://epd-test.example/fhir\n"
        "  client_id: kindreflex-test\n"
    )
    file = tmp_path / "az.yaml"
    file.write_text(exported + second, encoding="utf-8")

    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")

    stored = tenants(database).get("az-sint-jan").config
    assert [r.id for r in stored.registrations] == ["epd"], (
        f"the duplicate key was taken silently (exit {result.returncode}): "
        f"{[r.id for r in stored.registrations]}"
    )
    assert result.returncode == 1
    duplicate_line = len(exported.splitlines()) + 1
    first_line = exported.splitlines().index("registrations:") + 1
    assert f"{file}: line {duplicate_line}: not valid YAML: the key 'registrations' is " in (
        result.stderr
    )
    assert f"(first on line {first_line})" in result.stderr
    assert version_count(database) == 1

    twice = exported.replace("  adult_age: 16\n", "  adult_age: 16\n  adult_age: 17\n")
    assert twice != exported
    file.write_text(twice, encoding="utf-8")
    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert result.returncode == 1
    assert "the key 'adult_age' is written twice in one mapping" in result.stderr
    assert tenants(database).get("az-sint-jan").config == a_full_configuration()


def test_a_file_that_leaves_out_a_part_is_refused_naming_it_and_a_part_emptied_is_taken(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """An administrator imports a file holding only what she means to change (the name and
    the adult age). Every part the file left out was replaced by its default: the EHR
    registration disappeared (its nurses' launches "EHR not registered", its client secret
    gone), the partner directory became the Oost-Vlaanderen default, the plan's wording
    was dropped, and the command reported success (found by review). An import still
    replaces the whole configuration, but a file that leaves a part out is refused, naming
    the parts; a part written empty is emptied, on purpose."""
    full = a_full_configuration()
    tenants(database).save("az-sint-jan", full, actor="set-up")
    file = tmp_path / "partial.yaml"
    file.write_text("name: AZ Sint-Jan\nhooks:\n  adult_age: 17\n", encoding="utf-8")

    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")

    stored = tenants(database).get("az-sint-jan").config
    assert stored == full, (
        f"exit {result.returncode}, {result.stderr.strip().splitlines()[-1]!r}; "
        f"registrations now {[r.id for r in stored.registrations]}, "
        f"plan revision {stored.plan.revision} (was {full.plan.revision}) without its wording"
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [  # after the migration check's log lines
        f"{file}: nothing was changed:",
        f"{file}: the file leaves out registrations, partners, plan: an import replaces the "
        "whole configuration, and a part left out would be emptied or reset to its default "
        "(the EHR registrations with their client secrets, the partner directory, the plan's "
        "wording); write every part, as `kindreflex config export` does, and a part you mean "
        "to empty as empty (registrations: [])",
    ]
    assert version_count(database) == 1

    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    start = exported.index("registrations:\n")
    emptied = exported[:start] + "registrations: []\n" + exported[exported.index("hooks:\n") :]
    file.write_text(emptied, encoding="utf-8")
    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert result.returncode == 0, result.stderr
    assert tenants(database).get("az-sint-jan").config == full.model_copy(
        update={"registrations": []}
    )


def test_an_import_of_an_export_another_admin_changed_since_does_not_undo_that_change(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """Configuration as code, as the install guide's section 6 has it: export, edit, review,
    import. Meanwhile a colleague raises the adult age on the screen (a new version). The
    import of the reviewed file, made on the version before hers, undid her change without
    a word: the export named no version, and `config import` checked none, while the screen
    and the API's If-Match refuse exactly this (found by review). Now the export names its
    version, and an import of it is refused once another is in force, saying what changed
    since, unless --force."""
    directory = tenants(database)
    directory.save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    assert "\n# version: the configuration version this file was exported from." in exported
    assert "\nversion: 1\nname: AZ Sint-Jan\n" in exported
    file = tmp_path / "az.yaml"
    file.write_text(exported.replace("Kinderen? (AZ)", "Kinderen thuis?"), encoding="utf-8")

    current = directory.get("az-sint-jan", fresh=True)
    colleague = current.config.hooks.model_copy(update={"adult_age": 21})
    directory.save(
        "az-sint-jan", current.config.model_copy(update={"hooks": colleague}), actor="An (screen)"
    )

    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")

    stored = directory.get("az-sint-jan", fresh=True).config
    assert result.returncode != 0 or stored.hooks.adult_age == 21, (
        f"exit {result.returncode}: the colleague's adult age 21 was silently undone, now "
        f"{stored.hooks.adult_age}"
    )
    assert result.returncode == 1
    said = result.stderr.splitlines()[-3:]
    assert said[0] == (
        f"{file}: nothing was changed: the file was exported from version 1, and hospital "
        "'az-sint-jan' is at version 2 now: importing it would undo what was changed since"
    )
    assert re.fullmatch(
        rf"{re.escape(str(file))}:   version 2, \d\d/\d\d/\d{{4}} \d\d:\d\d, An \(screen\): "
        r"hooks\.adult_age",
        said[1],
    ), said[1]
    assert "import this file with --force to replace the configuration with it" in said[2]
    assert version_count(database) == 2
    assert stored.plan.text(Step.STEP_1, "title", "nl") == "Kinderen? (AZ)"

    forced = kindreflex(
        database_url, "config", "import", str(file), "--tenant", "az-sint-jan", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    stored = directory.get("az-sint-jan", fresh=True).config
    assert stored.hooks.adult_age == 16  # undone, as asked
    assert stored.plan.text(Step.STEP_1, "title", "nl") == "Kinderen thuis?"


def test_an_import_removing_or_moving_a_registration_something_depends_on_is_refused(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """Removing a registration on the screen or the API asks first when nurses' saves or
    open cases depend on it; `config import` of a file without it, or with its id naming
    another FHIR server, removed or moved it in silence (found by review). Now refused, the
    command saying which registration and what depends on it, nothing changed, unless
    --force, which says what it left and records it in the admin events. A registration
    of the same server added in its place keeps the cases workable, not the saves."""
    directory = tenants(database)
    context = directory.save("az-sint-jan", a_full_configuration(), actor="set-up")
    server = "https://epd.example/fhir"
    undelivered_save(database, context.id, server, DeliveryState.WAITING_AUTHORISATION, "epd")
    undelivered_save(database, context.id, server, DeliveryState.PENDING, "epd")
    case_on(database, context.id, server)
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    removed, moved, replaced = (tmp_path / f"{n}.yaml" for n in ("removed", "moved", "replaced"))
    removed.write_text(re.sub(r"\nregistrations:\n.*?\nhooks:", "\nregistrations: []\nhooks:",
                              exported, flags=re.S), encoding="utf-8")  # fmt: skip
    moved.write_text(exported.replace(server, "https://epd-nieuw.example/fhir"), encoding="utf-8")
    replaced.write_text(exported.replace("id: epd", "id: epd-2"), encoding="utf-8")

    def import_(file: Path, *force: str) -> subprocess.CompletedProcess[str]:
        return kindreflex(
            database_url, "config", "import", str(file), "--tenant", "az-sint-jan", *force
        )

    refused = import_(removed)
    assert refused.returncode == 1
    said = [line for line in refused.stderr.splitlines() if line.startswith(str(removed))]
    assert said[0] == f"{removed}: nothing was changed:"
    assert said[1].startswith(
        f"{removed}: registration 'epd' ({server}) was not removed: 2 undelivered writes "
        "through it (1 pending, 1 waiting for a sign-in) and 1 open case on the worklist "
        "depend on it."
    )
    assert said[1].endswith("or import the file with --force to remove it anyway")
    refused = import_(moved)
    assert refused.returncode == 1
    assert (
        f"registration 'epd' ({server}) was not moved to https://epd-nieuw.example/fhir: 2 "
        "undelivered writes"
    ) in refused.stderr
    refused = import_(replaced)  # the cases are still worked through epd-2; the saves not
    assert refused.returncode == 1
    assert "(1 pending, 1 waiting for a sign-in) and 0 open cases" in refused.stderr
    assert version_count(database) == 1
    assert directory.get("az-sint-jan", fresh=True).config == a_full_configuration()

    forced = import_(removed, "--force")

    assert forced.returncode == 0, forced.stderr
    assert (
        f"{removed}: registration 'epd' ({server}) removed anyway: 2 undelivered write(s) "
        "through it and 1 open case(s) depended on it"
    ) in forced.stderr
    assert directory.get("az-sint-jan", fresh=True).config.registrations == []
    (event,) = access.events(database, context.id)
    assert event.action == "registration-removed-anyway"
    assert event.actor.startswith("kindreflex config import")
    assert event.detail == {
        "registration": "epd", "undelivered_writes": 2, "pending": 1, "waiting_for_sign_in": 1,
        "open_cases": 1,
    }  # fmt: skip


def test_a_file_without_a_version_is_applied_whatever_version_is_in_force(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    """A file kept in git as the source of truth names no version: it is the configuration,
    whatever was changed on the screen since it was written. So the decision goes: an
    export names its version and is checked against it; a file without one is applied as
    before. A version that is no whole number of 1 or more is a bad file, its line named."""
    directory = tenants(database)
    directory.save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    directory.save(
        "az-sint-jan", a_full_configuration().model_copy(update={"name": "AZ X"}), actor="An"
    )
    line = exported.splitlines().index("version: 1") + 1
    file = tmp_path / "az.yaml"
    file.write_text(exported.replace("version: 1\n", "version: zeven\n"), encoding="utf-8")
    bad = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert bad.returncode == 1
    assert f"{file}: line {line}: version: the configuration version the file was exported " in (
        bad.stderr
    )

    file.write_text(exported.replace("version: 1\n", ""), encoding="utf-8")
    result = kindreflex(database_url, "config", "import", str(file), "--tenant", "az-sint-jan")
    assert result.returncode == 0, result.stderr
    assert "configuration version 3 is in force" in result.stderr
    assert directory.get("az-sint-jan", fresh=True).config == a_full_configuration()


def test_an_import_is_audited_with_who_when_and_what(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    tenants(database).save("az-sint-jan", a_full_configuration(), actor="set-up")
    exported = kindreflex(database_url, "config", "export", "--tenant", "az-sint-jan").stdout
    file = tmp_path / "az.yaml"
    file.write_text(exported.replace("adult_age: 16", "adult_age: 18"), encoding="utf-8")
    assert (
        kindreflex(
            database_url, "config", "import", str(file), "--tenant", "az-sint-jan"
        ).returncode
        == 0
    )

    context = tenants(database).get("az-sint-jan")
    newest = history(database, SecretBox(SecretStr(KEY)), context.id)[0]
    assert newest.actor.startswith("kindreflex config import (")
    assert [(c.path, c.old, c.new) for c in newest.changes] == [("hooks.adult_age", 16, 18)]

    # importing the same file again is not a change: no new version, nothing to audit
    assert (
        kindreflex(
            database_url, "config", "import", str(file), "--tenant", "az-sint-jan"
        ).returncode
        == 0
    )
    assert tenants(database).get("az-sint-jan").version == context.version


def test_bootstrap_prints_a_single_use_token_and_stores_only_its_hash(
    database: Database, database_url: str
) -> None:
    result = kindreflex(database_url, "admin", "bootstrap", "--tenant", "az-nieuw")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "/t/az-nieuw/admin/login" in result.stderr

    context = tenants(database).get("az-nieuw")  # the first set-up creates the hospital
    with database.session() as session:
        stored = session.scalars(select(AdminBootstrapToken)).one()
    assert token not in stored.token_hash

    first = access.redeem_bootstrap_token(database, context.id, token, "Els")
    assert access.authenticate(database, first.token) is not None
    with pytest.raises(access.AccessDeniedError):
        access.redeem_bootstrap_token(database, context.id, token, "Mallory")


def test_a_bootstrap_token_expires_and_is_bound_to_its_hospital(database: Database) -> None:
    directory = tenants(database)
    gent = directory.save("az-gent", TenantConfiguration(name="Gent"), actor="set-up")
    brugge = directory.save("az-brugge", TenantConfiguration(name="Brugge"), actor="set-up")

    expired, _ = access.issue_bootstrap_token(database, gent.id, ttl=timedelta(0))
    with pytest.raises(access.AccessDeniedError):
        access.redeem_bootstrap_token(database, gent.id, expired, "Els")

    gents, _ = access.issue_bootstrap_token(database, gent.id)
    with pytest.raises(access.AccessDeniedError):
        access.redeem_bootstrap_token(database, brugge.id, gents, "Els")
    assert access.redeem_bootstrap_token(database, gent.id, gents, "Els").actor.startswith("Els")

    refused = [e.action for e in access.events(database, gent.id)]
    assert refused.count("bootstrap-token-refused") == 1


def test_an_expired_admin_session_is_refused(database: Database) -> None:
    context = tenants(database).save("az-gent", TenantConfiguration(name="Gent"), actor="set-up")
    issued = access.open_session(database, context.id, "Els", via="test", ttl=timedelta(0))
    assert access.authenticate(database, issued.token) is None


def test_a_change_made_on_a_version_another_instance_replaced_is_refused_not_stored(
    database: Database,
) -> None:
    """Two admins on two instances: the second's change, made on version 1 while the first
    had already stored version 2, passed the check against its instance's cached version
    and was stored as version 3, silently undoing the first (found by review). The cache
    is held still here (a fixed clock) as it is within its refresh interval."""
    first = TenantAdmin(TenantDirectory(database, SecretBox(SecretStr(KEY)), clock=lambda: 0.0))
    second = TenantAdmin(TenantDirectory(database, SecretBox(SecretStr(KEY)), clock=lambda: 0.0))
    made = first.save("az", TenantConfiguration(name="AZ Sint-Jan"), "admin-a")
    assert second.current("az") == made  # the second instance caches version 1
    config = made.config
    assert first.save("az", config.model_copy(update={"name": "AZ A"}), "admin-a", 1).version == 2

    with pytest.raises(StaleConfigurationError) as stale:
        second.save("az", config.model_copy(update={"name": "AZ B"}), "admin-b", based_on=1)

    assert stale.value.current_version == 2
    assert tenants(database).get("az").config.name == "AZ A"
    assert version_count(database) == 2
