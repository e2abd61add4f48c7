"""The configuration text shown back after an admin session ended (``smart_app.errors.
without_secrets``): no part of a secret on the page, and the rest of her text as she typed
it, so that pasted back unchanged it imports."""

from __future__ import annotations

import pytest
import yaml

from smart_app.errors import without_secrets

SECRET_PARTS = ("abcdefgh", "ijklmnop", "AAAA", "BBBB", "geheim", "deel2")


@pytest.mark.parametrize(
    ("pasted", "shown"),
    [
        # a plain value folded over two lines: half of it was shown (found by review)
        (
            "  client_secret: abcdefgh\n    ijklmnop\n  client_id: x",
            "  client_secret: null\n  client_id: x",
        ),
        ("    d: AAAA\n      BBBB\n    e: AQAB", "    d: null\n    e: AQAB"),
        ('client_secret: "geheim\n  deel2"\nname: n', "client_secret: null\nname: n"),
        ("client_secret: |\n  geheim\n\n  deel2\nname: z", "client_secret: null\n\nname: z"),
        ("client_secret:\n  geheim\nname: z", "client_secret: null\nname: z"),
        # pretty-printed JSON lost the comma after the value, and no longer parsed
        (
            '{\n  "client_secret": "geheim",\n  "client_id": "y"\n}',
            '{\n  "client_secret": null,\n  "client_id": "y"\n}',
        ),
        # a flow mapping over lines lost what followed the secret on its line
        (
            "registrations: [{id: x,\n  client_secret: geheim, client_id: y}]",
            "registrations: [{id: x,\n  client_secret: null, client_id: y}]",
        ),
        ("- d: 'AAAA'\n  p: \"BBBB\"  # c\n  kty: RSA", "- d: null\n  p: null  # c\n  kty: RSA"),
    ],
    ids=["plain-folded", "jwk-folded", "quoted-folded", "block", "below", "json", "flow", "quoted"],
)
def test_no_part_of_a_secret_is_shown_and_the_rest_is_kept_as_typed(
    pasted: str, shown: str
) -> None:
    text, removed = without_secrets(pasted)
    assert text == shown
    assert removed
    assert not any(part in text for part in SECRET_PARTS)
    yaml.safe_load(text)  # pasted back as it is, it still reads


def test_a_text_without_a_secret_value_is_shown_as_typed() -> None:
    pasted = "client_secret: null\nclient_id: x  # zoals in het EPD"
    assert without_secrets(pasted) == (pasted, False)
