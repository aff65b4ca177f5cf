"""The demo origin's files: deterministic synthetic bytes of any size, computed, not stored.

Byte ``p`` of resource ``name`` at version ``v`` is computed: every 64 KiB block starts
with a header naming the resource, the version and the block number, then carries
pseudo-random bytes derived from ``name`` and ``v``, so a byte shifted to the wrong
offset, or taken from another version, changes the file's digest. Tests and benchmarks
compute a file's expected sha256 here without starting a server (nor loading aiohttp).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from urllib.parse import urlencode

__all__ = ["BLOCK", "content", "resource_sha256", "resource_url"]

BLOCK = 64 * 1024
_HEADER = struct.Struct(">8sQQ")  # magic, version, block index


@functools.lru_cache(maxsize=64)
def _base_block(name: str, version: int) -> bytes:
    return hashlib.shake_256(f"bgdl-demo:{name}:{version}".encode()).digest(BLOCK)


def _block(name: str, version: int, index: int) -> bytes:
    base = _base_block(name, version)
    return _HEADER.pack(b"BGDLDEMO", version, index) + base[_HEADER.size:]


def content(name: str, size: int, version: int = 0, start: int = 0, end: int | None = None,
            chunk: int = 4 * BLOCK) -> Iterator[bytes]:
    """Yield bytes ``start``..``end`` (exclusive) of a resource, in pieces of about ``chunk``."""
    end = size if end is None else min(end, size)
    pos = start
    while pos < end:
        first = pos // BLOCK
        last = min((pos + chunk - 1) // BLOCK, (end - 1) // BLOCK)
        data = b"".join(_block(name, version, i) for i in range(first, last + 1))
        offset = pos - first * BLOCK
        piece = data[offset: offset + min(end - pos, len(data) - offset)]
        yield piece
        pos += len(piece)


@functools.lru_cache(maxsize=256)
def resource_sha256(name: str, size: int, version: int = 0) -> str:
    """The hex sha256 of a whole resource, as a client should end up with."""
    digest = hashlib.sha256()
    for piece in content(name, size, version, chunk=16 * BLOCK):
        digest.update(piece)
    return digest.hexdigest()


def resource_url(base_url: str, name: str, size: int, **switches: object) -> str:
    """The URL of resource ``name`` of ``size`` bytes on the origin at ``base_url``."""
    query = urlencode({"size": size, **{k: v for k, v in switches.items() if v is not None}})
    return f"{base_url}/files/{name}?{query}"
