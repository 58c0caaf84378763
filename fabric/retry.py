"""One retry policy for the whole fabric, on tenacity: exponential backoff with jitter,
every retry logged with what is being retried and why.

    async for attempt in until_done("materialize: reposition", (KafkaError, RedisError), stop=stopped):
        with attempt:
            await reposition()

``until_done`` keeps trying (an operation that must not be skipped: going on would lose
or repeat records) until it succeeds or ``stop()`` says the process is stopping (the
loop then ends without an error);
``a_few_times`` gives up after ``attempts`` and raises the last error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_never
from tenacity.wait import wait_exponential_jitter

log = logging.getLogger("fabric.retry")

Errors = type[BaseException] | tuple[type[BaseException], ...]


def _logger(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: %s; retrying in %.1f s (attempt %d)", what, error, wait, state.attempt_number)

    return before_sleep


def until_done(
    what: str, errors: Errors, *, initial_s: float = 0.5, max_s: float = 10.0, stop: Callable[[], bool] | None = None
) -> AsyncRetrying:
    """Retry on ``errors`` until it works, or until ``stop()`` says the process is stopping
    (then the loop just ends: nothing is left to do it for)."""
    if stop is None:
        return AsyncRetrying(
            retry=retry_if_exception_type(errors),
            wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
            stop=stop_never,
            before_sleep=_logger(what),
            reraise=True,
        )
    stopping = stop
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
        stop=lambda _state: stopping(),
        before_sleep=_logger(what),
        retry_error_callback=lambda _state: None,
    )


def a_few_times(
    what: str, errors: Errors, attempts: int, *, initial_s: float = 0.1, max_s: float = 5.0
) -> AsyncRetrying:
    """Try ``attempts`` times in all, backing off; then raise the last error."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s),
        stop=stop_after_attempt(attempts),
        before_sleep=_logger(what),
        reraise=True,
    )
