"""``{{ trigger.data.customer }}`` and ``{{ steps.credit.result.id }}`` in an action's body.

A string that is one template and nothing else becomes the value it names, with its
type (a number stays a number, an object an object); a template inside other text is
put in as text. A name that has no value fails the step with the template named,
instead of sending a body with a hole in it.
"""

from __future__ import annotations

from typing import Any

import orjson

from fabric.workflows.spec import TEMPLATE

_MISSING = object()


class TemplateError(ValueError):
    pass


def lookup(context: dict[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _text(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def render(value: Any, context: dict[str, Any]) -> Any:
    """``value`` (a body, arguments, a path) with its templates filled in from ``context``."""
    if isinstance(value, str):
        whole = TEMPLATE.fullmatch(value)
        if whole:
            got = lookup(context, whole.group(1))
            if got is _MISSING:
                raise TemplateError(f"template {{{{ {whole.group(1)} }}}} has no value")
            return got

        def one(m: Any) -> str:
            got = lookup(context, m.group(1))
            if got is _MISSING:
                raise TemplateError(f"template {{{{ {m.group(1)} }}}} has no value")
            return _text(got)

        return TEMPLATE.sub(one, value)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def names_trigger(value: Any) -> bool:
    """Whether any template in ``value`` reads the trigger (its context goes to the target)."""
    if isinstance(value, str):
        return any(expr.startswith("trigger.") or expr == "trigger" for expr in TEMPLATE.findall(value))
    if isinstance(value, dict):
        return any(names_trigger(v) for v in value.values())
    if isinstance(value, list):
        return any(names_trigger(v) for v in value)
    return False
