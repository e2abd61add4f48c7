"""The cards returned, recorded for the monitoring figures (``service.monitoring``).

Written off the EHR's wait: the response does not wait for the row, batches of rows are
written together on the CDS path's own connections (``FastWrites``), and a failed write
costs a count, never a card — it is logged, not raised. No patient or encounter id is
stored: ``presentation`` is the monitoring's one-way key of the ED presentation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import insert

from service.cds.batching import BatchWriter, FastWrites
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


class IssuedCards:
    def __init__(self, writes: FastWrites) -> None:
        self._writes = writes
        self._batches: BatchWriter[dict[str, Any], None] = BatchWriter(self._write, 1)

    def record(
        self, tenant_id: int, service_id: str, card_uuid: str, advice: Advice, seen: Presentation
    ) -> None:
        row = {
            "tenant_id": tenant_id,
            "service_id": service_id,
            "card_uuid": card_uuid,
            "indicator": advice.indicator,
            "reasons": list(advice.reasons),
            "presentation": presentation_key(
                seen.fhir_server, seen.patient_id, seen.encounter_id, seen.day
            ),
            "issued_at": utcnow(),
        }
        self._batches.submit(row).add_done_callback(_log_failure)

    def _write(self, rows: list[dict[str, Any]]) -> list[None]:
        with self._writes.begin() as connection:
            connection.execute(insert(CdsCard), rows)
        return [None] * len(rows)


def _log_failure(future: asyncio.Future[None]) -> None:
    if future.exception() is not None:
        log.warning(
            "a returned CDS card was not recorded for monitoring",
            extra={"fields": {"error": type(future.exception()).__name__}},
        )
