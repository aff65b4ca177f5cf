"""bgdl_nb: background downloads for Jupyter notebooks.

Start large downloads from a cell and keep working: tasks are resumable, journaled
under a session identifier, and survive kernel restarts. The API follows Apple's
URLSession background downloads, in Python's naming::

    import bgdl_nb as bg

    paths = bg.fetch(["https://example.org/big.parquet"], dest="data/", identifier="datasets")

    session = bg.Session(bg.Configuration.background("datasets"), delegate=MyDelegate())
    task = session.download_task("https://example.org/big.parquet", destination="data/big.parquet")
    task.resume()
    path = task.wait()          # or: path = await task

    with bg.open("https://example.org/big.parquet", "data") as f:
        footer = f.seek(-8, 2) and f.read()   # read while the rest downloads
"""

from typing import TYPE_CHECKING, Any

from ._config import Configuration
from ._delegate import SessionDelegate
from ._events import Event, EventKind
from ._exceptions import (
    BgdlError,
    BlockedDestination,
    Cancelled,
    CannotConnect,
    ChecksumMismatch,
    DiskFull,
    FetchError,
    FileChanged,
    HTTPStatusError,
    InvalidConfiguration,
    InvalidDestination,
    InvalidInput,
    InvalidResumeData,
    NetworkError,
    ReadTimeout,
    SessionBusy,
    SessionError,
    SessionInvalidated,
    SettingsKept,
    TransferError,
    TransferTimeout,
    UnexpectedResponse,
    UnpackError,
    UnsafeFile,
    UnsafeLocation,
    UnsupportedURL,
    WaitTimedOut,
)
from ._fetch import fetch, fetch_async
from ._hosts.service.control import service_status
from ._open import BackgroundFile
from ._open import open as open  # bg.open; not in __all__, so `from bgdl_nb import *` keeps the builtin
from ._session import Session
from ._states import TaskState
from ._task import DownloadTask, Progress, Request, Response
from ._waits import WaitReason

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._cluster import ClusterJob, cluster_job


def __getattr__(name: str) -> Any:
    """The cluster API is loaded when first used: a command or a kernel that never runs a
    cluster job does not pay for importing it."""
    if name in ("ClusterJob", "cluster_job"):
        from . import _cluster
        return getattr(_cluster, name)
    raise AttributeError(f"module 'bgdl_nb' has no attribute {name!r}")

__all__ = [
    "BackgroundFile",
    "BgdlError",
    "BlockedDestination",
    "Cancelled",
    "CannotConnect",
    "ChecksumMismatch",
    "ClusterJob",
    "Configuration",
    "DiskFull",
    "DownloadTask",
    "Event",
    "EventKind",
    "FetchError",
    "FileChanged",
    "HTTPStatusError",
    "InvalidConfiguration",
    "InvalidDestination",
    "InvalidInput",
    "InvalidResumeData",
    "NetworkError",
    "Progress",
    "ReadTimeout",
    "Request",
    "Response",
    "Session",
    "SessionBusy",
    "SessionDelegate",
    "SessionError",
    "SessionInvalidated",
    "SettingsKept",
    "TaskState",
    "TransferError",
    "TransferTimeout",
    "UnexpectedResponse",
    "UnpackError",
    "UnsafeFile",
    "UnsafeLocation",
    "UnsupportedURL",
    "WaitReason",
    "WaitTimedOut",
    "cluster_job",
    "fetch",
    "fetch_async",
    "service_status",
]
