"""The partner directory: the services a professional can call or refer to, as data.

Every region has its own partners (seed 002 lists those of Oost-Vlaanderen), so the
directory is a YAML file that a hospital edits, not code. This module loads such a file,
validates it into typed, immutable objects and offers lookups. A bad file raises
:class:`PartnerDirectoryError` whose message names the entry and the field at fault.

The file format (see ``service/data/partners-oost-vlaanderen.yaml``)::

    region: oost-vlaanderen
    entries:
      - id: vk-oost-vlaanderen          # unique, lower-case letters, digits, hyphens,
                                        # at most 64 characters
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

from service.config_error import ConfigValueError, Loc
from service.protocol import ReferralTarget
from service.text import CODE_MAX_LENGTH, CODE_SHAPE

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

# Belgian national form: a leading 0, then 8 or 9 more digits, spaces allowed between; or a
# Belgian short number (101 the police, 112, 1712 the helpline for violence, 1813), which
# a hospital may list and which has no national form.
_PHONE = re.compile(r"^0[0-9 ]+$")
_SHORT_NUMBER = re.compile(r"^1[0-9]{2,3}$")
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


class PartnerDirectoryError(ConfigValueError):
    """The partner directory file is malformed; the message names the entry at fault, and
    ``code``, ``params`` and ``loc`` say the same for a screen (``service.config_error``)."""

    def within(self, source: str) -> PartnerDirectoryError:
        """The same error, its message prefixed with the file (or document) it is in."""
        return PartnerDirectoryError(f"{source}: {self}", self.code, self.loc, **self.params)


@dataclass(frozen=True)
class _At:
    """Where a rule is broken: in the English message's words (``entry 2 ('vk-gent')``)
    and as a path into the directory (``("entries", 1)``) that a screen shows as is."""

    words: str
    loc: Loc = ()

    def error(
        self, what: str, code: str, *path: str | int, **params: object
    ) -> PartnerDirectoryError:
        return PartnerDirectoryError(f"{self.words}: {what}", code, self.loc + path, **params)


@dataclass(frozen=True)
class Phone:
    """A phone number as written in Belgium (e.g. ``09 216 73 30``), with a label."""

    number: str
    label: str | None = None

    @property
    def tel_uri(self) -> str:
        """The number as a ``tel:`` URI in international form (``tel:+3292167330``); a short
        number has none and is dialled as it is (``tel:101``)."""
        digits = self.number.replace(" ", "")
        return f"tel:+32{digits[1:]}" if digits.startswith("0") else f"tel:{digits}"


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


def _text(entry: Mapping[str, object], field: str, at: _At) -> str | None:
    """An optional text field: None when absent, else stripped non-empty text."""
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise at.error(f"'{field}' must be non-empty text", "empty-text", field)
    return value.strip()


def _required_text(entry: Mapping[str, object], field: str, at: _At) -> str:
    value = _text(entry, field, at)
    if value is None:
        raise at.error(f"'{field}' is missing", "missing", field)
    return value


def _unknown(fields: set[str]) -> str:
    return ", ".join(sorted(fields))


def _phones(value: object, where: _At) -> tuple[Phone, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error("'phones' must be a list", "phones-not-list", "phones")
    phones: list[Phone] = []
    for index, item in enumerate(value, start=1):
        at = _At(f"{where.words}, phone {index}", (*where.loc, "phones", index - 1))
        if not isinstance(item, dict):
            raise at.error("expected 'number' and optional 'label'", "phone-not-mapping")
        unknown = set(item) - _PHONE_FIELDS
        if unknown:
            fields = _unknown(unknown)
            raise at.error(f"unknown field(s) {fields}", "unknown-fields", fields=fields)
        number = item.get("number")
        if not isinstance(number, str):
            raise at.error(
                "'number' must be text such as \"09 216 73 30\" (quote it in YAML)",
                "phone-not-text",
                "number",
            )
        number = " ".join(number.split())
        digits = number.replace(" ", "")
        national = _PHONE.match(number) is not None and len(digits) in (9, 10)
        if not national and not _SHORT_NUMBER.match(number):
            raise at.error(
                f"'{number}' is not a Belgian phone number (0 and 8 or 9 more digits, or a "
                "short number such as 101 or 1712)",
                "phone-not-belgian",
                "number",
                value=number,
            )
        phones.append(Phone(number=number, label=_text(item, "label", at)))
    return tuple(phones)


def _partner(raw: object, index: int, default_region: str) -> Partner:
    where = _At(f"entry {index}", ("entries", index - 1))
    if not isinstance(raw, dict):
        raise where.error("expected a mapping with id, type and name", "partner-not-mapping")
    raw_id = raw.get("id")
    if isinstance(raw_id, str):
        where = _At(f"entry {index} ('{raw_id}')", where.loc)
    unknown = set(raw) - _ENTRY_FIELDS
    if unknown:
        fields = _unknown(unknown)
        raise where.error(f"unknown field(s) {fields}", "unknown-fields", fields=fields)
    partner_id = _required_text(raw, "id", where)
    if len(partner_id) > CODE_MAX_LENGTH:
        # step 6 names its partner by a code of at most this length (service.text.Code):
        # an entry with a longer id could be listed but never chosen
        raise where.error(
            f"id must be at most {CODE_MAX_LENGTH} characters",
            "too-long",
            "id",
            limit=CODE_MAX_LENGTH,
        )
    if not CODE_SHAPE.fullmatch(partner_id):
        raise where.error(
            "id must be lower-case letters, digits and hyphens",
            "partner-id",
            "id",
            value=partner_id,
        )
    raw_type = _required_text(raw, "type", where)
    try:
        partner_type = ReferralTarget(raw_type)
    except ValueError:
        known = ", ".join(t.value for t in ReferralTarget)
        raise where.error(
            f"unknown type '{raw_type}'; expected one of {known}",
            "not-allowed",
            "type",
            value=raw_type,
            limit=known,
        ) from None
    name = _required_text(raw, "name", where)
    website = _text(raw, "website", where)
    if website is not None and not website.startswith(("https://", "http://")):
        raise where.error(
            "website must start with https:// or http://", "website", "website", value=website
        )
    email = _text(raw, "email", where)
    if email is not None and "@" not in email:
        raise where.error(f"'{email}' is not an e-mail address", "email", "email", value=email)
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
            raise PartnerDirectoryError(
                "expected a mapping with 'region' and 'entries'", "directory-not-mapping"
            )
        unknown = set(data) - {"region", "entries"}
        if unknown:
            fields = _unknown(unknown)
            raise PartnerDirectoryError(
                f"unknown top-level field(s) {fields}", "unknown-fields", fields=fields
            )
        region = _required_text(data, "region", _At("the file"))
        entries = data.get("entries")
        if not isinstance(entries, list) or not entries:
            raise PartnerDirectoryError(
                "'entries' must be a non-empty list", "no-entries", ("entries",)
            )
        partners = tuple(_partner(raw, i, region) for i, raw in enumerate(entries, start=1))
        seen: set[str] = set()
        for index, partner in enumerate(partners, start=1):
            if partner.id in seen:
                at = _At(f"entry {index} ('{partner.id}')", ("entries", index - 1))
                raise at.error("the id is used twice", "id-twice", "id", id=partner.id)
            seen.add(partner.id)
    except PartnerDirectoryError as error:
        raise error.within(source) from None
    return PartnerDirectory(region=region, partners=partners)


def load_directory(path: Path | str) -> PartnerDirectory:
    """Read and validate a partner directory YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PartnerDirectoryError(
            f"{path}: not valid YAML: {error}", "yaml-syntax", detail=error
        ) from None
    return parse_directory(data, source=str(path))


def load_default_directory() -> PartnerDirectory:
    """The directory shipped with the service (Oost-Vlaanderen, seed 002)."""
    resource = resources.files("service.data").joinpath(DEFAULT_DIRECTORY_RESOURCE)
    data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return parse_directory(data, source=DEFAULT_DIRECTORY_RESOURCE)
