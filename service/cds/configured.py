"""What the hook calls derive from one version of a hospital's configuration, built once.

The vocabulary (the guide's trigger codes with the hospital's own added) and the cards'
wording change only when an administrator saves a new configuration version. The CDS
path asks ``ConfiguredHooks.of`` on every call; it rebuilds a hospital's entry only when
the version it gets from ``service.tenancy`` differs from the one it built.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.cds.cards import CardBook
from service.cds.rules import local_trigger_codes
from service.cds.vocabulary import Vocabulary, guide_vocabulary
from service.tenancy import TenantContext
from service.tenant_config import HookSettings


@dataclass(frozen=True)
class HookConfiguration:
    """One hospital's hook settings at one configuration version, ready for the rules."""

    version: int
    hooks: HookSettings
    vocabulary: Vocabulary
    cards: CardBook


class ConfiguredHooks:
    """The ``HookConfiguration`` of each hospital, by tenant id, at its latest version."""

    def __init__(self) -> None:
        self._by_tenant: dict[int, HookConfiguration] = {}

    def of(self, tenant: TenantContext) -> HookConfiguration:
        configured = self._by_tenant.get(tenant.id)
        if configured is None or configured.version != tenant.version:
            configured = self._by_tenant[tenant.id] = _configure(tenant)
        return configured


def _configure(tenant: TenantContext) -> HookConfiguration:
    hooks = tenant.config.hooks
    vocabulary = guide_vocabulary().with_local_codes(local_trigger_codes(hooks))
    return HookConfiguration(tenant.version, hooks, vocabulary, CardBook(hooks, vocabulary))
