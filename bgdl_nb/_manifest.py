"""What ``fetch()`` knows of the files already in a destination folder, and what it does about them.

The manifest (``.bgdl-manifest.json`` in the destination folder) records, per file, the
URL, the final URL after redirects, the validator, the size, the sha256, the completion
time and the modification time; a file whose size and mtime still match is not fetched
again. :func:`file_action` is the decision (pooch's ``download_action`` shape): facts are
gathered first (:class:`FileFacts`, the costly digest only when the decision needs it),
then one pure function says skip, adopt, fetch or refuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ._exceptions import BgdlError, InvalidDestination
from ._private import private_tree, write_new_file
from ._redact import redact_url

if TYPE_CHECKING:
    from ._listing import Wanted
    from ._task import DownloadTask

__all__ = ["MANIFEST_NAME", "FileAction", "FileFacts", "Manifest", "ManifestEntry", "file_action", "files_here",
           "sha256_file"]

MANIFEST_NAME = ".bgdl-manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ManifestEntry:
    url: str
    final_url: str
    validator: str | None
    size: int
    sha256: str
    completed: str
    mtime_ns: int
    served_name: bool = False  # named by the server's Content-Disposition, not by the URL
    members: list[list[Any]] | None = None  # an unpacked archive: [path, size, mtime_ns] of each member
    unpacked_sha256: str | None = None  # the archive's digest when its members were extracted
    unpacked_to: str | None = None  # where, relative to the destination folder

    def outdated_by(self, etag: str | None, size: int | None) -> bool:
        """Whether a listing's ``etag`` or ``size`` describes another version than this file."""
        return (etag is not None and self.validator is not None and _bare(etag) != _bare(self.validator)) or \
            (size is not None and size != self.size)

    def matches(self, path: Path) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


_FIELDS = {f.name for f in dataclasses.fields(ManifestEntry)}  # a newer manifest's extra fields are ignored
_OPTIONAL = {"served_name", "members", "unpacked_sha256", "unpacked_to"}  # written only when set


def _bare(validator: str) -> str:
    """An ETag without its weak marker and quotes (servers differ in how they quote it)."""
    return validator.removeprefix("W/").strip('"')


class Manifest:
    """The record of completed files in one destination directory."""

    def __init__(self, directory: Path, lock: Path | None = None) -> None:
        self.path = directory / MANIFEST_NAME
        self.lock = lock  # held while saving: writers sharing it never lose each other's entries
        self._written = self._stamp()  # the file as read: if it is still so when saving, nobody else wrote
        self.files: dict[str, ManifestEntry] = self._read()
        self._mine: set[str] = set()  # entries this instance wrote: they win when saving
        self._lines: dict[str, tuple[ManifestEntry, bytes]] = {}  # each entry's line, encoded once

    def _read(self) -> dict[str, ManifestEntry]:
        try:
            data = orjson.loads(self.path.read_bytes())
            return {name: ManifestEntry(**{k: v for k, v in entry.items() if k in _FIELDS})
                    for name, entry in data.get("files", {}).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            raise InvalidDestination(f"{self.path} is not a bgdl_nb manifest ({exc}); move it away") from None

    def record(self, name: str, task: DownloadTask, path: Path, *, served_name: bool = False) -> None:
        response = task.response
        validator = None
        if response is not None:
            headers = {k.lower(): v for k, v in response.headers.items()}
            validator = headers.get("etag") or headers.get("last-modified")
        st = path.stat()
        self._mine.add(name)
        self.files[name] = ManifestEntry(
            url=redact_url(task.original_request.url), final_url=redact_url(task.current_request.url),
            validator=validator,
            size=st.st_size, sha256=task.sha256 or sha256_file(path),
            completed=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), mtime_ns=st.st_mtime_ns,
            served_name=served_name)

    def update(self, name: str, entry: ManifestEntry) -> None:
        """Replace entry ``name`` (it wins over other writers' when saving)."""
        self._mine.add(name)
        self.files[name] = entry

    def adopt(self, name: str, url: str, path: Path, digest: str) -> None:
        st = path.stat()
        self._mine.add(name)
        self.files[name] = ManifestEntry(redact_url(url), redact_url(url), None, st.st_size, digest,
                                         _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                                         st.st_mtime_ns)

    def save(self) -> None:
        """Write the manifest, merged with what other writers saved since it was read
        (several fetches into one folder: the shards of a cluster job, say). The lock lives
        in the state directory, not beside the data: the folder holds only the user's files."""
        import filelock

        if self.lock is not None:
            private_tree(self.lock.parent.parent, self.lock.parent.name)  # <state dir>/locks, both checked
        with filelock.FileLock(str(self.lock), timeout=60) if self.lock is not None else contextlib.nullcontext():
            if self._stamp() != self._written:  # another writer saved since: keep its entries too
                try:
                    merged = self._read()
                except InvalidDestination:  # overwritten with something else while we downloaded
                    raise BgdlError(
                        f"{self.path} was replaced with something that is not a bgdl_nb manifest while files "
                        "were downloading; the downloaded files are kept. Move that file away and run the same "
                        "command again: it records them again without downloading them") from None
                merged.update((n, self.files[n]) for n in self._mine)
                self.files = merged
            # one entry per line, encoded once: saved twice a second while thousands of files
            # finish, the manifest costs a sort and a join, not a re-encoding of every entry
            lines = b",\n".join(self._line(n, e) for n, e in sorted(self.files.items()))
            # through a fresh temporary name: a link planted in a shared folder is replaced, not followed
            write_new_file(self.path, b'{"version": 1, "files": {\n' + lines + b"\n}}\n", 0o644)
            self._written = self._stamp()

    def _line(self, name: str, entry: ManifestEntry) -> bytes:
        cached = self._lines.get(name)
        if cached is None or cached[0] is not entry:
            cached = self._lines[name] = (entry, orjson.dumps(name) + b": " + orjson.dumps(
                {k: v for k, v in vars(entry).items() if k not in _OPTIONAL or v not in (None, False)}))
        return cached[1]

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns


class FileAction(str, enum.Enum):
    """What ``fetch()`` does about a file that is already at its destination."""

    SKIP = "skip"          # the manifest vouches for it: nothing to do
    ADOPT = "adopt"        # ours (the journal or the expected digest says so): record it, do not fetch
    FETCH = "fetch"        # download it (continuing a partial file when one exists)
    CONFLICT = "conflict"  # someone else's file, or changed since: refuse, touch nothing


@dataclass(frozen=True)
class FileFacts:
    """What is known of an existing destination file before deciding (read first, once)."""

    url: str
    expected: str | None              # the digest the caller gave
    entry: ManifestEntry | None       # the manifest's record of this name
    entry_matches: bool               # the file still has the recorded size and mtime
    journal_digest: str | None        # the session's journal finished this URL here with this digest
    overwrite: bool
    digest: str | None = None         # the file's sha256, when needs_digest() asked for it

    def needs_digest(self) -> bool:
        """Whether the decision depends on the file's own digest (costly for big files)."""
        ours = self.entry is not None and self.entry.url == redact_url(self.url)
        if ours and self.entry_matches and self.expected in (None, self.entry.sha256 if self.entry else None):
            return False
        return self.journal_digest is not None or self.expected is not None


def file_action(facts: FileFacts) -> tuple[FileAction, str | None]:
    """Decide about an existing destination file; the digest goes with ADOPT."""
    entry, exp = facts.entry, facts.expected
    if entry is None and facts.journal_digest is not None and exp in (None, facts.journal_digest) \
            and facts.digest == facts.journal_digest:
        return FileAction.ADOPT, facts.journal_digest  # finished, but the manifest was not saved yet
    ours = entry is not None and entry.url == redact_url(facts.url)
    if ours and facts.entry_matches and exp in (None, entry.sha256 if entry else None):
        return FileAction.SKIP, None
    if ours and not facts.entry_matches and not facts.overwrite:
        return FileAction.CONFLICT, None
    if exp is not None and facts.digest == exp:
        return FileAction.ADOPT, exp
    if not facts.overwrite and not ours:
        return FileAction.CONFLICT, None
    return FileAction.FETCH, None


def files_here(wanted: Sequence[Wanted], dest_dir: Path, manifest: Manifest, overwrite: bool,
               journal_finished: Callable[[], dict[tuple[str, str], str]]) -> tuple[dict[int, Path], set[int]]:
    """What ``fetch()`` does about the wanted files already in ``dest_dir``: those it keeps
    (skipped, or adopted into the manifest, which is saved) by position, and the positions
    to fetch again (not the version asked for). A file that is someone else's, or changed
    since bgdl_nb wrote it, is refused with :class:`InvalidDestination` before any request.
    ``journal_finished`` reads the session's finished files, once, when a decision needs it."""
    url_list = [w.url for w in wanted]
    names = [w.path for w in wanted]
    done: dict[int, Path] = {}
    adopt: dict[int, str] = {}
    finished: dict[tuple[str, str], str] | None = None  # the journal's finished files, read once if needed
    recheck: set[int] = set()  # already here, but not the version asked for: fetch it again
    for i, (url, name, want) in enumerate(zip(url_list, names, (w.digest for w in wanted))):
        path = dest_dir / name
        if not path.exists():
            continue
        exp = None if want is None else want.sha256
        entry = manifest.files.get(name)
        if entry is not None and entry.url == redact_url(url) and entry.outdated_by(wanted[i].etag, wanted[i].size):
            recheck.add(i)  # the listing describes a newer version than the one downloaded
            continue
        journal_digest = None
        if entry is None:
            if finished is None:
                finished = journal_finished()
            journal_digest = finished.get((url, str(path)))
        facts = FileFacts(url=url, expected=exp, entry=entry, entry_matches=entry is not None and entry.matches(path),
                          journal_digest=journal_digest, overwrite=overwrite)
        if facts.needs_digest():
            facts = dataclasses.replace(facts, digest=sha256_file(path))
        action, digest = file_action(facts)
        if want is not None and not want.sha256 and action is not FileAction.FETCH:
            # a digest of another algorithm: the file's own bytes decide, as a sha256 would
            matches = want.of_file(path) == want.hexdigest
            if action is FileAction.CONFLICT and matches:
                action, digest = FileAction.ADOPT, sha256_file(path)  # the file the caller describes
            elif action is not FileAction.CONFLICT and not matches:
                action = FileAction.FETCH
        if action is FileAction.FETCH:
            recheck.add(i)  # not the file the caller describes: fetch it again (a new task); the download is checked
            continue
        if action is FileAction.SKIP:
            done[i] = path
        elif action is FileAction.ADOPT:
            adopt[i] = digest or ""
        elif action is FileAction.CONFLICT:
            if entry is not None and entry.url == redact_url(url):
                raise InvalidDestination(f"{path} changed since bgdl_nb downloaded it; delete it (or pass "
                                         "overwrite=True) to download it again")
            raise InvalidDestination(f"{path} exists and was not downloaded from {url} by bgdl_nb; it was "
                                     "left untouched. Remove it, choose another dest, or pass overwrite=True")
    for i, digest in adopt.items():
        manifest.adopt(names[i], url_list[i], dest_dir / names[i], digest)
        done[i] = dest_dir / names[i]
    if adopt:
        manifest.save()
    return done, recheck
