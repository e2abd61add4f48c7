"""A page of our app read the way a screen reader and a form submit see it: its fields
and labels, the values a submit would carry, the child rows of the nurse's form."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[dict[str, str]] = []
        self.label_for: set[str] = set()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.textareas: dict[str, str] = {}
        self.selected: dict[str, str] = {}
        self._textarea: str | None = None
        self._select: str | None = None
        self._in_template = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "template":
            self._in_template += 1
        if self._in_template:
            return
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "label" and "for" in a:
            self.label_for.add(a["for"])
        if tag in ("input", "select", "textarea"):
            self.fields.append({"tag": tag, **a})
        if tag == "textarea":
            self._textarea = a.get("name")
            self.textareas.setdefault(a.get("name", ""), "")  # sent even when empty
        if tag == "select":
            self._select = a.get("name")
        # the selected option, else the first one
        if (
            tag == "option"
            and self._select
            and ("selected" in a or self._select not in self.selected)
        ):
            self.selected[self._select] = a.get("value", "")
        if tag == "a" and "href" in a:
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self._in_template -= 1
        if tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea and not self._in_template:
            self.textareas[self._textarea] = self.textareas.get(self._textarea, "") + data


class Page:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.text = response.text
        self.parsed = _Parser()
        self.parsed.feed(self.text)

    def value(self, name: str) -> str:
        if name in self.parsed.textareas:
            return self.parsed.textareas[name]
        if name in self.parsed.selected:
            return self.parsed.selected[name]
        field = next(f for f in self.parsed.fields if f.get("name") == name)
        return field.get("value", "")

    @property
    def csrf(self) -> str:
        return self.value("csrf_token")

    def submitted(self) -> dict[str, list[str]]:
        """What submitting the page's form as shown sends (its default button: no
        ``action``): text and hidden inputs, the checked boxes and radios, each select's
        selected option, each textarea's text."""
        sent: dict[str, list[str]] = {}
        for field in self.parsed.fields:
            name, kind = field.get("name"), field.get("type", "text")
            if not name or kind in ("submit", "button") or field["tag"] != "input":
                continue
            if kind in ("checkbox", "radio") and "checked" not in field:
                continue
            unset = "on" if kind in ("checkbox", "radio") else ""  # as a browser sends them
            sent.setdefault(name, []).append(field.get("value", unset))
        for name, value in [*self.parsed.selected.items(), *self.parsed.textareas.items()]:
            sent.setdefault(name, []).append(value)
        return sent

    def child_refs(self) -> list[str]:
        names = sorted(
            (
                f["name"]
                for f in self.parsed.fields
                if re.fullmatch(r"child-\d+-ref", f.get("name", ""))
            ),
            key=lambda n: int(n.split("-")[1]),
        )
        return [self.value(n) for n in names]


def recorded_rows(page: Page) -> dict[str, str]:
    """The recorded children's rows as the page shows them, to post back."""
    return {
        f"child-{i}-{name}": page.value(f"child-{i}-{name}")
        for i in range(len(page.child_refs()))
        for name in ("ref", "name", "birth_date", "relationship", "lives_with", "recorded")
    }
