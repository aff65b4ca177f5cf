"""Scheduling policy: which task runs next, and why every other one waits. No I/O.

The engine tells the :class:`Scheduler` what happens (a task wants to run, finished,
must back off, changed priority) and asks :meth:`Scheduler.poll` what to do now: which
tasks to start, which waiting reasons changed, which tasks outlived
``timeout_interval_for_resource``, and when to ask again. The clock and the free-disk
probe are injected, so the policy is tested with a fake clock and property tests.

A task waits for exactly one reason at a time, always visible:

=====================  =============================================================
``session paused``     ``session.suspend_all()`` paused scheduling
``earliest begin date``  its ``earliest_begin_date`` is in the future
``retry backoff``      an attempt failed; it retries at the given time
``launch rate limit``  created by a launched client; delayed by the rate limiter
``waiting for a free slot``  ``max_concurrent_tasks`` transfers are running
``host connection limit``  ``http_maximum_connections_per_host`` reached for its host
``discretionary``      discretionary: non-discretionary work is active, or outside
                       ``discretionary_window``
``insufficient disk``  its remaining bytes, with those reserved by running tasks,
                       do not fit in the free space of its file system
=====================  =============================================================

Cost: every operation is O(log n) in the number of tasks. A task blocked by its host's
connection limit waits in that host's own heap; a connection freed on the host moves
only its most urgent task back, so thousands of tasks on one host cost O(log n) per
completion. The disk freeing up re-queues the tasks blocked on it. Adding, starting, completing and
cancelling 10,000 tasks stays linearithmic (see ``benchmarks/scheduler.py``).

One clock (wall time, seconds since the epoch) serves begin dates, deadlines and
backoff: begin dates and resource deadlines must survive restarts, which a monotonic
clock cannot, and a jump of the wall clock only shifts when waiting tasks start.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ._waits import BEGIN, DISCRETIONARY, DISK, HOST, PAUSED, RETRY, SLOT, Wait, WaitReason

__all__ = ["Item", "Plan", "Scheduler", "in_window"]


@dataclass
class Item:
    """What the policy knows of a task that wants to run."""

    task_identifier: int
    host: str = ""
    priority: float = 0.5
    earliest_begin_date: float | None = None
    discretionary: bool = False
    remaining_bytes: int = 0
    disk: str = ""                 # a key of the file system the bytes go to
    deadline: float | None = None  # created + timeout_interval_for_resource
    not_before: float | None = None  # retry backoff or launch delay
    not_before_reason: Wait = RETRY


@dataclass
class Plan:
    """What to do now."""

    start: list[int] = field(default_factory=list)
    preempt: list[int] = field(default_factory=list)  # discretionary tasks to stop: other work arrived
    waiting: dict[int, Wait | None] = field(default_factory=dict)  # reasons that changed (None: no longer waits)
    expired: list[int] = field(default_factory=list)
    impossible: dict[int, str] = field(default_factory=dict)  # tasks that can never fit on their disk, and why
    wake_at: float | None = None


def in_window(window: tuple[float, float] | None, now: float) -> bool:
    """True when local time of day ``now`` is within ``window`` = (start hour, end hour)."""
    if window is None:
        return True
    start, end = window
    local = time.localtime(now)
    hour = local.tm_hour + local.tm_min / 60 + local.tm_sec / 3600
    return start <= hour < end if start <= end else hour >= start or hour < end


def _next_window_start(window: tuple[float, float], now: float) -> float:
    local = time.localtime(now)
    midnight = now - (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec)
    candidate = midnight + window[0] * 3600
    return candidate if candidate > now else candidate + 86400


CLOCK_JUMP = 2.0
"""Seconds the wall clock may drift from the monotonic clock between two polls before it
counts as set (NTP slews far more gently than this)."""


class Scheduler:
    """The policy. Call the event methods, then :meth:`poll`."""

    def __init__(self, *, max_concurrent_tasks: int, max_per_host: int,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 free_disk: Callable[[str], int | None] | None = None,
                 disk_size: Callable[[str], int | None] | None = None,
                 discretionary_window: tuple[float, float] | None = None) -> None:
        self.max_concurrent_tasks = max_concurrent_tasks
        self.max_per_host = max_per_host
        self.clock = clock
        self.monotonic = monotonic
        self._last_clocks: tuple[float, float] | None = None  # (wall, monotonic) at the last poll
        self.free_disk = free_disk
        self.disk_size = disk_size
        self.discretionary_window = discretionary_window
        self.paused = False
        self.items: dict[int, Item] = {}
        self.running: dict[int, Item] = {}
        self.reason: dict[int, Wait | None] = {}
        self._host_running: Counter[str] = Counter()
        self._nondisc_running = 0
        self._reserved: Counter[str] = Counter()
        self._seq = itertools.count()
        self._version: dict[int, int] = {}
        self._ready: list[tuple[float, int, int, int]] = []      # (-priority, seq, tid, version)
        self._ready_disc: list[tuple[float, int, int, int]] = []
        self._timed: list[tuple[float, int, int, int]] = []      # (time, seq, tid, version)
        self._deadlines: list[tuple[float, int]] = []
        self._host_blocked: dict[str, list[tuple[float, int, int, int]]] = {}  # host -> heap like _ready
        self._host_wait = Wait(WaitReason.HOST, f"{HOST} ({max_per_host} per host)")
        self._disk_blocked: list[int] = []
        self._waiting_nondisc: set[int] = set()  # non-discretionary tasks ready or blocked, not timed
        self._changed: dict[int, Wait | None] = {}
        self._impossible: dict[int, str] = {}

    # events ------------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        """``item`` wants to run (resume(), reattach, or the end of a backoff)."""
        tid = item.task_identifier
        self._follow_clock(self.clock())  # its times are read off the clock as it is now
        if tid in self.items:
            self.remove(tid)
        self.items[tid] = item
        if item.deadline is not None:
            heapq.heappush(self._deadlines, (item.deadline, tid))
        self._queue(item)

    def remove(self, tid: int) -> None:
        """The task no longer wants to run (suspended, cancelled, completed, expired)."""
        item = self.items.pop(tid, None)
        if item is None:
            return
        self._version[tid] = self._version.get(tid, 0) + 1  # invalidates heap entries
        self._waiting_nondisc.discard(tid)
        if tid in self.running:
            self._release(item)
        if self.reason.pop(tid, None) is not None:
            self._changed[tid] = None

    def release_slot(self, tid: int) -> None:
        """A running task's transfer is over (its file is being put in place): its slot,
        and its host's connection, go to the next task. It stays an item until removed."""
        item = self.running.get(tid)
        if item is not None:
            self._release(item)

    def backoff(self, tid: int, until: float, reason: Wait = RETRY) -> None:
        """A running task must wait until ``until`` (retry backoff, launch delay)."""
        self._follow_clock(self.clock())  # a jump already made must not shift ``until``, read after it
        item = self.items.get(tid)
        if item is None:
            return
        self.remove(tid)
        item.not_before, item.not_before_reason = until, reason
        self.add(item)

    def update_remaining(self, tid: int, remaining: int) -> None:
        """The server told the real length: keep the disk reservation honest."""
        item = self.items.get(tid)
        if item is None:
            return
        if tid in self.running:
            self._reserved[item.disk] += remaining - item.remaining_bytes
        item.remaining_bytes = remaining

    def set_priority(self, tid: int, priority: float) -> None:
        item = self.items.get(tid)
        if item is None:
            return
        item.priority = priority
        if tid not in self.running:
            self.remove(tid)
            self.add(item)

    def pause(self) -> None:
        """Start nothing until :meth:`unpause`; the engine re-adds the tasks it stops."""
        self.paused = True
        for heap in (self._ready, self._ready_disc):
            for _, _, tid, version in heap:
                if self._version.get(tid, 0) == version and tid in self.items:
                    self._set_reason(tid, PAUSED)

    def unpause(self) -> None:
        self.paused = False
        for heap, reason in ((self._ready, SLOT), (self._ready_disc, DISCRETIONARY)):
            for _, _, tid, version in heap:
                if self._version.get(tid, 0) == version and tid in self.items:
                    self._set_reason(tid, reason)

    # the decision ------------------------------------------------------------------------

    def poll(self) -> Plan:
        now = self.clock()
        self._follow_clock(now)
        plan = Plan()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, tid = heapq.heappop(self._deadlines)
            item = self.items.get(tid)
            if item is not None and item.deadline is not None and item.deadline <= now:
                plan.expired.append(tid)
                self.remove(tid)
        while self._timed and self._timed[0][0] <= now:
            _, _, tid, version = heapq.heappop(self._timed)
            if self._version.get(tid, 0) == version and tid in self.items:
                item = self.items[tid]
                item.not_before = None
                self._push_ready(item)
        if not self.paused:
            if self._waiting_nondisc or self._nondisc_running:
                for tid, item in list(self.running.items()):
                    if item.discretionary:  # discretionary work yields to any other work
                        self._release(item)
                        self._push_ready(item)
                        plan.preempt.append(tid)
            self._fill(now)
        wake = [t for t in (self._timed[0][0] if self._timed else None,
                            self._deadlines[0][0] if self._deadlines else None) if t is not None]
        if self._ready_disc and self.discretionary_window is not None and not in_window(self.discretionary_window, now):
            wake.append(_next_window_start(self.discretionary_window, now))
        plan.wake_at = min(wake) if wake else None
        for tid, reason in self._changed.items():
            if tid in self.running and reason is not None:
                continue
            plan.waiting[tid] = reason
        plan.start = [tid for tid, reason in self._changed.items() if reason is None and tid in self.running]
        plan.impossible, self._impossible = self._impossible, {}
        for tid in plan.impossible:
            self.remove(tid)
        self._changed = {}
        return plan

    # internals ---------------------------------------------------------------------------

    def _follow_clock(self, now: float) -> None:
        """When the wall clock is set (by days, either way), waits that are durations (a
        retry backoff, a launch delay, the resource timeout) keep their length: they are
        shifted by the jump. Earliest begin dates are dates and stay where they are."""
        mono = self.monotonic()
        last, self._last_clocks = self._last_clocks, (now, mono)
        if last is None:
            return
        jump = (now - last[0]) - (mono - last[1])
        if abs(jump) < CLOCK_JUMP:
            return
        for item in self.items.values():
            if item.not_before is not None:
                item.not_before += jump
            if item.deadline is not None:
                item.deadline += jump
        self._deadlines = [(self.items[tid].deadline or t, tid) for t, tid in self._deadlines if tid in self.items]
        heapq.heapify(self._deadlines)
        timed = []
        for _, seq, tid, version in self._timed:
            waiting = self.items.get(tid)
            if waiting is not None and self._version.get(tid, 0) == version:
                until = max(t for t in (waiting.earliest_begin_date, waiting.not_before, now) if t is not None)
                timed.append((until, seq, tid, version))
        self._timed = timed
        heapq.heapify(self._timed)

    def _set_reason(self, tid: int, reason: Wait | None) -> None:
        if self.reason.get(tid) != reason:
            self.reason[tid] = reason
            self._changed[tid] = reason

    def _queue(self, item: Item) -> None:
        tid = item.task_identifier
        now = self.clock()
        waits = [(t, why) for t, why in ((item.earliest_begin_date, BEGIN), (item.not_before, item.not_before_reason))
                 if t is not None and t > now]
        if waits:
            until, why = max(waits)
            heapq.heappush(self._timed, (until, next(self._seq), tid, self._version.get(tid, 0)))
            self._set_reason(tid, why)
        else:
            self._push_ready(item)

    def _push_ready(self, item: Item) -> None:
        tid = item.task_identifier
        entry = (-item.priority, next(self._seq), tid, self._version.get(tid, 0))
        heapq.heappush(self._ready_disc if item.discretionary else self._ready, entry)
        if not item.discretionary:
            self._waiting_nondisc.add(tid)
        self._set_reason(tid, PAUSED if self.paused else (DISCRETIONARY if item.discretionary else SLOT))

    def _pop_valid(self, heap: list[tuple[float, int, int, int]]) -> Item | None:
        while heap:
            _, _, tid, version = heap[0]
            if self._version.get(tid, 0) == version and tid in self.items and tid not in self.running:
                return self.items[tid]
            heapq.heappop(heap)
        return None

    def _fill(self, now: float) -> None:
        while len(self.running) < self.max_concurrent_tasks:
            item = self._pop_valid(self._ready)
            heap = self._ready
            if item is None:
                if self._nondisc_running or self._waiting_nondisc or \
                        not in_window(self.discretionary_window, now):
                    break
                item = self._pop_valid(self._ready_disc)
                heap = self._ready_disc
                if item is None:
                    break
            heapq.heappop(heap)
            self._try_start(item)

    def _try_start(self, item: Item) -> None:
        tid = item.task_identifier
        if self._host_running[item.host] >= self.max_per_host:
            entry = (-item.priority, next(self._seq), tid, self._version.get(tid, 0))
            heapq.heappush(self._host_blocked.setdefault(item.host, []), entry)
            self._set_reason(tid, self._host_wait)
            return
        if self.free_disk is not None and item.remaining_bytes > 0:
            size = self.disk_size(item.disk) if self.disk_size is not None else None
            if size is not None and item.remaining_bytes > size:  # waiting would never end
                self._impossible[tid] = (f"needs {item.remaining_bytes:,} bytes, more than the whole file system "
                                         f"of {item.disk} holds ({size:,} bytes)")
                return
            free = self.free_disk(item.disk)
            if free is not None and free - self._reserved[item.disk] < item.remaining_bytes:
                self._disk_blocked.append(tid)
                self._set_reason(tid, Wait(WaitReason.DISK, f"{DISK}: needs {item.remaining_bytes} bytes, "
                                                            f"{max(0, free - self._reserved[item.disk])} free"))
                return
        if not item.discretionary:
            self._waiting_nondisc.discard(tid)
            self._nondisc_running += 1
        self.running[tid] = item
        self._host_running[item.host] += 1
        self._reserved[item.disk] += item.remaining_bytes
        self._set_reason(tid, None)

    def _release(self, item: Item) -> None:
        tid = item.task_identifier
        del self.running[tid]
        self._host_running[item.host] -= 1
        self._reserved[item.disk] -= item.remaining_bytes
        if not item.discretionary:
            self._nondisc_running -= 1
        # one connection freed on this host: its most urgent blocked task competes again (only
        # one, so a completion costs O(log n) however many tasks wait for the host)
        blocked_host = self._host_blocked.get(item.host)
        while blocked_host:
            _, _, blocked, version = heapq.heappop(blocked_host)
            if self._version.get(blocked, 0) == version and blocked in self.items and blocked not in self.running:
                self._requeue(blocked)
                break
        blocked_disk, self._disk_blocked = self._disk_blocked, []
        for blocked in blocked_disk:  # reserved space freed
            self._requeue(blocked)

    def _requeue(self, tid: int) -> None:
        item = self.items.get(tid)
        if item is None or tid in self.running:
            return
        self._push_ready(item)
