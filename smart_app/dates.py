"""Dates as the screens write them: dd/mm/yyyy in every language, the form the nurse types
dates in (the French and English hints, jj/mm/aaaa and dd/mm/yyyy, name the same form).
The nurse's page, the social worker's pages and the admin screen share these, so a date
reads alike on every screen; a ``<time datetime="…">`` attribute keeps the ISO form for
machines.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from service.i18n import Language, translate
from service.local_time import local

#: A FHIR date: a year, a month or a day (YYYY, YYYY-MM, YYYY-MM-DD).
_FHIR_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def shown_date(day: date | str) -> str:
    """A date (or a FHIR date as the server sent it) as the screens write dates. A partial
    FHIR date goes as far as it is known (03/1985, 1985); anything else is shown as the
    server sent it (the screens only display it)."""
    text = day if isinstance(day, str) else day.isoformat()
    match = _FHIR_DATE.match(text)
    return "/".join(part for part in reversed(match.groups()) if part) if match else text


def shown_moment(moment: datetime) -> str:
    """A moment (timezone-aware) as a Belgian clock shows it, the date as the screens write
    dates: the UTC date is still yesterday's between midnight and 01:00 or 02:00."""
    here = local(moment)
    return f"{shown_date(here.date())} {here:%H:%M}"


def born(fhir_date: str | None, language: Language) -> str | None:
    """A patient's "born …" in the screens' date form; "born in …" when the EHR knows only
    the year or the month of birth (FHIR allows a partial date)."""
    if not fhir_date:
        return None
    message_id = "app.patient.born" if _FULL_DATE.match(fhir_date) else "app.patient.born-in"
    return translate(language, message_id, day=shown_date(fhir_date))


def shown_age(months: int, language: Language) -> str:
    """A child's age as paediatrics says it: "< 1 maand" in the first month, months in the
    first year ("5 maanden", not "0 jaar"), whole years from then on."""
    if months < 1:
        return translate(language, "age.under-a-month")
    if months < 12:
        return translate(language, f"age.{'month' if months == 1 else 'months'}", n=months)
    years = months // 12
    return translate(language, f"age.{'year' if years == 1 else 'years'}", n=years)


def shown_days_open(days: int, language: Language, *, closed: bool = False) -> str:
    """How long a concern has been open: "1 dag open", or for a closed one "was 1 dag open"
    (the count stops at its closing); French says the singular below 2 ("ouvert depuis
    0 jour"), Dutch and English for 1 only."""
    one = days == 1 or (language == "fr" and days == 0)
    state = "was-open" if closed else "open"
    return translate(language, f"casefile.about.{'day' if one else 'days'}-{state}", days=days)
