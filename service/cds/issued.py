"""The cards returned, recorded for the monitoring figures (``service.monitoring``).

Written off the EHR's wait: the response does not wait for the row, which is committed
with the next batch of the CDS path's writes (``GroupCommit``), and a failed write costs
a count, never a card — it is logged, not raised. Unless the writes fall behind: beyond
``MAX_BACKLOG`` rows waiting, a call waits for its own row. Without that back-pressure a
sustained burst (nothing else on the path waits for the database when the JWT check is
off) grew the queue without bound, and the garbage collector's pauses with it.

No patient or encounter id is stored: ``presentation`` is the monitoring's one-way key
of the ED presentation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Table

from service.cds.batching import GroupCommit
from service.cds.rules import Advice
from service.db.base import utcnow
from service.db.models import CdsCard
from service.monitoring import presentation_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Presentation:
    """Which ED presentation a card was for (hashed before it is stored)."""

    fhir_server: str
    patient_id: str
    encounter_id: str | None
    day: date


MAX_BACKLOG = 1000
CARDS: Table = CdsCard.__table__  # type: ignore[assignment]


class IssuedCards:
    """``secret``: the presentation key's (``monitoring.presentation_secret``)."""

    def __init__(self, commits: GroupCommit, secret: bytes, max_backlog: int = MAX_BACKLOG) -> None:
        self._commits = commits
        self._secret = secret
        self._max_backlog = max_backlog

    async def record(
        self, tenant_id: int, service_id: str, card_uuid: str, advice: Advice, seen: Presentation
    ) -> None:
        row = {
            "tenant_id": tenant_id,
            "service_id": service_id,
            "card_uuid": card_uuid,
            "indicator": advice.indicator,
            "reasons": list(advice.reasons),
            "presentation": presentation_key(
                self._secret, seen.fhir_server, seen.patient_id, seen.encounter_id, seen.day
            ),
            "issued_at": utcnow(),
        }
        written = self._commits.submit(CARDS, row)
        written.add_done_callback(_log_failure)
        if self._commits.backlog > self._max_backlog:
            await asyncio.wait([written])  # its failure is logged, never raised to the EHR


def _log_failure(future: asyncio.Future[bool]) -> None:
    error = future.exception()
    if error is not None or not future.result():
        log.warning(
            "a returned CDS card was not recorded for monitoring",
            extra={"fields": {"error": type(error).__name__ if error else "duplicate card uuid"}},
        )
