"""Attribute-based access rules on sensitivity and context type (``fabric/schemas/policies/access.yaml``).

The rules are evaluated once per (context type, sensitivity level) when loaded, so
at request time a check is a table lookup: which rule, if any, denies this caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from fabric.conditions import ConditionError, compile_predicate
from fabric.errors import ConfigError
from fabric.events.envelope import LEVEL, LEVELS
from fabric.security.tokens import Principal
from fabric.specs import parse

DEFAULT_LEVEL = LEVEL["internal"]


class RuleSpec(BaseModel):
    """One access rule as written: when it applies, and the roles of which a caller needs one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(min_length=1)
    when: dict[str, Any] | None = Field(None, description="a condition on sensitivity and context_type")
    require_any_role: list[StrictStr]


class AccessRulesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[RuleSpec] = []


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
        """Rules from their YAML document; errors name the rule and the field."""
        spec = parse(AccessRulesSpec, doc if doc is not None else {}, origin)
        rules = []
        for i, r in enumerate(spec.rules):
            try:
                when = compile_predicate(r.when, f"rule {r.name!r}", "when")
            except ConditionError as e:
                raise ConfigError(f"{origin}: rules[{i}]: {e}") from None
            applies = frozenset(
                (ct, level)
                for ct in [*context_types, "*"]
                for level, name in enumerate(LEVELS)
                if when({"sensitivity": name, "context_type": ct})
            )
            rules.append(Rule(r.name, frozenset(r.require_any_role), applies))
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
