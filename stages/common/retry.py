"""The one retry helper for external services: capped exponential backoff with full jitter."""

import random
import time


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
