"""The replay ledger of CDS Hooks JWTs remembers a token for as long as it is accepted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.cds.auth import LEEWAY_SECONDS, _check_claims, expiry


@settings(deadline=None)  # a loaded machine's pause is no failure of the code
@given(exp=st.floats(min_value=1e9, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_a_token_is_not_purged_from_the_ledger_while_it_is_still_accepted(exp: float) -> None:
    """A fractional exp (100.9) stored truncated (100) was purged a second before the
    token stopped being accepted, so it could be replayed in that second."""
    claims = {"iss": "ehr", "aud": "url", "exp": exp, "iat": exp - 60, "jti": "j"}
    last_accepted = exp + LEEWAY_SECONDS
    _check_claims(claims, "ehr", "url", last_accepted)  # still accepted: does not raise
    # what SeenTokens._purge_when_due deletes at that moment: expires_at < cutoff
    cutoff = datetime.fromtimestamp(last_accepted, UTC) - timedelta(seconds=LEEWAY_SECONDS)
    assert not expiry(claims) < cutoff


def test_a_whole_second_exp_is_stored_as_it_is() -> None:
    assert expiry({"exp": 1_700_000_000}) == datetime.fromtimestamp(1_700_000_000, UTC)
    assert expiry({"exp": 1_700_000_000.25}) == datetime.fromtimestamp(1_700_000_001, UTC)
