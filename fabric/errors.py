"""One root for every error the fabric raises, on the server and in the SDKs.

``retriable`` says whether trying the same thing again can help (a broker that is
briefly away) or not (a malformed event); producers and sinks read it to decide
between backing off and giving up, the way aiokafka's errors do.
"""

from __future__ import annotations


class FabricError(Exception):
    """Root of the fabric's errors."""

    retriable: bool = False


class ConfigError(FabricError):
    """The settings or a bundled file are wrong; fix them and start again."""


class MissingExtraError(ConfigError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install the '{extra}' extra: pip install 'context-fabric[{extra}]'"
        )


class InvalidEvent(FabricError):
    """An event failed decoding or validation. ``pointer`` is a JSON pointer to the problem."""

    def __init__(self, reason: str, pointer: str = "") -> None:
        super().__init__(f"{reason} (at {pointer or '/'})")
        self.reason = reason
        self.pointer = pointer


class UnknownEventType(InvalidEvent):
    """No registry rule maps this event type to a context type."""


class BackendUnavailable(FabricError):
    """Kafka, Redis or ClickHouse did not answer; trying again later may work."""

    retriable = True


class PublishError(FabricError):
    """Some events could not be delivered to Kafka; ``failed`` lists them with the reason."""

    retriable = True

    def __init__(self, message: str, failed: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failed = failed


class Refused(FabricError):
    """A request the fabric will not serve. ``status`` is the HTTP status it is answered
    with; the consumer SDK raises the same classes when it receives one."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class Unauthorized(Refused):
    """No usable token: the token is missing, expired or not signed by the configured issuer."""

    status = 401


class Forbidden(Refused):
    """A valid token whose scopes, roles or the access rules do not allow this."""

    status = 403


class NotFound(Refused):
    status = 404


class RateLimited(Refused):
    """Over the caller's rate; ``retry_after`` is whole seconds, as ``Retry-After`` says, never 0."""

    status = 429
    retriable = True

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class StackError(FabricError):
    """A part of the embedded dev stack could not start or stop."""
