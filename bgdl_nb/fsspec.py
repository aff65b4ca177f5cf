"""bgdl_nb inside fsspec: the ``bgdl::`` chained filesystem (the ``fsspec`` extra).

fsspec's HTTP filesystem reads a file with plain GET requests and its caches start a
file from byte 0 again after any interruption. ``bgdl::`` puts a background session of
bgdl_nb under any fsspec URL of http(s): the file is downloaded resumably, journaled and
verified into a local cache folder, then opened from there, like fsspec's ``filecache``::

    import pandas as pd
    df = pd.read_csv("bgdl::https://host/table.csv",
                     storage_options={"bgdl": {"cache_storage": "data/", "identifier": "tables"}})

    import fsspec
    with fsspec.open("bgdl::https://host/f.parquet", bgdl={"cache_storage": "data/"}) as f:
        ...
    fs = fsspec.filesystem("bgdl", target_protocol="https")
    fs.get(["https://host/a.nc", "https://host/b.nc"], "local/")   # one session, one panel

A cached file is checked against the server's ``ETag`` and size before it is used
(``check_files=True``, one HEAD request through the target filesystem); a changed file is
downloaded again, never mixed with the old one. ``info``, ``ls`` and ``exists`` go to the
target filesystem. The filesystem is registered under ``bgdl`` through the
``fsspec.specs`` entry point, so installing ``bgdl_nb[fsspec]`` is all it takes.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from ._config import Configuration
from ._exceptions import InvalidInput

try:
    import fsspec as _fsspec
    from fsspec.callbacks import DEFAULT_CALLBACK, NoOpCallback
    from fsspec.implementations.chained import ChainedFileSystem
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("bgdl_nb.fsspec needs fsspec: pip install 'bgdl_nb[fsspec]'") from exc

__all__ = ["BgdlFileSystem", "cache_path_for"]


def cache_path_for(url: str) -> str:
    """Where ``url`` is kept inside the cache folder: ``host/path``, each segment made safe
    (a query string adds a short digest, so two queries of one path are two files)."""
    from ._listing import safe_name

    parts = urlsplit(url)
    host = (safe_name(parts.netloc.replace(":", "_")) or "download") if parts.netloc else "local"
    segments = [safe_name(unquote(s)) or "download" for s in parts.path.split("/") if s not in ("", ".", "..")]
    if not segments:
        segments = ["index"]
    if parts.query:
        segments[-1] += "-" + hashlib.sha256(parts.query.encode()).hexdigest()[:8]
    return "/".join([host, *segments])


class BgdlFileSystem(ChainedFileSystem):  # type: ignore[misc]
    """A chained fsspec filesystem whose files are fetched by a background session.

    Parameters
    ----------
    target_protocol, target_options, fs
        The filesystem the URLs belong to (``http``/``https``), as for any chained
        filesystem; ``fsspec.open("bgdl::https://...")`` fills them in.
    cache_storage
        The local folder the files are downloaded to (``host/path`` inside it).
    identifier
        The background session (default: one per cache folder, so a new kernel reattaches).
    configuration
        A background :class:`~bgdl_nb.Configuration` (proxy, connections, certificates...).
    check_files
        Ask the server for the file's ``ETag`` and size before using a cached copy.
    progress
        Show bgdl_nb's progress panel (or terminal bars) while a file downloads.
    read_while_downloading
        Open files through :func:`bgdl_nb.open`: a read returns as soon as its bytes are
        here (they are fetched first), while the rest of the file downloads, so
        ``pd.read_parquet`` reads the footer and the columns it needs without waiting for
        the whole file. Such reads come before the file's digest can be checked.
    read_timeout
        With ``read_while_downloading``: seconds one read may wait for its bytes.
    **fetch_options
        More keywords for :func:`bgdl_nb.fetch` (``timeout``, ``hashes``...).
    """

    protocol: ClassVar[str] = "bgdl"

    def __init__(self, target_protocol: str | None = None, target_options: dict[str, Any] | None = None,
                 fs: Any = None, cache_storage: str | os.PathLike[str] = "bgdl-cache", identifier: str | None = None,
                 configuration: Configuration | None = None, check_files: bool = True, progress: bool = False,
                 read_while_downloading: bool = False, read_timeout: float | None = None,
                 fo: str | None = None, **fetch_options: Any) -> None:
        super().__init__()
        if fs is not None and target_protocol is not None:
            raise InvalidInput("give the target filesystem (fs=) or its protocol (target_protocol=), not both")
        self.fs = fs if fs is not None else _fsspec.filesystem(target_protocol or "https", **(target_options or {}))
        if not {"http", "https"} & set(_protocols(self.fs)):
            raise InvalidInput(f"bgdl:: downloads http(s) URLs; the target filesystem is {_protocols(self.fs)[0]!r}")
        self.cache_storage = Path(cache_storage).expanduser().absolute()
        self.identifier = identifier
        self.configuration = configuration
        self.check_files = check_files
        self.progress = progress
        self.read_while_downloading = read_while_downloading
        self.read_timeout = read_timeout
        self.fetch_options = fetch_options

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, (list, tuple)):
            return type(path)(cls._strip_protocol(p) for p in path)
        path = str(path)
        return path[len("bgdl::"):] if path.startswith("bgdl::") else path.removeprefix("bgdl://")

    # what the target knows ------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return dict(self.fs.info(path, **kwargs))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        return self.fs.ls(path, detail=detail, **kwargs)

    def exists(self, path: str, **kwargs: Any) -> bool:
        return bool(self.fs.exists(path, **kwargs))

    # fetching -----------------------------------------------------------------------

    def _entry(self, url: str, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"url": url, "path": path}
        if self.check_files:  # the server's word on the version: a changed file is fetched again
            facts = self.fs.info(url)
            entry["etag"] = facts.get("ETag")
            size = facts.get("size")
            entry["size"] = size if isinstance(size, int) and size >= 0 else None
        return entry

    def _config(self) -> Configuration:
        return self.configuration or Configuration.background(self.identifier or _identifier(self.cache_storage))

    def _fetch(self, entries: list[dict[str, Any]], dest: Path, callback: Any = None) -> list[Path]:
        from ._fetch import fetch

        return fetch(manifest=entries, dest=dest, configuration=self._config(), progress=self.progress,
                     callback=callback, **self.fetch_options)

    def local_path(self, path: str) -> Path:
        """Download ``path`` (a URL) into the cache if needed; its local path."""
        url = self._strip_protocol(path)
        [local] = self._fetch([self._entry(url, cache_path_for(url))], self.cache_storage)
        return local

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode not in ("rb", "r"):
            raise InvalidInput(f"bgdl:: files are read-only; open them with mode 'rb', not {mode!r}")
        if self.read_while_downloading:
            from ._open import open_entry
            url = self._strip_protocol(path)
            reader = open_entry(self._entry(url, cache_path_for(url)), self.cache_storage, self._config(),
                                timeout=self.read_timeout)
            return io.BufferedReader(reader, buffer_size=1024 * 1024)  # fsspec's caller closes it
        return open(self.local_path(path), "rb")

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        with open(self.local_path(path), "rb") as f:
            if start is not None:
                f.seek(start if start >= 0 else max(0, os.fstat(f.fileno()).st_size + start))
            if end is None:
                return f.read()
            stop = end if end >= 0 else os.fstat(f.fileno()).st_size + end
            return f.read(max(0, stop - f.tell()))

    def get(self, rpath: Any, lpath: Any, recursive: bool = False, callback: Any = DEFAULT_CALLBACK,
            **kwargs: Any) -> None:
        """Download one URL or several into ``lpath`` in one background session: a folder
        (several URLs, or a path ending in ``/``) or a file name (one URL)."""
        from ._listing import unique_names

        urls = [self._strip_protocol(p) for p in ([rpath] if isinstance(rpath, str) else list(rpath))]
        target = str(lpath)
        if len(urls) == 1 and not target.endswith(("/", os.sep)) and not os.path.isdir(target):
            dest, names = Path(target).expanduser().absolute().parent, [Path(target).name]
        else:
            dest, names = Path(target).expanduser().absolute(), unique_names(urls)
        entries = [self._entry(url, name) for url, name in zip(urls, names)]
        self._fetch(entries, dest, None if isinstance(callback, NoOpCallback) else callback)

    def get_file(self, rpath: str, lpath: str, callback: Any = DEFAULT_CALLBACK, **kwargs: Any) -> None:
        self.get(rpath, lpath, callback=callback)


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _identifier(folder: Path) -> str:
    return "fsspec-" + hashlib.sha256(str(folder).encode()).hexdigest()[:12]
