"""The service protocol: versioned, length-delimited JSON messages over a Unix socket.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. The client
opens with ``{"op": "hello", "protocol": N}``; a service that speaks another version
answers with an error naming both, and the client raises :class:`ServiceUnavailable`
saying how to restart the service.

Requests carry an ``id`` and get exactly one reply with the same ``id``
(``{"id": n, "ok": true, "result": ...}`` or ``{"id": n, "ok": false, "error": {...}}``,
the error in :meth:`BgdlError.to_dict` form). The service also pushes, unasked,
``{"type": "event", ...}`` for every journaled event of an attached identifier and
``{"type": "progress", ...}`` with live byte counts a few times a second.

The socket lives in a private directory (checked, never chmod-ed: see ``_private``), and
both ends check the other's uid with ``SO_PEERCRED``: the service before it reads a single
request, the client before it sends a single byte.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any

import orjson

from ..._exceptions import SessionError, UnsafeLocation
from ..._private import private_dir

__all__ = ["PROTOCOL_VERSION", "FrameReader", "ServiceNotAnswering", "ServiceUnavailable", "check_peer", "peer_uid",
           "private_runtime_dir", "read_frame", "runtime_dir", "write_frame"]

PROTOCOL_VERSION = 4
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ServiceUnavailable(SessionError):
    """The transfer service could not be reached, started, or understood."""


class ServiceNotAnswering(ServiceUnavailable):
    """The transfer service is there (its socket accepts) but did not answer in time:
    stopped, swapped out or overloaded. Trying again at once does not help."""


def runtime_dir(state_dir: Path) -> Path:
    """The 0700 directory of the socket and the service lock for ``state_dir``.

    Unix socket paths are limited to about 100 bytes; a state directory deep enough to
    break that gets a short directory under the system's temporary directory instead.
    """
    preferred = state_dir / "run"
    if len(str(preferred / "service.sock")) < 100:
        return preferred
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"bgdl-{os.getuid()}-{digest}"


def private_runtime_dir(state_dir: Path, *, create: bool = True) -> Path:
    """:func:`runtime_dir`, checked before use (and the state directory when it holds it):
    a real folder of yours that nobody else can enter. Raises
    :class:`~bgdl_nb.UnsafeLocation` otherwise, and :class:`FileNotFoundError` with
    ``create=False`` when it does not exist (no service has run there)."""
    run = runtime_dir(state_dir)
    if run.parent == state_dir:
        private_dir(state_dir, "the state directory", create=create)
    return private_dir(run, "the transfer service's socket folder", create=create)


def check_peer(sock: socket.socket, path: Path) -> None:
    """Refuse a service socket served by another user, before a byte is sent to it."""
    uid = peer_uid(sock)
    if not peer_allowed(uid):
        from ..._private import _user
        raise UnsafeLocation(
            f"the transfer service socket {path} is served by {_user(uid)}, not by you; nothing was sent to it. "
            "Someone else may be impersonating your service: remove that socket's folder if you can, or set "
            "BGDL_STATE_DIR to a folder of your own", path=str(path))


def encode(message: dict[str, Any]) -> bytes:
    # orjson: one frame per event, eight per small file (a tenth of json.dumps's cost here)
    body = orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
    return _HEADER.pack(len(body)) + body


def decode(body: bytes | bytearray) -> Any:
    """A frame's message (``ValueError`` when it is not JSON)."""
    return orjson.loads(body)


def decode_length(header: bytes | bytearray) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is larger than {MAX_FRAME}")
    return int(length)


def write_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class FrameReader:
    """The messages arriving on a socket, read in large pieces: one ``recv`` brings every
    frame the service wrote at once (the events of a journal commit), not two per frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()
        self._at = 0  # where the next frame starts in the buffer

    def messages(self) -> list[dict[str, Any]] | None:
        """Every whole message received so far (waiting for one); None once the peer closed."""
        while True:
            out = []
            buffer = self._buffer
            while len(buffer) - self._at >= _HEADER.size:
                length = decode_length(buffer[self._at:self._at + _HEADER.size])
                end = self._at + _HEADER.size + length
                if len(buffer) < end:
                    break
                out.append(decode(buffer[self._at + _HEADER.size:end]))
                self._at = end
            if self._at:  # drop what was read: the buffer holds at most a frame and a piece
                del buffer[:self._at]
                self._at = 0
            if out:
                return out
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            buffer += chunk


def read_frame(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or ``None`` when the peer closed the connection."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, decode_length(header))
    if body is None:
        return None
    message: dict[str, Any] = decode(body)
    return message


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def peer_allowed(uid: int, owner: int | None = None) -> bool:
    """Only the user who owns the service may talk to it."""
    return uid == (os.getuid() if owner is None else owner)
