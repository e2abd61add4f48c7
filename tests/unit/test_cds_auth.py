"""The replay ledger of CDS Hooks JWTs remembers a token for as long as it is accepted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.cds.auth import LEEWAY_SECONDS, CdsAuthError, _check_claims, expiry


@settings(deadline=None)  # a loaded machine's pause is no failure of the code
@given(exp=st.floats(min_value=1e9, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_a_token_is_not_purged_from_the_ledger_while_it_is_still_accepted(exp: float) -> None:
    """A fractional exp (100.9) stored truncated (100) was purged a second before the
    token stopped being accepted, so it could be replayed in that second."""
    claims = {"iss": "ehr", "aud": "url", "exp": exp, "iat": exp - 60, "jti": "j"}
    last_accepted = exp + LEEWAY_SECONDS
    _check_claims(claims, "ehr", ("url",), last_accepted)  # still accepted: does not raise
    # what SeenTokens._purge_when_due deletes at that moment: expires_at < cutoff
    cutoff = datetime.fromtimestamp(last_accepted, UTC) - timedelta(seconds=LEEWAY_SECONDS)
    assert not expiry(claims) < cutoff


def test_a_whole_second_exp_is_stored_as_it_is() -> None:
    assert expiry({"exp": 1_700_000_000}) == datetime.fromtimestamp(1_700_000_000, UTC)
    assert expiry({"exp": 1_700_000_000.25}) == datetime.fromtimestamp(1_700_000_001, UTC)


@pytest.mark.parametrize("jti", ["a\x00b", "line\nbreak", "tab\there", "\u2028", "\ud800"])
def test_a_jti_that_is_no_text_is_refused(jti: str) -> None:
    """A NUL reached the replay ledger, where PostgreSQL refused the batch it was in, and
    every hospital's calls in it with 503 (found by fuzzing)."""
    claims = {"iss": "ehr", "aud": "url", "exp": 2e9, "iat": 2e9 - 60, "jti": jti}
    with pytest.raises(CdsAuthError, match="no control characters"):
        _check_claims(claims, "ehr", ("url",), 2e9)
    _check_claims({**claims, "jti": "éèà-123_ABC.x"}, "ehr", ("url",), 2e9)  # any other text
