"""Event time as the fabric writes and reads it: RFC 3339 text (UTC, milliseconds, ``Z``)
and epoch milliseconds, converted in one place."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_rfc3339(text: str) -> datetime:
    """An aware datetime from RFC 3339 text (``Z`` or an offset; naive text is taken as UTC).
    Raises ValueError naming the text when it is not one."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text[:40]!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def ms_of(t: datetime | str) -> int:
    """Epoch milliseconds of a datetime (naive: UTC) or of RFC 3339 text."""
    if isinstance(t, str):
        t = parse_rfc3339(t)
    elif t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    """RFC 3339 text of epoch milliseconds: ``2026-11-22T10:00:00.123Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
