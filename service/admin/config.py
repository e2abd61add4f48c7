"""Change a tenant's configuration, and configuration as code (YAML).

Every change goes through :meth:`TenantAdmin.save`: the new document is validated as a
whole, client secrets that an export or a form left out are kept (for the same client of
the same EHR only), the plan revision is raised when the plan's wording changed, and the
result is stored as ONE new configuration version (which is also the audit record, see
:mod:`service.admin.changes`).
Nothing is stored when anything is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from service import outbound
from service.admin import access, dependents
from service.config_error import ConfigValueError
from service.tenancy import (
    SecretsUnavailableError,
    TenantContext,
    TenantDirectory,
    UnknownTenantError,
)
from service.tenant_config import (
    SUBMITTED,
    EhrRegistration,
    TenantConfiguration,
    base_url_key,
)
from service.text import LONE_SURROGATE

YAML_HEADER = (
    "# Kindreflex-ED configuration of one hospital (tenant).\n"
    "# Import with: kindreflex config import FILE  (validated completely before anything changes)\n"
    "# Client secrets are never exported: a registration without client_secret keeps the\n"
    "# secret stored for the same registration id, as long as its fhir_base_url, client_id\n"
    "# and client_auth stay the same (else the secret must be given again).\n"
)


@dataclass(frozen=True)
class Reason:
    """Why, in words a screen says in the admin's language: the catalogue message ``code``
    (``admin.problem.…``) with ``values`` filled in — data shown as is, never translated
    (a value, a limit, the YAML parser's own words). ``field``: where inside the problem's
    place, shown as is (a CSV row's column)."""

    code: str
    values: tuple[tuple[str, str], ...] = ()
    field: str = ""

    @classmethod
    def of(cls, code: str, field: str = "", **values: object) -> Reason:
        return cls(code, tuple((k, str(v)) for k, v in values.items()), field)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: where (line, path) and why.

    ``message`` is the English text of the API and the command line; ``reasons`` and
    ``place`` (a partner file's ``("row", 3)`` or ``("entry", 2)``) say the same for a
    screen to translate (``smart_app.admin``)."""

    message: str
    path: str = ""
    line: int | None = None
    reasons: tuple[Reason, ...] = ()
    place: tuple[str, int] | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        at = f"{self.path}: " if self.path else ""
        return f"{where}{at}{self.message}"


class ConfigurationError(ValueError):
    """The configuration is invalid; nothing was changed. ``problems`` says what and where."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


#: The key of a file that names the configuration version it was exported from.
VERSION_KEY = "version"

VERSION_COMMENT = (
    "# version: the configuration version this file was exported from. An import refuses\n"
    "# the file when the configuration has changed since (it would undo that change), unless\n"
    "# kindreflex config import --force. A file kept as the source of truth (in git) leaves\n"
    "# this line out: it is then applied whatever version is in force.\n"
)


def export_yaml(config: TenantConfiguration, version: int | None = None) -> str:
    """The configuration as YAML, client secrets left out; with ``version``, the version it
    is (:func:`read_yaml` reads it back as the file's ``exported_from``)."""
    document = config.model_dump(mode="json")
    for registration in document["registrations"]:
        registration.pop("client_secret", None)
    named = "" if version is None else f"{VERSION_COMMENT}{VERSION_KEY}: {version}\n"
    dumped = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return YAML_HEADER + named + dumped


def parse_yaml(text: str) -> TenantConfiguration:
    """Validate a YAML configuration document; problems carry the file's line numbers.
    A part it leaves out is its default: an import reads a file with :func:`read_yaml`."""
    return validate_document(*_load(text))


#: The parts of a configuration a file to import must write: all but those it cannot
#: leave out anyway (``name``).
PARTS = tuple(
    name for name, field in TenantConfiguration.model_fields.items() if not field.is_required()
)


@dataclass(frozen=True)
class ConfigurationFile:
    """A configuration file to import: the whole configuration it replaces the one in
    force with, and the version it was exported from (its ``version``; None: a file of
    its own, such as one kept in git as the source of truth)."""

    config: TenantConfiguration
    exported_from: int | None = None


def read_yaml(text: str) -> ConfigurationFile:
    """A configuration file to import (``kindreflex config import``, the API's PUT
    config.yaml, the screen's YAML box): :func:`parse_yaml`'s checks, and every part
    (``PARTS``) written. An import replaces the whole configuration (the file is the
    state), so a part left out was emptied or reset to its default: a file holding only
    the name and the hooks deleted the EHR registrations with their client secrets, put
    the partner directory back to Oost-Vlaanderen's and dropped the plan's wording, and
    was reported as saved (found by review). It is refused, saying which parts it lacks
    and how to empty one on purpose (``registrations: []``), with the file's other
    problems.

    A ``version`` (the export writes the version it was taken from) is the file's
    ``exported_from``, a whole number of 1 or more; :meth:`TenantAdmin.save` checks it."""
    data, root = _load(text)
    exported_from, problems = _exported_from(data, root)
    missing = [part for part in PARTS if part not in data]
    problems += [_parts_missing(missing)] if missing else []
    try:
        config = validate_document(data, root)
    except ConfigurationError as error:
        raise ConfigurationError([*problems, *error.problems]) from None
    if problems:
        raise ConfigurationError(problems)
    return ConfigurationFile(config, exported_from)


def _exported_from(data: dict[str, Any], root: Node) -> tuple[int | None, list[Problem]]:
    """The file's ``version``, taken out of ``data`` (it is no part of the configuration)."""
    if VERSION_KEY not in data:
        return None, []
    version = data.pop(VERSION_KEY)
    number = isinstance(version, int) and not isinstance(version, bool)
    if number and version >= 1:
        return version, []
    shown = str(version) if isinstance(version, str | int | float) else _KIND.get(type(version), "")
    shown = shown if len(shown) <= 80 else shown[:79] + "…"
    if number:
        reason = Reason.of("admin.problem.too-small", limit=1, value=shown)
    else:
        reason = Reason.of("admin.problem.not-integer", value=shown)
    problem = Problem(
        "the configuration version the file was exported from is a whole number of 1 or more "
        "(a file without the line is applied whatever version is in force)",
        VERSION_KEY,
        _line_of(root, (VERSION_KEY,)),
        (reason,),
    )
    return None, [problem]


def _parts_missing(missing: Sequence[str]) -> Problem:
    parts = ", ".join(missing)
    empty = "registrations: []"
    return Problem(
        f"the file leaves out {parts}: an import replaces the whole configuration, and a part "
        "left out would be emptied or reset to its default (the EHR registrations with their "
        "client secrets, the partner directory, the plan's wording); write every part, as "
        f"`kindreflex config export` does, and a part you mean to empty as empty ({empty})",
        reasons=(Reason.of("admin.problem.parts-missing", parts=parts, empty=empty),),
    )


def _load(text: str) -> tuple[dict[str, Any], Node]:
    """The YAML document as data, and as nodes (for the lines of its problems)."""
    try:
        root = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        raise ConfigurationError([_syntax_problem(error)]) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        too_deep = Problem("not valid YAML: nested too deeply", reasons=(_YAML_TOO_DEEP,))
        raise ConfigurationError([too_deep]) from None
    if not isinstance(data, dict) or root is None:
        not_a_mapping = Problem(
            "expected a mapping with at least 'name'", line=1, reasons=(_YAML_NO_MAPPING,)
        )
        raise ConfigurationError([not_a_mapping])
    return data, root


#: The largest integer a configuration file may hold (a 64-bit signed one).
MAX_INTEGER_BITS = 63


class _Loader(yaml.SafeLoader):
    """The safe loader, whose values that cannot be built (the date ``2025-02-30``, an
    ``!!int`` that is no number) are YAML errors with their line, not a ValueError, and
    which refuses aliases (``*name``): a configuration has no use for them, and nested
    aliases expand a file of a few hundred bytes into gigabytes (a "billion laughs")
    when the configuration is stored, in the process every hospital shares."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            raise ComposerError(
                None,
                None,
                "an alias (*name) is not accepted here: write the value out",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        """A key written twice in one mapping is refused with both its lines: YAML forbids
        it (1.2, 3.2.1.1), and PyYAML silently keeps the last. A second ``registrations:``
        block added at the end of an exported file dropped the first one's registrations,
        their client secrets with them, and an ``adult_age:`` written twice took the lower
        line's; the import said the new version was in force (found by review). A merge
        key's (``<<``) mapping may still be overridden, as YAML's merge has it."""
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag in _MERGE_TAGS:
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # unhashable: the loader's own refusal, below
                continue
            if first is not key_node:
                raise KeyTwiceError(key, first.start_mark.line + 1, key_node.start_mark)
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if isinstance(node, ScalarNode) and LONE_SURROGATE.search(node.value):
            # YAML's "\\ud800" escape: no text the database or a page holds can carry it
            raise ConstructorError(
                None,
                None,
                "the value cannot be read: it holds half a character (an escape "
                "\\ud800 to \\udfff without its other half)",
                node.start_mark,
            )
        try:
            value = super().construct_object(node, deep)
        except ValueError as error:
            shown = f"'{node.value}' " if isinstance(node, ScalarNode) else ""
            raise ConstructorError(
                None, None, f"the value {shown}cannot be read ({error})", node.start_mark
            ) from None
        if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
            # YAML's hexadecimal, octal and binary integers have no digit limit: a number
            # of thousands of digits passed, and its message (str of it) was a 500 (found
            # by fuzzing). No setting is anywhere near this large.
            raise ConstructorError(None, None, "the number is too large", node.start_mark)
        return value


_MERGE_TAGS = frozenset({"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})

#: The longest key a refusal shows whole.
_KEY_SHOWN = 80


class KeyTwiceError(ConstructorError):
    """A key written twice in one mapping: on ``first_line`` and at ``mark`` (the second)."""

    def __init__(self, key: object, first_line: int, mark: Any) -> None:
        shown = str(key) if len(str(key)) <= _KEY_SHOWN else str(key)[: _KEY_SHOWN - 1] + "…"
        super().__init__(
            None,
            None,
            f"the key '{shown}' is written twice in one mapping (first on line {first_line}); "
            "a key may be written once: keep one of them",
            mark,
        )
        self.key = shown
        self.first_line = first_line


def _syntax_problem(error: yaml.YAMLError) -> Problem:
    """Where the broken construct starts (an unclosed ``[``), and where it was noticed."""
    problem = getattr(error, "problem_mark", None)
    context = getattr(error, "context_mark", None) or problem
    reason = getattr(error, "problem", None) or str(error)
    if problem is not None and context is not None and problem.line != context.line:
        reason += f" (noticed on line {problem.line + 1})"
    if isinstance(error, KeyTwiceError):
        said = Reason.of("admin.problem.yaml-key-twice", key=error.key, line=error.first_line)
    else:
        said = Reason.of("admin.problem.yaml-syntax", detail=reason)
    return Problem(
        f"not valid YAML: {reason}", line=context.line + 1 if context else None, reasons=(said,)
    )


_YAML_TOO_DEEP = Reason("admin.problem.yaml-too-deep")
_YAML_NO_MAPPING = Reason("admin.problem.yaml-no-mapping")


def validate_document(data: Any, root: Node | None = None) -> TenantConfiguration:
    """Validate a configuration document (parsed JSON or YAML) into the typed model, with
    the checks of a submitted configuration (``SUBMITTED``)."""
    try:
        return TenantConfiguration.model_validate(data, context=SUBMITTED)
    except ValidationError as error:
        problems = []
        for issue in error.errors(include_url=False):
            # a check of the whole configuration names the place itself: the problem's
            where = issue["loc"] or _inside(issue)
            reason = issue_reason(issue, None if issue["loc"] else "")
            line = _line_of(root, where) if root else None
            problems.append(Problem(_message(issue), _dotted(where), line, (reason,)))
        raise ConfigurationError(problems) from None


def _inside(issue: Any) -> tuple[str | int, ...]:
    own = issue.get("ctx", {}).get("error")
    return own.loc if isinstance(own, ConfigValueError) else ()


def _message(issue: Any) -> str:
    if issue["type"] == "extra_forbidden":
        return "unknown field"
    return str(issue["msg"]).removeprefix("Value error, ")


#: pydantic's error types → the catalogue's message, and which of the error's ``ctx``
#: values it shows (as ``limit``/``expected``); any other type says "rejected" with
#: pydantic's (English) words as data. Our own validators' errors carry their own code
#: (``service.config_error``).
_ISSUE_REASONS: dict[str, tuple[str, str]] = {
    "extra_forbidden": ("unknown-field", ""),
    "missing": ("missing", ""),
    "int_parsing": ("not-integer", ""),
    "int_type": ("not-integer", ""),
    "int_from_float": ("not-integer", ""),
    "bool_parsing": ("not-boolean", ""),
    "bool_type": ("not-boolean", ""),
    "string_type": ("not-text", ""),
    "list_type": ("not-list", ""),
    "dict_type": ("not-object", ""),
    "model_type": ("not-object", ""),
    "model_attributes_type": ("not-object", ""),
    "greater_than_equal": ("too-small", "ge"),
    "less_than_equal": ("too-large", "le"),
    "string_too_short": ("too-short", "min_length"),
    "string_too_long": ("too-long", "max_length"),
    "string_pattern_mismatch": ("pattern", "pattern"),
    "literal_error": ("not-allowed", "expected"),
    "enum": ("not-allowed", "expected"),
}


#: The fields whose pattern a refusal says in words (``admin.problem.pattern-<field>``):
#: its regular expression (``^[a-z0-9][a-z0-9-]{0,62}$``) told an administrator nothing.
_PATTERN_SAID = {"id": "pattern-id", "cbe": "pattern-cbe"}


#: What a value that is no text or number is, shown in its place (JSON's and YAML's words).
_KIND: dict[type, str] = {dict: "{…}", list: "[…]", type(None): "null", bool: "true/false"}


def issue_reason(issue: Any, field: str | None = None) -> Reason:
    """One pydantic error as a Reason, with the value at fault (a long one shortened).

    ``field``: where inside the problem's place; None: for our own validators' errors,
    the place they name inside the value they checked (``entries[2].website``).
    """
    own = issue.get("ctx", {}).get("error")
    if isinstance(own, ConfigValueError):
        where = _dotted(own.loc) if field is None else field
        return Reason.of(f"admin.problem.{own.code}", where, **own.params)
    code, limit = _ISSUE_REASONS.get(issue["type"], ("rejected", ""))
    named = [part for part in issue.get("loc", ()) if isinstance(part, str)]
    if code == "pattern" and named and named[-1] in _PATTERN_SAID:
        code, limit = _PATTERN_SAID[named[-1]], ""  # the form in words, not the expression
    values: dict[str, object] = {}
    if limit:
        values["limit"] = issue.get("ctx", {}).get(limit, "")
    if code == "rejected":
        values["detail"] = _message(issue)
    given = issue.get("input")
    shown = str(given) if isinstance(given, str | int | float) else _KIND.get(type(given), "")
    values["value"] = shown if len(shown) <= 80 else shown[:79] + "…"
    return Reason.of(f"admin.problem.{code}", field or "", **values)


def _dotted(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _line_of(node: Node, location: Sequence[int | str]) -> int:
    """The 1-based line of the deepest YAML node on ``location`` (pydantic's error path)."""
    for part in location:
        child: Node | None = None
        if isinstance(node, MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
            if child is None:  # an unknown or missing key: point at the key, else the parent
                key = next((k for k, _ in node.value if k.value == str(part)), None)
                return (key or node).start_mark.line + 1
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


class StaleConfigurationError(RuntimeError):
    """The change was based on an older version than the one in force; nothing was saved."""

    def __init__(self, current_version: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the configuration was changed meanwhile (now version {current_version}); "
            "nothing was saved: reload and make the change again"
        )
        self.current_version = current_version


class StaleFileError(StaleConfigurationError):
    """A file to import was exported from ``exported_from``, and another version is in
    force: importing it would undo the changes made since; nothing was saved."""

    def __init__(self, exported_from: int, current_version: int) -> None:
        super().__init__(
            current_version,
            f"the file was exported from version {exported_from}, and version "
            f"{current_version} is in force now: importing it would undo what was changed "
            "since; nothing was saved: export the configuration again and make the change on "
            "that export, or take the file's `version` line out to replace the configuration "
            "with the file as it is",
        )
        self.exported_from = exported_from


class RegistrationsInUseError(Exception):
    """The change removes or moves (another FHIR server, the same id) registrations that
    undelivered writes or open cases depend on (``stranded``); nothing was saved."""

    def __init__(self, stranded: Sequence[dependents.Stranded]) -> None:
        super().__init__("; ".join(s.refusal("force the change") for s in stranded))
        self.stranded = tuple(stranded)

    @property
    def depending(self) -> dependents.Dependents:
        """All that depends on them: what an admin is shown, and forces (``TenantAdmin.save``)."""
        return sum((s.depending for s in self.stranded), dependents.Dependents())


#: How a save treats registrations it removes or moves while anything depends on them:
#: False refuses (RegistrationsInUseError), True goes ahead, a Dependents goes ahead unless
#: more depends on them now than that (what the admin was shown and confirmed).
Force = bool | dependents.Dependents


class TenantAdmin:
    """The administrator's changes to one deployment's tenants."""

    def __init__(self, tenants: TenantDirectory) -> None:
        self.tenants = tenants
        #: What the last save removed or moved anyway (forced), as recorded in the events.
        self.forced: tuple[dependents.Stranded, ...] = ()

    def current(self, slug: str) -> TenantContext | None:
        """The version in force as the database holds it now: a change is checked against
        it and made on it. This process's copy may be a moment old, and the change's
        ``If-Match`` (the version another instance just gave) was refused as stale against
        an older one (found by review)."""
        try:
            return self.tenants.get(slug, fresh=True)
        except UnknownTenantError:
            return None

    def save(
        self,
        slug: str,
        config: TenantConfiguration,
        actor: str,
        based_on: int | None = None,
        exported_from: int | None = None,
        force: Force = False,
    ) -> TenantContext:
        """Store ``config`` as a new version unless it changes nothing (ConfigurationError).

        ``based_on``: the version the change was made on; a newer one in force raises
        StaleConfigurationError, so that one admin never silently undoes another's change.

        ``exported_from``: the version a file to import names (its ``version``); another
        in force raises StaleFileError, before the file's own problems, unless the file
        changes nothing. An export imported after another admin's change silently undid
        that change (found by review). A new hospital has nothing to undo. Checked here, as
        ``based_on`` is: a change saved between this check and the store meets the unique
        version (StaleConfigurationError).

        ``force``: a registration the change removes, or moves to another FHIR server, while
        undelivered writes or open cases depend on it raises RegistrationsInUseError unless
        forced (:data:`Force`), counted against ``config`` (:func:`dependents.stranded_by`).
        Checked here so that every way to change the configuration asks (found by review:
        an import removed what the registration's own removal refused); forced, each is an
        admin event. The count and the store are not one transaction, as for a removal."""
        current = self.current(slug)
        if based_on is not None and current is not None and current.version != based_on:
            raise StaleConfigurationError(current.version)
        moved_on = None
        if exported_from is not None and current is not None and current.version != exported_from:
            moved_on = StaleFileError(exported_from, current.version)
        previous = current.config if current else None
        try:
            _refuse_hosts_not_allowed(config)
            self._refuse_clients_of_other_hospitals(slug, config, previous)
            config = _with_plan_revision(_with_kept_secrets(config, previous), previous)
        except ConfigurationError:
            if moved_on is not None:  # a file of an older version: exported again first
                raise moved_on from None
            raise
        if current is not None and config == current.config:
            return current
        if moved_on is not None:
            raise moved_on
        stranded = self._stranded(current, config, force)
        try:
            replaces = current.version if current is not None else 0
            context = self.tenants.save(slug, config, actor, replaces=replaces)
        except SecretsUnavailableError as error:
            reason = Reason.of("admin.problem.rejected", detail=error)
            raise ConfigurationError(
                [Problem(str(error), "registrations", reasons=(reason,))]
            ) from None
        except IntegrityError:  # another save took the same version number first
            raise StaleConfigurationError(self.tenants.get(slug, fresh=True).version) from None
        self._record_forced(context, actor, stranded)
        return context

    def _stranded(
        self, current: TenantContext | None, config: TenantConfiguration, force: Force
    ) -> list[dependents.Stranded]:
        """What ``config`` strands (removed or moved registrations something depends on);
        RegistrationsInUseError unless ``force`` covers it."""
        if current is None:  # a new hospital: nothing depends on it yet
            return []
        stranded = dependents.stranded_by(self.tenants.database, current.id, current.config, config)
        if not stranded:
            return []
        refused = RegistrationsInUseError(stranded)
        shown_less = isinstance(force, dependents.Dependents) and refused.depending.more_than(force)
        if force is False or shown_less:
            raise refused
        return stranded

    def _record_forced(
        self, context: TenantContext, actor: str, stranded: list[dependents.Stranded]
    ) -> None:
        """An admin event per registration removed or moved anyway, with what depended on
        it: the version's audit shows the change, not what it left undelivered."""
        self.forced = tuple(stranded)
        if not stranded:
            return
        with self.tenants.database.session() as session:
            for s in stranded:
                moved = {} if s.moved_to is None else {"moved_to": s.moved_to}
                action = "registration-removed-anyway" if not moved else "registration-moved-anyway"
                access.record_event(
                    session, context.id, actor, action,
                    registration=s.registration.id, **moved, **s.depending.as_json(),
                )  # fmt: skip

    def _refuse_clients_of_other_hospitals(
        self, slug: str, config: TenantConfiguration, previous: TenantConfiguration | None
    ) -> None:
        """An EHR client (its FHIR base and client id) newly registered here that another
        hospital of this deployment registers already is refused. Our signing key is one
        for the deployment: a sign-in started under this hospital with the other's client
        would be accepted by its EHR, and what the other hospital's clinician then records
        would land on this hospital's worklist (found by review). Which hospital is not
        said. A pair this hospital already had is left alone (stored before the check).
        The bases are compared as keys (``base_url_key``): written another way, the other
        hospital's client passed (found by review)."""
        had = {_client_key(r) for r in previous.registrations} if previous else set()
        new = {
            index: (r.fhir_base_url, r.client_id)
            for index, r in enumerate(config.registrations)
            if _client_key(r) not in had
        }
        if not new:
            return
        elsewhere = {
            _client_key(r)
            for other in self.tenants.slugs()
            if other != slug and (found := self.current(other)) is not None
            for r in found.config.registrations
        }
        problems = [
            Problem(
                f"the client {client_id} of {base} is registered by another hospital of this "
                "service: one EHR client serves one hospital",
                f"registrations[{index}].client_id",
                reasons=(Reason.of("admin.problem.client-elsewhere", client=client_id, url=base),),
            )
            for index, (base, client_id) in new.items()
            if (base_url_key(base), client_id) in elsewhere
        ]
        if problems:
            raise ConfigurationError(problems)

    def import_yaml(
        self, slug: str, text: str, actor: str, *, force: bool = False
    ) -> TenantContext:
        """Replace the configuration with a file's (:func:`read_yaml`); one naming a version
        that is no longer in force is refused (StaleFileError), and one removing or moving
        a registration something depends on (RegistrationsInUseError), unless ``force``:
        one flag for both (the file is applied as it is, what it strands recorded)."""
        file = read_yaml(text)
        exported_from = None if force else file.exported_from
        return self.save(slug, file.config, actor, exported_from=exported_from, force=force)


def _with_kept_secrets(
    config: TenantConfiguration, previous: TenantConfiguration | None
) -> TenantConfiguration:
    """A registration without a secret keeps the stored one (exports and forms omit it) —
    but only for the same client of the same EHR: its ``fhir_base_url``, ``client_id`` and
    ``client_auth`` unchanged.

    The secret is sent (HTTP Basic) to the token endpoint that ``fhir_base_url``
    advertises, and an admin never sees it. Were it kept when the registration points
    elsewhere, an admin could repoint it at their own server and read the secret there.
    So, like a browser's saved password that is not filled in on another site, it is
    not carried over: a save that still needs a secret (``client_secret_basic``) is
    refused until the secret is entered again; one that no longer needs it drops it.
    """
    kept = {r.id: r for r in previous.registrations} if previous else {}
    registrations: list[EhrRegistration] = []
    problems: list[Problem] = []
    for index, registration in enumerate(config.registrations):
        old = kept.get(registration.id)
        if (
            old is not None
            and registration.client_secret is None
            and _client(old) == _client(registration)
        ):
            registration = registration.model_copy(update={"client_secret": old.client_secret})
        if registration.client_auth == "client_secret_basic" and registration.client_secret is None:
            problems.append(_secret_needed(index, old))
        registrations.append(registration)
    # two registrations of one id are the configuration's own refusal (TenantConfiguration)
    if problems:
        raise ConfigurationError(problems)
    return config.model_copy(update={"registrations": registrations})


def _refuse_hosts_not_allowed(config: TenantConfiguration) -> None:
    """Every URL the service will connect to (a FHIR base, a CDS issuer's ``jku``) within
    the platform's outbound policy (:mod:`service.outbound`), checked by its host as
    written; the connection checks again after resolving it. All URLs of the document are
    checked, not only changed ones: one the policy no longer allows would fail anyway."""
    problems: list[Problem] = []
    for index, registration in enumerate(config.registrations):
        urls = [(f"registrations[{index}].fhir_base_url", registration.fhir_base_url)]
        urls += [
            (f"registrations[{index}].cds_issuers[{i}].jku[{j}]", jku)
            for i, issuer in enumerate(registration.cds_issuers)
            for j, jku in enumerate(issuer.jku)
        ]
        for path, url in urls:
            refusal = outbound.url_refusal(url)
            if refusal is not None:
                host = urlsplit(url).hostname or url
                problems.append(
                    Problem(
                        f"the service may not connect to {host}: {refusal}",
                        path,
                        reasons=(Reason.of(f"admin.problem.outbound-{refusal.kind}", host=host),),
                    )
                )
    if problems:
        raise ConfigurationError(problems)


def _client_key(registration: EhrRegistration) -> tuple[str, str]:
    """Which EHR client a registration is, however its FHIR base is written."""
    return base_url_key(registration.fhir_base_url), registration.client_id


def _client(registration: EhrRegistration) -> tuple[str, str, str]:
    """Where a client secret goes and whose it is: the stored one is kept while this stays.
    The base as a key (``base_url_key``): the same server written another way (its host in
    capitals, a user name taken out as the admin is asked to) asked for the secret again."""
    return (*_client_key(registration), registration.client_auth)


def _secret_needed(index: int, old: EhrRegistration | None) -> Problem:
    path = f"registrations[{index}].client_secret"
    if old is not None and old.client_secret is not None:
        return Problem(
            "fhir_base_url, client_id or client_auth changed: enter the client secret again "
            "(the stored one is only kept for the same client of the same EHR)",
            path,
            reasons=(Reason("admin.problem.secret-again"),),
        )
    return Problem(
        "client_secret_basic needs a client_secret (or use private_key_jwt)",
        path,
        reasons=(Reason("admin.problem.secret-needed"),),
    )


def _with_plan_revision(
    config: TenantConfiguration, previous: TenantConfiguration | None
) -> TenantConfiguration:
    """Raise the plan revision when the wording changed; findings record the revision shown."""
    if previous is None:
        return config
    old, new = previous.plan, config.plan
    if (new.steps, new.choices) == (old.steps, old.choices):
        return config.model_copy(update={"plan": old})
    plan = new.model_copy(update={"revision": old.revision + 1})
    return config.model_copy(update={"plan": plan})
