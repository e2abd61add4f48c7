"""Text as the service keeps it, whether a person typed it or a FHIR server sent it.

The rule, one for the whole service:

- **Free text a person typed** (a name, a reason, a note) is *cleaned*
  (:func:`typed_text`): control characters and invisible characters at its ends are
  removed, tabs and line breaks inside stay. The person cannot see what was removed, so a
  refusal would be a riddle; a value with nothing left is no value (:data:`OptionalText`).
- **A value that names or codes something** (a reference, a code, a sign-in name) is
  *refused* when it is not one line (:func:`is_one_line`), never changed: a changed
  identifier would name something else.

FHIR strings may not hold control characters other than tab and line breaks, and
PostgreSQL cannot store a NUL; both rules keep such characters out of what we write.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_INVISIBLE = r"[\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
_EDGES = re.compile(rf"^{_INVISIBLE}+|{_INVISIBLE}+$")


#: A lone UTF-16 surrogate: JSON and YAML may write one as an escape (``\\ud800``), and
#: Python's parsers keep it, but UTF-8 cannot encode it (no page, row or FHIR write holds it).
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_bom(body: bytes) -> bytes:
    """A JSON request body without the UTF-8 byte order mark it may open with. RFC 8259
    §8.1 lets a parser ignore one rather than treat it as an error, and tools on Windows
    write one (a file saved as "UTF-8 with BOM", Windows PowerShell's UTF8): orjson and
    pydantic refuse it, so such a hook call or admin upload was refused as not JSON. (The
    social API's body models are parsed by Python's json, which ignores it already.)"""
    return body.removeprefix(codecs.BOM_UTF8)


def typed_text(value: str) -> str:
    """Text without control characters (a NUL cannot be stored in PostgreSQL, a FHIR server
    refuses it, and no keyboard types it) and without blank or invisible characters at its
    ends (a name of only zero-width spaces is no name). Line breaks and tabs stay."""
    return _EDGES.sub("", _CONTROL.sub("", value))


#: What a one-line value (a name in the audit, a code, a JWT's jti) cannot hold: control
#: characters (a NUL cannot be stored in PostgreSQL, a line break would forge a line of an
#: audit read as text), lone surrogates (not encodable) and line or paragraph separators:
#: Unicode's categories Cc, Cs, Zl and Zp, as one expression (it runs on the CDS hot path).
_NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def is_one_line(value: str) -> bool:
    """Whether ``value`` can be recorded as one line of text, as it is (nothing removed)."""
    return _NOT_ONE_LINE.search(value) is None


def _nothing_left_is_none(value: str | None) -> str | None:
    return None if value is None else typed_text(value) or None


def _one_line(value: str) -> str:
    if not is_one_line(value):
        raise ValueError("must be one line, without control characters")
    return value


#: Free text a person typed, in an API body: cleaned.
TypedText = Annotated[str, AfterValidator(typed_text)]
#: Optional free text a person typed: cleaned; nothing left is None.
OptionalText = Annotated[str | None, AfterValidator(_nothing_left_is_none)]
#: A reference or other identifier in an API body: refused unless one line.
OneLine = Annotated[str, AfterValidator(_one_line)]

#: The shape of a code of the guide's catalogues and of an id of a partner directory:
#: lower-case letters and digits, words joined by single hyphens.
CODE_SHAPE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
#: The longest code an API body may name: a FHIR id's limit (the guide's are at most 30).
CODE_MAX_LENGTH = 64
#: A code or id in an API body: refused when longer or of another shape before it is
#: looked up, so that no refusal repeats a huge value.
Code = Annotated[str, StringConstraints(max_length=CODE_MAX_LENGTH, pattern=CODE_SHAPE.pattern)]


#: The worklist keeps a person's name (a patient's, a user's) in a column this long.
WORKLIST_DISPLAY_LENGTH = 200


def worklist_display(name: str) -> str:
    """A person's name as the worklist keeps it: clean, and cut to its column (a name from
    an identity provider or a FHIR server has no length limit; a save must not fail on it).
    """
    return typed_text(name)[:WORKLIST_DISPLAY_LENGTH]


def user_display(fhir_user: str, name: str) -> str | None:
    """A signed-in user's name as the worklist keeps it, None when the launch named no one:
    a session without a name from the identity provider carries the ``fhirUser`` reference
    as its name (``smart_app.launch``), which is no name to show beside the reference."""
    display = worklist_display(name)
    return display if display and display != fhir_user else None


def same_name(name: str) -> str:
    """A child's name as compared for "the same child": case, spacing and how an accent is
    encoded (an EHR may store "Zoë" as "o" and a combining diaeresis, NFD) do not make
    another child. Two children of one patient with the same name and date of birth are
    one child typed twice: saved, the child would be in the record twice."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()
