"""Destination claims: which task may write a destination, across sessions, processes and machines.

A task claims its destination before it writes a byte. A new task's partial file carries
the claim: its name is the destination's own (``.<name>.bgdl-part``, :func:`carrier_name`),
its ``O_EXCL`` creation is the claim, and an extended attribute on it names the task (its
journal and identifier, or its engine's nonce, its pid and host, and a lease). The rename
that puts the finished file in place takes the claim away with it, so a file costs no
claim file to write and none to remove. A task whose partial file has another name (one
made from resume data), or a file system without user extended attributes, claims with a
small file beside the destination instead (``.<name>.bgdl-claim``, written whole and
linked into place) that holds the same owner. A claimer places its own kind first and
only then looks for the other kind: of two claimers of different kinds racing for one
destination, at least one sees the other (and takes its own claim back). Another task that wants
the same destination reads the claim and asks whether its task can still write
(:func:`_claim_alive`): on this machine its journal or process tells; another machine's
claim holds while its engine keeps refreshing it within the lease. A claim whose task can
no longer run is taken over; two claimers of one stale claim serialise on an ``flock`` of
the claim file itself (:func:`_remove_stale_claim`), so no lock lives in a folder another
user could make first.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import socket
import stat
import time
from pathlib import Path
from typing import Any

from ._exceptions import InvalidDestination
from ._files import _NOFOLLOW, PARTIAL_SUFFIX, beside, unlink

__all__ = ["CLAIM_LEASE", "carrier_name", "claim", "claim_name", "claim_path", "claimed", "release"]

_ATTRIBUTE = "user.bgdl_nb.claim"
_NO_ATTRIBUTES = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS}
_being_placed: dict[str, bytes] = {}  # carrier -> the owner it will hold, while this process creates it
_without_attributes: set[str] = set()  # folders whose file system refused a user attribute


def carrier_name(destination: str | os.PathLike[str]) -> str:
    """The partial file that carries a new task's claim on ``destination``."""
    return beside(destination, PARTIAL_SUFFIX)


def claimed(destination: str | os.PathLike[str]) -> bool:
    """Whether a claim on ``destination`` may be there (a claim file or a carrier exists):
    what a new task asks before it is created, so creating one costs no claim."""
    return os.path.lexists(claim_name(destination)) or os.path.lexists(carrier_name(destination))


def claim_name(destination: str | os.PathLike[str]) -> str:
    """The claim file of a destination, as a string (what a batch of new tasks asks of
    each destination: whether a claim is there already)."""
    return beside(destination, ".bgdl-claim")


def claim_path(destination: str | os.PathLike[str]) -> Path:
    """The claim file of a destination: it names the task that will write it."""
    return _claim_path(os.fspath(destination))


@functools.lru_cache(maxsize=4096)  # asked when a task claims its destination and when it lets it go
def _claim_path(destination: str) -> Path:
    return Path(claim_name(destination))


CLAIM_LEASE = 120.0
"""Seconds a claim written on another machine holds when its file does not say."""

_TASK_KEYS = ("journal", "identifier", "task", "engine")


@functools.lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


def _claim_alive(owner: dict[str, Any], age: float) -> bool:
    """Whether the task a claim names may still write its destination. On this machine
    its journal (or process) tells; another machine's task is alive while its engine
    keeps refreshing the claim (its age under the lease the claim states)."""
    if owner.get("host") != _hostname():
        lease = owner.get("lease")
        return age < (float(lease) if isinstance(lease, (int, float)) and lease > 0 else CLAIM_LEASE)
    journal, identifier, task = owner.get("journal"), owner.get("identifier"), owner.get("task")
    if journal and identifier:
        from ._journal import read_journal
        from ._states import TaskState
        try:
            tasks, _ = read_journal(Path(journal), str(identifier))
        except Exception:  # no journal (deleted, moved aside): nothing can continue that task
            return False
        return any(t.task_identifier == task and t.state is not TaskState.COMPLETED for t in tasks)
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(destination: str | os.PathLike[str], owner: dict[str, Any], lease: float = CLAIM_LEASE,
          *, carried: bool = False, keep: bool = False) -> int | None:
    """Claim ``destination`` for the task ``owner`` names, across sessions, processes and
    machines: :class:`InvalidDestination` while another live task holds it; a claim whose
    task can no longer run (finished, journal gone, process dead, another machine's lease
    lapsed) is taken over. The task's own claim is refreshed (its lease starts again).
    ``carried``: the task's partial file is the destination's carrier, and creating it is
    the claim; else (or where the file system keeps no attributes) a claim file holds it.
    ``keep``: return the carrier this call created, open to read and write, for the caller
    to write and close (the partial file is not opened a second time); else None."""
    file, carrier = claim_name(destination), carrier_name(destination)
    carried = carried and os.path.dirname(carrier) not in _without_attributes
    body = json.dumps({**owner, "pid": os.getpid(), "host": _hostname(), "lease": lease}).encode()
    for _ in range(5):
        mine, other = (carrier, file) if carried else (file, carrier)
        fd = None
        if carried:
            try:
                fd = _place_carrier(carrier, body)
            except _Unattributed:  # its file system keeps no attributes (learned just now): a claim file holds it
                carried = False
                continue
            placed = fd is not None
        else:
            placed = _place(Path(file), body)
        if not placed:  # a claim of this kind is there: the task's own (refreshed), another's, or a stale one
            held = _read(mine)
            if held is not None and _judge(destination, mine, *held, owner):
                return None
            continue
        # placed: only now look for the other kind, so that of two claimers of different kinds
        # racing (each places, then looks) at least one sees the other's claim
        try:
            held = _read(other)
            if held is not None:
                _judge(destination, other, *held, owner)  # raises while another task holds it; a stale one goes
        except BaseException:
            if fd is not None:
                os.close(fd)
            unlink(mine)  # just made: nothing of the task is in it yet
            raise
        if keep:
            return fd
        if fd is not None:
            os.close(fd)
        return None
    raise InvalidDestination(f"{destination}: could not claim it: other processes kept claiming and letting it go "
                             f"while this one tried ({file} or {carrier}); run it again, or choose another destination")


def _read(path: str) -> tuple[bytes, float] | None:
    """The owner a claim at ``path`` names (raw) and its age in seconds, or None when no
    claim is there. A carrier is a partial file: its owner is an attribute; a carrier with
    none is being created (by this process: the owner it is given), or was left behind."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_a_claim(path)
        age = time.time() - st.st_mtime
        if not path.endswith(PARTIAL_SUFFIX):
            with open(os.open(path, os.O_RDONLY | _NOFOLLOW), "rb") as f:
                return f.read(), age
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            from ._private import _user
            raise InvalidDestination(f"{path} belongs to {_user(st.st_uid)}, not to you: another user's download "
                                     "of this destination, or a file put in its way; it was left untouched. "
                                     "Choose another destination")
        try:
            held = _attribute(path)
        except OSError as exc:
            if exc.errno in _NO_ATTRIBUTES:
                return None  # a file system without attributes: its partial files carry no claim
            raise
        if held is None:  # being made by this process (the owner it will have), made meanwhile (the
            # owner is set before that entry goes), or by another process that has not named itself yet
            held = _being_placed.get(path) or _attribute(path) or b""
        return held, age
    except FileNotFoundError:
        return None  # released meanwhile
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link put there between the lstat and the open
            raise _not_a_claim(path) from None
        raise


def _not_a_claim(path: str) -> InvalidDestination:
    return InvalidDestination(f"{path} is a symbolic link or a special file, not a file bgdl_nb wrote; remove it, "
                              "or choose another destination")


def _attribute(target: str | int) -> bytes | None:
    """The owner attribute of a carrier (a path, or an open descriptor), None when it has none."""
    try:
        return os.getxattr(target, _ATTRIBUTE, follow_symlinks=False) if isinstance(target, str) \
            else os.getxattr(target, _ATTRIBUTE)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise
        return None


def _judge(destination: str | os.PathLike[str], path: str, raw: bytes, age: float, owner: dict[str, Any]) -> bool:
    """Whether the claim at ``path`` (``raw``, ``age`` seconds old) lets ``owner`` write
    ``destination``: True when it is the task's own (refreshed) or the same file from the
    same transfer service; :class:`InvalidDestination` while another live task holds it;
    False once a stale claim was removed (the caller tries again)."""
    try:
        other = json.loads(raw)
    except ValueError:
        other = None  # being written by its claimer right now, or damaged long ago
    if other is None and age < 10:
        raise InvalidDestination(f"{destination} is being claimed by another process right now; wait for it or "
                                 "choose another destination")
    if other and all(other.get(k) == owner.get(k) for k in _TASK_KEYS):
        # our own claim, whichever host wrote it: a journaled task is known by its journal
        # (this engine holds that journal's lock: a shard run again on another worker),
        # an unjournaled one by its engine's nonce. It holds for another lease.
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, follow_symlinks=False)  # the claim itself, never a link's target
        return True
    if other and other.get("service") and other.get("service") == owner.get("service") \
            and other.get("url") == owner.get("url") and _claim_alive(other, age):
        return True  # the same file from the same transfer service: it shares the one transfer
    if other and _claim_alive(other, age):
        who = f"task {other.get('task')} of session {other.get('identifier') or '(not journaled)'}"
        lapses = "" if other.get("host") == _hostname() else (
            f"; its claim was refreshed {age:.0f} s ago and lapses if that machine stops refreshing it")
        raise InvalidDestination(
            f"{destination} is claimed by {who} (pid {other.get('pid')} on {other.get('host')}), which "
            f"will write it{lapses}; wait for it or cancel it, or choose another destination")
    _remove_stale_claim(Path(path), raw)
    return False


class _Unattributed(Exception):
    """The carrier's file system keeps no user attributes."""


def _place_carrier(path: str, body: bytes) -> int | None:
    """Create the carrier at ``path`` (``O_EXCL``: the claim), give it ``body`` as its
    owner and return it open to read and write; None when a file is there;
    :class:`_Unattributed` when its file system keeps no attributes (the folder is
    remembered; the caller writes a claim file, and the partial file is made later).
    Readers in this process see ``body`` from the start; another process that reads
    between the creation and the attribute is told the destination is being claimed."""
    _being_placed[path] = body
    try:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _NOFOLLOW, 0o600)
        except FileExistsError:
            return None
        try:
            os.setxattr(fd, _ATTRIBUTE, body)
        except BaseException as exc:
            os.close(fd)
            unlink(path)
            if isinstance(exc, OSError) and exc.errno in _NO_ATTRIBUTES:
                _without_attributes.add(os.path.dirname(path))
                raise _Unattributed() from None
            raise
        return fd
    finally:
        del _being_placed[path]


def _place(path: Path, body: bytes) -> bool:
    """Write a new claim file at ``path`` holding ``body``, or say ``False`` when one is
    there. The claim is written whole to a private name and linked into place, so another
    claimer never reads half a claim (a task's first run claims while other tasks are
    being created). A file system without hard links gets ``O_EXCL`` and one write."""
    spare = Path(beside(path, f".{os.getpid()}.{secrets.token_hex(4)}"))
    try:
        fd = os.open(spare, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o600)
    except FileExistsError:
        return False  # a name chosen at random is taken: treat it as a race lost, try again
    try:
        try:
            os.write(fd, body)  # a few hundred bytes: one write
        finally:
            os.close(fd)
        try:
            os.link(spare, path, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            return _place_in_one_write(path, body)
        return True
    finally:
        unlink(spare)


def _place_in_one_write(path: Path, body: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, body)
    except BaseException:  # a full disk, say: an empty claim must not block the next try
        os.close(fd)
        unlink(path)
        raise
    os.close(fd)
    return True


def _remove_stale_claim(path: Path, raw: bytes) -> None:
    """Remove the claim file at ``path`` if it still holds ``raw`` (the stale claim judged
    by the caller). Two claimers taking over one stale claim serialise on an ``flock`` of
    that very file, which only its owner can open: of the two, one removes it and the
    other finds it gone or replaced. No lock lives in a folder another user could make."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return  # released meanwhile
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidDestination(f"the claim file {path} is a symbolic link, not one bgdl_nb wrote; remove "
                                     "it, or choose another destination") from None
        raise
    try:
        st = os.fstat(fd)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            from ._private import _user
            raise InvalidDestination(f"the claim file {path} belongs to {_user(st.st_uid)}, not to you: bgdl_nb "
                                     "did not write it; remove it, or choose another destination")
        fcntl.flock(fd, fcntl.LOCK_EX)  # held by our own processes only, for a read and an unlink
        try:
            if os.lstat(path).st_ino != st.st_ino:
                return  # another claimer removed it and a new claim stands there now
        except FileNotFoundError:
            return
        if path.name.endswith(PARTIAL_SUFFIX):  # a partial file: its owner is an attribute
            current = _attribute(fd) or b""
        else:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            current = b"".join(chunks)
        if current == raw:
            unlink(path)
    finally:
        os.close(fd)


def release(destination: str | os.PathLike[str], owner: dict[str, Any]) -> None:
    """Give up the claim on ``destination`` if ``owner``'s task holds it."""
    path = claim_path(destination)
    try:
        held = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return
    if all(held.get(k) == v for k, v in owner.items()):
        unlink(path)
