"""Injection policies: what a copilot gets in its prompt for a subject, in what order, within
what budget (``fabric/schemas/policies/injection.yaml``, docs/serving.md).

A policy is a list of sections, each one context type. A section picks its candidates
either by ``subjects`` (looked up directly) or from the type's most recently changed
subjects (``scan`` of them), keeps those that satisfy ``where`` (the CEP operators)
and are ``about`` the given values, newest first, at most ``top_k``. Values may refer
to the requested subject (``$subject``) or to what earlier sections found
(``{$ref: PageDSL.data.entities}``: every value at that path in the PageDSL items).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fabric.conditions import ConditionError, compile_predicate, getter
from fabric.errors import ConfigError
from fabric.specs import describe, load_yaml


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    context_type: str
    subjects: Any = Field(None, description="subjects to look up: a list, '$subject' or {$ref: Type.path}")
    where: dict[str, Any] | None = Field(None, description="a condition on each candidate event")
    about: Any = Field(None, description="keep candidates whose subject names one of these values")
    top_k: int = Field(5, ge=1, le=100)
    scan: int = Field(200, ge=1, le=5000, description="recent subjects looked at when subjects is not given")
    min_quality: float | None = Field(None, ge=0.0, le=1.0, description="overrides the policy's min_quality")


class InjectionPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int = Field(1, ge=1)
    description: str = ""
    budget_tokens: int = Field(4000, ge=1)
    include_stale: bool = Field(False, description="stale contexts (older than their type's TTL) are left out")
    min_quality: float = Field(0.0, ge=0.0, le=1.0, description="contexts scored under this quality are left out")
    sections: list[Section] = Field(min_length=1)

    @field_validator("sections")
    @classmethod
    def _where_compiles(cls, sections: list[Section]) -> list[Section]:
        for i, s in enumerate(sections):
            try:
                compile_predicate(resolve(s.where, "x", {}), "policy", f"sections[{i}].where")
            except ConditionError as e:
                raise ValueError(str(e)) from None
        return sections


def parse_policies(text: str, origin: str = "policies") -> list[InjectionPolicy]:
    """Policies from YAML (``policies: [...]`` or one policy); errors name the field."""
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not YAML: {e}") from e
    items = doc.get("policies") if isinstance(doc, dict) and "policies" in doc else [doc]
    if not isinstance(items, list):
        raise ConfigError(f"{origin}: 'policies' must be a list")
    out = []
    for i, item in enumerate(items):
        out.append(policy_from(item, f"{origin}: policies[{i}]"))
    return out


def policy_from(item: Any, origin: str = "policy") -> InjectionPolicy:
    try:
        return InjectionPolicy.model_validate(item)
    except ValidationError as e:
        raise ConfigError(f"{origin}, {describe(e, dotted=True)}") from None


def resolve(spec: Any, subject: str, found: dict[str, list[dict[str, Any]]]) -> Any:
    """``spec`` with ``$subject`` and ``{$ref: Type.path}`` replaced by their values."""
    if spec == "$subject":
        return subject
    if isinstance(spec, dict):
        if set(spec) == {"$ref"}:
            return ref_values(str(spec["$ref"]), found)
        return {k: resolve(v, subject, found) for k, v in spec.items()}
    if isinstance(spec, list):
        out: list[Any] = []
        for v in spec:
            r = resolve(v, subject, found)
            out += r if isinstance(v, dict) and set(v) == {"$ref"} else [r]
        return out
    return spec


def ref_values(ref: str, found: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """Every value at ``path`` in the events of ``Type`` found so far, lists flattened, unique."""
    ctype, _, path = ref.partition(".")
    get = getter(path)
    seen: list[Any] = []
    for event in found.get(ctype, []):
        v = get(event)
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, str | int | float) and x not in seen:
                seen.append(x)
    return seen


def matcher(section: Section, subject: str, found: dict[str, list[dict[str, Any]]]) -> Any:
    return compile_predicate(resolve(section.where, subject, found), "policy", "where")
