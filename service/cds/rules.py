"""The Kindreflex card rules: who gets a card, and whether it warns. Pure: no I/O, no clock.

* Only adults get a card (``HookSettings.adult_age``, default 18): the Kindreflex is a
  reflex with every adult patient, not a screening of suspicious cases.
* Once step 1 is recorded for this encounter, no card (``once_per_encounter``).
* Otherwise an **info** card "Doe de Kindreflex"; a **warning** card when the encounter
  shows a Hague trigger (its reasons or its conditions carry a code of the guide's
  trigger ValueSets or of the hospital's local list) or when the patient has an open
  Kindreflex concern (an active Flag with the guide's open-concern code). An encounter
  entered in error or cancelled is no presentation: it shows no trigger
  (``situation._NO_PRESENTATION``).
* Without the patient's data (no prefetch, FHIR unreachable) a generic info card: the
  nurse still gets the reflex, and nothing is claimed about the patient. The same when
  no warning reason was found but not all of their sources could be read in full (the
  encounter, its conditions or the patient's Flags missing, failed, or one page of
  several): "no reason found" would claim there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

from service.cds.situation import Situation
from service.cds.vocabulary import Code, Vocabulary
from service.protocol import HagueTrigger
from service.tenant_config import HookSettings

Indicator = Literal["info", "warning"]


@dataclass(frozen=True)
class Advice:
    """What the card says, before wording: the reasons of a warning, known children."""

    indicator: Indicator
    triggers: tuple[HagueTrigger, ...] = ()
    open_concern: bool = False
    known_children: int = 0
    patient_data: bool = True

    @property
    def reasons(self) -> tuple[str, ...]:
        """Stable reason codes, in the protocol's order (also passed to the app)."""
        return tuple(t.value for t in self.triggers) + (
            ("open-concern",) if self.open_concern else ()
        )


GENERIC = Advice(indicator="info", patient_data=False)


def local_trigger_codes(hooks: HookSettings) -> dict[HagueTrigger, frozenset[Code]]:
    extra: dict[HagueTrigger, set[Code]] = {}
    for local in hooks.local_trigger_codes:
        extra.setdefault(local.trigger, set()).add(Code(local.system, local.code))
    return {trigger: frozenset(codes) for trigger, codes in extra.items()}


def age_in_years(birth_date: date, today: date) -> int:
    before_birthday = (today.month, today.day) < (birth_date.month, birth_date.day)
    return today.year - birth_date.year - (1 if before_birthday else 0)


def _known_minor(birth_date: date | None, today: date, adult_age: int) -> bool:
    """Whether the record says the patient is a minor. A birth date after today is an
    error in the record, not a minor: in doubt about the age, the card is shown."""
    if birth_date is None or birth_date > today:
        return False
    return age_in_years(birth_date, today) < adult_age


def advise(
    situation: Situation | None, hooks: HookSettings, vocabulary: Vocabulary, today: date
) -> Advice | None:
    """The card to show, or ``None`` for no card. ``vocabulary`` includes local codes."""
    if situation is None:
        return GENERIC
    if _known_minor(situation.birth_date, today, hooks.adult_age):
        return None
    if hooks.once_per_encounter and vocabulary.step_1 in situation.encounter_finding_codes:
        return None
    triggers = vocabulary.triggers_of(situation.presentation_codes)
    open_concern = vocabulary.concern_flag in situation.active_flag_codes
    if not (triggers or open_concern or situation.warning_sources_read):
        return GENERIC
    return Advice(
        indicator="warning" if triggers or open_concern else "info",
        triggers=triggers,
        open_concern=open_concern,
        known_children=situation.known_children,
    )
