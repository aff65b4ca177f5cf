"""bgdl_nb inside pooch: resumable, journaled downloads for registries (the ``pooch`` extra).

pooch downloads each file into a fresh temporary file and deletes it when the download
fails, so a cut connection or a killed kernel starts the file from byte 0 again, and
a registry is fetched one file after another. :class:`Downloader` keeps pooch's downloader
signature and hands the transfer to a background session of bgdl_nb: the partial bytes
live under a stable name in pooch's own cache folder (the URL and the known hash name
them, not pooch's per-attempt temporary name), so the same call after any interruption
continues them with a Range request; the finished file is then moved to pooch's
temporary name, on the same file system, and pooch checks and renames it as usual.
:func:`prefetch` downloads every missing file of a registry in one session, in
parallel, straight to where ``Pooch.fetch`` looks, so every later ``fetch`` returns at once.

Importing :mod:`bgdl_nb` does not import this module or pooch.

::

    import pooch, bgdl_nb.pooch
    odie = pooch.create(path=pooch.os_cache("mydata"), base_url="https://host/data/", registry={...})
    bgdl_nb.pooch.prefetch(odie)                                     # the whole registry, one panel
    path = odie.fetch("big.nc", downloader=bgdl_nb.pooch.Downloader())  # resumable
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._config import Configuration
from ._digests import Digest
from ._exceptions import BgdlError, FetchError, InvalidInput

try:
    import pooch as _pooch
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("bgdl_nb.pooch needs pooch: pip install 'bgdl_nb[pooch]'") from exc

__all__ = ["Downloader", "prefetch"]

PARTIAL_FOLDER = ".bgdl-pooch"
"""The folder, inside pooch's cache folder, where unfinished files wait under stable names."""


def _digest(known_hash: str | None) -> str | None:
    """pooch's known hash in bgdl's ``alg:hex`` form, when bgdl can check that algorithm
    (otherwise pooch's own check after the download is the only one)."""
    if not known_hash:
        return None
    try:
        return str(Digest.parse(known_hash))
    except InvalidInput:
        return None


def _identifier(folder: Path) -> str:
    return "pooch-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]


def _known_hash(url: str, pooch: Any) -> str | None:
    """The registry's hash for ``url`` (pooch hands the downloader the URL, not the name)."""
    if pooch is None:
        return None
    for name, known in getattr(pooch, "registry", {}).items():
        try:
            if pooch.get_url(name) == url:
                return str(known) if known else None
        except (ValueError, KeyError):
            continue
    return None


class Downloader:
    """A pooch downloader (``downloader(url, output_file, pooch, check_only=False)``)
    backed by a background session of bgdl_nb.

    Parameters
    ----------
    identifier
        The background session to use; by default one per pooch cache folder, so the
        same registry in a new kernel reattaches to the downloads it left.
    configuration
        A background :class:`~bgdl_nb.Configuration` (proxy, certificates, connections...).
    progressbar
        Show bgdl_nb's progress (a panel in a notebook, bars in a terminal).
    **fetch_options
        Passed to :func:`bgdl_nb.fetch` (``timeout``, ``on_interrupt``...).

    Notes
    -----
    The registry's hash is given to bgdl_nb when it is md5, sha1, sha256, sha512 or
    blake2b (a mismatch keeps nothing); pooch checks it again afterwards, as it always
    does. Errors are :class:`~bgdl_nb.BgdlError`, never a ``ValueError``: pooch would
    retry those with sleeps, and a download bgdl_nb gave up on, or bad input, does not
    get better by waiting. ``doi:`` URLs are refused: resolving them needs pooch's own
    ``DOIDownloader``, which talks to the DOI resolver.
    """

    def __init__(self, identifier: str | None = None, configuration: Configuration | None = None,
                 progressbar: bool = True, **fetch_options: Any) -> None:
        if configuration is not None and not configuration.is_background:
            raise InvalidInput("bgdl_nb.pooch.Downloader needs a background configuration "
                               "(Configuration.background(...)): its downloads survive the kernel")
        self.identifier = identifier
        self.configuration = configuration
        self.progressbar = progressbar
        self.fetch_options = fetch_options

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> bool | None:
        if str(url).startswith("doi:"):
            raise BgdlError(f"{url}: bgdl_nb does not resolve doi: links; use pooch's own DOIDownloader for it, "
                            "or give pooch the https:// URL the DOI resolves to", url=None)
        if check_only:
            return self._available(url)
        folder = Path(output_file).parent if isinstance(output_file, (str, os.PathLike)) else \
            Path(getattr(pooch, "abspath", Path.cwd()))
        known = _known_hash(url, pooch)
        key = hashlib.sha256(f"{url}\n{known or ''}".encode()).hexdigest()[:16]
        dest = folder / PARTIAL_FOLDER / key
        from ._fetch import fetch
        try:
            [path] = fetch([url], dest, hashes=_digest(known), progress=self.progressbar, overwrite=True,
                           identifier=None if self.configuration else (self.identifier or _identifier(folder)),
                           configuration=self.configuration, **self.fetch_options)
        except InvalidInput as exc:  # a ValueError, which pooch would retry with sleeps
            raise BgdlError(f"{exc}") from None
        if isinstance(output_file, (str, os.PathLike)):
            os.replace(path, output_file)  # one file system: pooch checks and renames it from here
        else:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, output_file)
            path.unlink()
        _tidy(dest)
        return None

    def _available(self, url: str) -> bool:
        """Whether the server would serve ``url`` (``Pooch.is_available``), through the
        configuration's proxy, if any, or the environment's."""
        config = self.configuration or Configuration.background(self.identifier or "pooch")
        proxies = {"http": config.proxy, "https": config.proxy} if config.proxy else None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
        for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
            request = urllib.request.Request(url, method=method, headers={"User-Agent": "bgdl_nb", **headers})
            try:
                with opener.open(request, timeout=config.timeout_interval_for_request) as reply:
                    return bool(reply.status < 400)
            except urllib.error.HTTPError as exc:
                if exc.code not in (405, 501):  # a server that only refuses HEAD gets a one-byte GET
                    return False
            except (OSError, ValueError):
                return False
        return False


def _tidy(dest: Path) -> None:
    """Remove a finished file's stable folder (its manifest and nothing else) once the file left it."""
    with contextlib.suppress(OSError):
        (dest / ".bgdl-manifest.json").unlink(missing_ok=True)
        dest.rmdir()
        dest.parent.rmdir()  # only when no other download waits there


def prefetch(pooch_obj: Any, names: Iterable[str] | None = None, *, identifier: str | None = None,
             configuration: Configuration | None = None, progress: bool = True,
             timeout: float | None = None) -> list[Path]:
    """Download every missing (or changed) file of ``pooch_obj``'s registry in one
    background session, in parallel, straight to ``pooch_obj.abspath / name``.

    Afterwards every ``pooch_obj.fetch(name)`` finds its file and returns at once (and its
    processors run as usual). Re-running it reattaches to the downloads it started.

    Parameters
    ----------
    pooch_obj
        A :class:`pooch.Pooch`.
    names
        The registry names to fetch (default: all of them).
    identifier, configuration
        The background session (default: one per cache folder, shared with :class:`Downloader`).
    progress
        Show one panel (or terminal bars) for the whole registry.
    timeout
        Seconds to wait before giving up (the downloads go on in the transfer service).

    Returns
    -------
    list of Path
        The local paths, in the order of ``names``.

    Raises
    ------
    FetchError
        When some files could not be downloaded (``.errors`` maps URL to error).
    """
    from ._progress import finished_batches, progress_display
    from ._session import Session
    from ._states import TaskState

    folder = Path(pooch_obj.abspath)
    wanted = list(pooch_obj.registry) if names is None else list(names)
    for name in wanted:
        if name not in pooch_obj.registry:
            raise InvalidInput(f"{name!r} is not in the registry of {folder}")
    missing = []
    for name in wanted:
        path, known = folder / name, pooch_obj.registry[name]
        if path.exists() and (not known or _pooch.file_hash(str(path), _pooch.hashes.hash_algorithm(known))
                              == known.split(":")[-1].lower()):
            continue  # pooch would not download it either
        missing.append(name)
    if missing:
        config = configuration or Configuration.background(identifier or _identifier(folder))
        with Session(config) as session:
            session._live_host.sync()
            existing = {(t.original_request.url, t.destination): t for t in session.all_tasks()
                        if t.destination is not None}
            tasks, specs = {}, {}
            for name in missing:
                url, path = pooch_obj.get_url(name), folder / name
                known_task = existing.get((url, path))
                if known_task is not None and known_task.state is not TaskState.COMPLETED:
                    tasks[name] = known_task.resume()  # left by an earlier run: it continues
                    continue
                specs[name] = {"request": url, "destination": path, "description": name,
                               "hash": _digest(pooch_obj.registry[name]), "overwrite": path.exists()}
            for name, task in zip(specs, session.download_tasks(specs.values(), resume=True)):
                tasks[name] = task
            order = list(tasks)
            with progress_display([tasks[n] for n in order], enabled=progress) as display:
                for _batch in finished_batches([tasks[n] for n in order], timeout):
                    display.refresh()
            errors = {}
            for name in order:
                task = tasks[name]
                if not task.done():
                    errors[task.original_request.url] = BgdlError(f"{name}: still downloading after {timeout} s")
                elif not task.succeeded:
                    try:
                        task.wait(0)
                    except BgdlError as exc:
                        errors[task.original_request.url] = exc
        if errors:
            lines = "\n".join(f"  {url}: {err}" for url, err in errors.items())
            raise FetchError(f"{len(errors)} of {len(missing)} registry files did not download:\n{lines}",
                             errors=errors)
    return [folder / name for name in wanted]
