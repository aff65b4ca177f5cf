"""The scheduling policy with a fake clock, and its invariants under random operations."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgdl_nb._bandwidth import TokenBucket
from bgdl_nb._scheduler import Item, Scheduler
from bgdl_nb._waits import BEGIN, DISCRETIONARY, DISK, HOST, PAUSED, RETRY, SLOT


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(max_tasks: int = 2, per_host: int = 6, **kw) -> tuple[Scheduler, Clock]:
    clock = Clock()
    kw.setdefault("monotonic", clock)  # one fake time for both clocks: no clock is ever set here
    return Scheduler(max_concurrent_tasks=max_tasks, max_per_host=per_host, clock=clock, **kw), clock


def test_slots_are_filled_by_priority_and_the_rest_wait_for_a_slot():
    s, _ = make(max_tasks=2)
    for tid, prio in [(1, 0.1), (2, 0.9), (3, 0.5), (4, 0.5)]:
        s.add(Item(tid, "h", prio))
    plan = s.poll()
    assert sorted(plan.start) == [2, 3]
    assert s.reason[1] == SLOT and s.reason[4] == SLOT
    s.remove(2)  # completed
    assert s.poll().start == [4]  # equal priority: first come, first served


def test_host_connection_limit():
    s, _ = make(max_tasks=3, per_host=1)
    s.add(Item(1, "a"))
    s.add(Item(2, "a"))
    s.add(Item(3, "b"))
    plan = s.poll()
    assert sorted(plan.start) == [1, 3] and s.reason[2].startswith(HOST)
    s.remove(1)
    assert s.poll().start == [2]


def test_earliest_begin_date_wakes_the_engine_on_time():
    s, clock = make()
    s.add(Item(1, earliest_begin_date=clock.now + 10))
    plan = s.poll()
    assert plan.start == [] and s.reason[1] == BEGIN and plan.wake_at == clock.now + 10
    clock.now += 9.9
    assert s.poll().start == []
    clock.now += 0.1
    assert s.poll().start == [1]


def test_discretionary_waits_for_other_work_and_yields_to_it():
    s, _ = make(max_tasks=3)
    s.add(Item(1))
    s.add(Item(2, discretionary=True))
    assert s.poll().start == [1] and s.reason[2] == DISCRETIONARY
    s.remove(1)
    assert s.poll().start == [2]
    s.add(Item(3))
    plan = s.poll()
    assert plan.preempt == [2] and plan.start == [3] and s.reason[2] == DISCRETIONARY


def test_discretionary_window():
    import time as _time
    s, clock = make(discretionary_window=(1, 2))
    local = _time.localtime(clock.now)
    clock.now -= (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec)  # local midnight
    clock.now += 5 * 3600
    s.add(Item(1, discretionary=True))
    plan = s.poll()
    assert plan.start == [] and plan.wake_at == pytest.approx(clock.now + 20 * 3600)
    clock.now += 20 * 3600 + 60
    assert s.poll().start == [1]


def test_retry_backoff_gives_the_slot_back():
    s, clock = make(max_tasks=1)
    s.add(Item(1))
    s.add(Item(2))
    assert s.poll().start == [1]
    s.backoff(1, clock.now + 5)
    plan = s.poll()
    assert plan.start == [2] and s.reason[1] == RETRY and plan.wake_at == clock.now + 5
    s.remove(2)
    clock.now += 5
    assert s.poll().start == [1]


def test_insufficient_disk_waits_instead_of_failing_halfway():
    free = {"d": 100}
    s, _ = make(max_tasks=3, free_disk=lambda key: free[key])
    s.add(Item(1, remaining_bytes=80, disk="d"))
    s.add(Item(2, remaining_bytes=50, disk="d"))  # 80 + 50 > 100: the batch does not fit
    plan = s.poll()
    assert plan.start == [1] and s.reason[2].startswith(DISK)
    s.remove(1)
    assert s.poll().start == [2]


def test_resource_timeout_expires_waiting_tasks():
    s, clock = make(max_tasks=1)
    s.add(Item(1))
    s.add(Item(2, deadline=clock.now + 60))
    s.poll()
    clock.now += 61
    plan = s.poll()
    assert plan.expired == [2] and 2 not in s.items


def test_pause_and_unpause():
    s, _ = make()
    s.pause()
    s.add(Item(1))
    assert s.poll().start == [] and s.reason[1] == PAUSED
    s.unpause()
    assert s.poll().start == [1]


def test_priority_change_reorders():
    s, _ = make(max_tasks=1)
    s.add(Item(1))
    s.add(Item(2, priority=0.1))
    s.add(Item(3, priority=0.2))
    s.poll()
    s.set_priority(2, 0.9)
    s.remove(1)
    assert s.poll().start == [2]


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 40), st.sampled_from("abc"), st.floats(0, 1),
              st.one_of(st.none(), st.floats(0, 50)), st.booleans(), st.one_of(st.none(), st.floats(1, 200))),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("backoff"), st.integers(0, 40), st.floats(0, 30)),
    st.tuples(st.just("tick"), st.floats(0, 20)),
    st.tuples(st.just("priority"), st.integers(0, 40), st.floats(0, 1)),
), max_size=120)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(1, 4), st.integers(1, 3))
def test_invariants_under_random_operations(operations, max_tasks, per_host):
    s, clock = make(max_tasks=max_tasks, per_host=per_host)
    begin: dict[int, float | None] = {}
    for op in operations:
        if op[0] == "add":
            _, tid, host, prio, begin_in, disc, timeout = op
            start = None if begin_in is None else clock.now + begin_in
            begin[tid] = start
            s.add(Item(tid, host, prio, earliest_begin_date=start, discretionary=disc,
                       deadline=None if timeout is None else clock.now + timeout))
        elif op[0] == "remove":
            s.remove(op[1])
        elif op[0] == "backoff" and op[1] in s.running:
            s.backoff(op[1], clock.now + op[2])
        elif op[0] == "tick":
            clock.now += op[1]
        elif op[0] == "priority":
            s.set_priority(op[1], op[2])
        plan = s.poll()
        running = s.running
        assert len(running) <= max_tasks
        assert max(Counter(i.host for i in running.values()).values(), default=0) <= per_host
        for tid in plan.start:
            assert begin.get(tid) is None or begin[tid] <= clock.now  # never before its begin date
        if any(i.discretionary for i in running.values()):
            assert not any(not i.discretionary for i in running.values())
        assert all(i.deadline is None or i.deadline > clock.now for i in s.items.values())
        started = [running[t] for t in plan.start if not running[t].discretionary]
        if started and len(running) == max_tasks:
            lowest = min(i.priority for i in started)
            for tid, reason in s.reason.items():
                if reason == SLOT and not s.items[tid].discretionary:
                    assert s.items[tid].priority <= lowest  # nobody more urgent was left waiting
        for tid in s.items:
            assert (tid in running) == (s.reason.get(tid) is None)  # every waiting task has a reason


@settings(max_examples=300, deadline=None)
@given(st.floats(1e3, 1e8), st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 70_000)), min_size=1,
                                     max_size=200))
def test_token_bucket_bounds_any_window(rate, chunks):
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    log: list[tuple[float, int]] = []
    for gap, n in chunks:
        now += gap
        log.append((now, n))
        now += bucket.reserve(n, now)  # the transfer pauses as told
    largest = max(n for _, n in chunks)
    for i in range(len(log)):
        for j in range(i, len(log)):
            window = log[j][0] - log[i][0]
            sent = sum(n for _, n in log[i:j + 1])
            assert sent <= rate * window + bucket.burst + largest + 1e-6 * rate


def test_setting_the_wall_clock_never_stretches_a_backoff_or_fires_a_timeout():
    """A retry backoff and the resource timeout are durations: when the wall clock is set
    back (or forward) by days, they keep their length. An earliest begin date is a date."""
    wall, mono = Clock(), Clock()
    s = Scheduler(max_concurrent_tasks=4, max_per_host=6, clock=wall, monotonic=mono)
    s.add(Item(1, "h", deadline=wall.now + 3600))
    s.add(Item(2, "h", earliest_begin_date=wall.now + 60))
    assert s.poll().start == [1]
    s.backoff(1, wall.now + 30)
    s.poll()
    wall.now -= 3 * 86400  # the clock is set back three days
    s.poll()
    wall.now += 31
    mono.now += 31
    assert 1 in s.poll().start  # after 31 real seconds, not three days
    wall.now += 7 * 86400  # and forward a week: the hour-long resource timeout does not fire
    mono.now += 1
    plan = s.poll()
    assert plan.expired == [] and 2 in plan.start  # the begin date (a date) has passed


def test_a_backoff_set_just_after_the_wall_clock_jumped_keeps_its_length():
    """The clock jumps while a task transfers (no poll sees it), then its connection resets
    and the backoff is set from the new clock: it is not shifted by the jump a second time
    (a laptop that slept eight days used to wait eight more days here)."""
    wall, mono = Clock(), Clock()
    s = Scheduler(max_concurrent_tasks=4, max_per_host=6, clock=wall, monotonic=mono)
    s.add(Item(1, "h"))
    assert s.poll().start == [1]
    wall.now += 8 * 86400
    mono.now += 1
    s.backoff(1, wall.now + 0.5)
    s.poll()
    wall.now += 0.6
    mono.now += 0.6
    assert 1 in s.poll().start
