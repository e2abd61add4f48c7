"""The guide's codes the card rules look for, read through ``service.fhir.terminology``.

A small, hashable view built once per process: the Hague trigger ValueSets as
(system, code) sets, the step-1 finding code, the open-concern Flag code, and the
CodeSystem of the card's override reasons (``cds-override-reason``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import NamedTuple

from service.fhir import terminology
from service.protocol import HagueTrigger, Step
from service.tenant_config import OVERRIDE_REASONS

#: The guide's record-type code of an open Kindreflex concern (a Flag.code).
OPEN_CONCERN_CODE = "open-concern"


class Code(NamedTuple):
    """A (system, code) pair, the identity of a Coding. (A tuple: built and hashed for every
    Coding of a hook call's prefetch, where a dataclass cost several times as much.)"""

    system: str
    code: str


@dataclass(frozen=True)
class Vocabulary:
    """What the rules recognise: trigger codes, the step-1 finding, the open-concern flag."""

    triggers: Mapping[HagueTrigger, frozenset[Code]]
    step_system: str
    concern_flag: Code
    override_reason_system: str
    #: language → code → the override reason's Coding (system, code, the guide's display)
    override_reasons: Mapping[str, Mapping[str, Mapping[str, str]]]

    @cached_property
    def step_1(self) -> Code:
        return Code(self.step_system, Step.STEP_1.value)

    def triggers_of(self, codes: frozenset[Code]) -> tuple[HagueTrigger, ...]:
        """The triggers with one of ``codes``, in the protocol's order (``triggers``')."""
        return tuple(t for t, members in self.triggers.items() if members & codes)

    def with_local_codes(self, extra: Mapping[HagueTrigger, frozenset[Code]]) -> Vocabulary:
        """This vocabulary with a hospital's own trigger codes added."""
        if not extra:
            return self
        merged = {t: codes | extra.get(t, frozenset()) for t, codes in self.triggers.items()}
        return dataclasses.replace(self, triggers=merged)


def vocabulary_of(guide: terminology.Guide) -> Vocabulary:
    value_sets = guide.hague_trigger_value_sets()
    triggers = {
        trigger: frozenset(Code(s, c) for s, c in value_sets[trigger.value].members)
        for trigger in HagueTrigger
    }
    concern = guide.code_system("record-type").concept(OPEN_CONCERN_CODE)
    overrides = guide.code_system(OVERRIDE_REASONS)
    languages: tuple[terminology.Lang, ...] = ("nl", "fr", "en")
    return Vocabulary(
        triggers=triggers,
        step_system=guide.code_system("kindreflex-step").url,
        concern_flag=Code(concern.system, concern.code),
        override_reason_system=overrides.url,
        override_reasons={
            lang: {code: guide.coding(overrides.id, code, lang) for code in overrides.codes}
            for lang in languages
        },
    )


@lru_cache(maxsize=1)
def guide_vocabulary() -> Vocabulary:
    """The vocabulary of the guide this deployment ships (built once per process)."""
    return vocabulary_of(terminology.guide())
