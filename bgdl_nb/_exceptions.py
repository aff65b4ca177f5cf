"""The errors bgdl_nb raises, all under one root.

Every message says what happened and what the user can do about it. Errors carry
context (``url``, ``task_identifier`` and, when a download can be continued,
``resume_data``) and pickle cleanly, because they are journaled and will cross the
boundary of the transfer service.

The tree::

    BgdlError
    ├── InvalidInput                  bad arguments, raised before any I/O
    │   ├── UnsupportedURL            not http/https, malformed, or a bad redirect hop
    │   ├── InvalidDestination        a directory, not writable, or existing content
    │   ├── InvalidResumeData         empty, foreign, truncated, tampered or too new
    │   └── InvalidConfiguration      a bad identifier or setting
    │       └── UnsafeLocation        a state, key, lock or socket folder that is not
    │                                 yours alone (a link, another user's, mode 0777)
    ├── SessionError
    │   ├── SessionBusy               another process holds this identifier
    │   └── SessionInvalidated        the session was invalidated
    ├── TransferError                 something went wrong while transferring
    │   ├── NetworkError              connection reset, TLS, a body cut short
    │   │   └── CannotConnect         connection refused, unknown host: fails fast
    │   ├── TransferTimeout           no bytes within timeout_interval_for_request,
    │   │   │                         or the task outlived timeout_interval_for_resource
    │   │   └── ReadTimeout           bgdl_nb.open(): a read's bytes did not come in its timeout
    │   ├── FileChanged               bgdl_nb.open(): the resource changed while it was read
    │   ├── Cancelled                 the task was cancelled by the user
    │   ├── DiskFull                  the destination's file system ran out of space
    │   ├── ChecksumMismatch          the finished bytes do not hash to the expected digest
    │   └── UnexpectedResponse        a 2xx that carries no file (204, 205, a 206 not asked for)
    ├── HTTPStatusError               the server answered with a non-2xx status
    │                                 (raised by fetch() and task.wait(); the delegate
    │                                 reads it from task.response, as in the seeds)
    └── FetchError                    fetch() could not complete every file

and one warning, ``SettingsKept``: the transfer service already runs a session of this
identifier with other settings, for downloads under way or another attached process.
"""

from __future__ import annotations

import base64
from typing import Any

from ._redact import redact_text, redact_url

__all__ = [
    "BgdlError",
    "Cancelled",
    "CannotConnect",
    "ChecksumMismatch",
    "DiskFull",
    "FetchError",
    "FileChanged",
    "HTTPStatusError",
    "InvalidConfiguration",
    "InvalidDestination",
    "InvalidInput",
    "InvalidResumeData",
    "NetworkError",
    "ReadTimeout",
    "SessionBusy",
    "SessionError",
    "SessionInvalidated",
    "SettingsKept",
    "TransferError",
    "TransferTimeout",
    "UnexpectedResponse",
    "UnpackError",
    "UnsafeLocation",
    "UnsupportedURL",
    "WaitTimedOut",
]


class BgdlError(Exception):
    """Root of every error bgdl_nb raises.

    Parameters
    ----------
    message
        What happened and what to do about it.
    url
        The URL concerned, if any.
    task_identifier
        The task concerned, if any.
    resume_data
        Bytes for ``Session.download_task_with_resume_data`` when the download can
        continue where it stopped, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        task_identifier: int | None = None,
        resume_data: bytes | None = None,
    ) -> None:
        message = redact_text(message)  # a token or password in a URL is never shown
        super().__init__(message)
        self.message = message
        self.url = None if url is None else redact_url(url)
        self.task_identifier = task_identifier
        self.resume_data = resume_data

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self).__name__, self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, used by the journal."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "url": self.url,
            "task_identifier": self.task_identifier,
            "resume_data": None if self.resume_data is None else base64.b64encode(self.resume_data).decode(),
            **self._extra(),
        }

    def _extra(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BgdlError:
        """Rebuild an error journaled by :meth:`to_dict`; unknown types become BgdlError."""
        return _rebuild(str(data.get("type", "BgdlError")), data)


class InvalidInput(BgdlError, ValueError):
    """Arguments that cannot work; raised before any I/O and before any journal record."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in a notebook: the message, which says what to change, without
        the frames of bgdl_nb's argument checks (``%tb`` still has them)."""
        return [f"{type(self).__name__}: {self.message}"]


class UnsupportedURL(InvalidInput):
    """The URL is malformed or uses a scheme other than http/https."""


class InvalidDestination(InvalidInput):
    """The destination is a directory, not writable, or already holds other content."""


class InvalidResumeData(InvalidInput):
    """Resume data that bgdl_nb did not produce, or that was damaged or altered."""


class InvalidConfiguration(InvalidInput):
    """A configuration value out of its allowed range."""


class UnsafeLocation(InvalidConfiguration):
    """A folder or file bgdl_nb would keep state, keys, locks or sockets in is not yours
    alone: a symbolic link, another user's, or open to group or others. It was not used,
    changed or followed; ``path`` names it."""

    def __init__(self, message: str, *, path: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.path = path

    def _extra(self) -> dict[str, Any]:
        return {"path": self.path}


class SessionError(BgdlError):
    """A session cannot do what was asked in its current state."""


class SessionBusy(SessionError):
    """Another process holds the session with this identifier."""


class SessionInvalidated(SessionError):
    """The session was invalidated; create a new Session to go on."""


class TransferError(BgdlError):
    """A transfer failed on the client side."""


class NetworkError(TransferError):
    """The connection failed: refused, reset, name resolution or TLS."""


class CannotConnect(NetworkError):
    """No connection could be made (refused, unknown host, unreachable): retried only
    ``connect_retries`` times, since a server that is down rarely comes back in seconds."""


class TransferTimeout(TransferError):
    """No data arrived in time, or the task outlived its resource timeout."""


class WaitTimedOut(BgdlError, TimeoutError):
    """A wait with a ``timeout`` (:meth:`DownloadTask.wait`) ended before the task did; the
    task goes on, and waiting again waits for the rest. Also a builtin ``TimeoutError``."""


class ReadTimeout(TransferTimeout):
    """A read of a file still downloading (:func:`bgdl_nb.open`) did not get its bytes
    within the reader's ``timeout``; the download goes on."""


class FileChanged(TransferError):
    """The resource changed on its server while its file was being read
    (:func:`bgdl_nb.open`): the bytes read so far are of the old version; open it again."""


class Cancelled(TransferError):
    """The task was cancelled."""


class DiskFull(TransferError):
    """No space left on the destination's file system."""


class UnsafeFile(TransferError):
    """A task's partial file is no longer the one bgdl_nb made (a symbolic link, a hard
    link, not a regular file, another user's): it was refused and left untouched."""


class UnpackError(BgdlError):
    """An archive could not be extracted (damaged, or a member that would land outside
    its folder or is a link): nothing of it was extracted, the archive itself is kept."""


class BlockedDestination(TransferError):
    """The session's destination policy (``block_private_networks``) refused an address:
    loopback, link-local (cloud metadata), private or reserved, and not in ``allowed_networks``."""


class ChecksumMismatch(TransferError):
    """The downloaded bytes do not match the expected digest; nothing was kept."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.expected = expected
        self.actual = actual

    def _extra(self) -> dict[str, Any]:
        return {"expected": self.expected, "actual": self.actual}


class UnexpectedResponse(TransferError):
    """The server answered with a success status that does not carry the file (a 204 or
    205, a part of the file that was not asked for); no file was written."""

    def __init__(self, message: str, *, status: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status

    def _extra(self) -> dict[str, Any]:
        return {"status": self.status}


class HTTPStatusError(BgdlError):
    """The server answered with a status that carries no file (4xx, or 5xx after retries)."""

    def __init__(self, message: str, *, status: int = 0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status

    def _extra(self) -> dict[str, Any]:
        return {"status": self.status}


class FetchError(BgdlError):
    """``fetch()`` finished with some files missing; ``errors`` maps URL to its error."""

    def __init__(self, message: str, *, errors: dict[str, BgdlError] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.errors = dict(errors or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_fetch, (self.message, self.errors))

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for it in a notebook: the per-URL summary, without the
        frames of bgdl_nb's waiting loop (a person needs the URLs, not our internals)."""
        return [f"FetchError: {self.message}",
                "(.errors maps each URL to its error; running the same fetch() again retries only these)"]


class SettingsKept(UserWarning):
    """A session opened with settings other than those the transfer service runs it with
    (while it has downloads under way or another process attached); they stay until it is idle."""


_TYPES: dict[str, type[BgdlError]] = {
    cls.__name__: cls
    for cls in (
        BgdlError, InvalidInput, UnsupportedURL, InvalidDestination, InvalidResumeData,
        InvalidConfiguration, SessionError, SessionBusy, SessionInvalidated, TransferError,
        NetworkError, CannotConnect, TransferTimeout, Cancelled, DiskFull, ChecksumMismatch, HTTPStatusError,
        UnsafeFile, BlockedDestination,
        UnexpectedResponse, UnsafeLocation, UnpackError, ReadTimeout, FileChanged,
    )
}


def _rebuild(type_name: str, data: dict[str, Any], resume_data: bytes | None = None) -> BgdlError:
    cls = _TYPES.get(type_name, BgdlError)
    extra = {k: v for k, v in data.items()
             if k not in {"type", "message", "url", "task_identifier", "resume_data"}}
    if resume_data is None and data.get("resume_data"):
        resume_data = base64.b64decode(data["resume_data"])
    return cls(
        str(data.get("message", "")),
        url=data.get("url"),
        task_identifier=data.get("task_identifier"),
        resume_data=resume_data,
        **extra,
    )


def _rebuild_fetch(message: str, errors: dict[str, BgdlError]) -> FetchError:
    return FetchError(message, errors=errors)
