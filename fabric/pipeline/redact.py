"""Redaction: PII and secrets masked in ``data`` before an event reaches a typed topic,
the cache or ClickHouse (processor ``redact``, on by default).

Rules say which context types and sensitivities they cover, which detectors run over
string values, and which keys are masked whole whatever they hold. A masked match
becomes ``[email]``, ``[phone]``, ``[card]``, ``[national_id]`` or ``[secret]``; a key
masked whole becomes ``[redacted]``. The event then carries ``redacted``: how many
fields were masked. The router's HTTP edge masks with the same rules before it
produces to ``ctx.ingest`` (and says how many in the ``fabric_redacted`` header); the
route stage masks what other producers wrote there. Rules come from ``worker.processor_options.redact.rules`` or the
bundled ``fabric/schemas/policies/redaction.yaml``; docs/extending.md shows the form.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field

from fabric.errors import ConfigError
from fabric.events.catalogue import Catalogue
from fabric.pipeline.processors import Event, Processor
from fabric.settings import BUNDLED, Settings
from fabric.specs import parse

Detector = Literal["email", "phone", "card", "national_id", "secret"]
Level = Literal["public", "internal", "confidential", "restricted"]

# RE2 (linear time, whatever the input: no ReDoS) has no look-around, so the boundaries a
# regex would check with it are checked on the match instead (``_confirmed``).
_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}",
    "national_id": r"\d{3}-\d{2}-\d{4}|\d{17}[\dXx]",
    "card": r"(?:\d[ -]?){12,18}\d",
    "phone": r"(?:\+\d{1,3}[ -]?)?(?:\(\d{2,4}\) ?|\d{2,4}[ -])\d{3,4}[ -]\d{3,4}",
    "secret": r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|(?i:bearer)\s{1,4}[A-Za-z0-9._~+/-]{20,}=*"
    r"|-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----",
}
#: tried in this order where several could match at one place
_ORDER = ("national_id", "card", "phone", "email", "secret")
#: candidate matches looked at per event; past it every remaining string is masked whole
#: (so the work for one event is bounded, however many candidates it was built to hold)
MAX_CANDIDATES = 1000


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cn_id(text: str) -> bool:
    """The ISO 7064 check character of an 18-character PRC resident identity number."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(c) * w for c, w in zip(text[:17], weights, strict=True))
    return "10X98765432"[total % 11] == text[17].upper()


def _confirmed(detector: str, text: str, start: int, end: int) -> bool:
    """The checks a regex would make with look-around, and the check digits."""
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    match = text[start:end]
    if detector == "card":
        digits = "".join(c for c in match if c.isdigit())
        return not before.isdigit() and not after.isdigit() and 13 <= len(digits) <= 19 and _luhn(digits)
    if detector == "national_id":
        if before.isdigit() or after.isalnum() or after in "_-":
            return False
        return len(match) != 18 or _cn_id(match)
    if detector == "phone":
        if before.isalnum() or before in "_+." or (before in " -" and start > 1 and text[start - 2].isdigit()):
            return False
        follows = text[end + 1] if end + 1 < len(text) else " "
        return not (after.isalnum() or after in "_." or (after in " -" and follows.isdigit()))
    return True


class Rule(BaseModel):
    """One redaction rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    context_types: list[str] = Field(["*"], description="context type names or globs the rule covers")
    sensitivity: list[Level] = Field(
        ["public", "internal", "confidential", "restricted"], description="event sensitivities the rule covers"
    )
    detect: list[Detector] = Field(
        ["email", "phone", "card", "national_id", "secret"], description="detectors run over every string value"
    )
    keys: list[str] = Field([], description="keys (globs, any case) whose string values are masked whole")


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule]


def load_rules(options: dict[str, Any]) -> list[Rule]:
    """Rules from the processor's options (``rules`` inline, or ``rules_file``), else the bundled file."""
    if "rules" in options:
        doc: Any = {"rules": options["rules"]}
        origin = "worker.processor_options.redact.rules"
    else:
        path = Path(options.get("rules_file") or BUNDLED / "policies" / "redaction.yaml")
        origin = str(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{origin}: {e}") from e
    return parse(Rules, doc, origin).rules


def _key_regex(glob: str) -> str:
    """A key glob as a regex over JSON key text: ``*`` and ``?`` never cross a quote."""
    return "".join('[^"\\\\]{0,64}' if ch == "*" else '[^"\\\\]' if ch == "?" else re.escape(ch) for ch in glob)


class _Plan:
    """What to look for in one context type at one sensitivity (rules merged)."""

    def __init__(self, detectors: set[str], keys: set[str]) -> None:
        self.names = [d for d in _ORDER if d in detectors]
        alts = [f"(?P<{d}>{_PATTERNS[d]})" for d in self.names]
        self.finder = re2.compile("|".join(alts)) if alts else None
        self.keys = re.compile("|".join(fnmatch.translate(k.lower()) for k in sorted(keys))) if keys else None
        self._key_seen: dict[str, bool] = {}
        # one linear pass over the raw JSON decides whether the event needs decoding at all:
        # a secret-looking key, or a candidate that passes its checks (``hit``)
        keyed = [f'"(?i:{_key_regex(k)})"\\s*:' for k in sorted(keys)]
        self.keyed = re2.compile("|".join(keyed).encode()) if keyed else None

    def hit(self, raw: bytes) -> bool:
        """Whether the event's raw JSON holds anything to mask (then its data is walked)."""
        if self.keyed is not None and self.keyed.search(raw):
            return True
        if self.finder is None:
            return False
        text = raw.decode("utf-8", "replace")
        if "\\" in text:  # an escape (\n, \") is a boundary in the value, as a space is
            for escaped in ("\\\\", '\\"', "\\n", "\\t", "\\r", "\\/", "\\b", "\\f"):
                text = text.replace(escaped, "  ")
        for n, m in enumerate(self.finder.finditer(text)):
            if n >= MAX_CANDIDATES or (m.lastgroup and _confirmed(m.lastgroup, text, m.start(), m.end())):
                return True
        return False

    def key_masked(self, key: str) -> bool:
        hit = self._key_seen.get(key)
        if hit is None:
            hit = self.keys is not None and self.keys.fullmatch(key.lower()) is not None
            if len(self._key_seen) >= 10_000:
                self._key_seen.clear()
            self._key_seen[key] = hit
        return hit

    def mask_text(self, text: str, budget: list[int]) -> str:
        """``text`` with confirmed matches masked; spends ``budget[0]`` per candidate."""
        if self.finder is None:
            return text
        out: list[str] = []
        at = 0
        for m in self.finder.finditer(text):
            budget[0] -= 1
            if budget[0] < 0:
                return "[redacted]"
            name = m.lastgroup
            start, end = m.start(), m.end()
            if name is not None and _confirmed(name, text, start, end):
                out.append(text[at:start])
                out.append(f"[{name}]")
                at = end
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)


class Redaction(Processor):
    """Masks PII and secrets in ``data`` by the rules; counts masked fields in ``redacted``."""

    name = "redact"

    def __init__(self, settings: Settings, catalogue: Catalogue, options: dict[str, Any]) -> None:
        super().__init__(settings, catalogue, options)
        self.rules = load_rules(options)
        self._plans: dict[tuple[str, str], _Plan | None] = {}

    def plan(self, context_type: str, sensitivity: str) -> _Plan | None:
        key = (context_type, sensitivity)
        if key not in self._plans:
            detectors: set[str] = set()
            keys: set[str] = set()
            for r in self.rules:
                if sensitivity in r.sensitivity and any(fnmatch.fnmatchcase(context_type, g) for g in r.context_types):
                    detectors.update(r.detect)
                    keys.update(r.keys)
            self._plans[key] = _Plan(detectors, keys) if detectors or keys else None
        return self._plans[key]

    def mask(self, context_type: str, sensitivity: str, raw: bytes, data: Any) -> tuple[Any, int]:
        """``data`` (whose JSON is ``raw``) with what the rules find masked, and how many
        fields that changed; ``data`` is only walked when the raw JSON has a candidate."""
        plan = self.plan(context_type, sensitivity)
        if plan is None or not plan.hit(raw):
            return data, 0
        return _mask(data, plan, [MAX_CANDIDATES])

    def process(self, events: list[Event]) -> None:
        for ev in events:
            env = ev.envelope
            before = ev.extensions.get("redacted", 0)
            plan = self.plan(ev.context_type.name, env.sensitivity)
            if plan is None or not plan.hit(ev.raw_data):
                continue
            data, n = _mask(ev.data, plan, [MAX_CANDIDATES])
            if n:
                ev.data = data
                ev.extensions["redacted"] = before + n


def _mask(value: Any, plan: _Plan, budget: list[int]) -> tuple[Any, int]:
    """The value with what the plan finds masked, and how many string fields changed."""
    if isinstance(value, str):
        masked = plan.mask_text(value, budget) if budget[0] >= 0 else "[redacted]"
        return masked, int(masked != value)
    if isinstance(value, dict):
        n = 0
        out = {}
        for k, v in value.items():
            if isinstance(v, str) and plan.key_masked(str(k)):
                out[k], hit = "[redacted]", int(v != "[redacted]")
            else:
                out[k], hit = _mask(v, plan, budget)
            n += hit
        return out, n
    if isinstance(value, list):
        items = [_mask(v, plan, budget) for v in value]
        return [v for v, _ in items], sum(h for _, h in items)
    return value, 0
