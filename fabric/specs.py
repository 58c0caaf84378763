"""Specs users write (YAML or JSON: the catalogue, manifests, redaction rules, processor
options, injection policies) are pydantic models; ``parse`` turns a validation failure
into one ``ConfigError`` that names where it came from and the field, e.g.
``context-types.yaml: PageDSL.kind: Input should be 'state' or 'stream'``.

YAML that users send (patterns and workflows over HTTP, files given to the CLI) is read
with ``load_yaml``: YAML aliases (``*name``) are refused, because a few hundred bytes of
nested aliases stand for gigabytes once anything walks or serializes the document."""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
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


class _NoAliasLoader(yaml.SafeLoader):  # type: ignore[misc]
    """YAML's safe loader, less aliases (anchors alone are harmless and allowed)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted here: write the value out", mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """One YAML document, without aliases; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass


def load_yaml_all(text: str) -> list[Any]:
    """Every YAML document of ``text``, without aliases; raises ``yaml.YAMLError``."""
    return list(yaml.load_all(text, Loader=_NoAliasLoader))
