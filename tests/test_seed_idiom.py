"""The seeds' own code, translated name for name: properties set on the configuration, and
on a task between download_task() and resume()."""

from __future__ import annotations

import datetime as dt
import time
import warnings

import pytest

import bgdl_nb as bg

from helpers import wait_until


def test_a_configuration_is_set_property_by_property_like_the_seeds():
    config = bg.Configuration.background("seeds")
    config.is_discretionary = True                 # seed 001 / 004
    config.sessions_send_launch_events = True      # set before launch_command: the order is free
    config.launch_command = ["python", "handle_events.py"]
    config.max_concurrent_tasks = 2
    assert config.is_discretionary and config.launch_command == ("python", "handle_events.py")
    with pytest.raises(bg.InvalidConfiguration, match="did you mean 'is_discretionary'"):
        config.is_discretionery = True
    with pytest.raises(bg.InvalidConfiguration, match="at least 1"):
        config.max_concurrent_tasks = 0
    assert config.max_concurrent_tasks == 2  # a refused value leaves the old one


def test_a_session_keeps_a_copy_and_later_changes_say_so(origin, tmp_path):
    config = bg.Configuration.default(max_concurrent_tasks=3)
    config.is_discretionary = True
    session = bg.Session(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config.max_concurrent_tasks = 1
    assert any("took a copy" in str(w.message) for w in caught)
    assert session.configuration.max_concurrent_tasks == 3  # the session's copy did not change
    task = session.download_task(origin.url("d", 100), tmp_path / "d")
    assert task.is_discretionary  # the configuration's default for its tasks
    session.close()


def test_the_seeds_launch_events_line_works_without_a_command():
    """Seed 004 sets ``sessionSendsLaunchEvents = true`` (URLSession's default, and ours):
    no launch command is needed for it."""
    config = bg.Configuration.background("nolaunch")
    assert config.sessions_send_launch_events is True
    config.sessions_send_launch_events = True
    with bg.Session(config) as session:
        assert session.configuration.sessions_send_launch_events


def test_task_properties_set_between_download_task_and_resume(origin, tmp_path):
    session = bg.Session(bg.Configuration.default())
    task = session.download_task(origin.url("t", 1000), tmp_path / "t")
    begin = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.4)
    task.earliest_begin_date = begin               # seed 004
    task.count_of_bytes_client_expects_to_receive = 1000
    task.count_of_bytes_client_expects_to_send = 200
    task.priority = 0.9
    assert task.earliest_begin_date == pytest.approx(begin.timestamp())
    assert task.count_of_bytes_client_expects_to_receive == 1000 and task.count_of_bytes_client_expects_to_send == 200
    started = time.time()
    task.resume()
    assert task.waiting_reason == "earliest begin date"
    task.wait(30)
    assert origin.log[0].time >= started + 0.3  # the begin date held
    with pytest.raises(bg.InvalidInput, match=r"already started.*earliest_begin_date"):
        task.earliest_begin_date = time.time() + 60
    with pytest.raises(AttributeError, match="did you mean 'count_of_bytes_client_expects_to_send'"):
        task.count_of_bytes_client_expect_to_send = 1  # a typo is an error, never a silent attribute
    session.close()


def test_task_properties_over_the_transfer_service(origin, tmp_path):
    session = bg.Session(bg.Configuration.background("seeds-svc", use_service=True))
    task = session.download_task(origin.url("s", 1000), tmp_path / "s")
    task.count_of_bytes_client_expects_to_receive = 1000
    wait_until(lambda: task.count_of_bytes_client_expects_to_receive == 1000, what="the mirror")
    task.resume().wait(30)
    with pytest.raises(bg.InvalidInput, match="already started"):
        task.count_of_bytes_client_expects_to_receive = 5
    session.close()
