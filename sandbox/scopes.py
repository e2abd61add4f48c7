"""SMART scopes (v1 ``read``/``write``/``*`` and v2 ``cruds``) and what a FHIR request needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ResourceScope", "needed_interactions", "parse_scopes", "scope_allows"]

_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    interactions: frozenset[str]  # subset of c r u d s

    def allows(self, resource_type: str, interaction: str) -> bool:
        return self.resource_type in ("*", resource_type) and interaction in self.interactions


def parse_scopes(scope: str) -> list[ResourceScope]:
    out: list[ResourceScope] = []
    for s in scope.split():
        m = _SCOPE.match(s)
        if not m:
            continue
        ctx, rtype, perm, _query = m.groups()  # granular ?query parts are accepted, not enforced
        letters = _V1.get(perm, perm)
        if set(letters) - set("cruds"):
            continue
        out.append(ResourceScope(ctx, rtype, frozenset(letters)))
    return out


def scope_allows(scopes: list[ResourceScope], needed: list[tuple[str, str]]) -> bool:
    return all(any(s.allows(rt, i) for s in scopes) for rt, i in needed)


def _one(method: str, segs: list[str]) -> list[tuple[str, str]]:
    if not segs:
        return []
    rtype = segs[0]
    if rtype.startswith("$") or rtype.startswith("_"):
        return [("*", "r")]
    n = len(segs)
    if method in ("GET", "HEAD"):
        if n == 1:
            return [(rtype, "s")]
        if n == 3 and segs[2][:1].isupper():  # compartment search Patient/1/Observation
            return [(rtype, "r"), (segs[2], "s")]
        return [(rtype, "r")]
    if method == "POST":
        if n >= 2 and segs[1] == "_search":
            return [(rtype, "s")]
        if n >= 2 and segs[-1].startswith("$"):
            return [(rtype, "r")]
        return [(rtype, "c")]
    if method in ("PUT", "PATCH"):
        return [(rtype, "u")]
    if method == "DELETE":
        return [(rtype, "d")]
    return [(rtype, "r")]


def needed_interactions(method: str, path: str, body: Any = None) -> list[tuple[str, str]]:
    """(resource type, interaction) pairs a request needs; a transaction: its entries'."""
    segs = [s for s in path.split("?")[0].split("/") if s]
    if not segs and method == "POST" and isinstance(body, dict):
        out: list[tuple[str, str]] = []
        for e in body.get("entry", []) or []:
            req = (e or {}).get("request") or {}
            url = str(req.get("url", ""))
            out += _one(
                str(req.get("method", "GET")).upper(),
                [s for s in url.split("?")[0].split("/") if s],
            )
        return out
    return _one(method, segs)
