"""The notebook layer: the event DataFrame, the plots (headless) and the progress panel."""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import bgdl_nb as bg
from bgdl_nb.notebook.plots import _bin_width, delay_segments, throughput_frame
from bgdl_nb.notebook.widgets import SessionPanel, TaskPanel

from helpers import wait_for_bytes, wait_until

MB = 1024 * 1024


@pytest.fixture
def interrupted(origin, tmp_path):
    """A background download interrupted (session closed) and completed by a new session."""
    config = bg.Configuration.background("story", max_concurrent_tasks=1, use_service=False)
    first = bg.Session(config)
    a = first.download_task(origin.url("a", 4 * MB, rate=8 * MB), tmp_path / "a").resume()
    first.download_task(origin.url("b", MB, fail503=1, retry_after=0), tmp_path / "b").resume()
    wait_for_bytes(a, MB)
    first.close()
    second = bg.Session(config)
    second.wait(timeout=60)
    yield second
    second.close()


def test_event_frame_is_one_story_across_sessions(interrupted):
    frame = interrupted.events
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert frame["task_identifier"].dtype == "Int64" and frame["bytes_written"].dtype == "Int64"
    assert isinstance(frame["event"].dtype, pd.CategoricalDtype)
    assert frame["seq"].is_monotonic_increasing and frame["seq"].is_unique
    kinds = list(frame["event"])
    assert kinds.index("detached") < kinds.index("reattached") < kinds.index("resumed_at_offset")
    assert kinds.count("completed") == 2
    assert pd.isna(frame.loc[frame["event"] == "reattached", "task_identifier"]).all()


def test_incremental_reads(interrupted):
    frame = interrupted.events
    middle = int(frame["seq"].iloc[len(frame) // 2])
    tail = interrupted.events_since(middle)
    assert list(tail["seq"]) == [s for s in frame["seq"] if s > middle]
    since_time = interrupted.events_since(frame["time"].iloc[len(frame) // 2].floor("us").to_pydatetime())
    assert len(since_time) <= len(frame) - len(frame) // 2
    assert frame.to_csv(index=False).count("\n") == len(frame) + 1


def test_throughput_accounts_for_every_byte_and_not_the_gap(interrupted):
    tp = throughput_frame(interrupted.events)
    width = (tp.index[1] - tp.index[0]).total_seconds()
    transferred = tp["total"].sum() * width * 1e6
    progress = interrupted.events.query("event == 'progress'")["bytes_written"].sum()
    assert transferred == pytest.approx(progress, rel=0.02)
    detached = interrupted.events.query("event == 'detached'")["time"].iloc[0]
    reattached = interrupted.events.query("event == 'reattached'")["time"].iloc[0]
    gap = tp[(tp.index > detached + pd.Timedelta(seconds=width)) & (tp.index < reattached - pd.Timedelta(seconds=width))]
    assert (gap["total"] == 0).all()


def test_bin_width_suits_short_and_long_downloads():
    assert _bin_width(10) == 0.1 and _bin_width(10 * 3600) == 300


def test_plots_render_headless_and_take_ax(interrupted, tmp_path):
    ax = interrupted.plot_throughput()
    assert ax.get_ylabel() == "throughput (MB/s)" and ax.get_legend() is not None
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "reattached (new kernel)" in labels and "all tasks" in labels
    assert ax.get_xlabel().startswith("seconds since ") and "UTC" in ax.get_xlabel()  # elapsed, with its clock
    assert ax.get_xlim()[0] == 0
    legend = ax.get_legend().get_window_extent(ax.figure.canvas.get_renderer())
    assert legend.x0 >= ax.get_window_extent().x1  # beside the plot, not over the start of the line
    ax.figure.savefig(tmp_path / "t.png")
    fig = interrupted.plot_scheduler_delay()
    fig.savefig(tmp_path / "d.png")
    assert len(fig.axes) == 2
    mine = plt.subplots(1, 2)[1]
    assert interrupted.plot_scheduler_delay(ax=tuple(mine)) == tuple(mine)
    single = plt.subplots()[1]
    assert interrupted.plot_throughput(ax=single) is single
    plt.close("all")


def test_scheduler_delay_splits_by_reason(interrupted):
    segments = delay_segments(interrupted.events)
    b = segments[(segments["task_identifier"] == 2) & segments["first_byte"]]
    assert "waiting for a free slot" in set(b["kind"])  # task b waited for the only slot behind task a
    assert (segments["seconds"] >= 0).all()


def test_a_wait_said_by_the_resumed_row_is_split_by_its_reason(origin, tmp_path):
    with bg.Session(bg.Configuration.default()) as session:
        task = session.download_task(origin.url("later", 1000), tmp_path / "later",
                                     earliest_begin_date=time.time() + 0.3).resume()
        task.wait(30)
        frame = session.events
    mine = frame[frame["task_identifier"] == task.task_identifier]
    assert "waiting" not in set(mine["event"])  # the resumed row said it
    segments = delay_segments(frame)
    waited = segments[segments["task_identifier"] == task.task_identifier]
    assert waited.loc[waited["kind"] == "earliest begin date", "seconds"].sum() > 0.2


def test_panel_shows_true_totals_at_once_after_reattach(origin, tmp_path):
    config = bg.Configuration.background("panel")
    first = bg.Session(config)
    task = first.download_task(origin.url("p", 8 * MB, rate=8 * MB), tmp_path / "p").resume()
    wait_for_bytes(task, 2 * MB)
    first.close()
    second = bg.Session(bg.Configuration.background("panel"))
    [again] = second.all_tasks()
    panel = SessionPanel(second)  # built before any new byte could be counted as progress
    try:
        assert f"{again.count_of_bytes_received / 1e6:.1f} MB" in panel.header.value
        assert again.count_of_bytes_received >= 2 * MB
        assert "8.4 MB" in panel.header.value
    finally:
        panel.close()
        second.close()


def test_panel_with_ten_thousand_tasks_shows_a_summary(tmp_path):
    session = bg.Session(bg.Configuration.default())
    tasks = [session.download_task(f"http://127.0.0.1:9/f{i}", tmp_path / f"f{i}") for i in range(10_000)]
    panel = TaskPanel(tasks, max_rows=12)
    assert len(panel.rows_box.children) == 12
    assert "9988 more tasks" in panel.summary.value and "10000 suspended" in panel.header.value
    sent = panel.updates_sent
    panel.refresh(force=True)
    assert panel.updates_sent - sent <= 2  # nothing changed: almost nothing is sent
    session.invalidate_and_cancel()


def test_a_panel_over_many_tasks_refreshes_less_often_than_its_rate(tmp_path):
    session = bg.Session(bg.Configuration.default())
    tasks = [session.download_task(f"http://127.0.0.1:9/f{i}", tmp_path / f"f{i}") for i in range(10_000)]
    panel = TaskPanel(tasks, rate=4.0)  # a refresh over 10,000 tasks takes milliseconds
    assert panel._cost == 0  # building the rows is one-off work: it does not space out the refreshes
    panel._last_refresh = time.monotonic() - 0.3
    panel.refresh()  # due after 0.25 s at 4 a second
    assert panel._cost > 0
    panel._cost = 1.0  # as if the last refresh had taken a second
    for age, expected in ((0.3, False), (49.0, False), (51.0, True)):  # the rate alone allows one after 0.25 s
        panel._last_refresh = time.monotonic() - age
        before = panel._last_refresh
        panel.refresh()
        assert (panel._last_refresh != before) is expected, age  # at most 2 % of the time refreshing
    panel._last_refresh = before = time.monotonic()
    panel.refresh(force=True)  # a click still refreshes at once
    assert panel._last_refresh != before
    session.invalidate_and_cancel()


def test_panel_buttons_act_on_the_task(origin, tmp_path):
    session = bg.Session()
    task = session.download_task(origin.url("btn", 8 * MB, rate=4 * MB), tmp_path / "btn").resume()
    panel = TaskPanel([task])
    row = panel._rows[0]
    assert not row.pause.disabled and row.play.disabled
    row.pause.click()
    assert task.state is bg.TaskState.SUSPENDED and row.play.disabled is False
    row.play.click()
    assert task.state is bg.TaskState.RUNNING
    row.stop.click()
    with pytest.raises(bg.Cancelled):
        task.wait(30)
    session.close()


def test_a_cancelled_task_is_its_own_state_and_out_of_the_totals(origin, tmp_path):
    session = bg.Session(bg.Configuration.default())
    kept = session.download_task(origin.url("kept", 100_000), tmp_path / "kept").resume()
    dropped = session.download_task(origin.url("dropped", 4 * MB, rate=MB), tmp_path / "dropped").resume()
    wait_until(lambda: dropped.count_of_bytes_received > 0, what="the second download under way")
    dropped.cancel()
    kept.wait(30)
    wait_until(lambda: dropped.done(), what="the cancel")
    panel = TaskPanel([kept, dropped])
    panel.refresh(force=True)
    assert dropped.outcome == "cancelled" and kept.outcome == "done"
    assert "1 cancelled" in panel.header.value and "0 failed" in panel.header.value
    assert panel.overall.value == 1.0 and panel.overall.bar_style == "success"  # the job is complete
    states = {row.name.value: (row.state.value, row.bar.bar_style) for row in panel._rows}
    assert states["dropped"][0].startswith("cancelled at ") and states["dropped"][1] == ""
    session.close()


def test_a_file_downloaded_again_after_a_cancel_is_one_row_that_says_so(origin, tmp_path):
    session = bg.Session(bg.Configuration.background("again"))
    url = origin.url("survey.bin", 4 * MB, rate=MB)
    first = session.download_task(url, tmp_path / "survey.bin").resume()
    wait_until(lambda: first.count_of_bytes_received > 0, what="the first try under way")
    first.cancel()
    wait_until(lambda: first.done(), what="the cancel")
    second = session.download_task(url, tmp_path / "survey.bin").resume()
    panel = SessionPanel(session)
    try:
        panel.refresh(force=True)
        rows = [(row.name.value, row.state.value) for row in panel._rows[: len(panel.rows_box.children)]]
        assert [name for name, _ in rows] == ["survey.bin"]  # one row for one file
        assert rows[0][1].startswith("cancelled earlier; downloading again · "), rows
        assert "cancelled" not in panel.header.value  # the file is not counted as cancelled
        second.wait(60)
        panel.refresh(force=True)
        assert panel._rows[0].state.value == "done, 4.2 MB (downloaded again after it cancelled)"
    finally:
        panel.close()
        session.close()


def test_rows_stay_under_the_mouse(origin, tmp_path):
    """Pausing a task never moves the rows: a second click at the same place acts on the
    task named there (before, the paused task sank and the next one took its row)."""
    session = bg.Session(bg.Configuration.default())
    tasks = [session.download_task(origin.url(f"big-{i}", 32 * MB, rate=2 * MB), tmp_path / f"big-{i}").resume()
             for i in range(3)]
    for task in tasks:
        wait_for_bytes(task, 1)
    panel = TaskPanel(tasks)
    try:
        row = panel._rows[0]
        first = row.task
        assert f"/{row.name.value}?" in first.original_request.url  # the row names its task
        row.pause.click()
        assert row.task is first and first.state is bg.TaskState.SUSPENDED
        row.pause.click()  # the same place again: still the same (now paused) task
        assert [t.state for t in tasks if t is not first] == [bg.TaskState.RUNNING] * 2
        panel._hold_until = 0.0  # long after the click: a paused task still keeps its row
        panel.refresh(force=True)
        assert panel._rows[0].task is first and "suspended at " in panel._rows[0].state.value
        assert " of 33.6 MB" in panel._rows[0].state.value  # a suspended row says what it holds
    finally:
        session.invalidate_and_cancel()


def test_a_closed_session_panel_keeps_its_final_picture(origin, tmp_path):
    session = bg.Session(bg.Configuration.default())
    session.download_task(origin.url("kept", 300_000), tmp_path / "kept").resume().wait(30)
    panel = SessionPanel(session)
    try:
        panel.refresh(force=True)
        before = panel.header.value
        session.close()
        panel.refresh(force=True)
        assert panel.header.value == before and "300.0 KB" in before and "1 done" in before
        assert len(panel.rows_box.children) == 1 and panel._rows[0].stop.disabled
        assert "final state" in panel.summary.value
    finally:
        panel.close()


def test_a_reused_identifier_shows_the_current_job(origin, tmp_path):
    config = bg.Configuration.background("again", use_service=False)
    with bg.Session(config) as first:
        first.download_task(origin.url("old", 1000), tmp_path / "old").resume().wait(30)
    second = bg.Session(config)
    try:
        new = second.download_task(origin.url("new", 2000), tmp_path / "new").resume()
        assert second.wait(timeout=30) == [tmp_path / "new"]  # not the earlier run's file too
        assert [t.task_identifier for t in second.current_tasks()] == [new.task_identifier]
        assert len(second.all_tasks()) == 2
        panel = SessionPanel(second)
        panel.refresh(force=True)
        assert len(panel.rows_box.children) == 1 and panel._rows[0].task is new
        assert "1 done" in panel.header.value and "1 finished tasks of earlier runs" in panel.summary.value
        everything = SessionPanel(second, all_tasks=True)
        assert len(everything.rows_box.children) == 2
        panel.close()
        everything.close()
    finally:
        second.close()


def test_unknown_sizes_read_as_unknown(tmp_path):
    session = bg.Session(bg.Configuration.default())
    task = session.download_task("http://127.0.0.1:9/unknown", tmp_path / "u")  # never started: size unknown
    panel = TaskPanel([task])
    assert "size unknown" in panel.header.value and "+ ?" not in panel.header.value
    assert panel._rows[0].state.value == "suspended at 0 B (size unknown)"
    session.invalidate_and_cancel()
