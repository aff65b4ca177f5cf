"""Why a task waits: the reasons, as data (:class:`WaitReason`) and as text for people
(:class:`Wait`). The scheduler decides them; the engine, the panel, the event log and the
plots read them."""

from __future__ import annotations

import enum

__all__ = ["BEGIN", "DISCRETIONARY", "DISK", "HOST", "HOST_TAKEN", "LAUNCH", "PAUSED", "RETRY", "SLOT", "Wait",
           "WaitReason"]


class WaitReason(str, enum.Enum):
    """Why a RUNNING task does not transfer yet: the ``reason`` column of ``waiting`` rows."""

    SLOT = "waiting for a free slot"
    HOST = "host connection limit"
    DISCRETIONARY = "discretionary"
    DISK = "insufficient disk"
    BEGIN = "earliest begin date"
    RETRY = "retry backoff"
    LAUNCH = "launch rate limit"
    PAUSED = "session paused"
    SHARED = "shares a transfer"  # another session's task transfers the same file

    def __str__(self) -> str:
        return self.value


class Wait(str):
    """A waiting reason as shown to people (``"host connection limit (6 per host)"``)
    that also carries its :class:`WaitReason` as data (``.reason``), so nobody has to
    parse the text."""

    reason: WaitReason

    def __new__(cls, reason: WaitReason, text: str | None = None) -> Wait:
        obj = super().__new__(cls, reason.value if text is None else text)
        obj.reason = reason
        return obj


SLOT = Wait(WaitReason.SLOT)
HOST = Wait(WaitReason.HOST)
HOST_TAKEN = Wait(WaitReason.HOST, "host connection limit: other files of this host hold its connections")
DISCRETIONARY = Wait(WaitReason.DISCRETIONARY)
DISK = Wait(WaitReason.DISK)
BEGIN = Wait(WaitReason.BEGIN)
RETRY = Wait(WaitReason.RETRY)
LAUNCH = Wait(WaitReason.LAUNCH)
PAUSED = Wait(WaitReason.PAUSED)
