"""Launch events and the relaunch rate limiter: tasks that finish while no client is
attached make the service run the launch command, which reattaches and receives the
events; tasks a launched process creates wait a delay that doubles with every launch and
resets when an interactive client attaches."""

from __future__ import annotations

import sys
import textwrap

import pytest

import bgdl_nb as bg

from helpers import wait_until

HANDLER = textwrap.dedent("""
    import os, sys, threading, bgdl_nb as bg
    out, url, dest_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds = open(out).read().count("round") if os.path.exists(out) else 0
    done = threading.Event()
    lines = [f"round {rounds + 1}"]
    class Handler(bg.SessionDelegate):
        def did_finish_downloading_to(self, session, task, location):
            lines.append(f"finish {task.task_identifier}")
        def did_complete_with_error(self, session, task, error):
            lines.append(f"complete {task.task_identifier} {error}")
        def did_finish_events_for_background_session(self, session):
            lines.append("finished_events")
            done.set()
    session = bg.Session(bg.Configuration.background("launchy"), delegate=Handler())
    done.wait(30)
    task = session.download_task(f"{url}&n={rounds}", f"{dest_dir}/next-{rounds}")
    task.resume()
    lines.append(f"waiting {task.waiting_reason}")
    if rounds >= 1:
        task.wait(60)  # the second launched process stays until its task is done: no third launch
    with open(out, "a") as f:
        f.write("\\n".join(lines) + "\\n")
    session.close()
""")


@pytest.fixture
def handler(tmp_path):
    path = tmp_path / "handler.py"
    path.write_text(HANDLER)
    return path


def test_launch_events_and_the_rate_limiter(origin, tmp_path, handler):
    out = tmp_path / "launch.out"
    url = origin.url("next", 1000)
    config = bg.Configuration.background(
        "launchy", sessions_send_launch_events=True, launch_delay=0.5,
        launch_command=(sys.executable, str(handler), str(out), url, str(tmp_path)))
    session = bg.Session(config)
    session.download_task(origin.url("first", 2_000_000, rate=4_000_000), tmp_path / "first").resume()
    session.close()  # nobody is attached when it finishes: the service launches the handler
    wait_until(lambda: out.exists() and out.read_text().count("round") == 2, timeout=90,
               what="two launches of the handler")
    text = out.read_text()
    assert "finish 1" in text and "complete 1 None" in text and text.count("finished_events") == 2
    assert "waiting launch rate limit (0.5 s after launch 1)" in text
    assert "waiting launch rate limit (1 s after launch 2)" in text  # doubled

    interactive = bg.Session(bg.Configuration.background("launchy"))
    log = interactive.event_log()
    launches = [e for e in log if e.event == "launched"]
    assert len(launches) == 2 and "launch 2" in launches[1].detail
    for task in interactive.all_tasks()[1:]:  # the launched processes' tasks started after their delay
        created = next(e.time for e in log if e.event == "created" and e.task_identifier == task.task_identifier)
        started = next(e.time for e in log if e.event == "started" and e.task_identifier == task.task_identifier)
        # the delay counts from the request's arrival, a moment before the created row is journaled
        assert started - created >= 0.5 - 0.05
    reattached = [e for e in log if e.event == "reattached"][-1]
    assert "rate limiter reset after 2 launches" in reattached.detail
    fresh = interactive.download_task(origin.url("now", 1000), tmp_path / "now").resume()
    assert fresh.waiting_reason is None or "launch" not in fresh.waiting_reason
    fresh.wait(30)
    interactive.close()


def test_launch_configuration_is_checked():
    with pytest.raises(bg.InvalidConfiguration, match="sequence of arguments"):
        bg.Configuration.background("x", launch_command="python handle.py")


def test_without_a_command_the_person_is_told_what_finished_while_nobody_watched(origin, tmp_path, state_dir):
    """sessions_send_launch_events is true by default and needs no command: tasks that end
    while no client is attached are counted in the service's status until a client of the
    identifier attaches again (and receives their events)."""
    from conftest import run_cli

    from bgdl_nb._hosts.service.client import service_status
    session = bg.Session(bg.Configuration.background("away", max_retries=0, connections_per_file=1))
    tasks = [session.download_task(origin.url(f"a{i}", 2 * 1024 * 1024, rate=4 * 1024 * 1024),
                                   tmp_path / f"a{i}").resume() for i in range(2)]
    bad = session.download_task(origin.url("cut", 2 * 1024 * 1024, rate=4 * 1024 * 1024, reset_after=1024 * 1024,
                                           ranges=0), tmp_path / "cut").resume()  # fails, with no retry left
    session.close()  # nobody attached from here on; the service goes on
    ended = lambda: sum(service_status(state_dir)["sessions"]["away"][k] for k in ("finished_unattended",
                                                                                   "failed_unattended"))
    wait_until(lambda: ended() == 3, timeout=60, what="the three downloads to end with nobody attached")
    info = service_status(state_dir)["sessions"]["away"]
    assert (info["finished_unattended"], info["failed_unattended"]) == (2, 1)
    shown = run_cli("service", "status")
    assert "away: 3 tasks, 0 running, 0 attached" in shown.stdout
    assert "2 finished, 1 failed while no client was attached" in shown.stdout
    with bg.Session(bg.Configuration.background("away")) as again:  # a kernel attaches: the news is delivered
        assert {t.task_identifier for t in again.all_tasks()} == {t.task_identifier for t in [*tasks, bad]}
        info = service_status(state_dir)["sessions"]["away"]
        assert (info["finished_unattended"], info["failed_unattended"]) == (0, 0)
