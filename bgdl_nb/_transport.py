"""The transport seam: how the engine asks for bytes, whatever library fetches them.

An attempt (:mod:`bgdl_nb._attempt`) and a file's pieces (:mod:`bgdl_nb._segments`)
open every response through a :class:`Transport` the engine was given, and read it as a
:class:`Response`: the final URL, the status, the headers as text, and the body chunk by
chunk exactly as sent. What the bytes mean (resume rules, validators, digests) stays in
the engine. bgdl_nb's transport is :class:`~bgdl_nb._transfer.AiohttpTransport`, with
its redirect, credential and address rules; tests may plug their own here, and a faster
transport can be measured against it. This module imports no HTTP library.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["Response", "Transport"]


class Response(Protocol):
    """An open response: status and headers read, the body still to come."""

    url: str
    status: int
    headers: dict[str, str]

    @property
    def complete(self) -> bool:
        """The whole body was read."""

    def abort(self) -> None:
        """Stop reading now; the connection is not reused."""

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as sent, chunk by chunk (errors raised as bgdl_nb's own)."""


class Transport(Protocol):
    """Opens GET responses, following redirects (each reported to ``on_redirect``)."""

    def open(self, url: str, headers: dict[str, str],
             on_redirect: Callable[[int, str], None]) -> AbstractAsyncContextManager[Response]:
        """``async with transport.open(url, headers, on_redirect) as response:``."""

    async def close(self) -> None:
        """Let its connections go (the engine calls it once, as it closes)."""
