"""Prefetch templates of our services, and the one FHIR request when prefetch is missing.

The EHR normally sends everything in ``prefetch`` (the hot path: no FHIR call). What it
left out is fetched in ONE batch Bundle of GETs from ``fhirServer`` with the EHR's
``fhirAuthorization`` token, bounded as a whole (:mod:`service.bounded_fetch`: the
exchange within :data:`FETCH_TIMEOUT_SECONDS`, the answer within
:data:`FETCH_MAX_BYTES`). Any failure means "no data": the rules then fall back to a
safe generic card.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx

from service.bounded_fetch import Bounds, UnreadableBodyError
from service.bounded_fetch import fetch as bounded_fetch
from service.cds import situation as keys
from service.cds.vocabulary import Vocabulary

log = logging.getLogger(__name__)

#: The EHR waits for the card: a slow FHIR server must not hold it up for long. The whole
#: exchange, not each read: a server trickling its answer is cut off here too.
FETCH_TIMEOUT_SECONDS = 1.5
#: One patient's Patient, Encounter, and their Conditions, RelatedPersons, Flags and
#: Kindreflex findings: tens of KiB, a page of each search at most. A larger answer is not
#: read into the event loop's memory: the generic card.
FETCH_MAX_BYTES = 4 * 1024 * 1024
FETCH_BOUNDS = Bounds(FETCH_TIMEOUT_SECONDS, FETCH_MAX_BYTES)

#: The page size asked for in the searches fetched: an EHR's prefetch may be one page of
#: several, and the rules need all of a patient's Flags. A search still paged after it
#: is not read in full (``situation.answered_in_full``): the generic card, unless a
#: warning's reason is found anyway.
FETCH_PAGE_SIZE = 1000

#: Which context ids each prefetch key needs.
_NEEDS_ENCOUNTER = frozenset({keys.ENCOUNTER, keys.CONDITIONS, keys.FINDINGS})


def templates(vocabulary: Vocabulary) -> dict[str, str]:
    """The discovery document's prefetch templates (FHIR R4 search parameters only).

    R4's Flag has no ``code`` or ``status`` search parameter: the rules filter the
    patient's Flags themselves.
    """
    return {
        keys.PATIENT: "Patient/{{context.patientId}}",
        keys.ENCOUNTER: "Encounter/{{context.encounterId}}",
        keys.CONDITIONS: "Condition?encounter={{context.encounterId}}",
        keys.RELATED_PERSONS: "RelatedPerson?patient={{context.patientId}}",
        keys.FLAGS: "Flag?patient={{context.patientId}}",
        keys.FINDINGS: "Observation?encounter={{context.encounterId}}"
        f"&code={vocabulary.step_system}|",
    }


def missing_queries(
    vocabulary: Vocabulary,
    prefetch: Mapping[str, Any] | None,
    patient_id: str,
    encounter_id: str | None,
) -> dict[str, str]:
    """The FHIR queries for the keys the EHR did not prefetch (a present ``null`` is "no data")
    or not in full: CDS Hooks 2.0 lets a client send an OperationOutcome for a prefetch that
    failed, and neither that nor the first page of a patient's Flags may read as "no open
    concern". Searches ask for ``FETCH_PAGE_SIZE`` results a page."""
    given = prefetch or {}
    queries: dict[str, str] = {}
    for key in keys.PREFETCH_KEYS:  # the templates' order
        answered = key in given and keys.answered_in_full(given[key])
        if answered or (key in _NEEDS_ENCOUNTER and encounter_id is None):
            continue
        query = templates(vocabulary)[key].replace("{{context.patientId}}", patient_id)
        if encounter_id is not None:
            query = query.replace("{{context.encounterId}}", encounter_id)
        queries[key] = f"{query}&_count={FETCH_PAGE_SIZE}" if "?" in query else query
    return queries


async def fetch(
    client: httpx.AsyncClient, fhir_server: str, access_token: str, queries: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Run ``queries`` as one batch; the entries that answered 200, by prefetch key."""
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": query}} for query in queries.values()],
    }
    try:
        request = client.build_request(
            "POST",
            fhir_server.rstrip("/"),
            json=bundle,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/fhir+json",
                "Content-Type": "application/fhir+json",
            },
            timeout=FETCH_TIMEOUT_SECONDS,  # each operation; FETCH_BOUNDS, all of them
        )
        response = await bounded_fetch(client, request, FETCH_BOUNDS)
        response.raise_for_status()
        entries = response.json().get("entry", [])
    except (
        httpx.HTTPError,
        TimeoutError,
        UnreadableBodyError,
        ValueError,
        RecursionError,  # an answer nested deeper than the parser goes: a 500 (review)
        AttributeError,
    ) as error:
        log.warning(
            "CDS prefetch fallback failed; answering with the generic card",
            extra={"fields": {"error": type(error).__name__}},
        )
        return {}
    return _answers(list(queries), entries)


def _answers(keys_in_order: list[str], entries: Any) -> dict[str, dict[str, Any]]:
    """Batch entries answer the requests in order (FHIR R4 Bundle rules)."""
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(entries, list) or len(entries) != len(keys_in_order):
        return found
    for key, entry in zip(keys_in_order, entries, strict=True):
        if not isinstance(entry, dict):
            continue
        status = str((entry.get("response") or {}).get("status", ""))
        resource = entry.get("resource")
        if status.startswith("200") and isinstance(resource, dict):
            found[key] = resource
    return found
