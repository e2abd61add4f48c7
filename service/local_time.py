"""The hospital's local time. The dates people see and type (a birth date, a follow-up, the
day a facility was called) are Belgian dates: between midnight and 01:00 or 02:00 the UTC
date is still yesterday's."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

LOCAL_ZONE = ZoneInfo("Europe/Brussels")


def local_now() -> datetime:
    """Now, as a Belgian clock shows it (timezone-aware)."""
    return datetime.now(LOCAL_ZONE)


def local(moment: datetime) -> datetime:
    """A moment (timezone-aware) as a Belgian clock shows it."""
    return moment.astimezone(LOCAL_ZONE)


def local_today() -> date:
    """Today's date in Belgium."""
    return local_now().date()
