"""The retry policy, decided without I/O: when a failed attempt is tried again, and when
it ends the task with an error that says why."""

from __future__ import annotations

import pytest

import bgdl_nb as bg
from bgdl_nb._journal import TaskRecord
from bgdl_nb._retrying import MAX_RESTARTS, after_failure, after_restart
from bgdl_nb._run import RetryableStatus, TaskRun
from bgdl_nb._waits import RETRY, WaitReason


def _run() -> TaskRun:
    return TaskRun(TaskRecord(4, "http://h/f.bin"))


def test_progress_resets_the_count_so_old_failures_never_end_a_long_download() -> None:
    config, run = bg.Configuration.default(max_retries=2, retry_backoff=0.5), _run()
    for _ in range(2):
        after_failure(bg.NetworkError("reset"), run, run.received, config, jitter=1.0)
    run.received = 1000  # this attempt moved bytes before it failed
    retry = after_failure(bg.NetworkError("reset"), run, 0, config, jitter=1.0)
    assert run.failures == 1 and retry.delay == pytest.approx(0.5) and retry.error == "NetworkError: reset"
    after_failure(bg.NetworkError("reset"), run, run.received, config, jitter=1.0)
    with pytest.raises(bg.NetworkError, match="reset"):
        after_failure(bg.NetworkError("reset"), run, run.received, config, jitter=1.0)


def test_a_connection_that_cannot_be_made_has_its_own_limit() -> None:
    config, run = bg.Configuration.default(connect_retries=1, max_retries=9), _run()
    after_failure(bg.CannotConnect("refused"), run, 0, config, jitter=1.0)
    with pytest.raises(bg.CannotConnect):
        after_failure(bg.CannotConnect("refused"), run, 0, config, jitter=1.0)


def test_a_status_given_up_on_says_how_often_and_a_long_retry_after_names_its_time() -> None:
    config, run = bg.Configuration.default(max_retries=0), _run()
    with pytest.raises(bg.HTTPStatusError, match="answered HTTP 503 1 times in a row; giving up"):
        after_failure(RetryableStatus("busy", status=503, retry_after=None), run, 0, config, jitter=1.0)
    capped = bg.Configuration.default(retry_after_cap=60)
    with pytest.raises(bg.HTTPStatusError, match=r"asked to retry after 7,200 s \(at .*\), longer than retry_after_cap"):
        after_failure(RetryableStatus("busy", status=429, retry_after=7200), _run(), 0, capped, jitter=1.0)
    retry = after_failure(RetryableStatus("busy", status=429, retry_after=45), _run(), 0, capped, jitter=1.0)
    assert retry.delay == 45 and retry.asked == 45
    wait = retry.wait(now=0.0)
    assert wait.reason is WaitReason.RETRY and "(the server's Retry-After)" in str(wait)
    assert after_failure(bg.NetworkError("x"), _run(), 0, capped, jitter=1.0).wait(0.0) is RETRY  # short: no time


def test_a_file_that_keeps_changing_restarts_a_bounded_number_of_times() -> None:
    run = _run()
    for _ in range(MAX_RESTARTS):
        after_restart(run)
    with pytest.raises(bg.NetworkError, match=f"kept changing while it was downloaded \\({MAX_RESTARTS + 1} restarts\\)"):
        after_restart(run)
