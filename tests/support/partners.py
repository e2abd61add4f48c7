"""Partner directories for the tests: a minimal directory file to spoil one field of, and
the shipped directory's VK as the admin's export publishes it."""

from __future__ import annotations

import copy
from typing import Any

from service.admin.partners_io import organization
from service.tenant_config import default_partners

#: A partner directory file with the least in it: one VK and one CAW of another region.
MINIMAL_DIRECTORY: dict[str, Any] = {
    "region": "test-region",
    "entries": [
        {
            "id": "vk-test",
            "type": "vk",
            "name": "VK Test",
            "phones": [{"number": "09 216 73 30", "label": "Gent"}],
            "website": "https://example.be/",
        },
        {"id": "caw-test", "type": "caw", "name": "CAW Test", "region": "elsewhere"},
    ],
}


def with_entry(**changes: Any) -> dict[str, Any]:
    """MINIMAL_DIRECTORY with ``changes`` to its first entry (a copy)."""
    data = copy.deepcopy(MINIMAL_DIRECTORY)
    data["entries"][0].update(changes)
    return data


def vk_organization() -> dict[str, Any]:
    """The VK of the default directory as the admin's export publishes it."""
    (entry,) = [e for e in default_partners().entries if e.id == "vk-oost-vlaanderen"]
    return organization(entry)
