"""The partner directory: the services a professional can call or refer to, as data.

Every region has its own partners (seed 002 lists those of Oost-Vlaanderen), so the
directory is a YAML file that a hospital edits, not code. This module loads such a file,
validates it into typed, immutable objects and offers lookups. A bad file raises
:class:`PartnerDirectoryError` whose message names the entry and the field at fault.

The file format (see ``service/data/partners-oost-vlaanderen.yaml``)::

    region: oost-vlaanderen
    entries:
      - id: vk-oost-vlaanderen          # unique, lower-case letters, digits, hyphens
        type: vk                        # a ReferralTarget code of service.protocol
        name: Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen
        description: ...                # optional
        phones:                         # optional; each number in Belgian national form
          - number: 09 216 73 30
            label: Oudenaarde           # optional
        website: https://...            # optional, http(s)
        email: ...                      # optional
        address: ...                    # optional
        opening_hours: ...              # optional, free text
        region: vlaanderen              # optional, defaults to the file's region
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from service.protocol import ReferralTarget

__all__ = [
    "DEFAULT_DIRECTORY_RESOURCE",
    "Partner",
    "PartnerDirectory",
    "PartnerDirectoryError",
    "Phone",
    "load_default_directory",
    "load_directory",
    "parse_directory",
]

#: The default directory shipped with the service (package ``service.data``).
DEFAULT_DIRECTORY_RESOURCE = "partners-oost-vlaanderen.yaml"

_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Belgian national form: a leading 0, then 8 or 9 more digits, spaces allowed between.
_PHONE = re.compile(r"^0[0-9 ]+$")
_ENTRY_FIELDS = frozenset(
    {
        "id",
        "type",
        "name",
        "description",
        "phones",
        "website",
        "email",
        "address",
        "opening_hours",
        "region",
    }
)
_PHONE_FIELDS = frozenset({"number", "label"})


class PartnerDirectoryError(ValueError):
    """The partner directory file is malformed; the message names the entry at fault."""


@dataclass(frozen=True)
class Phone:
    """A phone number as written in Belgium (e.g. ``09 216 73 30``), with a label."""

    number: str
    label: str | None = None

    @property
    def tel_uri(self) -> str:
        """The number as a ``tel:`` URI in international form (``tel:+3292167330``)."""
        digits = self.number.replace(" ", "")
        return f"tel:+32{digits[1:]}"


@dataclass(frozen=True)
class Partner:
    """One service of the directory."""

    id: str
    type: ReferralTarget
    name: str
    region: str
    phones: tuple[Phone, ...] = ()
    description: str | None = None
    website: str | None = None
    email: str | None = None
    address: str | None = None
    opening_hours: str | None = None


@dataclass(frozen=True)
class PartnerDirectory:
    """The partners of one region, in the order of the file."""

    region: str
    partners: tuple[Partner, ...]

    def get(self, partner_id: str) -> Partner | None:
        """The partner with this id, or None."""
        return next((p for p in self.partners if p.id == partner_id), None)

    def by_type(self, partner_type: ReferralTarget) -> tuple[Partner, ...]:
        """All partners of one type (e.g. every CLB), in file order."""
        return tuple(p for p in self.partners if p.type is partner_type)

    @property
    def types(self) -> frozenset[ReferralTarget]:
        """The partner types this directory has at least one entry for."""
        return frozenset(p.type for p in self.partners)


def _text(entry: Mapping[str, object], field: str, where: str) -> str | None:
    """An optional text field: None when absent, else stripped non-empty text."""
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise PartnerDirectoryError(f"{where}: '{field}' must be non-empty text")
    return value.strip()


def _required_text(entry: Mapping[str, object], field: str, where: str) -> str:
    value = _text(entry, field, where)
    if value is None:
        raise PartnerDirectoryError(f"{where}: '{field}' is missing")
    return value


def _phones(value: object, where: str) -> tuple[Phone, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PartnerDirectoryError(f"{where}: 'phones' must be a list")
    phones: list[Phone] = []
    for index, item in enumerate(value, start=1):
        at = f"{where}, phone {index}"
        if not isinstance(item, dict):
            raise PartnerDirectoryError(f"{at}: expected 'number' and optional 'label'")
        unknown = set(item) - _PHONE_FIELDS
        if unknown:
            raise PartnerDirectoryError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        number = item.get("number")
        if not isinstance(number, str):
            raise PartnerDirectoryError(
                f"{at}: 'number' must be text such as \"09 216 73 30\" (quote it in YAML)"
            )
        number = " ".join(number.split())
        digits = number.replace(" ", "")
        if not _PHONE.match(number) or len(digits) not in (9, 10):
            raise PartnerDirectoryError(
                f"{at}: '{number}' is not a Belgian phone number (0 and 8 or 9 more digits)"
            )
        phones.append(Phone(number=number, label=_text(item, "label", at)))
    return tuple(phones)


def _partner(raw: object, index: int, default_region: str) -> Partner:
    where = f"entry {index}"
    if not isinstance(raw, dict):
        raise PartnerDirectoryError(f"{where}: expected a mapping with id, type and name")
    raw_id = raw.get("id")
    if isinstance(raw_id, str):
        where = f"entry {index} ('{raw_id}')"
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        raise PartnerDirectoryError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    partner_id = _required_text(raw, "id", where)
    if not _ID.match(partner_id):
        raise PartnerDirectoryError(f"{where}: id must be lower-case letters, digits and hyphens")
    raw_type = _required_text(raw, "type", where)
    try:
        partner_type = ReferralTarget(raw_type)
    except ValueError:
        known = ", ".join(t.value for t in ReferralTarget)
        raise PartnerDirectoryError(
            f"{where}: unknown type '{raw_type}'; expected one of {known}"
        ) from None
    name = _required_text(raw, "name", where)
    website = _text(raw, "website", where)
    if website is not None and not website.startswith(("https://", "http://")):
        raise PartnerDirectoryError(f"{where}: website must start with https:// or http://")
    email = _text(raw, "email", where)
    if email is not None and "@" not in email:
        raise PartnerDirectoryError(f"{where}: '{email}' is not an e-mail address")
    return Partner(
        id=partner_id,
        type=partner_type,
        name=name,
        region=_text(raw, "region", where) or default_region,
        phones=_phones(raw.get("phones"), where),
        description=_text(raw, "description", where),
        website=website,
        email=email,
        address=_text(raw, "address", where),
        opening_hours=_text(raw, "opening_hours", where),
    )


def parse_directory(data: object, *, source: str = "partner directory") -> PartnerDirectory:
    """Validate already-parsed YAML/JSON data into a :class:`PartnerDirectory`."""
    try:
        if not isinstance(data, dict):
            raise PartnerDirectoryError("expected a mapping with 'region' and 'entries'")
        unknown = set(data) - {"region", "entries"}
        if unknown:
            raise PartnerDirectoryError(f"unknown top-level field(s) {', '.join(sorted(unknown))}")
        region = _required_text(data, "region", "the file")
        entries = data.get("entries")
        if not isinstance(entries, list) or not entries:
            raise PartnerDirectoryError("'entries' must be a non-empty list")
        partners = tuple(_partner(raw, i, region) for i, raw in enumerate(entries, start=1))
        seen: set[str] = set()
        for index, partner in enumerate(partners, start=1):
            if partner.id in seen:
                raise PartnerDirectoryError(f"entry {index} ('{partner.id}'): the id is used twice")
            seen.add(partner.id)
    except PartnerDirectoryError as error:
        raise PartnerDirectoryError(f"{source}: {error}") from None
    return PartnerDirectory(region=region, partners=partners)


def load_directory(path: Path | str) -> PartnerDirectory:
    """Read and validate a partner directory YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PartnerDirectoryError(f"{path}: not valid YAML: {error}") from None
    return parse_directory(data, source=str(path))


def load_default_directory() -> PartnerDirectory:
    """The directory shipped with the service (Oost-Vlaanderen, seed 002)."""
    resource = resources.files("service.data").joinpath(DEFAULT_DIRECTORY_RESOURCE)
    data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return parse_directory(data, source=DEFAULT_DIRECTORY_RESOURCE)
