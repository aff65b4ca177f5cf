"""The session: the public facade over a host.

A :class:`Session` validates every request in the caller's thread (bad input fails
before any I/O and before any journal record), then hands it to its host
(:mod:`bgdl_nb._hosts`), which it only picks: the transfer service for background
sessions (unless ``use_service=False``), the engine thread of this process otherwise.
Within a process, sessions created with the same background identifier share one host
(:mod:`bgdl_nb._hosts.registry`: re-running a notebook cell reattaches instead of
failing), and the newest session's delegate receives the callbacks.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._checks import check_destination, check_headers, check_url, timestamp
from ._config import Configuration
from ._delegate import SessionDelegate
from ._digests import expected_digests
from ._events import Event
from ._exceptions import InvalidDestination, InvalidInput, InvalidResumeData, SessionInvalidated
from ._hosts.registry import forget, host_for
from ._journal import TaskRecord
from ._redact import add_secret_params, redact_url, same_file
from ._resume import decode_resume_data, load_key
from ._task import DownloadTask, Request

if TYPE_CHECKING:
    import pandas

    from ._hosts.base import Host

__all__ = ["Session"]



class Session:
    """A download session, modelled on URLSession.

    Parameters
    ----------
    configuration
        ``Configuration.default()`` (the default) or ``Configuration.background(id)``.
    delegate
        A :class:`SessionDelegate` receiving the callbacks, or ``None``.

    Raises
    ------
    SessionBusy
        Another process holds the background session with this identifier.
    """

    def __init__(self, configuration: Configuration | None = None,
                 delegate: SessionDelegate | None = None) -> None:
        # the session keeps a copy, as URLSession does: later changes to the object change nothing here
        self.configuration = (configuration or Configuration.default())._copy_for_session()
        add_secret_params(self.configuration.secret_query_params)  # before any task is shown
        self.delegate = delegate
        self._host = host_for(self.configuration, self, delegate)

    # properties --------------------------------------------------------------------------

    @property
    def identifier(self) -> str | None:
        """The background session's identifier (``None`` for a default session)."""
        return self.configuration.identifier

    @property
    def _live_host(self) -> Host:
        if self._host.closed:
            raise SessionInvalidated("this session was invalidated or closed; create a new Session")
        return self._host

    # creating tasks ----------------------------------------------------------------------

    def download_task(
        self,
        request: str | Request,
        destination: str | os.PathLike[str] | None = None,
        *,
        description: str | None = None,
        priority: float = 0.5,
        earliest_begin_date: float | _dt.datetime | None = None,
        count_of_bytes_client_expects_to_receive: int | None = None,
        sha256: str | None = None,
        hash: str | None = None,
        overwrite: bool = False,
        is_discretionary: bool | None = None,
    ) -> DownloadTask:
        """Create a task (suspended: call ``resume()``) that downloads ``request``.

        Parameters
        ----------
        request
            An http(s) URL or a :class:`Request` (with headers).
        destination
            Where the finished file goes (moved there atomically). Without it, the file
            is handed to ``did_finish_downloading_to`` at a temporary location.
        description
            A label shown in progress displays and the event log.
        priority
            0.0 to 1.0; among ready tasks the highest priority starts first.
        earliest_begin_date
            The task does not start before this time.
        count_of_bytes_client_expects_to_receive
            Your estimate of the size, used before the server tells the real one.
        sha256
            The expected hex digest; a mismatch fails the task and keeps nothing.
        hash
            An expected digest as ``"alg:hex"`` (md5, sha1, sha256, sha512, blake2b; bare
            hex is sha256), checked like ``sha256``.
        overwrite
            Replace an existing ``destination`` when the download completes.
        is_discretionary
            Run only when no non-discretionary task is active, and inside the
            configuration's ``discretionary_window``; the reason it waits is always shown.
            ``None``: the configuration's ``is_discretionary``.
        """
        [task] = self._live_host.create_many([self._task_record(
            request, destination, description=description, priority=priority,
            earliest_begin_date=earliest_begin_date,
            count_of_bytes_client_expects_to_receive=count_of_bytes_client_expects_to_receive,
            sha256=sha256, hash=hash, overwrite=overwrite, is_discretionary=is_discretionary)], False)
        return task

    def download_tasks(self, specs: Iterable[dict[str, Any]], *, resume: bool = False) -> list[DownloadTask]:
        """Create many tasks in one call to the engine: each spec holds the arguments of
        :meth:`download_task` (``{"request": url, "destination": path, "sha256": ...}``).

        Every spec is checked before any task is created, so bad input creates none.
        With ``resume=True`` the tasks start at once (one scheduling pass for all).
        """
        records = []
        claimed: set[str] = set()
        folders: dict[Path, tuple[Path, int]] = {}  # each folder is checked (and made) once for the batch
        for spec in specs:
            spec = dict(spec)
            record = self._task_record(spec.pop("request"), spec.pop("destination", None), folders=folders, **spec)
            if record.destination is not None:
                if record.destination in claimed:
                    raise InvalidDestination(f"{record.destination} is named by two tasks of one call")
                claimed.add(record.destination)
            records.append(record)
        return self._live_host.create_many(records, resume) if records else []

    def _task_record(self, request: str | Request, destination: str | os.PathLike[str] | None, *,
                     description: str | None = None, priority: float = 0.5,
                     earliest_begin_date: float | _dt.datetime | None = None,
                     count_of_bytes_client_expects_to_receive: int | None = None, sha256: str | None = None,
                     hash: str | None = None, overwrite: bool = False,
                     is_discretionary: bool | None = None,
                     folders: dict[Path, tuple[Path, int]] | None = None) -> TaskRecord:
        """Validate a task's arguments (before any I/O) and build its record."""
        req = request if isinstance(request, Request) else Request(request)
        check_url(req.url)
        check_headers(req.url, req.headers)
        if not 0.0 <= float(priority) <= 1.0:
            raise InvalidInput(f"priority must be between 0.0 and 1.0, got {priority}")
        [digest] = expected_digests([req.url], sha256, hash)
        seen = None if folders is None else len(folders)
        dest = None if destination is None else check_destination(destination, overwrite=overwrite, folders=folders)
        host = self._live_host
        if dest is not None:
            busy = host.destination_busy(str(dest))
            if busy is not None:
                raise InvalidDestination(f"task {busy} already downloads to {dest}; wait for it or cancel it first")
            if folders is None or len(folders) != seen:  # a folder new to this batch: make it
                dest.parent.mkdir(parents=True, exist_ok=True)
        return TaskRecord(
            0, req.url, headers=dict(req.headers), destination=None if dest is None else str(dest),
            description=description, priority=float(priority),
            earliest_begin_date=timestamp(earliest_begin_date),
            expected_bytes=count_of_bytes_client_expects_to_receive,
            sha256=None if digest is None else digest.sha256,
            expected_hash=None if digest is None or digest.sha256 else str(digest), overwrite=overwrite,
            discretionary=self.configuration.is_discretionary if is_discretionary is None else is_discretionary,
        )

    def download_task_with_resume_data(self, resume_data: bytes,
                                       destination: str | os.PathLike[str] | None = None,
                                       *, overwrite: bool = False, url: str | None = None) -> DownloadTask:
        """Create a task that continues where ``resume_data`` left off.

        ``url`` is a new link to the same file, for a link that expired: the same URL
        apart from its secret query values (a presigned link signed again). The bytes of
        the resume data are continued from it; the server's validators still decide
        whether they may be (a file that changed starts again, never mixed).

        Raises :class:`InvalidResumeData` (with no side effects) for data that is empty,
        foreign, truncated, altered, or from a newer bgdl_nb, and for data whose partial
        file is not in the destination's folder (or, without a destination, in this
        user's state directory): signed data still never points the engine at a file
        elsewhere.
        """
        if url is not None:
            check_url(url)
        root = self.configuration.resolved_state_dir()
        state = decode_resume_data(resume_data, load_key(root), root / "secrets")
        if url is not None and not same_file(url, state.url):
            raise InvalidInput(f"url={redact_url(url)!r} is not a new link to the resume data's file "
                               f"{redact_url(state.url)}: only its secret query values (a signature) may differ; "
                               "start a new download_task() for another file")
        target = destination if destination is not None else state.destination
        dest = None if target is None else check_destination(target, overwrite=overwrite)
        partial = Path(state.partial_path).resolve()
        if dest is not None and partial.parent != dest.parent.resolve():
            raise InvalidResumeData(
                f"the resume data's partial file {partial} is not in the destination's folder {dest.parent}; "
                "resume into the folder the download started in (or start a new download_task())")
        if dest is None and not partial.is_relative_to(root.resolve()):
            raise InvalidResumeData(
                f"the resume data's partial file {partial} is outside bgdl_nb's state directory {root}; "
                "start a new download_task() for the URL instead")
        record = TaskRecord(
            0, url or state.url, headers=dict(state.headers), destination=None if dest is None else str(dest),
            partial_path=state.partial_path, offset=state.offset, total=state.total,
            validator_kind=state.validator.kind if state.validator else None,
            validator_value=state.validator.value if state.validator else None,
            accepts_ranges=True, current_url=None if url else state.current_url, overwrite=overwrite,
            marks=state.marks,
        )
        [task] = self._live_host.create_many([record], False)
        return task

    # reading -----------------------------------------------------------------------------

    def all_tasks(self) -> list[DownloadTask]:
        """Every task of the session, including those reattached from the journal."""
        return sorted(self._live_host.tasks.values(), key=lambda t: t.task_identifier)

    def current_tasks(self) -> list[DownloadTask]:
        """The current job: tasks created or continued since this session attached, and
        those that finished while no session was attached. Tasks of earlier runs under a
        reused identifier (finished, and already reported) are left out; ``all_tasks()``
        has them."""
        host = self._live_host
        return sorted((host.tasks[tid] for tid in list(host.current) if tid in host.tasks),
                      key=lambda t: t.task_identifier)

    def task(self, task_identifier: int) -> DownloadTask:
        """The task with ``task_identifier`` (``KeyError`` when the session has none)."""
        return self._live_host.tasks[task_identifier]

    def event_log(self, since_seq: int = 0) -> list[Event]:
        """The journaled events after ``since_seq`` as :class:`Event` records."""
        return self._live_host.event_log(since_seq)

    @property
    def events(self) -> pandas.DataFrame:
        """Every event of the session (across restarts, for background sessions) as a
        pandas DataFrame; see :func:`bgdl_nb.notebook.frame.events_frame`."""
        from .notebook.frame import columns_frame
        return columns_frame(self._live_host.event_columns())

    def events_since(self, since: int | _dt.datetime = 0) -> pandas.DataFrame:
        """Only the rows after event ``seq`` ``since`` (an int) or after a time (a datetime):
        for incremental reads in a loop or a dashboard."""
        from .notebook.frame import events_frame
        if isinstance(since, _dt.datetime):
            stamp = timestamp(since) or 0.0
            return events_frame(e for e in self.event_log() if e.time > stamp)
        from .notebook.frame import columns_frame
        return columns_frame(self._live_host.event_columns(since))

    # display -----------------------------------------------------------------------------

    def show(self, **options: Any) -> Any:
        """Show progress of every task: a live widget panel in a notebook (returned, and
        updated until the session closes), terminal bars elsewhere (until the tasks end)."""
        from ._progress import in_notebook, watch
        if in_notebook():
            from .notebook.widgets import SessionPanel
            panel = SessionPanel(self, **options)
            panel.display()
            return panel
        watch(self.all_tasks())
        return None

    def _ipython_display_(self) -> None:
        self.show()

    def _job_events(self, all_tasks: bool) -> pandas.DataFrame:
        """The event rows of the current job (from its first task's creation on), or all."""
        events = self.events
        current = {t.task_identifier for t in self.current_tasks()}
        if all_tasks or not current or events.empty:
            return events
        ours = events["task_identifier"].isin(current)
        start = events.loc[ours, "time"].min()
        job: pandas.DataFrame = events[ours | (events["task_identifier"].isna() & (events["time"] >= start))]
        return job

    def plot_throughput(self, *, ax: Any = None, all_tasks: bool = False, **options: Any) -> Any:
        """MB/s over time per session and task, for the current job (``all_tasks=True``:
        every run under this identifier); see :func:`bgdl_nb.notebook.plots.plot_throughput`."""
        from .notebook.plots import plot_throughput
        return plot_throughput(self._job_events(all_tasks), ax=ax, **options)

    def plot_scheduler_delay(self, *, ax: Any = None, all_tasks: bool = False, **options: Any) -> Any:
        """Time from resume() to first byte by reason, and a waiting/transferring timeline,
        for the current job; see :func:`bgdl_nb.notebook.plots.plot_scheduler_delay`."""
        from .notebook.plots import plot_scheduler_delay
        return plot_scheduler_delay(self._job_events(all_tasks), ax=ax, **options)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every new event, on the engine thread (keep it quick)."""
        self._live_host.listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        """Stop calling ``listener`` (one added with :meth:`add_listener`)."""
        self._live_host.listeners.remove(listener)

    def wait(self, tasks: Iterable[DownloadTask] | None = None, timeout: float | None = None) -> list[Path]:
        """Wait for ``tasks`` (default: the current job, see :meth:`current_tasks`) and
        return their paths; raises the first error."""
        return [t.wait(timeout) for t in (self.current_tasks() if tasks is None else tasks)]

    # control -----------------------------------------------------------------------------

    def _control(self, name: str, *args: Any) -> None:
        self._live_host.control(name, *args)

    def suspend_all(self, tasks: Iterable[DownloadTask] | None = None) -> None:
        """Suspend ``tasks`` (default: every unfinished task) in one call; they keep their
        partial bytes and continue on ``resume()``."""
        chosen = self.all_tasks() if tasks is None else list(tasks)
        self._control("suspend_many", [t.task_identifier for t in chosen if not t.done()])

    def pause(self) -> None:
        """Stop every transfer and start none until :meth:`resume`; tasks keep their state
        (RUNNING, waiting with reason "session paused") and their partial bytes."""
        self._control("pause")

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self._control("unpause")

    @property
    def bandwidth_limit(self) -> float | None:
        """Bytes per second for the whole session (``None``: unlimited); settable any time."""
        return self._live_host.bandwidth_limit()

    @bandwidth_limit.setter
    def bandwidth_limit(self, rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise InvalidInput("bandwidth_limit must be a positive number of bytes per second, or None")
        self._control("set_bandwidth_limit", rate)

    def finish_tasks_and_invalidate(self) -> None:
        """Let running tasks finish, then close the session (no new tasks after this)."""
        self._close("finish")

    def invalidate_and_cancel(self) -> None:
        """Cancel every unfinished task and close the session."""
        self._close("cancel")

    def close(self) -> None:
        """Stop transfers and release the session. A background session's unfinished
        tasks stay journaled and continue when the identifier is opened again."""
        self._close("detach")

    def _close(self, mode: str) -> None:
        host = self._host
        forget(host)
        host.close(mode)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"background {self.identifier!r}" if self.identifier else "default"
        state = "closed" if self._host.closed else f"{len(self._host.tasks)} tasks"
        return f"<Session {kind}, {state}>"
