"""Specs users write (YAML or JSON: the catalogue, manifests, redaction rules, processor
options, injection policies) are pydantic models; ``parse`` turns a validation failure
into one ``ConfigError`` that names where it came from and the field, e.g.
``context-types.yaml: PageDSL.kind: Input should be 'state' or 'stream'``."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fabric.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def field_path(loc: tuple[int | str, ...], dotted: bool = False) -> str:
    """``("rules", 0, "detect", 1)`` -> ``rules[0].detect[1]`` (``rules.0.detect.1`` dotted)."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not dotted:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(e: ValidationError, dotted: bool = False) -> str:
    """The first problem of a validation error: ``field: message``."""
    err = e.errors()[0]
    where = field_path(tuple(err["loc"]), dotted)
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def parse(model: type[M], doc: Any, origin: str) -> M:
    """``doc`` as ``model``; a ConfigError naming ``origin`` and the field when it is not."""
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe(e)}") from None
