"""One transfer for two sessions: the service links tasks of different identifiers that
download the same URL to the same destination.

The first task (the leader) transfers; a task created later in another identifier for
the same URL and destination (a follower) transfers nothing: it waits with the reason
"shares a transfer", mirrors the leader's byte counts, and completes with the leader's
file or error. Only public engine methods are used (``hold``, ``mirror_progress``,
``adopt``), so the engine knows nothing of other sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._events import Event, EventKind

if TYPE_CHECKING:
    from ..._snapshots import TaskSnapshot
    from .hosted import Hosted

__all__ = ["Sharing"]

_ENDS = (EventKind.COMPLETED.value, EventKind.FAILED.value)


class Sharing:
    """Leaders and their followers across the service's hosted identifiers."""

    def __init__(self, hosted: dict[str, Hosted]) -> None:
        self.hosted = hosted
        self.followers: dict[tuple[str, int], list[tuple[str, int]]] = {}  # leader -> followers
        self._led: set[tuple[str, int]] = set()  # followers (never leaders themselves)

    def link(self, hosted: Hosted, record: dict[str, Any]) -> None:
        """A task was created in ``hosted``: make it follow a running twin, if there is one."""
        destination, url = record.get("destination"), record["url"]
        if not destination:
            return
        for other, host in self.hosted.items():
            tid = host.engine.destination_owner(destination)
            if other != hosted.identifier and tid is not None and (other, tid) not in self._led \
                    and host.engine.url_of(tid) == url:
                follower = (hosted.identifier, int(record["task_identifier"]))
                hosted.engine.hold(follower[1], f"session {other!r} task {tid}")
                self.followers.setdefault((other, tid), []).append(follower)
                self._led.add(follower)
                return

    def progress(self, hosted: Hosted, counts: dict[int, int]) -> None:
        """Live byte counts of leaders reach their followers."""
        for tid, received in counts.items():
            for identifier, follower in self.followers.get((hosted.identifier, tid), ()):
                target = self.hosted.get(identifier)
                if target is not None:
                    target.engine.mirror_progress(follower, received, None)

    def relay(self, hosted: Hosted, event: Event, snapshot: TaskSnapshot) -> None:
        """A leader's progress and outcome reach its followers."""
        key = (hosted.identifier, event.task_identifier or 0)
        followers = self.followers.get(key)
        if not followers:
            return
        record = snapshot.fields
        for identifier, tid in list(followers):
            target = self.hosted.get(identifier)
            if target is None:
                continue
            if event.event == EventKind.PROGRESS.value:
                target.engine.mirror_progress(tid, snapshot.received, record["total"])
            elif event.event in _ENDS:
                target.engine.adopt(tid, dict(record))
        if event.event in _ENDS:
            del self.followers[key]
            self._led.difference_update(followers)
