"""What bgdl_nb trusts on a machine it shares with other users.

On a JupyterHub server or an HPC login node, other people can create folders in ``/tmp``
and in shared project folders before you do, plant symbolic links where bgdl_nb will
look, and listen on sockets. bgdl_nb keeps journals, signing keys, locks, sockets and
logs only in folders that pass :func:`private_dir`: a real directory (checked with
``lstat``, so a symbolic link is never followed), owned by the current user, with no
access for group or others. A folder that fails is refused with :class:`UnsafeLocation`
naming the path, its owner and its mode; it is never ``chmod``-ed, followed or written
into. Secret files (the resume-data key) are read with ``O_NOFOLLOW`` and checked the
same way (:func:`read_private_file`).

A file system that cannot express ownership (some FUSE and SMB mounts show every file
as 0777) can be allowed with ``BGDL_ALLOW_INSECURE_STATE_DIR=1``: ownership and mode are
then not checked, links are still refused, and the service socket still checks its
peer's uid. Folders under the system's temporary directory are always checked.

Inside a folder that passed, nobody else can create, rename or replace anything, so the
files in it need no further check of their own.

The same holds for code: every Python process bgdl_nb starts (the transfer service, the
demo's origin and client) runs through :func:`python_command` and
:func:`child_environment`, which keep the caller's working folder off ``sys.path``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import tempfile
from pathlib import Path

from ._exceptions import BgdlError, DiskFull, SessionError, UnsafeLocation

__all__ = ["ALLOW_INSECURE", "child_environment", "private_dir", "private_tree", "python_command", "read_private_file",
           "write_new_file"]

ALLOW_INSECURE = "BGDL_ALLOW_INSECURE_STATE_DIR"
"""The environment variable that turns the owner and mode checks off (not the link check)."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _user(uid: int) -> str:
    try:
        import pwd
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _me() -> int:
    return os.getuid() if hasattr(os, "getuid") else -1


@functools.lru_cache(maxsize=1)
def _temp_root() -> str:
    return os.path.realpath(tempfile.gettempdir())


def _insecure_allowed(path: Path) -> bool:
    if os.environ.get(ALLOW_INSECURE, "") in ("", "0"):
        return False
    return not os.path.realpath(path).startswith(_temp_root() + os.sep)  # /tmp is never exempt


def _problem(st: os.stat_result, path: Path, *, secret: bool, mask: int = 0o077) -> str | None:
    """Why ``st`` (an lstat of ``path``) may not be trusted, or None."""
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"is a symbolic link (to {target})"
    kind = stat.S_ISREG if secret else stat.S_ISDIR
    if not kind(st.st_mode):
        return "is not a regular file" if secret else "is not a directory"
    if _insecure_allowed(path) or _me() < 0:
        return None
    if st.st_uid != _me():
        return f"belongs to {_user(st.st_uid)}, not to you ({_user(_me())})"
    if st.st_mode & mask:
        return f"is open to group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _refuse(path: Path, what: str, problem: str, *, secret: bool) -> UnsafeLocation:
    remedy = ("remove it (bgdl_nb makes a new one)" if secret else
              "remove it, or run `chmod 700` on it if it is yours and nobody else can have changed it")
    opt_out = "" if str(path).startswith(_temp_root() + os.sep) else (
        f"; on a file system that cannot show ownership, set {ALLOW_INSECURE}=1")
    return UnsafeLocation(
        f"{what} {path} {problem}: bgdl_nb keeps its state only where nobody else can change it, and did not "
        f"use it; {remedy}, or set BGDL_STATE_DIR to a folder of your own{opt_out}", path=str(path))


def private_dir(path: str | os.PathLike[str], what: str = "the folder", *, create: bool = True) -> Path:
    """``path`` as a private folder: made with mode 0700 when missing (its missing
    parents with the default mode), otherwise checked; :class:`UnsafeLocation` when it is
    a link, not a directory, not yours or open to group or others.

    With ``create=False`` a missing folder raises :class:`FileNotFoundError`.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # made meanwhile, by us or by someone else: the check below tells
        st = os.lstat(path)
    problem = _problem(st, path, secret=False)
    if problem is not None:
        raise _refuse(path, what, problem, secret=False)
    return path


def private_tree(root: str | os.PathLike[str], *parts: str, what: str = "the state directory") -> Path:
    """``root`` and each folder below it down to ``root/parts...``, each made or checked
    with :func:`private_dir`: the way to a journal, a work folder or a job folder."""
    path = private_dir(root, what)
    for part in parts:
        path = private_dir(path / part, f"the folder {part!r} of {what}")
    return path


def read_private_file(path: str | os.PathLike[str], what: str = "the file", *, secret: bool = True) -> bytes:
    """The bytes of a secret file, opened without following links and checked (a regular
    file of yours, no access for group or others) before a byte is read. With
    ``secret=False`` others may read it but not write it (a file whose content is
    trusted, not hidden)."""
    mask = 0o077 if secret else 0o022
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, what, _problem(os.lstat(path), path, secret=True) or "is a symbolic link",
                          secret=True) from None
        raise
    try:
        problem = _problem(os.fstat(fd), path, secret=True, mask=mask)  # O_NONBLOCK: a planted FIFO cannot stall the open
        if problem is not None:
            raise _refuse(path, what, problem, secret=True)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_new_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Put ``data`` at ``path`` through a fresh, exclusively created temporary file beside
    it and a rename: a link planted at ``path`` or at a temporary name is replaced, never
    followed (for files bgdl_nb writes into folders the user shares, such as a
    destination folder or the working folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def python_command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` with this interpreter and the
    installed packages only: the working folder (sys.path[0] of ``-m``) is left out, with
    ``-P`` where Python has it and by dropping that entry before anything is imported
    where it does not, so a ``bgdl_nb/`` (or ``aiohttp.py``) another user left in the
    folder a notebook runs from is never imported."""
    import sys
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    boot = ("import runpy, sys; del sys.path[0]; sys.argv[0] = " + repr(module)
            + "; runpy.run_module(" + repr(module) + ", run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot, *args]


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child Python of ours: ``PYTHONPATH`` keeps only
    its absolute entries (an empty or relative entry means the child's working folder),
    and ``PYTHONSTARTUP``/``PYTHONINSPECT`` are dropped."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONINSPECT")}
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    env.update(extra or {})
    return env


def _write_probe(folder: Path) -> OSError | None:
    """Why a new file cannot be made in ``folder`` now (``None``: it can). SQLite says only
    "disk I/O error" when its folder went read-only under it, and a file system that a
    disk error remounted read-only still reports itself writable to ``statvfs``."""
    probe = folder / f".bgdl-write-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))
    except OSError as exc:
        return exc
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def state_write_error(exc: BaseException, what: str, folder: Path) -> BgdlError | None:
    """The error to show when ``what`` (in the state folder ``folder``) could not be
    written because its disk is full or read-only; ``None`` for any other failure. Both
    say what to do, and both are passing: the same command works again once it can write."""
    said, code = str(exc).lower(), getattr(exc, "errno", None)
    if code == errno.EIO or "disk i/o error" in said:
        found = _write_probe(folder)
        if found is None:
            return SessionError(f"{what} cannot be written: the disk of {folder} reported an error ({exc}); check "
                                "that disk, then run the same command again")
        exc, said, code = found, str(found).lower(), found.errno
    if code == errno.ENOSPC or "disk is full" in said or "no space" in said:
        return DiskFull(f"{what} cannot be written: no space is left on the disk of {folder}; free some space "
                        "there and run the same command again (nothing is lost: what could not be written is "
                        "written then)")
    why = getattr(exc, "strerror", None) or exc
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in said or "read-only" in said:
        return SessionError(f"{what} cannot be written: {folder} is read-only or not writable by you ({why}); make "
                            "it writable, or set BGDL_STATE_DIR to a folder that is, and run the same command again")
    return None
