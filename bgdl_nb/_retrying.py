"""The retry policy of one task: after an attempt failed, wait how long, or give up.

A pure decision (no I/O, no engine state besides the task's counters), so the engine's
run loop says only what happens and this module says when:

* a file that keeps changing while it downloads restarts at most ``MAX_RESTARTS`` times;
* an attempt that moved bytes resets the failure count, so a long download over a
  flaky link is never given up for old failures;
* a connection that cannot be made is tried ``connect_retries`` times, any other
  network fault, timeout or retryable status ``max_retries`` times;
* a ``Retry-After`` is honoured up to ``retry_after_cap``; a longer one stops the task
  with the time the server asked for instead of waiting unseen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ._config import Configuration
from ._exceptions import CannotConnect, HTTPStatusError, NetworkError, TransferTimeout
from ._resume import retry_delay
from ._run import RetryableStatus, TaskRun
from ._waits import RETRY, Wait, WaitReason

__all__ = ["MAX_RESTARTS", "Retry", "after_failure", "after_restart"]

MAX_RESTARTS = 5


@dataclass(frozen=True)
class Retry:
    """Try again in ``delay`` seconds, because of ``error`` (its row's text)."""

    delay: float
    error: str
    asked: float | None = None  # the server's Retry-After, when it gave one

    def wait(self, now: float) -> Wait:
        """The wait a person sees meanwhile: a long one names its end."""
        if self.delay < 10:
            return RETRY
        until = time.strftime("%H:%M:%S", time.localtime(now + self.delay))
        return Wait(WaitReason.RETRY, f"retry backoff until {until}" + (" (the server's Retry-After)"
                                                                         if self.asked else ""))


def after_restart(run: TaskRun) -> None:
    """The file changed under the attempt (it starts over): raise once it did too often."""
    run.restarts += 1
    if run.restarts > MAX_RESTARTS:
        rec = run.record
        raise NetworkError(f"{rec.url} kept changing while it was downloaded ({run.restarts} restarts); try again "
                           "later", url=rec.url, task_identifier=rec.task_identifier)


def after_failure(exc: NetworkError | TransferTimeout | RetryableStatus, run: TaskRun, received_before: int,
                  config: Configuration, *, jitter: float) -> Retry:
    """What follows a failed attempt: a :class:`Retry`, or the error that ends the task
    (raised: ``exc`` itself, or an :class:`HTTPStatusError` that says why)."""
    rec = run.record
    run.failures = 1 if run.received > received_before else run.failures + 1
    limit = config.connect_retries if isinstance(exc, CannotConnect) else config.max_retries
    if run.failures > limit:
        if isinstance(exc, RetryableStatus):
            raise HTTPStatusError(f"{rec.url} answered HTTP {exc.status} {run.failures} times in a row; giving up",
                                  status=exc.status, url=rec.url, task_identifier=rec.task_identifier) from None
        raise exc
    asked = exc.retry_after if isinstance(exc, RetryableStatus) else None
    if isinstance(exc, RetryableStatus) and asked is not None and asked > config.retry_after_cap:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + asked))
        raise HTTPStatusError(
            f"{rec.url} answered HTTP {exc.status} and asked to retry after {asked:,.0f} s (at {until}), longer than "
            f"retry_after_cap ({config.retry_after_cap:,.0f} s); the task stopped instead of waiting: resume it "
            "later, or raise retry_after_cap", status=exc.status, url=rec.url,
            task_identifier=rec.task_identifier) from None
    delay = retry_delay(run.failures, base=config.retry_backoff, retry_after=asked,
                        retry_after_cap=config.retry_after_cap, jitter=jitter)
    return Retry(delay, f"{type(exc).__name__}: {exc}", asked)
