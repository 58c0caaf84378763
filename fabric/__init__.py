"""Context Fabric: every context change a Kafka event, materialized into a Redis hot cache
that copilots pull over HTTP or MCP, or get pushed over WebSocket.

What a user of the package needs is here; everything is imported on first use, so
``import fabric.settings`` in a worker does not load the SDKs' HTTP clients::

    from fabric import ContextClient, Provider, Settings
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ContextClient", "FabricError", "Provider", "PublishReport", "Refused", "Settings", "__version__",
]  # fmt: skip

# public name -> the module that defines it
_WHERE = {
    "ContextClient": "fabric.client",
    "FabricError": "fabric.errors",
    "Refused": "fabric.errors",
    "Provider": "fabric.providers",
    "PublishReport": "fabric.providers",
    "Settings": "fabric.settings",
}

if TYPE_CHECKING:
    from fabric.client import ContextClient
    from fabric.errors import FabricError, Refused
    from fabric.providers import Provider, PublishReport
    from fabric.settings import Settings


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fabric' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
