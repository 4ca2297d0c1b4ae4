"""The one retry helper for external services: capped exponential backoff with full jitter."""

import random
import time

TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# Tinker SDK and httpx errors that mean "try again", by class name (no import of either needed to classify).
TRANSIENT_NAMES = {"APITimeoutError", "APIConnectionError", "RateLimitError", "InternalServerError",
                   "TimeoutException"}


def chain(error):
    """The error and every error it was raised from or while handling."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def status(error):
    """An HTTP status carried by an error: its own `status_code` (Tinker) or its response's (httpx, hub)."""
    code = getattr(error, "status_code", None)
    return code if isinstance(code, int) else getattr(getattr(error, "response", None), "status_code", None)


def is_transient(error, connection_errors=True):
    """Rate limits, server errors and timeouts (anywhere in the chain of wrapped errors) are worth another try;
    so are dropped connections unless `connection_errors` is False (the hub: unreachable means fail at once)."""
    for e in chain(error):
        names = {cls.__name__ for cls in type(e).__mro__}
        if status(e) in TRANSIENT_STATUS or isinstance(e, TimeoutError) or names & TRANSIENT_NAMES:
            return True
        if connection_errors and isinstance(e, ConnectionError):
            return True
    return False


class GiveUp(RuntimeError):
    """A call still failed after every attempt; the message says what and why."""


def with_retries(call, *, what, is_transient, attempts=6, base_delay=1.0, max_delay=60.0, sleep=time.sleep,
                 report=None, rng=random, describe=None):
    """Run `call()`; on a transient error wait base_delay * 2^k (capped, jittered) and try again. `report` gets a
    line per wait; `describe(error)` says in a few words what went wrong (default: the error's type and text)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - classified right below
            if not is_transient(error):
                raise
            if attempt == attempts:
                raise GiveUp(f"{what} failed {attempts} times; last error: {error}") from error
            delay = rng.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            if report:
                reason = describe(error) if describe else f"{type(error).__name__} ({error})"
                report(f"{what}: {reason}; retry {attempt}/{attempts - 1} in {delay:.1f} s")
            sleep(delay)
