"""The monitoring's key of an ED presentation cannot be turned back into the encounter."""

from __future__ import annotations

import hashlib
from datetime import date

from pydantic import SecretStr

from service.monitoring import presentation_key, presentation_secret

SERVER = "https://epd.example/fhir"
DAY = date(2026, 12, 5)


def test_the_key_needs_the_deployments_secret_to_be_found_again() -> None:
    """Found by review: a plain SHA-256 of the server and the encounter id; trying every
    encounter id gave back the encounter of a card's reasons in milliseconds. Keyed under
    the deployment's secret, an id tried without it matches nothing."""
    secret = presentation_secret(SecretStr("x" * 32))
    key = presentation_key(secret, SERVER, "p1", "48213", DAY)

    assert key == presentation_key(secret, SERVER + "/", "p2", "48213", DAY)  # one encounter
    assert key != hashlib.sha256(f"{SERVER}|Encounter/48213".encode()).hexdigest()
    assert key != presentation_key(
        presentation_secret(SecretStr("y" * 32)), SERVER, "p1", "48213", DAY
    )
    assert key != presentation_key(secret, SERVER, "p1", "48214", DAY)
    # without an encounter, the patient's day
    assert presentation_key(secret, SERVER, "p1", None, DAY) != presentation_key(
        secret, SERVER, "p1", None, date(2026, 12, 6)
    )
    assert presentation_secret(None) == b""  # a trial without a secret key
