"""The event log as a pandas DataFrame (SPEC §3).

Columns and dtypes: ``seq`` (Int64), ``time`` (datetime64[ns, UTC]), ``identifier``
(string), ``task_identifier`` (Int64), ``event`` (categorical over every
:class:`~bgdl_nb.EventKind`, so frames from different sessions concatenate cleanly),
``bytes_written``/``total_bytes_written``/``total_bytes_expected``/``status`` (Int64,
nullable), ``error`` and ``detail`` (string), ``reason`` (categorical over every
:class:`~bgdl_nb.WaitReason`: why a ``waiting`` row waits).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._events import EVENT_COLUMNS, Event, EventKind
from .._waits import WaitReason
from . import require

if TYPE_CHECKING:
    import pandas

__all__ = ["columns_frame", "events_frame"]

_INT_COLUMNS = ("seq", "task_identifier", "bytes_written", "total_bytes_written", "total_bytes_expected",
                "status")


def events_frame(events: Iterable[Event]) -> pandas.DataFrame:
    """Build the DataFrame of ``events`` (one row each, in order)."""
    rows = list(events)
    return columns_frame({name: [getattr(e, name) for e in rows] for name in EVENT_COLUMNS})


def columns_frame(columns: dict[str, list[Any]]) -> pandas.DataFrame:
    """The same DataFrame from one list per column of ``EVENT_COLUMNS`` (how the journal
    hands them over: no object per row)."""
    require("pandas")
    import pandas as pd

    frame = pd.DataFrame({
        **{name: pd.array(columns[name], dtype="Int64") for name in _INT_COLUMNS},
        "time": pd.to_datetime(pd.Series(columns["time"], dtype="float64"), unit="s", utc=True),
        "identifier": pd.array(columns["identifier"], dtype="string"),
        "event": pd.Categorical(columns["event"], categories=[k.value for k in EventKind]),
        "error": pd.array(columns["error"], dtype="string"),
        "detail": pd.array(columns["detail"], dtype="string"),
        "reason": pd.Categorical(columns["reason"], categories=[r.value for r in WaitReason]),
    })
    return frame[list(EVENT_COLUMNS)]
