"""The error a router handler raises to answer ``{"error": message}`` with a status."""

from __future__ import annotations

from fabric.errors import FabricError


class HTTPProblem(FabricError):
    """An error answered as ``{"error": message}`` with a status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
