"""Fingerprints: every artefact a later run may reuse records exactly what produced it.

A `Provenance` holds the producing settings (a stage's config section, the model spec, the fingerprints
of the inputs: plans, splits, genotype) and their hash. State is reused only when the hash is identical;
otherwise the keys that differ are named, so a user sees why a run starts afresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from scnas.errors import ScnasError


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal settings give equal text (tuples read as lists)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_default)


def fingerprint(obj: Any) -> str:
    """A 16-hex-digit SHA-256 prefix of `obj`'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"a.b.c": leaf}; lists are leaves (compared whole)."""
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key in sorted(obj):
            out.update(flatten(obj[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(canonical_json(obj))}


def differing_keys(old: Mapping, new: Mapping) -> list[str]:
    """Dotted keys whose values differ between two settings mappings (present in only one counts)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


@dataclass(frozen=True)
class Provenance:
    """What produced an artefact: its settings and their fingerprint."""

    settings: dict
    fingerprint: str

    @classmethod
    def of(cls, settings: Mapping) -> Provenance:
        plain = json.loads(canonical_json(settings))
        return cls(plain, fingerprint(plain))

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Provenance:
        """Read a stored provenance; anything malformed is refused in one line naming `source`."""
        if not isinstance(data, Mapping) or not isinstance(data.get("settings"), Mapping):
            raise ScnasError(f"{source}: records no settings fingerprint (made by an older SCNAS?)")
        if not isinstance(data.get("fingerprint"), str):
            raise ScnasError(f"{source}: its fingerprint is missing or not a string")
        return cls(dict(data["settings"]), data["fingerprint"])

    def differences(self, other: Provenance | None) -> list[str]:
        """The keys in which `other` differs from this one ([] when identical; ["(none recorded)"] for None)."""
        if other is None:
            return ["(no fingerprint recorded)"]
        if other.fingerprint == self.fingerprint:
            return []
        return differing_keys(other.settings, self.settings) or ["(fingerprint only)"]


def describe_differences(keys: list[str], limit: int = 6) -> str:
    """`a.b, c.d and 3 more` for a log line."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


_MISSING = object()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
