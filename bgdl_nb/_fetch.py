"""``fetch()``: the one call for notebooks and the engine of ``bgdl fetch``.

It is idempotent. Re-running it (after a kernel restart, a ``kill -9``, or just
re-running the cell) reattaches to the background session named by ``identifier``,
continues unfinished tasks from their partial files, never creates a second task for a
URL and destination, and never downloads again a file that the manifest says is
complete and whose size and modification time still match.

The manifest and the decision about files already at the destination are in
:mod:`bgdl_nb._manifest`; new tasks are created in one call
(:meth:`~bgdl_nb.Session.download_tasks`). The manifest is saved at most twice a second
while files complete, so thousands of small files cost linear work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._config import Configuration
from ._exceptions import BgdlError, FetchError, InvalidDestination, InvalidInput
from ._files import nearest_existing
from ._hosts.registry import open_here
from ._listing import Wanted, file_name_for, served_name, wanted_files
from ._manifest import Manifest, files_here
from ._private import private_tree
from ._progress import CallbackFeed, Display, Follower, finished_batches, progress_display
from ._redact import redact_url
from ._session import Session
from ._states import TaskState
from ._task import DownloadTask

__all__ = ["fetch", "fetch_async", "file_name_for"]

def _finished_in_journal(config: Configuration) -> dict[tuple[str, str], str]:
    """(url, destination) -> sha256 of the files the session's journal says are complete,
    or were renamed into place just before a crash (the intent: digest and location are
    journaled before the rename, and the partial file is gone)."""
    from ._journal import read_journal
    path = config.journal_path()
    if not path.exists():
        return {}
    try:
        tasks, _ = read_journal(path, str(config.identifier))
    except BgdlError:  # unreadable: the session moves it aside when it opens
        return {}
    return {(t.url, t.destination): t.digest for t in tasks
            if t.error is None and t.destination and t.digest and t.location == t.destination
            and (t.state is TaskState.COMPLETED or not os.path.lexists(t.partial_path))}


def _creating(config: Configuration) -> Any:
    """A lock, across processes, around looking up and creating one identifier's tasks."""
    from ._locks import holding
    path = config.journal_path()
    private_tree(config.resolved_state_dir(), "sessions")
    return holding(str(path) + ".create.lock", 120)


def _check_folder(dest_dir: Path) -> None:
    """The destination folder exists as a folder, or can be made where it is asked for."""
    if dest_dir.exists() and not dest_dir.is_dir():
        raise InvalidDestination(f"dest {dest_dir} is a file; fetch() needs a directory")
    parent = nearest_existing(dest_dir)
    if not parent.is_dir():
        raise InvalidDestination(f"cannot create the destination folder {dest_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidDestination(f"cannot create or write the destination folder {dest_dir}: {parent} is not "
                                 "writable; choose another folder")


def default_identifier(dest: Path) -> str:
    return "fetch-" + hashlib.sha256(str(dest).encode()).hexdigest()[:12]


def fetch(
    urls: str | Iterable[str] | None = None,
    dest: str | os.PathLike[str] = "data",
    *,
    manifest: str | os.PathLike[str] | Iterable[Any] | None = None,
    base_url: str | None = None,
    identifier: str | None = None,
    sha256: str | Mapping[str, str] | Sequence[str | None] | None = None,
    hashes: str | Mapping[str, str] | Sequence[str | None] | None = None,
    unpack: bool = False,
    extract_dir: str | os.PathLike[str] | None = None,
    name_from_server: bool = False,
    callback: Any = None,
    progress: bool = True,
    overwrite: bool = False,
    configuration: Configuration | None = None,
    timeout: float | None = None,
    on_interrupt: str = "continue",
    wait: bool = True,
    cluster: Any = None,
) -> list[Path]:
    """Download ``urls`` into directory ``dest`` and return the final paths, in order.

    Parameters
    ----------
    urls
        One URL or several (http/https).
    dest
        The destination directory (created if needed).
    manifest
        Instead of ``urls``: a listing of files, each with ``url``, ``path`` (relative to
        ``dest``; folders are made), and optionally ``size``, ``etag`` and ``hash``. A list
        of dicts, or a JSON/JSON Lines file, a Zenodo record's JSON, a Hugging Face-style
        snapshot (``siblings``) or a pooch registry file. Sizes feed the disk check and the
        scheduler; a file already here that matches its entry is skipped without a
        request; one whose entry names another ``etag`` or ``size`` than the file bgdl_nb
        downloaded is fetched again.
    base_url
        Joined to the relative URLs (or, without URLs, the paths) of a listing.
    identifier
        The background session to use; by default one derived from ``dest``, so the
        same call from a new kernel reattaches to the same downloads.
    sha256
        Expected sha256 digests: a string (one URL), a ``{url: hex}`` dict or a list.
    hashes
        Expected digests of any algorithm as ``"alg:hex"`` (md5, sha1, sha256, sha512,
        blake2b; bare hex is sha256, as in pooch registries), in the same shapes. A
        mismatch keeps nothing at the destination; a file already there is checked
        against the digest given now, and downloaded again when it does not match.
    unpack
        Extract archives once downloaded (zip, tar, tar.gz/bz2/xz; a single .gz, .bz2
        or .xz file is decompressed): an archive's members go to a folder named after it
        beside it, a single compressed file beside it without its suffix. The members'
        paths are returned in place of the archive's; unchanged archives and members are
        not extracted again. No member may land outside that folder or be a link.
    extract_dir
        Extract every archive into this folder instead.
    name_from_server
        Name files as the server's ``Content-Disposition`` says (made safe as URL names
        are: no folders, no hidden names), recorded in the manifest, so a re-run finds them.
    callback
        An ``fsspec.callbacks.Callback`` (``TqdmCallback``...): its size is the number of
        files, with one child per file fed with its bytes.
    progress
        Show a progress display (a widget in notebooks, bars in a terminal).
    overwrite
        Replace existing files that bgdl_nb did not download.
    configuration
        A background :class:`Configuration` to use instead of the default one.
    timeout
        Seconds to wait before giving up (the downloads go on in the session).
    on_interrupt
        What Ctrl-C (KeyboardInterrupt) while waiting means: ``"continue"`` (the
        notebook default: the kernel is yours again and the downloads go on in the
        transfer service) or ``"suspend"`` (the command-line default: the downloads
        stop, resumable; calling ``fetch()`` again continues them).
    wait
        ``False``: start the downloads in the transfer service and return their paths
        at once (``bgdl fetch --detach``).
    cluster
        A ``distributed.Client``: the job is split into shards run by the cluster's
        workers (``dest`` must be storage they all write to); one panel shows the whole
        job, and :func:`bgdl_nb.cluster_job` gives its event log. Needs the ``cluster``
        extra.

    Raises
    ------
    InvalidInput
        Before any I/O, for bad URLs, digests, listings or destinations.
    FetchError
        When some files could not be downloaded; ``.errors`` maps URL to error.
    """
    wanted, positions = wanted_files(urls, manifest, base_url, sha256, hashes)
    if on_interrupt not in ("continue", "suspend"):
        raise InvalidInput(f"on_interrupt must be 'continue' or 'suspend', not {on_interrupt!r}")
    if cluster is not None and (unpack or name_from_server or callback is not None or manifest is not None):
        raise InvalidInput("unpack, name_from_server, callback and manifest are not available with cluster=; "
                           "pass a list of URLs, and unpack on the client afterwards")
    if unpack and not wait:
        raise InvalidInput("unpack=True extracts the files once they are here; it needs wait=True (run the same "
                           "fetch() without wait=False, or without --detach, to wait and unpack)")
    if extract_dir is not None and not unpack:
        raise InvalidInput("extract_dir= goes with unpack=True")
    dest_dir = Path(dest).expanduser().absolute()
    _check_folder(dest_dir)
    if cluster is not None:
        names = [w.path for w in wanted]
        expected = [None if w.digest is None else str(w.digest) for w in wanted]
        paths = _fetch_on_cluster(cluster, [w.url for w in wanted], dest_dir, names, expected, identifier=identifier,
                                  overwrite=overwrite, configuration=configuration, progress=progress,
                                  timeout=timeout, on_interrupt=on_interrupt, wait=wait)
        return [paths[k] for k in positions]
    config = configuration or Configuration.background(identifier or default_identifier(dest_dir))
    if not config.is_background:
        raise InvalidInput("fetch() needs a background configuration (it journals its tasks)")
    lock = config.resolved_state_dir() / "locks" / f"manifest-{hashlib.sha256(str(dest_dir).encode()).hexdigest()[:16]}.lock"
    book = Manifest(dest_dir, lock)
    if name_from_server:  # a file named by its server earlier is found under that name
        served = {entry.url: name for name, entry in book.files.items() if entry.served_name}
        wanted = [dataclasses.replace(w, path=served.get(redact_url(w.url), w.path)) for w in wanted]
    paths = _fetch_files(wanted, dest_dir, config, book, overwrite=overwrite, progress=progress, timeout=timeout,
                         on_interrupt=on_interrupt, wait=wait, name_from_server=name_from_server,
                         callback=callback)
    if unpack:
        from ._unpack import unpack_files
        members = unpack_files(paths, [w.path for w in wanted], book, config,
                               None if extract_dir is None else Path(extract_dir).expanduser().absolute(), overwrite)
        return [member for k in positions for member in members[k]]
    return [paths[k] for k in positions]


def _fetch_files(wanted: list[Wanted], dest_dir: Path, config: Configuration, manifest: Manifest, *,
                 overwrite: bool, progress: bool, timeout: float | None, on_interrupt: str, wait: bool,
                 name_from_server: bool, callback: Any) -> list[Path]:
    """Fetch ``wanted`` (each file once) into ``dest_dir``: the paths, in order."""
    url_list = [w.url for w in wanted]
    names = [w.path for w in wanted]
    done, recheck = files_here(wanted, dest_dir, manifest, overwrite, lambda: _finished_in_journal(config))
    if len(done) == len(url_list):
        if callback is not None:
            CallbackFeed(callback, [], len(done)).close()
        return [done[i] for i in range(len(url_list))]

    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidDestination(f"cannot create the destination folder {dest_dir}: {exc.strerror or exc}") from None
    shared = open_here(config)
    session = Session(config)
    handed_off = False
    try:
        with _creating(config):  # two fetch() of one identifier at once: the second sees the first's tasks
            session._live_host.sync()
            tasks = _tasks_for(session, wanted, dest_dir, done, overwrite, recheck)
        if not wait:
            return [dest_dir / name for name in names]
        feed = None if callback is None else CallbackFeed(callback, [(url_list[i], tasks[i]) for i in tasks], len(done))
        with progress_display(list(tasks.values()), enabled=progress) as display:
            try:
                return _wait_all(tasks, url_list, names, manifest, done, display, timeout,
                                 name_from_server=name_from_server, overwrite=overwrite, feed=feed)
            except KeyboardInterrupt as interrupt:
                if on_interrupt == "suspend":
                    session.suspend_all([t for t in tasks.values() if not t.done()])
                    said = "the downloads are paused with their partial bytes; the same fetch() continues them"
                else:
                    said = ("the downloads go on in the background; run the same fetch() again to wait for "
                            "them and get the paths")
                    if not shared and isinstance(display, Follower):
                        display.follow(session.close)  # a notebook panel stays live; it closes the session at the end
                        handed_off = True
                # one line in a notebook instead of the frames of the waiting loop
                interrupt._render_traceback_ = lambda: [f"KeyboardInterrupt: {said}"]  # type: ignore[attr-defined]
                raise
            finally:
                if feed is not None:
                    feed.close()
    finally:
        if not shared and not handed_off:
            session.close()


def _fetch_on_cluster(client: Any, urls: list[str], dest_dir: Path, names: list[str], expected: list[str | None],
                      *, identifier: str | None, overwrite: bool, configuration: Configuration | None,
                      progress: bool, timeout: float | None, on_interrupt: str, wait: bool) -> list[Path]:
    from ._cluster import _JOBS, check_client, fetch_on_cluster

    check_client(client)  # before any I/O
    name = identifier or (configuration.identifier if configuration is not None else None) \
        or default_identifier(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidDestination(f"cannot create the destination folder {dest_dir}: {exc.strerror or exc}") from None
    try:
        paths, _job = fetch_on_cluster(client, urls, dest_dir, names, expected, identifier=str(name),
                                       overwrite=overwrite, configuration=configuration, progress=progress,
                                       timeout=timeout, wait=wait)
    except KeyboardInterrupt:
        job = _JOBS.get(str(name))
        if on_interrupt == "suspend" and job is not None:
            job.pause()  # the command-line meaning: stop the transfers, resumable
        raise
    return paths


def _tasks_for(session: Session, wanted: list[Wanted], dest_dir: Path, done: dict[int, Path], overwrite: bool,
               recheck: Collection[int] = ()) -> dict[int, DownloadTask]:
    # a task is found by its file: the URL apart from secret query values (a link signed
    # again names the same file) and the path; newest last, so the newest task per file wins
    existing: dict[tuple[str, Path], DownloadTask] = {}
    for known in session.all_tasks():
        if known.destination is not None:
            existing[(redact_url(known.original_request.url), known.destination)] = known
    tasks: dict[int, DownloadTask] = {}
    fresh: dict[int, dict[str, object]] = {}
    for i, want in enumerate(wanted):
        if i in done:
            continue
        url, path = want.url, dest_dir / want.path
        exp = None if want.digest is None else str(want.digest)
        task = existing.get((redact_url(url), path))
        relinked = task is not None and task.original_request.url != url  # a new link: it takes over
        if task is not None and task.state is not TaskState.COMPLETED:
            if relinked:
                session._live_host.control("relink", task.task_identifier, url)
            if want.digest is not None and task.expected_digest != exp:  # given now, after a run without it
                session._live_host.control("expect_digest", task.task_identifier, want.digest.sha256,
                                           None if want.digest.sha256 else exp)
            tasks[i] = task.resume()
            continue
        if task is not None and task.succeeded and task.location == path and path.exists() and i not in recheck:
            tasks[i] = task  # completed earlier; the manifest entry was not written yet
            continue
        resume = task.error.resume_data if task is not None and task.error is not None else None
        replace = overwrite or path.exists()
        if resume is not None:
            try:
                tasks[i] = session.download_task_with_resume_data(resume, path, overwrite=replace,
                                                                  url=url if relinked else None).resume()
                continue
            except BgdlError:
                pass  # the partial file is gone: start again below
        fresh[i] = {"request": url, "destination": path, "description": want.path, "hash": exp, "overwrite": replace,
                    "count_of_bytes_client_expects_to_receive": want.size}
    if fresh:  # one round trip for all new tasks, however many files
        for i, task in zip(fresh, session.download_tasks(fresh.values(), resume=True)):
            tasks[i] = task
    return tasks


def _wait_all(tasks: dict[int, DownloadTask], urls: list[str], names: list[str], manifest: Manifest,
              done: dict[int, Path], display: Display, timeout: float | None, *, name_from_server: bool = False,
              overwrite: bool = False, feed: CallbackFeed | None = None) -> list[Path]:
    """Wait for every task; record each finished file in the manifest (saved at most a few
    times a second, so thousands of small files cost linear work)."""
    errors: dict[str, BgdlError] = {}
    order = list(tasks)
    left = set(order)
    unsaved, saved_at = False, time.monotonic()
    for batch in finished_batches([tasks[i] for i in order], timeout):
        for i in (order[k] for k in batch):
            left.discard(i)
            try:
                path = tasks[i]._done.result()
            except BgdlError as exc:
                errors[urls[i]] = exc
                continue
            served = None
            if name_from_server:
                try:
                    path, served = served_name(tasks[i], path, names[i], manifest, overwrite)
                except BgdlError as exc:
                    errors[urls[i]] = exc
                    continue
                names[i] = served or names[i]
            manifest.record(names[i], tasks[i], path, served_name=served is not None)
            done[i] = path
            unsaved = True
        if unsaved and (not left or time.monotonic() - saved_at >= 0.5):
            manifest.save()  # twice a second at most: rewriting it per file would be quadratic
            unsaved, saved_at = False, time.monotonic()
        display.refresh()
        if feed is not None:
            feed.update(batch)
    if unsaved:
        manifest.save()
    for i in left:
        errors[urls[i]] = BgdlError(
            f"still downloading after {timeout} s ({tasks[i].count_of_bytes_received} bytes so far); "
            "call fetch() again to wait for the rest", url=urls[i])
    if errors:
        first = next(iter(errors.values()))
        if first.url is None and all(err is first for err in errors.values()):
            raise first  # one error of the whole session (its journal cannot be written): said once
        lines = "\n".join(f"  {url}: {_without(str(err), url)}" for url, err in errors.items())
        raise FetchError(f"{len(errors)} of {len(urls)} downloads did not complete:\n{lines}", errors=errors)
    return [done[i] for i in range(len(urls))]


def _without(message: str, url: str) -> str:
    """``message`` without the URL its line already starts with (each URL named once)."""
    if message.startswith(url):
        return message[len(url):].lstrip(" :")
    return message.replace(url, "the URL")


async def fetch_async(urls: str | Iterable[str], dest: str | os.PathLike[str] = "data",
                      **kwargs: object) -> list[Path]:
    """``await``-able :func:`fetch`: the same call, run without blocking your event loop."""
    import asyncio  # here, not at the top: a command in service mode never loads asyncio

    return await asyncio.to_thread(fetch, urls, dest, **kwargs)  # type: ignore[arg-type]
