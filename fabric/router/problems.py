"""The error a router handler raises to answer ``{"error": message}`` with a status."""

from __future__ import annotations

from fabric.errors import Refused


class HTTPProblem(Refused):
    """A refusal answered as ``{"error": message}`` with ``status`` and extra headers
    (``Retry-After``, ``WWW-Authenticate``); a ``Refused`` like every refusal of the fabric."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status)
        self.headers = headers
