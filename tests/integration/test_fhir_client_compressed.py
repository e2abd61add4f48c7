"""The FHIR client reading compressed answers from a real HTTP server: asked for gzip, and
sent it (or deflate) by a gateway whatever was asked. The cap counts the decoded body; a
decompression bomb is refused having held about the cap; an answer that cannot be decoded
is unreadable, never parsed as garbage."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
import zlib
from collections.abc import Callable

import pytest

from service.bounded_fetch import DECODE_STEP, BodyTooLargeError
from service.fhir.client import MAX_ANSWER_BYTES, FhirClient, FhirUnreadable
from tests.support.served import ServedJson

BUNDLE = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [{"resource": {"resourceType": "Observation", "id": f"o{n}"}} for n in range(500)],
}
ANSWER = json.dumps(BUNDLE).encode()


def _deflated(data: bytes) -> bytes:
    """``deflate`` as RFC 9110 defines it: the zlib format."""
    return zlib.compress(data)


def _raw_deflated(data: bytes) -> bytes:
    """A deflate stream without the zlib format around it (what some servers send)."""
    stream = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return stream.compress(data) + stream.flush()


def _gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes gzip-compressed, a MiB at a time (never held whole)."""
    stream = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    mib = bytes(1024 * 1024)
    return b"".join(stream.compress(mib) for _ in range(size // len(mib))) + stream.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", _deflated)],
)
def test_a_compressed_answer_is_asked_for_and_read(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    """The server compresses whatever was asked (as some gateways do). Before, the client
    asked for ``identity`` and read the compressed bytes as the answer: unusable."""
    with (
        ServedJson(encode(ANSWER), path="/fhir", encoding=encoding) as served,
        FhirClient(served.url, lambda: "t", 5.0) as client,
    ):
        assert client.search("Observation", {"subject": "Patient/p1"}) == BUNDLE
    assert served.accepted == ["gzip"]


def test_a_multi_member_gzip_answer_is_read_whole() -> None:
    """RFC 1952 allows several gzip members one after the other: all are the answer."""
    middle = len(ANSWER) // 2
    members = gzip.compress(ANSWER[:middle]) + gzip.compress(ANSWER[middle:])
    with (
        ServedJson(members, path="/fhir", encoding="gzip") as served,
        FhirClient(served.url, lambda: "t", 5.0) as client,
    ):
        assert client.search("Observation", {}) == BUNDLE


def test_a_decompression_bomb_is_refused_having_held_about_the_cap() -> None:
    """64 MiB of zeros, gzip: about 64 KiB on the wire, twice the cap decoded. Before, the
    compressed bytes were counted (and then not parsed); httpx's own decoder would inflate
    a whole network read at once, tens of MiB, before any cap could look. Now the decoded
    bytes are counted and decoding stops one step past the cap."""
    bomb = _gzip_of_zeros(2 * MAX_ANSWER_BYTES)
    assert len(bomb) < MAX_ANSWER_BYTES // 100
    with (
        ServedJson(bomb, path="/fhir", encoding="gzip") as served,
        FhirClient(served.url, lambda: "t", 30) as client,
    ):
        tracemalloc.start()
        try:
            with pytest.raises(FhirUnreadable) as raised:
                client.read("Patient", "p1")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert isinstance(raised.value.__cause__, BodyTooLargeError)
    assert str(raised.value) == (
        f"read Patient at {served.url}: the answer is larger than {MAX_ANSWER_BYTES} bytes"
    )
    # the body up to the cap (a bytearray grows by an eighth), one step, a little else
    assert peak < MAX_ANSWER_BYTES * 9 // 8 + DECODE_STEP + 1024 * 1024, peak


def _corrupt(data: bytes) -> bytes:
    """``data`` gzip-compressed, then bytes in the middle of the stream changed."""
    compressed = bytearray(gzip.compress(data))
    middle = len(compressed) // 2
    compressed[middle : middle + 8] = bytes(byte ^ 0xFF for byte in compressed[middle : middle + 8])
    return bytes(compressed)


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("gzip", _corrupt(ANSWER), r"the compressed answer is corrupt \(Error -3 .*\)"),
        ("gzip", gzip.compress(ANSWER)[:-20], "the compressed answer is cut short"),
        ("deflate", _raw_deflated(ANSWER), "the compressed answer is corrupt"),
        ("br", ANSWER, "the answer is encoded as 'br', which is not decoded here"),
        (
            "gzip, gzip",
            gzip.compress(gzip.compress(ANSWER)),
            "the answer is encoded as 'gzip, gzip'",
        ),
    ],
    ids=["corrupt", "cut-short", "raw-deflate", "brotli", "gzip-twice"],
)
def test_an_answer_that_cannot_be_decoded_is_unreadable(
    encoding: str, body: bytes, message: str
) -> None:
    """Corrupt or cut-short gzip, raw deflate under deflate's name (not RFC 9110's zlib
    format), an encoding not decoded here (brotli, never asked for), encodings stacked:
    each is unreadable, saying why. Before, each was read as the answer itself."""
    with (
        ServedJson(body, path="/fhir", encoding=encoding) as served,
        FhirClient(served.url, lambda: "t", 5.0) as client,
        pytest.raises(
            FhirUnreadable, match=rf"^read Patient at {re.escape(served.url)}: {message}"
        ),
    ):
        client.read("Patient", "p1")
