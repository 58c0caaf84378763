"""Attribute-based access rules on sensitivity and context type (``fabric/schemas/policies/access.yaml``).

The rules are evaluated once per (context type, sensitivity level) when loaded, so
at request time a check is a table lookup: which rule, if any, denies this caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fabric.conditions import ConditionError, compile_predicate
from fabric.errors import ConfigError
from fabric.events.envelope import LEVEL, LEVELS
from fabric.security.tokens import Principal

DEFAULT_LEVEL = LEVEL["internal"]


@dataclass(frozen=True)
class Rule:
    name: str
    roles: frozenset[str]
    #: (context type, level) pairs the rule applies to
    applies: frozenset[tuple[str, int]]


class AccessRules:
    """Who may see a context, given its type and sensitivity."""

    def __init__(self, rules: list[Rule], context_types: list[str]) -> None:
        self.rules = rules
        # (type, level) -> the rules that apply; types not known now (new ones) use "*"
        self._table: dict[tuple[str, int], list[Rule]] = {}
        for ct in [*context_types, "*"]:
            for level in range(len(LEVELS)):
                self._table[ct, level] = [r for r in rules if (ct, level) in r.applies]

    @classmethod
    def load(cls, path: Path, context_types: list[str]) -> AccessRules:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read access rules {path}: {e}") from e
        return cls.parse(doc, context_types, str(path))

    @classmethod
    def parse(cls, doc: Any, context_types: list[str], origin: str = "access rules") -> AccessRules:
        if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
            raise ConfigError(f"{origin}: expected a mapping with a 'rules' list")
        rules = []
        for i, r in enumerate(doc.get("rules", [])):
            where = f"{origin}: rules[{i}]"
            if not isinstance(r, dict) or not isinstance(r.get("name"), str):
                raise ConfigError(f"{where}: each rule needs a name")
            roles = r.get("require_any_role")
            if not isinstance(roles, list) or not all(isinstance(x, str) for x in roles):
                raise ConfigError(f"{where} ({r['name']}): require_any_role must be a list of role names")
            unknown = set(r) - {"name", "when", "require_any_role"}
            if unknown:
                raise ConfigError(f"{where} ({r['name']}): unknown field(s) {', '.join(sorted(unknown))}")
            try:
                when = compile_predicate(r.get("when"), f"rule {r['name']!r}", "when")
            except ConditionError as e:
                raise ConfigError(f"{origin}: {e}") from None
            applies = frozenset(
                (ct, level)
                for ct in [*context_types, "*"]
                for level, name in enumerate(LEVELS)
                if when({"sensitivity": name, "context_type": ct})
            )
            rules.append(Rule(r["name"], frozenset(roles), applies))
        return cls(rules, context_types)

    def denied_by(self, who: Principal, context_type: str, level: int) -> str | None:
        """The name of the first rule that keeps ``who`` from this context, or None."""
        rules = self._table.get((context_type, level)) or self._table.get(("*", level), [])
        for r in rules:
            if not (r.roles & who.roles):
                return r.name
        return None

    def allowed_levels(self, who: Principal, context_type: str) -> frozenset[int]:
        return frozenset(lv for lv in range(len(LEVELS)) if self.denied_by(who, context_type, lv) is None)
